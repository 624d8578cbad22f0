// A node context over a folder, with a recording exec and a scripted fetch.
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { NodeContext } from '../../src/init/context.js';
import type { Exec, ExecResult } from '../../src/init/exec.js';
import { execCommand } from '../../src/init/exec.js';
import { createLogger } from '../../src/init/log.js';
import { StatusStore } from '../../src/init/status.js';
import { Supervisor } from '../../src/init/supervisor.js';
import type { CairnConfig } from '../../src/config/types.js';

export interface Recorded {
  file: string;
  args: string[];
  input?: string;
}

export function put(root: string, path: string, content: string): void {
  const full = join(root, path);
  mkdirSync(dirname(full), { recursive: true });
  writeFileSync(full, content);
}

/** A node file system with the account files a Debian root has. */
export function nodeRoot(root: string): string {
  put(root, 'etc/passwd', 'root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\nwww-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\n');
  put(root, 'etc/group', 'root:x:0:\ndaemon:x:1:\nwww-data:x:33:\nadm:x:4:\n');
  put(root, 'etc/shadow', 'root:*:19000:0:99999:7:::\n');
  put(root, 'proc/sys/kernel/hostname', 'localhost\n');
  // a 2 GiB node whose kernel's transparent hugepages raised the reserve (as Debian's do)
  put(root, 'proc/meminfo', 'MemTotal:        2020964 kB\nMemFree:         1702164 kB\n');
  put(root, 'proc/sys/vm/min_free_kbytes', '45056\n');
  mkdirSync(join(root, 'sys/class/net'), { recursive: true });
  return root;
}

/** An SSH public key as ssh-keygen writes it: `ssh-ed25519 <blob> <comment>`, the blob made from `seed`. */
export function sshKey(seed: string, comment = seed): string {
  const type = Buffer.from('ssh-ed25519');
  const pub = createHash('sha256').update(seed).digest();
  const u32 = (n: number) => Buffer.from([n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255]);
  return `ssh-ed25519 ${Buffer.concat([u32(type.length), type, u32(pub.length), pub]).toString('base64')} ${comment}`;
}

/** An exec answer for chpasswd that does what it does: the cairn user's shadow entry gets a hash. */
export function chpasswdWrites(root: string) {
  return (file: string): Partial<ExecResult> | undefined => {
    if (file !== 'chpasswd') return undefined;
    const shadow = join(root, 'etc/shadow');
    writeFileSync(shadow, readFileSync(shadow, 'utf8').replace(/^cairn:[^:]*:/m, 'cairn:$6$test$hash:'));
    return { code: 0 };
  };
}

export function testContext(
  root: string,
  config: CairnConfig,
  opts: { exec?: (file: string, args: string[]) => Partial<ExecResult> | undefined; fetch?: (url: string, req: { method: string; headers: Record<string, string> }) => string; realExec?: boolean } = {},
) {
  const calls: Recorded[] = [];
  const lines: string[] = [];
  const log = createLogger({ debug: true, write: (s) => lines.push(s.trimEnd()) });
  const exec: Exec = async (file, args, o = {}) => {
    calls.push({ file, args, input: o.input });
    if (opts.realExec) return execCommand(file, args, o);
    const r = opts.exec?.(file, args) ?? {};
    return { code: 0, stdout: '', stderr: '', timedOut: false, ...r };
  };
  const status = new StatusStore(root, { version: '0.1.0-test', bootMode: 'state' });
  const services = new Supervisor({ logDir: join(root, 'var/log/cairn'), log, initialBackoffMs: 50, maxBackoffMs: 400 });
  const ctx: NodeContext = {
    root,
    exec,
    log,
    fetch: async (url, o = {}) => {
      if (!opts.fetch) throw new Error('network unreachable');
      return opts.fetch(url, { method: o.method ?? 'GET', headers: o.headers ?? {} });
    },
    cmdline: '',
    boot: { mode: 'state', version: '0.1.0-test' },
    version: '0.1.0-test',
    config,
    configProblems: [],
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin' },
    services,
    status,
  };
  ctx.retryDataSources = false;
  return { ctx, calls, lines };
}
