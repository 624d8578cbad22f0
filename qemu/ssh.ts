/**
 * ssh into a VM through its forwarded port, with the host's OpenSSH client:
 * a throwaway key pair for a test, a command per session (optionally over
 * one shared connection, OpenSSH's ControlMaster), and a wait until sshd
 * answers.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { UserError } from '../src/errors.js';

export interface SshKey {
  /** Path of the private key (for -i). */
  privateKey: string;
  /** The public key line, for ssh_authorized_keys. */
  publicKey: string;
  /** Removes the key files. */
  remove(): Promise<void>;
}

/** A fresh ed25519 key pair in a temp folder. */
export async function makeSshKey(comment = 'cairn-test'): Promise<SshKey> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'cairn-ssh-'));
  const privateKey = path.join(dir, 'id_ed25519');
  try {
    await execa('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', comment, '-f', privateKey]);
  } catch (e) {
    await rm(dir, { recursive: true, force: true });
    if ((e as { code?: string }).code === 'ENOENT') throw new UserError('ssh-keygen is not installed', 'install it with: apt-get install openssh-client');
    throw e;
  }
  const publicKey = (await readFile(`${privateKey}.pub`, 'utf8')).trim();
  return { privateKey, publicKey, remove: () => rm(dir, { recursive: true, force: true }) };
}

export interface SshOptions {
  port: number;
  /** Default cairn. */
  user?: string;
  /** A private key file; without one only keys from the agent are tried, never a password. */
  identity?: string;
  /** Default 30 000 ms for the whole command. */
  timeoutMs?: number;
  /** Text for the command's stdin. */
  input?: string;
  /**
   * The socket of a connection shared by the commands (OpenSSH's
   * ControlMaster): the first command opens it and leaves it open in the
   * background, the next ones skip the key exchange and the login, which
   * take seconds on an emulated guest. One path per boot of the guest: a
   * connection does not survive a reboot.
   */
  controlPath?: string;
}

export interface SshResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** The ssh argv for one command (pure; exported for tests). */
export function sshArgs(opts: SshOptions, command: string): string[] {
  return [
    '-p', String(opts.port),
    '-o', 'BatchMode=yes',
    '-o', 'StrictHostKeyChecking=no',
    '-o', 'UserKnownHostsFile=/dev/null',
    '-o', 'LogLevel=ERROR',
    '-o', 'ConnectTimeout=10',
    ...(opts.identity ? ['-o', 'IdentitiesOnly=yes', '-i', opts.identity] : []),
    // a shared connection ends by itself when the guest stops answering (15 s) or after 2 idle minutes
    ...(opts.controlPath ? ['-o', 'ControlMaster=auto', '-o', `ControlPath=${opts.controlPath}`, '-o', 'ControlPersist=120', '-o', 'ServerAliveInterval=5', '-o', 'ServerAliveCountMax=3'] : []),
    `${opts.user ?? 'cairn'}@127.0.0.1`,
    command,
  ];
}

/** What ssh says when a shared connection is gone or broken (the command did not run over it). */
const MUX_FAILURE = /mux_client|control socket|ControlSocket|master (?:hung up|is dead|refused)/i;

/**
 * Runs one command over ssh; resolves with its exit code and output (code
 * 255: ssh itself failed). A shared connection that broke before the
 * command ran is dropped and the command run once over a new one.
 */
export async function sshRun(opts: SshOptions, command: string): Promise<SshResult> {
  const r = await sshOnce(opts, command);
  if (r.code === 255 && opts.controlPath && MUX_FAILURE.test(r.stderr)) {
    await rm(opts.controlPath, { force: true });
    return sshOnce(opts, command);
  }
  return r;
}

async function sshOnce(opts: SshOptions, command: string): Promise<SshResult> {
  const r = await execa('ssh', sshArgs(opts, command), { reject: false, timeout: opts.timeoutMs ?? 30_000, input: opts.input ?? '' });
  if (r.failed && r.exitCode === undefined) {
    if ((r as { code?: string }).code === 'ENOENT') throw new UserError('ssh is not installed', 'install it with: apt-get install openssh-client');
    return { code: 255, stdout: r.stdout, stderr: r.stderr || (r.shortMessage ?? 'ssh failed') };
  }
  return { code: r.exitCode ?? 255, stdout: r.stdout, stderr: r.stderr };
}

/** Retries `true` over ssh until it works or the time is up; returns the last result. */
export async function waitForSsh(opts: SshOptions, timeoutMs = 120_000): Promise<SshResult> {
  const until = Date.now() + timeoutMs;
  let last: SshResult = { code: 255, stdout: '', stderr: 'not tried' };
  while (Date.now() < until) {
    last = await sshRun({ ...opts, timeoutMs: Math.min(20_000, Math.max(1_000, until - Date.now())) }, 'true');
    if (last.code === 0) return last;
    await new Promise((r) => setTimeout(r, 1_000));
  }
  return last;
}
