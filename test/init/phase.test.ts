import t from 'tap';
import { phase, runPhases } from '../../src/init/phase.js';
import { createLogger } from '../../src/init/log.js';
import { parseBootEnv } from '../../src/init/bootinfo.js';
import { unmountOrder, readShutdownRequest, requestShutdown } from '../../src/init/shutdown.js';
import { gettyArgs } from '../../src/init/services.js';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { put, testContext } from './support.js';
import { runShutdownCommand } from '../../src/cli/commands/node.js';
import { shutdown } from '../../src/init/shutdown.js';
import type { Supervisor } from '../../src/init/supervisor.js';

t.test('phases: one line each, failures and timeouts do not stop the boot', async (t) => {
  const lines: string[] = [];
  const log = createLogger({ debug: false, write: (s) => lines.push(s.trimEnd()) });
  const ran: string[] = [];
  const results = await runPhases(
    [
      phase('first', 1000, async () => {
        ran.push('first');
        return 'noted';
      }),
      phase('broken', 1000, async () => {
        throw new Error('no such thing\nsecond line');
      }),
      phase('slow', 50, () => new Promise(() => undefined)),
      phase('last', 1000, async () => {
        ran.push('last');
      }),
    ],
    {},
    log,
  );
  t.same(ran, ['first', 'last']);
  t.same(results.map((r) => [r.name, r.ok, r.detail]), [['first', true, 'noted'], ['broken', false, 'no such thing'], ['slow', false, 'did not finish within 50 ms'], ['last', true, undefined]]);
  t.match(lines[0], /^cairn: first ok \(\d+ ms\): noted$/);
  t.equal(lines[1], 'cairn: broken FAILED: no such thing');
  t.equal(lines[2], 'cairn: slow FAILED: did not finish within 50 ms');
});

t.test('a phase that times out is cancelled: its pending work does not go on to its side effect', async (t) => {
  const log = createLogger({ debug: false, write: () => undefined });
  const effects: string[] = [];
  let seen: AbortSignal | undefined;
  const results = await runPhases(
    [
      phase('slow', 50, async (_ctx, signal) => {
        seen = signal;
        await new Promise((r) => setTimeout(r, 200));
        signal.throwIfAborted();
        effects.push('started the service');
      }),
      phase('next', 1000, async (_ctx, signal) => {
        t.notOk(signal.aborted, "the next phase gets a signal of its own");
      }),
    ],
    {},
    log,
  );
  t.same(results.map((r) => [r.name, r.ok]), [['slow', false], ['next', true]]);
  t.ok(seen?.aborted, 'the signal was aborted on timeout');
  t.match(String((seen?.reason as Error | undefined)?.message), /did not finish within 50 ms/);
  await new Promise((r) => setTimeout(r, 300));
  t.same(effects, [], 'the side effect never happened');
});

t.test('exec kills its command when the signal is aborted', async (t) => {
  const { execCommand } = await import('../../src/init/exec.js');
  const ac = new AbortController();
  setTimeout(() => ac.abort(), 100);
  const start = Date.now();
  const r = await execCommand('sleep', ['10'], { signal: ac.signal });
  t.ok(Date.now() - start < 2000, 'returned at once');
  t.ok(r.aborted);
  t.equal(r.signal, 'SIGKILL');
  const before = await execCommand('sleep', ['10'], { signal: AbortSignal.abort() });
  t.ok(before.aborted, 'an aborted signal starts nothing');
});

t.test('boot.env from the first stage', async (t) => {
  t.same(parseBootEnv('CAIRN_BOOT_MODE=state\nCAIRN_BOOT_VERSION=0.2.0\nCAIRN_BOOT_TRIES_LEFT=2\nCAIRN_STATE_DEVICE=/dev/vda2\n'), { mode: 'state', version: '0.2.0', triesLeft: 2, stateDevice: '/dev/vda2' });
  t.same(parseBootEnv('CAIRN_BOOT_MODE=live\nCAIRN_BOOT_VERSION=0.1.0\nCAIRN_BOOT_TRIES_LEFT=\n'), { mode: 'live', version: '0.1.0', triesLeft: undefined, stateDevice: undefined });
});

