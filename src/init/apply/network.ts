/**
 * Network: DHCP on wired interfaces by default; static addresses, routes,
 * MTU and VLANs per interface from `cairn.network.interfaces`; Wi-Fi through
 * wpa_supplicant. The plan (which `ip` commands, which DHCP clients) is a
 * pure function of the config and the interfaces present; applying it is
 * running the commands and starting the supervised clients.
 */
import { crypto } from '../lazy.js';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { NetInterface, Wifi } from '../../config/types.js';
import { at, type NodeContext } from '../context.js';
import { mustRun } from '../exec.js';
import type { ServiceSpec } from '../supervisor.js';
import { writeFileAtomic } from './files.js';

export interface Link {
  name: string;
  wireless: boolean;
  /** A physical device (not a bridge, veth or other virtual link). */
  physical: boolean;
}

export interface NetworkPlan {
  commands: string[][];
  services: ServiceSpec[];
  /** Interfaces that take a DHCP lease. */
  dhcp: string[];
  notes: string[];
}

export const UDHCPC_SCRIPT = '/run/cairn/udhcpc.script';

/** What udhcpc runs on lease events: addresses, default route, and resolv.conf (configured servers first). */
export const UDHCPC_SCRIPT_TEXT = String.raw`#!/bin/sh
# written by the cairn init: applies a DHCP lease (udhcpc passes the event in $1)
NET=/run/cairn/net
mkdir -p $NET
resolv() {
  cat $NET/static.dns $NET/*.lease.dns 2>/dev/null | awk 'NF && !seen[$0]++ { print "nameserver " $0 }' | head -n 3 >/etc/resolv.conf.cairn-tmp
  mv /etc/resolv.conf.cairn-tmp /etc/resolv.conf
}
case "$1" in
  deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    rm -f $NET/$interface.lease.dns
    ;;
  bound|renew)
    ip -4 addr flush dev "$interface"
    ip -4 addr add "$ip/$mask" dev "$interface"
    if [ -n "$router" ]; then
      for r in $router; do ip -4 route replace default via "$r" dev "$interface" && break; done
    fi
    : >$NET/$interface.lease.dns
    for d in $dns; do echo "$d" >>$NET/$interface.lease.dns; done
    echo "$ip/$mask" >$NET/$interface.address
    resolv
    ;;
esac
exit 0
`;

/** The network interfaces the kernel has, from /sys/class/net. */
export function listLinks(root: string): Link[] {
  const dir = join(root, 'sys/class/net');
  let names: string[] = [];
  try {
    names = readdirSync(dir);
  } catch {
    return [];
  }
  return names
    .filter((n) => n !== 'lo')
    .sort()
    .map((name) => ({ name, wireless: existsSync(join(dir, name, 'wireless')), physical: existsSync(join(dir, name, 'device')) }));
}

function dhcpClient(ifc: string, hostname: string | undefined): ServiceSpec {
  const args = ['udhcpc', '-f', '-i', ifc, '-s', UDHCPC_SCRIPT, '-t', '5', '-T', '3', '-A', '10'];
  if (hostname) args.push('-x', `hostname:${hostname}`);
  return { name: `dhcp-${ifc}`, command: '/usr/bin/busybox', args, stopTimeoutMs: 3000 };
}

