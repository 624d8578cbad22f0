// Talking to a booted node: over ssh with a throwaway key, and on its console.
import type { Vm } from '../../qemu/harness.js';
import { sshRun, waitForSsh, type SshKey } from '../../qemu/ssh.js';

export const BOOT_TIMEOUT = 420_000;

export class Node {
  constructor(
    readonly vm: Vm,
    readonly key?: SshKey,
  ) {}

  /** Runs a command over ssh as cairn (sudo for root); throws with its output when it fails. */
  async sh(command: string, opts: { ok?: boolean } = {}): Promise<string> {
    if (!this.key || !this.vm.sshPort) throw new Error('this node was booted without ssh');
    const r = await sshRun({ port: this.vm.sshPort, identity: this.key.privateKey, timeoutMs: 60_000 }, command);
    if (opts.ok !== false && r.code !== 0) throw new Error(`"${command}" exited ${r.code}: ${r.stderr || r.stdout}`);
    return r.stdout;
  }

  async waitSsh(): Promise<void> {
    if (!this.key || !this.vm.sshPort) throw new Error('this node was booted without ssh');
    const r = await waitForSsh({ port: this.vm.sshPort, identity: this.key.privateKey }, 120_000);
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
