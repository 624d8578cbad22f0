/**
 * A k3s cluster of cairn nodes in QEMU, as a pure plan: which node is a
 * server and which an agent, each node's address on the private network
 * between the guests, and each node's config (its seed), which carries the
 * join token: never the kernel command line, which every process on a node
 * can read. k3s is the cluster engine: cairn only gives each node's k3s its
 * role, the server's URL, the token and the address to use.
 *
 *   --cluster N        one server (cairn-server-1) and N-1 agents
 *   --cluster N --ha   three servers with k3s' embedded etcd (--cluster-init
 *                      on the first, --server to the first on the others),
 *                      and N-3 agents
 */
import { randomBytes } from 'node:crypto';
import { dump } from 'js-yaml';
import { mergeConfig } from '../config/read.js';
import type { JsonObject } from '../config/types.js';
import { UserError } from '../errors.js';

/** The guests' private network: 10.77.0.0/24, node i at .11, .12, ... */
export const CLUSTER_SUBNET = '10.77.0';
export const CLUSTER_PREFIX = 24;
/** The guest's second NIC, on the private network (eth0 is QEMU's user network: ssh, the internet). */
export const CLUSTER_INTERFACE = 'eth1';
export const MAX_CLUSTER = 9;

export interface ClusterNode {
  name: string;
  role: 'server' | 'agent';
  /** 1-based. */
  index: number;
  address: string;
  /** The private NIC's MAC: 52:54:00:77:00:<index>. */
  mac: string;
  /** The node's config (its seed), the user's config under the cluster's keys. */
  config: JsonObject;
}

export interface ClusterPlan {
  nodes: ClusterNode[];
  serverUrl: string;
  token: string;
  ha: boolean;
}

/** A k3s join token: 32 random bytes as hex. */
export function newToken(): string {
  return randomBytes(32).toString('hex');
}

export function planCluster(opts: { size: number; ha?: boolean; token?: string; base?: JsonObject }): ClusterPlan {
  const { size, ha = false } = opts;
  if (!Number.isInteger(size) || size < 1 || size > MAX_CLUSTER) throw new UserError(`--cluster takes a number of nodes from 1 to ${MAX_CLUSTER}, not ${size}`, 'for example --cluster 3 (a server and two agents)');
  if (ha && size < 3) throw new UserError(`--ha makes three servers (k3s' embedded etcd needs three for a quorum); --cluster ${size} is too few`, 'give --cluster 3 or more with --ha');
  const token = opts.token ?? newToken();
  const servers = ha ? 3 : 1;
  const addr = (i: number) => `${CLUSTER_SUBNET}.${10 + i}`;
  const serverUrl = `https://${addr(1)}:6443`;
  const nodes: ClusterNode[] = [];
  for (let i = 1; i <= size; i++) {
    const role = i <= servers ? 'server' : 'agent';
    const name = role === 'server' ? `cairn-server-${i}` : `cairn-agent-${i - servers}`;
    const address = addr(i);
    // k3s on the private address; the first server starts the cluster, every other node joins it
    let k3sArgs: string[];
    const sys: JsonObject = { token };
    if (role === 'server') {
      k3sArgs = ['server', ...(ha && i === 1 ? ['--cluster-init'] : []), '--node-ip', address, '--advertise-address', address];
      if (i > 1) sys.server_url = serverUrl;
    } else {
      k3sArgs = ['agent', '--node-ip', address];
      sys.server_url = serverUrl;
    }
    sys.k3s_args = k3sArgs;
    sys.network = { interfaces: { [CLUSTER_INTERFACE]: { addresses: [`${address}/${CLUSTER_PREFIX}`] } } };
    const cluster: JsonObject = { hostname: name, cairn: sys };
    const base = opts.base ?? {};
    // the user's config, with `k3os:` read as `cairn:`, under the cluster's keys
    const folded: JsonObject = { ...base };
    if (folded.k3os && typeof folded.k3os === 'object') {
      folded.cairn = mergeConfig(folded.k3os as JsonObject, (folded.cairn as JsonObject | undefined) ?? {});
      delete folded.k3os;
    }
    nodes.push({ name, role, index: i, address, mac: `52:54:00:77:00:${i.toString(16).padStart(2, '0')}`, config: mergeConfig(folded, cluster) });
  }
  return { nodes, serverUrl, token, ha };
}

/** A node's config as the YAML of its seed. */
export function renderNodeConfig(node: ClusterNode): string {
  return `#cloud-config\n# cluster node ${node.name} (${node.role}), written by cairn run --cluster\n${dump(node.config, { lineWidth: -1 })}`;
}
