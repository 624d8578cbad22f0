/**
 * `cairn run IMAGE`: boots an image in QEMU with the serial console on this
 * terminal, as `linuxkit run qemu` does. The image is never modified: disks
 * run on a throwaway overlay. Ctrl-A X quits.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import type { Command } from 'commander';
import { execa } from 'execa';
import { formatDiagnostic, hasErrors } from '../../config/diagnostics.js';
import { readConfig } from '../../config/read.js';
import { ARCHES, type Arch } from '../../builder/types.js';
import { UserError } from '../../errors.js';
import { detectArtifact, prepareMachine } from '../../../qemu/machine.js';
import { commandLine, type Firmware } from '../../../qemu/profiles.js';
import { MAX_CLUSTER, planCluster } from '../../cluster/plan.js';
import { runCluster } from '../../cluster/run.js';
import type { JsonObject } from '../../config/types.js';

interface RunFlags {
  arch?: string;
  config?: string;
  mem: string;
  cpus: string;
  sshPort?: string;
  firmware?: string;
  accel?: string;
  diskSize?: string;
  dryRun?: boolean;
  cluster?: string;
  ha?: boolean;
}

function positiveInt(value: string, flag: string, max: number): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || n < 1 || n > max) throw new UserError(`${flag} must be a whole number from 1 to ${max}, not "${value}"`);
  return n;
}

/** The arch in an artifact's name (…-arm64.iso), else amd64. */
export function archFromName(file: string): Arch {
  const base = path.basename(path.resolve(file));
  const found = ARCHES.find((a) => new RegExp(`(^|[-_.])${a}([-_.]|$)`).test(base));
  return found ?? (/(^|[-_.])(aarch64)([-_.]|$)/.test(base) ? 'arm64' : /(^|[-_.])(armhf|arm)([-_.]|$)/.test(base) ? 'armv7' : 'amd64');
}

async function checkConfig(file: string): Promise<void> {
  let data: Buffer;
  try {
    data = await readFile(file);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new UserError(`config ${file}: ${code === 'ENOENT' ? 'no such file' : code === 'EISDIR' ? 'is a folder, not a file' : `cannot be read (${code})`}`, 'check the path');
  }
  const ds = readConfig(data, file).diagnostics;
  for (const d of ds) process.stderr.write(`${formatDiagnostic(d)}\n`);
  if (hasErrors(ds)) throw new UserError(`${file} has errors; fix them or check it with: cairn config validate ${file}`);
}

