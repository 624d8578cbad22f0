// Talking to a booted node: over ssh with a throwaway key, and on its console.
import { join } from 'node:path';
import type { Vm } from '../../qemu/harness.js';
import { sshRun, waitForSsh, type SshKey } from '../../qemu/ssh.js';

export const BOOT_TIMEOUT = 420_000;

/** The assertions these tests use (a tap subtest has them all). */
export interface Check {
  ok(v: unknown, ...m: [] | [string]): unknown;
  notOk(v: unknown, ...m: [] | [string]): unknown;
  pass(...m: [] | [string]): unknown;
  equal(a: unknown, b: unknown, ...m: [] | [string]): unknown;
  same(a: unknown, b: unknown, ...m: [] | [string]): unknown;
  match(a: unknown, re: RegExp, ...m: [] | [string]): unknown;
  notMatch(a: unknown, re: RegExp, ...m: [] | [string]): unknown;
}


/**
 * A console line, also when it follows a login prompt or a shell prompt printed without a newline,
 * or lands between the two writes of agetty's `<hostname> login: ` prompt.
 */
export function L(re: RegExp): RegExp {
  // Also after a shell prompt on a console that logged in by itself (bash's bracketed-paste codes around it).
  return new RegExp(`(?:^|login: |\\$ |[A-Za-z0-9.-]+ )(?:\\x1b\\[\\?2004[hl])*${re.source}`, 'm');
}
export const line = (source: string): RegExp => L(new RegExp(source));
/**
 * Waits for the boot's last line and checks it exactly: `boot complete 0.1.0`,
 * or with the failed phases named when a test expects some.
 */
export async function bootComplete(tt: Check, vm: Vm, timeoutMs = BOOT_TIMEOUT, failing: string[] = [], opts: { from?: 'start' } = {}): Promise<void> {
  const r = await vm.waitFor(L(/cairn: boot complete .*$/), timeoutMs, opts);
  const want = `cairn: boot complete 0.1.0${failing.length ? ` (failed phases: ${failing.join(', ')})` : ''}`;
  tt.equal(r.match.slice(r.match.indexOf('cairn: ')), want, 'the boot completed as expected');
}

export const PHASES = ['mounts', 'etc', 'config', 'grow', 'initrd-keys', 'console', 'init-cmd', 'network', 'time', 'data-sources', 'install', 'users', 'boot-cmd', 'services', 'runtime', 'run-cmd', 'mark-good'];

/** Every phase printed its line, in order, and the boot completed. */
export async function bootsThrough(tt: Check, vm: Vm, failing: string[] = [], opts: { from?: 'start' } = {}): Promise<void> {
  for (const [i, p] of PHASES.entries()) {
    const r = await vm.waitFor(line(`cairn: ${p} (ok \\(\\d+ ms\\).*|FAILED: .*)$`), BOOT_TIMEOUT, i === 0 ? opts : {});
    const ok = r.match.includes(' ok (');
    tt.ok(failing.includes(p) ? !ok : ok, `${p}: ${r.match.slice(7)}`);
  }
  await bootComplete(tt, vm, 60_000, failing);
}

export class Node {
  /** Bumped by every waitSsh(): the node (re)booted, so its commands share a new connection. */
  private boots = 0;

  constructor(
    readonly vm: Vm,
    readonly key?: SshKey,
  ) {}

  private get controlPath(): string {
    return join(this.vm.dir, `ssh-${this.boots}`);
  }

  /** Runs a command over ssh as cairn (sudo for root); throws with its output when it fails. */
  async sh(command: string, opts: { ok?: boolean } = {}): Promise<string> {
    if (!this.key || !this.vm.sshPort) throw new Error('this node was booted without ssh');
    const r = await sshRun({ port: this.vm.sshPort, identity: this.key.privateKey, timeoutMs: 60_000, controlPath: this.controlPath }, command);
    if (opts.ok !== false && r.code !== 0) throw new Error(`"${command}" exited ${r.code}: ${r.stderr || r.stdout}`);
    return r.stdout;
  }

  async waitSsh(): Promise<void> {
    if (!this.key || !this.vm.sshPort) throw new Error('this node was booted without ssh');
    this.boots++;
    const r = await waitForSsh({ port: this.vm.sshPort, identity: this.key.privateKey, controlPath: this.controlPath }, 120_000);
    if (r.code !== 0) throw new Error(`ssh did not come up: ${r.stderr}`);
  }

  /** Logs in on the serial console and runs commands; returns what they printed. */
  async consoleLogin(user: string, password: string | undefined, hostname: string): Promise<void> {
    this.vm.sendLine('');
    await this.vm.waitFor(new RegExp(`${hostname} login: $`, 'm'), 60_000);
    this.vm.sendLine(user);
    if (password !== undefined) {
      await this.vm.waitFor('Password:', 30_000);
      this.vm.sendLine(password);
    }
    await this.vm.waitFor(/\$ $/m, 60_000);
  }

  private n = 0;
  async consoleRun(command: string): Promise<string> {
    const tag = `CAIRN-TEST-${++this.n}`;
    this.vm.sendLine(`echo ${tag}-BEGIN; ${command}; echo ${tag}-END`);
    const end = await this.vm.waitFor(new RegExp(`^${tag}-END`, 'm'), 60_000);
    const text = this.vm.output.slice(0, end.index);
    return text.slice(text.lastIndexOf(`${tag}-BEGIN`) + tag.length + 7).replace(/^\n/, '');
  }
}