export function planNetwork(interfaces: Record<string, NetInterface>, links: Link[], wifi: Wifi[], hostname?: string): NetworkPlan {
  const plan: NetworkPlan = { commands: [['ip', 'link', 'set', 'lo', 'up']], services: [], dhcp: [], notes: [] };
  const present = new Set(links.map((l) => l.name));
  // VLAN links first: they are created, then configured like any other.
  for (const [name, ifc] of Object.entries(interfaces)) {
    if (!ifc.vlan) continue;
    if (!present.has(ifc.vlan.link) && !interfaces[ifc.vlan.link]) plan.notes.push(`${name}: its link ${ifc.vlan.link} does not exist`);
    plan.commands.push(['ip', 'link', 'add', 'link', ifc.vlan.link, 'name', name, 'type', 'vlan', 'id', String(ifc.vlan.id)]);
    present.add(name);
  }
  for (const [name, ifc] of Object.entries(interfaces)) {
    if (!present.has(name)) {
      plan.notes.push(`${name} is configured but not present`);
      continue;
    }
    if (ifc.mtu) plan.commands.push(['ip', 'link', 'set', 'dev', name, 'mtu', String(ifc.mtu)]);
    plan.commands.push(['ip', 'link', 'set', 'dev', name, 'up']);
    for (const a of ifc.addresses ?? []) plan.commands.push(['ip', 'addr', 'add', a, 'dev', name]);
    if (ifc.gateway) plan.commands.push(['ip', 'route', 'replace', 'default', 'via', ifc.gateway, 'dev', name]);
    for (const r of ifc.routes ?? []) {
      const cmd = ['ip', 'route', 'replace', r.to];
      if (r.via) cmd.push('via', r.via);
      cmd.push('dev', name);
      if (r.metric !== undefined) cmd.push('metric', String(r.metric));
      plan.commands.push(cmd);
    }
    const dhcp = ifc.dhcp ?? (ifc.addresses ?? []).length === 0;
    if (dhcp) plan.dhcp.push(name);
  }
  // Wired interfaces nobody configured: DHCP, as on any k3OS node.
  for (const l of links) {
    if (interfaces[l.name] || l.wireless || !l.physical) continue;
    plan.commands.push(['ip', 'link', 'set', 'dev', l.name, 'up']);
    plan.dhcp.push(l.name);
  }
  const wlan = links.find((l) => l.wireless);
  if (wifi.length) {
    if (!wlan) plan.notes.push('wifi is configured but this node has no Wi-Fi interface');
    else {
      plan.commands.push(['ip', 'link', 'set', 'dev', wlan.name, 'up']);
      plan.services.push({ name: `wifi-${wlan.name}`, command: '/usr/sbin/wpa_supplicant', args: ['-i', wlan.name, '-c', WPA_CONF, '-D', 'nl80211,wext'], stopTimeoutMs: 3000 });
      if (!interfaces[wlan.name] || (interfaces[wlan.name]!.dhcp ?? true)) plan.dhcp.push(wlan.name);
    }
  }
  for (const ifc of [...new Set(plan.dhcp)]) plan.services.push(dhcpClient(ifc, hostname));
  return plan;
}

export const WPA_CONF = '/run/cairn/wpa_supplicant.conf';

/**
 * What is wrong with a Wi-Fi entry, in words that never contain the
 * passphrase; undefined when wpa_supplicant can use it.
 */
export function wifiProblem(n: Wifi): string | undefined {
  const ssid = Buffer.byteLength(n.name ?? '');
  if (ssid < 1 || ssid > 32) return `wifi "${n.name}": an SSID is 1 to 32 bytes, this one is ${ssid}; fix cairn.wifi[].name`;
  if (n.passphrase === undefined || /^[0-9a-fA-F]{64}$/.test(n.passphrase)) return undefined;
  const len = Buffer.byteLength(n.passphrase);
  if (len < 8 || len > 63) return `wifi "${n.name}": a WPA passphrase is 8 to 63 characters (or a PSK of 64 hex digits), this one is ${len} bytes; fix cairn.wifi[].passphrase`;
  return undefined;
}

/**
 * The 256-bit PSK, as wpa_passphrase derives it (IEEE 802.11i:
 * PBKDF2-HMAC-SHA1 of the passphrase, the SSID as salt, 4096 rounds); a
 * passphrase of 64 hex digits is already a PSK and is used as given.
 */
export function wpaPsk(ssid: string, passphrase: string): string {
  if (/^[0-9a-fA-F]{64}$/.test(passphrase)) return passphrase.toLowerCase();
  return crypto().pbkdf2Sync(Buffer.from(passphrase, 'utf8'), Buffer.from(ssid, 'utf8'), 4096, 32, 'sha1').toString('hex');
}

/**
 * wpa_supplicant.conf for the configured networks, first listed first
 * tried. The SSID is written hex-encoded and the passphrase as its derived
 * PSK, so that no character of either (quotes, backslashes, `#`, UTF-8)
 * needs quoting, and the passphrase itself is not in the file.
 */
