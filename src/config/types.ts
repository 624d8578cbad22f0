/**
 * The config as cairn uses it after reading: canonical key names, `k3os:`
 * folded into `cairn:`. Mirrors config/schema.json (the source of truth).
 */
export type Encoding = '' | 'text/plain' | 'b64' | 'base64' | 'gz' | 'gzip' | 'gz+b64' | 'gz+base64' | 'gzip+b64' | 'gzip+base64';

export interface WriteFile {
  path: string;
  content?: string;
  encoding?: Encoding;
  owner?: string;
  permissions?: string;
  append?: boolean;
  defer?: boolean;
}

/** cloud-init's `users` entry (name `default`: cairn's own user). */
export interface CloudUser {
  name: string;
  gecos?: string;
  groups?: string[];
  primary_group?: string;
  sudo?: string[];
  shell?: string;
  homedir?: string;
  uid?: number;
  system?: boolean;
  no_create_home?: boolean;
  ssh_authorized_keys?: string[];
  hashed_passwd?: string;
  passwd?: string;
  plain_text_passwd?: string;
  lock_passwd?: boolean;
}

export interface Chpasswd {
  expire?: boolean;
  users?: { name: string; password: string; type?: 'text' | 'hash' }[];
  list?: string[];
}

export interface CloudNtp {
  enabled?: boolean;
  servers?: string[];
  pools?: string[];
  ntp_client?: string;
}

export interface Wifi {
  name: string;
  passphrase?: string;
}

export interface Route {
  to: string;
  via?: string;
  metric?: number;
}

export interface NetInterface {
  dhcp?: boolean;
  addresses?: string[];
  gateway?: string;
  routes?: Route[];
  dns_nameservers?: string[];
  mtu?: number;
  vlan?: { id: number; link: string };
}

export interface Install {
  force_efi?: boolean;
  force?: boolean;
  device?: string;
  config_url?: string;
  silent?: boolean;
  iso_url?: string;
  power_off?: boolean;
  no_format?: boolean;
  debug?: boolean;
  tty?: string;
}

export interface SystemConfig {
  data_sources?: string[];
  modules?: string[];
  sysctls?: Record<string, string>;
  ntp_servers?: string[];
  dns_nameservers?: string[];
  wifi?: Wifi[];
  password?: string;
  server_url?: string;
  token?: string;
  labels?: Record<string, string>;
  k3s_args?: string[];
  environment?: Record<string, string>;
  taints?: string[];
  network?: { interfaces?: Record<string, NetInterface> };
  install?: Install;
}

export interface CairnConfig {
  ssh_authorized_keys?: string[];
  write_files?: WriteFile[];
  hostname?: string;
  init_cmd?: string[];
  boot_cmd?: string[];
  run_cmd?: string[];
  users?: CloudUser[];
  chpasswd?: Chpasswd;
  ssh_pwauth?: boolean;
  timezone?: string;
  ntp?: CloudNtp;
  manage_etc_hosts?: 'true' | 'false' | 'template' | 'localhost';
  growpart?: { mode?: 'auto' | 'growpart' | 'off' | 'false'; devices?: string[]; ignore_growroot_disabled?: boolean };
  cairn?: SystemConfig;
}

/** A plain JSON object, as configs are before they are known to be valid. */
export type JsonObject = { [key: string]: unknown };

export function isObject(v: unknown): v is JsonObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
