/** Where k3s keeps its state (its defaults), and where the image keeps what cairn hands to it. */
export const K3S_BIN = '/usr/local/bin/k3s';
export const K3S_DATA = '/var/lib/rancher/k3s';
export const STATE_DB = `${K3S_DATA}/server/db/state.db`;
export const AUTO_DEPLOY = `${K3S_DATA}/server/manifests`;
export const AIRGAP_DIR = `${K3S_DATA}/agent/images`;
export const KUBECONFIG = '/etc/rancher/k3s/k3s.yaml';
export const REGISTRIES = '/etc/rancher/k3s/registries.yaml';

export const IMAGE_MANIFESTS = '/usr/lib/cairn/manifests';
export const IMAGE_AIRGAP = '/usr/lib/cairn/images';
export const IMAGE_REGISTRIES = '/usr/lib/cairn/registries.yaml';

export const SNAPSHOTS = '/var/lib/cairn/db-snapshots';

/** Secrets cairn hands to k3s as files (--token-file, --agent-token-file): a root-only folder on tmpfs, written on every boot from the config. */
export const K3S_SECRETS_DIR = '/run/cairn/k3s';
export const TOKEN_FILE = `${K3S_SECRETS_DIR}/token`;
export const AGENT_TOKEN_FILE = `${K3S_SECRETS_DIR}/agent-token`;