export function renderWpaConf(networks: Wifi[], opts: { ctrlInterface?: string } = {}): string {
  const blocks = networks.map((n, i) => {
    const problem = wifiProblem(n);
    if (problem) throw new Error(problem);
    return [
      `# ${JSON.stringify(n.name).replace(/[^\x20-\x7e]/g, '?')}`,
      'network={',
      `  ssid=${Buffer.from(n.name, 'utf8').toString('hex')}`,
      n.passphrase !== undefined ? `  psk=${wpaPsk(n.name, n.passphrase)}` : '  key_mgmt=NONE',
      `  priority=${networks.length - i}`,
      '}',
    ].join('\n');
  });
  return [`ctrl_interface=${opts.ctrlInterface ?? '/run/wpa_supplicant'}`, 'update_config=0', ...blocks, ''].join('\n');
}

/**
 * The global addresses the kernel has: IPv4 from /proc/net/fib_trie (each
 * local address is a `/32 host LOCAL` leaf), IPv6 from /proc/net/if_inet6
 * (scope 00). Read from /proc rather than by running `ip`: the boot polls
 * this, and a process start costs a tenth of a second on a small board.
 */
export function globalAddresses(ctx: Pick<NodeContext, 'root'>): string[] {
  const found = new Set<string>();
  const read = (p: string) => {
    try {
      return readFileSync(at(ctx, p), 'utf8');
    } catch {
      return '';
    }
  };
  const lines = read('/proc/net/fib_trie').split('\n');
  lines.forEach((line, i) => {
    const ip = /^[\s|`+-]*(\d+\.\d+\.\d+\.\d+)\s*$/.exec(line)?.[1];
    if (ip && /^\s*\/32 host LOCAL/.test(lines[i + 1] ?? '') && !ip.startsWith('127.')) found.add(ip);
  });
  for (const line of read('/proc/net/if_inet6').split('\n')) {
    const f = line.trim().split(/\s+/);
    if (f.length >= 6 && f[3] === '00' && f[5] !== 'lo') found.add(f[0]!.replace(/(.{4})(?!$)/g, '$1:'));
  }
  return [...found];
}

/** Waits until some interface other than lo has a global address, or the time is up. */
async function waitForAddress(ctx: NodeContext, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  for (;;) {
    if (globalAddresses(ctx).length) return true;
    if (Date.now() >= end) return false;
    await new Promise((res) => setTimeout(res, 100));
  }
}

export async function applyNetwork(ctx: NodeContext, waitMs = 20_000): Promise<string> {
  const wifi: Wifi[] = [];
  for (const n of ctx.config.cairn?.wifi ?? []) {
    const problem = wifiProblem(n);
    if (problem) ctx.log.info(`network: ${problem}; this network is left out`);
    else wifi.push(n);
  }
  const plan = planNetwork(ctx.config.cairn?.network?.interfaces ?? {}, listLinks(ctx.root), wifi, ctx.config.hostname);
  writeFileAtomic(at(ctx, UDHCPC_SCRIPT), UDHCPC_SCRIPT_TEXT, { mode: 0o755 });
  if (wifi.length) writeFileAtomic(at(ctx, WPA_CONF), renderWpaConf(wifi), { mode: 0o600 });
  const failed: string[] = [];
  for (const cmd of plan.commands) {
    try {
      await mustRun(ctx.exec, cmd[0]!, cmd.slice(1), { timeoutMs: 10_000 });
    } catch (e) {
      failed.push((e as Error).message);
    }
  }
  for (const s of plan.services) ctx.services.start(s);
  for (const n of plan.notes) ctx.log.info(`network: ${n}`);
  const up = await waitForAddress(ctx, waitMs);
  const summary = `${plan.dhcp.length ? `DHCP on ${plan.dhcp.join(', ')}` : 'no DHCP'}${up ? '' : '; no address yet'}`;
  if (failed.length) throw new Error(`${failed.join('; ')} (${summary})`);
  return summary;
}
