// k3OS' README sample config, and what it asks for checked on a booted node
// (the ISO, raw disk and install boot tests apply it).
import { readFileSync } from 'node:fs';
import type { SshKey } from '../../qemu/harness.js';
import { K3OS_SAMPLE } from '../support/shared.js';
import type { Check, Node } from './node.js';

/**
 * k3OS' README sample config with only its network-dependent values adapted:
 * the github: key (no GitHub from the test machines) becomes the test's own key.
 */
export function sampleConfig(key: SshKey): string {
  const text = readFileSync(K3OS_SAMPLE, 'utf8');
  if (!text.includes('- github:ibuildthecloud')) throw new Error('the k3OS sample changed');
  return text.replace('- github:ibuildthecloud', `- ${key.publicKey.trim()}`);
}

/** What the k3OS sample config asks for, checked on the node. */
export async function checkSampleApplied(tt: Check, node: Node): Promise<void> {
  await node.waitSsh();
  tt.equal((await node.sh('hostname')).trim(), 'myhost', 'hostname set');
  const keys = await node.sh('cat ~/.ssh/authorized_keys');
  tt.match(keys, /^ssh-rsa AAAAB3NzaC1yc2EAAAADAQAB\.\.\.$/m, "the sample's key installed for cairn");
  tt.equal((await node.sh('id -u')).trim(), '1000', 'cairn is uid 1000');
  tt.equal((await node.sh('stat -c "%a %U" /etc/local.d/example.start')).trim(), '755 root', 'write_files with owner and mode');
  tt.equal((await node.sh('cat /etc/local.d/example.start')).trim(), '#!/bin/bash\necho hello, local service start');
  const cmds = await node.sh('sudo cat /var/log/cairn/commands.log');
  const order = [...cmds.matchAll(/^hello, (\w+) command$/gm)].map((m) => m[1]);
  tt.same(order, ['init', 'boot', 'run'], 'init_cmd, boot_cmd, run_cmd ran in that order');
  tt.equal((await node.sh('cat /proc/sys/kernel/printk')).trim().split(/\s+/).join(' '), '4 4 1 7', 'sysctl kernel.printk');
  tt.equal((await node.sh('cat /proc/sys/kernel/kptr_restrict')).trim(), '1', 'sysctl kernel.kptr_restrict');
  const modules = await node.sh('cut -d" " -f1 /proc/modules');
  tt.match(modules, /^kvm$/m, 'module kvm loaded');
  tt.match(modules, /^nvme$/m, 'module nvme loaded');
  const k3s = await node.sh('sudo cat /var/log/cairn/k3s.log');
  tt.match(k3s, /k3s-double: server starting/, 'k3s started as a server');
  for (const arg of ['--node-label region=us-west-1', '--node-label somekey=somevalue', '--node-taint key1=value1:NoSchedule', '--node-taint key1=value1:NoExecute', '--cluster-init', '--node-label cairn.io/version=0.1.0']) {
    tt.ok(k3s.includes(arg), `k3s got ${arg}`);
  }
  tt.match(k3s, /k3s-double: manifest system-upgrade-controller\.yaml/, 'the baked-in system-upgrade-controller manifest is listed');
  tt.match(k3s, /k3s-double: manifest cairn-upgrade-plan\.yaml/, 'the baked-in Plan is listed');
  tt.match(await node.sh('sudo ls -l /var/lib/rancher/k3s/server/db/state.db'), /state\.db/, 'the datastore exists');
  tt.equal((await node.sh('sudo stat -c %a /etc/rancher/k3s/k3s.yaml')).trim(), '600', 'the kubeconfig is 0600');
  const env = JSON.parse((await node.sh('sudo tail -n 1 /var/lib/rancher/k3s/double/invocations.jsonl')) || '{}') as { env?: Record<string, string> };
  tt.equal(env.env?.http_proxy, 'http://myserver', 'environment handed to k3s');
  tt.same(
    (await node.sh('cat /etc/resolv.conf')).split('\n').filter((l) => l.startsWith('nameserver ')).slice(0, 2),
    ['nameserver 8.8.8.8', 'nameserver 1.1.1.1'],
    'dns_nameservers first in resolv.conf, in order',
  );
  const chrony = await node.sh('cat /etc/chrony/chrony.conf');
  tt.same(chrony.split('\n').filter((l) => /^(server|pool) /.test(l)), ['server 0.us.pool.ntp.org iburst', 'server 1.us.pool.ntp.org iburst'], 'ntp_servers are chrony\'s only sources');
  // The sample's token: handed to k3s in a root-only file, never on its command line or in a log.
  const pid = (await node.sh('pgrep -o -f "[/]usr/local/bin/k3s server"')).trim();
  const cmdline = await node.sh(`tr '\\0' ' ' < /proc/${pid}/cmdline`);
  tt.notMatch(cmdline, /TOKEN_VALUE/, "the token is not on k3s' command line");
  const tokenFile = /--token-file[= ](\S+)/.exec(cmdline)?.[1];
  tt.ok(tokenFile, `k3s reads its token from a file (${cmdline.trim()})`);
  if (tokenFile) {
    tt.equal((await node.sh(`sudo stat -c "%a %U" ${tokenFile}`)).trim(), '600 root', 'the token file is 0600, root');
    tt.equal((await node.sh(`sudo cat ${tokenFile}`)).trim(), 'TOKEN_VALUE', 'the token file holds the token');
  }
  tt.notMatch(await node.sh('sudo grep -rl TOKEN_VALUE /var/log /run/cairn/status.json || true'), /\S/, 'no log and no status file holds the token');
  tt.equal((await node.sh('stat -c %a /var/log/cairn')).trim(), '750', '/var/log/cairn is 0750');
  const modes = (await node.sh('sudo find /var/log/cairn -type f -printf "%m %p\\n"')).trim().split('\n');
  tt.same(modes.filter((m) => !/^(640|600) /.test(m)), [], `every log file is 0640 or tighter (${modes.length} files)`);
  tt.match(await node.sh('cat /var/log/cairn/k3s.log', { ok: false }), /^$/, 'cairn cannot read the k3s log');
  const status = JSON.parse(await node.sh('cairn status --json')) as { version: string; services: { name: string; state: string }[]; bootComplete: boolean };
  tt.equal(status.version, '0.1.0');
  tt.ok(status.bootComplete);
  tt.same(
    status.services.filter((s) => ['sshd', 'chronyd', 'k3s'].includes(s.name)).map((s) => [s.name, s.state]).sort(),
    [['chronyd', 'running'], ['k3s', 'running'], ['sshd', 'running']],
  );
}
