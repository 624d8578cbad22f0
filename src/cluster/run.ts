/**
 * `cairn run --cluster N IMAGE`: the nodes of a cluster plan (plan.ts) in
 * QEMU, each on a throwaway overlay with its own seed, on QEMU's user
 * network (ssh from this host) and on a private network between them (a
 * multicast group on the loopback interface). Their consoles go to log
 * files in one folder, with the token (0600); Ctrl-C stops them all.
 */
import { createWriteStream } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import type { Artifact } from '../../qemu/machine.js';
import { prepareMachine } from '../../qemu/machine.js';
import { commandLine, type Firmware } from '../../qemu/profiles.js';
import type { Arch } from '../builder/types.js';
import { CLUSTER_PREFIX, CLUSTER_SUBNET, renderNodeConfig, type ClusterPlan } from './plan.js';

export interface ClusterRunOptions {
  artifact: Artifact;
  arch: Arch;
  firmware?: Firmware;
  accel?: 'kvm' | 'tcg';
  memMb: number;
  cpus: number;
  diskSize?: string;
  dryRun?: boolean;
  log: (line: string) => void;
}

/** A multicast group and port for one cluster's private network (several clusters on a host do not meet). */
export function clusterGroup(random = Math.random): string {
  return `230.77.${Math.floor(random() * 250) + 1}.${Math.floor(random() * 250) + 1}:${20000 + Math.floor(random() * 40000)}`;
}

export async function runCluster(plan: ClusterPlan, opts: ClusterRunOptions): Promise<number> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'cairn-cluster-'));
  const group = clusterGroup();
  await writeFile(path.join(dir, 'token'), `${plan.token}\n`, { mode: 0o600 });
  const machines = [];
  try {
    for (const node of plan.nodes) {
      const seedConfig = path.join(dir, `${node.name}.yaml`);
      await writeFile(seedConfig, renderNodeConfig(node), { mode: 0o600 });
      machines.push({
        node,
        vm: await prepareMachine({
          artifact: opts.artifact,
          arch: opts.arch,
          firmware: opts.firmware,
          accel: opts.accel,
          memMb: opts.memMb,
          cpus: opts.cpus,
          diskSize: opts.diskSize,
          config: seedConfig,
          sshPort: opts.dryRun ? undefined : 'auto',
          privateNet: { mcast: group, mac: node.mac },
          console: 'serial',
        }),
      });
    }
    if (opts.dryRun) {
      for (const { node, vm } of machines) opts.log(`${node.name} (${node.role}, ${node.address}): ${commandLine(vm.binary, vm.args)}`);
      await rm(dir, { recursive: true, force: true });
      return 0;
    }
    const servers = plan.nodes.filter((n) => n.role === 'server').length;
    opts.log(`cluster of ${plan.nodes.length}: ${servers} server${servers === 1 ? '' : 's'}${plan.ha ? " (k3s' embedded etcd)" : ''}, ${plan.nodes.length - servers} agent${plan.nodes.length - servers === 1 ? '' : 's'}; private network ${CLUSTER_SUBNET}.0/${CLUSTER_PREFIX}; the server at ${plan.serverUrl}`);
    opts.log(`consoles, seeds and the join token (0600) in ${dir}`);
    const children = machines.map(({ node, vm }) => {
      opts.log(`  ${node.name.padEnd(15)} ${node.address.padEnd(11)} ${vm.sshPort ? `ssh -p ${vm.sshPort} cairn@127.0.0.1` : ''}  console: ${path.join(dir, `${node.name}.log`)}`);
      const child = execa(vm.binary, vm.args, { stdin: 'ignore', stdout: 'pipe', stderr: 'pipe', reject: false });
      const out = createWriteStream(path.join(dir, `${node.name}.log`));
      child.stdout?.pipe(out);
      child.stderr?.pipe(out);
      return child;
    });
    opts.log('Ctrl-C stops the cluster');
    const stop = () => {
      for (const c of children) c.kill('SIGTERM');
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
    try {
      const results = await Promise.all(children);
      return results.some((r) => r.exitCode) ? 1 : 0;
    } finally {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
    }
  } finally {
    for (const { vm } of machines) await vm.cleanup();
  }
}