export function registerRun(program: Command): void {
  program
    .command('run')
    .description('boot an image in QEMU with its serial console on this terminal (Ctrl-A X quits)')
    .argument('<image>', 'an .iso, .raw/.img or .qcow2 image, or a pxe folder (with boot.ipxe)')
    .option('-a, --arch <arch>', 'amd64, arm64 or armv7 (default: from the file name, else amd64)')
    .option('-c, --config <file>', 'a cloud-config to attach as a NoCloud seed (checked first)')
    .option('-m, --mem <MB>', 'memory', '2048')
    .option('--cpus <n>', 'virtual CPUs', '2')
    .option('-p, --ssh-port <port>', 'forward this port on 127.0.0.1 to the guest\'s ssh')
    .option('--firmware <bios|uefi>', 'bios (SeaBIOS, amd64) or uefi (default: bios on amd64, uefi on ARM)')
    .option('--accel <kvm|tcg>', 'accelerator (default: kvm only where kvm_intel/kvm_amd is loaded)')
    .option('--disk-size <size>', 'grow the throwaway disk overlay to this size, e.g. 16G')
    .option('--dry-run', 'print the QEMU command and exit')
    .option('--cluster <n>', 'start a k3s cluster of n nodes (a server and n-1 agents) on a private network between them; consoles go to log files')
    .option('--ha', 'with --cluster: three servers with k3s\' embedded etcd (--cluster-init on the first), the rest agents')
    .action(async (image: string, flags: RunFlags) => {
      let arch: Arch;
      if (flags.arch !== undefined) {
        if (!(ARCHES as readonly string[]).includes(flags.arch)) throw new UserError(`unknown arch "${flags.arch}"`, `use one of: ${ARCHES.join(', ')}`);
        arch = flags.arch as Arch;
      } else arch = archFromName(image);
      if (flags.firmware !== undefined && flags.firmware !== 'bios' && flags.firmware !== 'uefi') throw new UserError(`unknown firmware "${flags.firmware}"`, 'use bios or uefi');
      if (flags.accel !== undefined && flags.accel !== 'kvm' && flags.accel !== 'tcg') throw new UserError(`unknown accelerator "${flags.accel}"`, 'use kvm or tcg');
      const memMb = positiveInt(flags.mem, '--mem', 1024 * 1024);
      const cpus = positiveInt(flags.cpus, '--cpus', 256);
      const sshPort = flags.sshPort === undefined ? undefined : positiveInt(flags.sshPort, '--ssh-port', 65535);
      if (flags.diskSize !== undefined && !/^\d+[KMGT]?$/i.test(flags.diskSize)) throw new UserError(`--disk-size must be a size such as 16G, not "${flags.diskSize}"`);
      const artifact = await detectArtifact(image);
      if (flags.config) await checkConfig(flags.config);
      if (flags.ha && flags.cluster === undefined) throw new UserError('--ha is for clusters', 'give --cluster 3 (or more) with --ha');
      if (flags.cluster !== undefined) {
        if (sshPort !== undefined) throw new UserError('--ssh-port is for one node: a cluster gives each node a free port (printed at the start)');
        const size = positiveInt(flags.cluster, '--cluster', MAX_CLUSTER);
        const base = flags.config ? (readConfig(await readFile(flags.config), flags.config).config as JsonObject) : {};
        const plan = planCluster({ size, ha: flags.ha, base });
        const log = (line: string) => (flags.dryRun ? process.stdout : process.stderr).write(`${flags.dryRun ? '' : 'cairn: '}${line}\n`);
        process.exitCode = await runCluster(plan, { artifact, arch, firmware: flags.firmware as Firmware | undefined, accel: flags.accel as 'kvm' | 'tcg' | undefined, memMb, cpus, diskSize: flags.diskSize, dryRun: flags.dryRun, log });
        return;
      }
      const vm = await prepareMachine({
        artifact,
        arch,
        firmware: flags.firmware as Firmware | undefined,
        memMb,
        cpus,
        sshPort,
        config: flags.config,
        diskSize: flags.diskSize,
        accel: flags.accel as 'kvm' | 'tcg' | undefined,
        console: 'terminal',
      });
      try {
        if (flags.dryRun) {
          process.stdout.write(`${commandLine(vm.binary, vm.args)}\n`);
          return;
        }
        const notes = [`${artifact.kind} on ${arch} (${vm.spec.accel === 'kvm' ? 'KVM' : 'TCG'}${artifact.kind === 'kernel' ? '' : `, ${vm.spec.firmware}`})`];
        if (vm.sshPort) notes.push(`ssh -p ${vm.sshPort} cairn@127.0.0.1`);
        if (vm.http) notes.push(`files served at ${vm.http.guestUrl}`);
        process.stderr.write(`cairn: booting ${image}: ${notes.join('; ')}; Ctrl-A X quits\n`);
        const child = execa(vm.binary, vm.args, { stdio: 'inherit', reject: false });
        const forward = (sig: NodeJS.Signals): void => {
          child.kill(sig);
        };
        // QEMU owns the terminal (raw mode: Ctrl-C goes to the guest); signals sent to
        // cairn are passed on, and the temp files are removed once QEMU has gone.
        process.on('SIGINT', forward);
        process.on('SIGTERM', forward);
        process.on('SIGHUP', forward);
        try {
          const r = await child;
          if (r.failed && r.exitCode === undefined && !r.signal) throw new UserError(`${vm.binary} did not start: ${r.shortMessage}`);
          if (r.exitCode) process.exitCode = r.exitCode;
        } finally {
          process.off('SIGINT', forward);
          process.off('SIGTERM', forward);
          process.off('SIGHUP', forward);
        }
      } finally {
        await vm.cleanup();
      }
    });
}