t.test('shutdown: unmount order and the request to the init', async (t) => {
  const mounts = ['/dev/root / squashfs ro 0 0', 'proc /proc proc rw 0 0', 'tmpfs /run tmpfs rw 0 0', '/dev/vda2 /run/cairn/state ext4 rw 0 0', 'cairn-etc /etc overlay rw 0 0', '/dev/vda2 /var ext4 rw 0 0', '/dev/vda2 /cairn ext4 rw 0 0', 'tmpfs /tmp tmpfs rw 0 0'].join('\n');
  t.same(unmountOrder(mounts), ['/tmp', '/cairn', '/var', '/etc', '/run/cairn/state']);
  const root = t.testdir();
  put(root, 'run/cairn/init.pid', '4242\n');
  const sent: [number, string | number][] = [];
  requestShutdown(root, 'reboot', (pid, sig) => sent.push([pid, sig]));
  t.same(sent, [[4242, 0], [4242, 'SIGUSR1']], 'checks that the init is there, then signals it');
  t.equal(readFileSync(join(root, 'run/cairn/shutdown'), 'utf8'), `reboot\n${process.pid}\n`, 'the action, and who asks');
  t.same(readShutdownRequest(root), { action: 'reboot', requester: process.pid });
  put(root, 'run/cairn/shutdown', 'reboot');
  t.same(readShutdownRequest(root), { action: 'reboot', requester: undefined }, 'an older request without a pid');
  t.same(readShutdownRequest(t.testdir()), {}, 'none: a plain signal');
  t.throws(() => requestShutdown(t.testdir(), 'poweroff', () => undefined), /the cairn init is not running here/);
});

t.test('cairn reboot/poweroff: clear errors, a bounded wait, a message either way', async (t) => {
  const root = t.testdir();
  put(root, 'run/cairn/init.pid', 'garbage\n');
  t.throws(() => requestShutdown(root, 'reboot', () => undefined), /init\.pid holds "garbage", not the init's process id/);
  put(root, 'run/cairn/init.pid', '4242\n');
  const gone = Object.assign(new Error('kill ESRCH'), { code: 'ESRCH' });
  t.throws(() => requestShutdown(root, 'reboot', () => { throw gone; }), /the cairn init \(pid 4242 in \/run\/cairn\/init\.pid\) is not running/);
  const perm = Object.assign(new Error('kill EPERM'), { code: 'EPERM' });
  t.throws(() => requestShutdown(root, 'poweroff', () => { throw perm; }), /poweroff needs root \(sudo cairn poweroff\)/);

  // The init acknowledges in its status: the command says so and returns.
  const sent: (string | number)[] = [];
  const ack = (_pid: number, sig: NodeJS.Signals | 0) => {
    sent.push(sig);
    if (sig === 'SIGUSR1') setTimeout(() => put(root, 'run/cairn/status.json', JSON.stringify({ shutdown: { action: 'reboot', at: new Date().toISOString() } })), 150);
  };
  let start = Date.now();
  t.equal(await runShutdownCommand(root, 'reboot', 5000, ack), 'rebooting: the services are stopping; this session closes when the node goes down\n');
  t.ok(Date.now() - start < 1500, `returned as soon as the init acknowledged (${Date.now() - start} ms)`);
  t.same(sent, [0, 'SIGUSR1']);
  // An init that does not answer: still bounded, and the message says what to do.
  const quiet = t.testdir();
  put(quiet, 'run/cairn/init.pid', '4242\n');
  start = Date.now();
  t.match(await runShutdownCommand(quiet, 'poweroff', 300, () => undefined), /^poweroff requested, but the init has not started it within 0\.3 s .*watch the console\n$/);
  t.ok(Date.now() - start < 1500, `bounded (${Date.now() - start} ms)`);
});

t.test('shutdown: every step bounded; a hung service stop and a failed busybox still end in a reboot', async (t) => {
  const root = t.testdir();
  put(root, 'proc/mounts', '/dev/vda2 /var ext4 rw 0 0\n');
  put(root, 'proc/sysrq-trigger', '');
  const { ctx, calls, lines } = testContext(root, {}, { exec: (file) => (file === '/usr/bin/busybox' ? { code: 1, stderr: 'reboot: Operation not permitted' } : undefined) });
  ctx.services = { stopAll: () => new Promise(() => undefined) } as unknown as Supervisor;
  const signals: string[] = [];
  const start = Date.now();
  await shutdown(ctx, 'reboot', { servicesStopMs: 100, termMs: 50, killAll: (sig) => signals.push(sig) });
  t.ok(Date.now() - start < 2000, `done in ${Date.now() - start} ms`);
  t.equal(ctx.status.status.shutdown?.action, 'reboot', 'the status says a reboot is under way');
  t.same(signals, ['SIGTERM', 'SIGKILL'], 'every other process is ended (SSH sessions close)');
  t.same(calls.map((c) => [c.file, ...c.args]), [['sync'], ['umount', '/var'], ['sync'], ['/usr/bin/busybox', 'reboot', '-f']]);
  t.ok(lines.some((l) => /services did not all stop within 0\.1 s; going on/.test(l)));
  t.equal(readFileSync(join(root, 'proc/sysrq-trigger'), 'utf8'), 'b', 'the kernel is asked directly');
});

t.test('shutdown: the command that asked gets to finish (its ssh session sees its answer) before the services stop', async (t) => {
  const { spawn } = await import('node:child_process');
  const root = t.testdir();
  put(root, 'proc/mounts', '');
  const { ctx } = testContext(root, {}, { exec: () => ({ code: 0 }) });
  const child = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 600)']);
  let exitedAt = 0;
  child.on('exit', () => (exitedAt = Date.now()));
  let stoppedAt = 0;
  ctx.services = { stopAll: async () => void (stoppedAt = Date.now()) } as unknown as Supervisor;
  await shutdown(ctx, 'poweroff', { requester: child.pid, servicesStopMs: 100, termMs: 10, killAll: () => undefined });
  t.ok(exitedAt > 0 && stoppedAt >= exitedAt, `services stopped ${stoppedAt - exitedAt} ms after the requester exited`);
});

