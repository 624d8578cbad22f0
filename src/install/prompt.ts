/**
 * The interactive installer (sudo cairn install on a console): a few
 * questions, as k3OS' installer asks them: the disk (with sizes and
 * models), a config file or URL, else a password or an SSH key for the
 * cairn user, then a confirmation that names what will be erased. The
 * answers become InstallOptions; the password is typed without echo and
 * goes only into the installed config (0600).
 */
import { createInterface, type Interface } from 'node:readline/promises';
import { Writable } from 'node:stream';
import { dump } from 'js-yaml';
import type { InstallOptions } from './install.js';
import { candidateDisks, contentsOf, describeDisk, runningSystemOn, type BlockDevice } from './plan.js';
import { UserError } from '../errors.js';

export interface PromptIo {
  input: NodeJS.ReadableStream;
  output: NodeJS.WritableStream;
}

/** A readline whose echo can be turned off (for the password). */
function readlineWithMute(io: PromptIo): { rl: Interface; mute: (on: boolean) => void } {
  let muted = false;
  const out = new Writable({
    write(chunk: Buffer, _enc, cb) {
      if (!muted) io.output.write(chunk);
      cb();
    },
  });
  const rl = createInterface({ input: io.input, output: out, terminal: true });
  return { rl, mute: (on) => (muted = on) };
}

/** The config the answers make when no config file or URL was given. */
export function configFromAnswers(a: { password?: string; sshKey?: string }): string | undefined {
  const doc: Record<string, unknown> = {};
  if (a.sshKey) doc.ssh_authorized_keys = [a.sshKey];
  if (a.password) doc.cairn = { password: a.password };
  return Object.keys(doc).length ? dump(doc, { lineWidth: -1 }) : undefined;
}

/**
 * Asks the questions; returns the options to install with, or undefined
 * when the user did not confirm.
 */
export async function promptInstall(devices: BlockDevice[], io: PromptIo, preset: Partial<InstallOptions> = {}): Promise<InstallOptions | undefined> {
  const disks = candidateDisks(devices);
  const usable = disks.filter((d) => !runningSystemOn(d) && !d.ro);
  if (!usable.length) throw new UserError(`no disk here can be installed to (${disks.length ? disks.map((d) => `${d.path}: ${runningSystemOn(d) ?? 'read-only'}`).join('; ') : 'no disks at all'})`, 'attach a disk and run sudo cairn install again');
  const { rl, mute } = readlineWithMute(io);
  const say = (s: string) => io.output.write(`${s}\n`);
  try {
    say('cairn installer: the disks you can install to');
    usable.forEach((d, i) => say(`  ${i + 1}) ${describeDisk(d)}${contentsOf(d) ? `  (holds ${contentsOf(d)})` : '  (empty)'}`));
    let disk: BlockDevice | undefined;
    while (!disk) {
      const a = (await rl.question(`Install to which disk? [1-${usable.length}] `)).trim();
      disk = /^\d+$/.test(a) ? usable[Number(a) - 1] : usable.find((d) => d.path === a);
      if (!disk) say(`  "${a}" is not one of 1-${usable.length}`);
    }
    const opts: InstallOptions = { ...preset, device: disk.path };
    const cfg = (await rl.question('Config file or http(s) URL to install with (Enter for none): ')).trim();
    if (cfg) opts.configUrl = cfg;
    else {
      mute(false);
      io.output.write('Password for the cairn user (not shown; Enter for none): ');
      mute(true);
      const password = (await rl.question('')).trim();
      mute(false);
      say('');
      let sshKey: string | undefined;
      if (!password) {
        sshKey = (await rl.question('SSH public key for cairn (ssh-ed25519 ..., github:USER; Enter for none): ')).trim() || undefined;
        if (!sshKey) say('  no password and no key: the installed node logs in on its console by itself until one is configured');
      }
      opts.configText = configFromAnswers({ password, sshKey });
    }
    const erase = contentsOf(disk);
    say(`cairn will erase ${describeDisk(disk)}${erase ? `, which holds ${erase}` : ''}, and install onto it.`);
    const yes = (await rl.question('Continue? [y/N] ')).trim().toLowerCase();
    if (yes !== 'y' && yes !== 'yes') return undefined;
    opts.force = true;
    return opts;
  } finally {
    rl.close();
  }
}