t.test('getty: serial consoles at serial speeds; autologin only when asked', async (t) => {
  t.same(gettyArgs('ttyS0', true), ['--noclear', '--autologin', 'cairn', '-L', 'ttyS0', '115200,57600,38400,9600', 'vt100']);
  t.same(gettyArgs('tty1', false), ['--noclear', 'tty1', 'linux']);
});

t.test('log lines go to every active console', async (t) => {
  const { consoleWriter } = await import('../../src/init/log.js');
  const root = t.testdir();
  put(root, 'sys/class/tty/console/active', 'ttyAMA0 tty1\n');
  put(root, 'dev/ttyAMA0', '');
  put(root, 'dev/tty1', '');
  consoleWriter(root)('cairn: hello\n');
  t.equal(readFileSync(join(root, 'dev/ttyAMA0'), 'utf8'), 'cairn: hello\n');
  t.equal(readFileSync(join(root, 'dev/tty1'), 'utf8'), 'cairn: hello\n');
});

t.test('a console that a getty hung up is opened again: the next lines still reach it', async (t) => {
  const { consoleWriter } = await import('../../src/init/log.js');
  const root = t.testdir();
  put(root, 'sys/class/tty/console/active', 'ttyS0\n');
  // A fake tty: descriptors opened before the hangup fail with EIO, as after vhangup().
  let hungUpBefore = 0;
  let next = 100;
  const written: string[] = [];
  const io = {
    open: () => next++,
    write: (fd: number, s: string) => {
      if (fd < hungUpBefore) throw Object.assign(new Error('EIO: i/o error, write'), { code: 'EIO' });
      written.push(s);
    },
    close: () => undefined,
  };
  const write = consoleWriter(root, io);
  write('cairn: before the getty\n');
  hungUpBefore = next; // the getty starts and hangs the console up
  write('cairn: network ok\n');
  write('cairn: boot complete 0.1.0\n');
  t.same(written, ['cairn: before the getty\n', 'cairn: network ok\n', 'cairn: boot complete 0.1.0\n'], 'no line lost after the hangup');
  t.equal(next, 102, 'the console was opened once more, not for every line');
});
