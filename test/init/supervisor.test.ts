import t from 'tap';
import { chmodSync, existsSync, mkdirSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Supervisor } from '../../src/init/supervisor.js';
import { createLogger } from '../../src/init/log.js';
import { RotatingLog } from '../../src/init/rotating-log.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
async function until(what: () => boolean, ms = 10_000) {
  const end = Date.now() + ms;
  while (!what()) {
    if (Date.now() > end) throw new Error('timed out waiting');
    await sleep(20);
  }
}

function supervisor(dir: string, lines: string[] = []) {
  return new Supervisor({ logDir: dir, log: createLogger({ debug: false, write: (s) => lines.push(s) }), initialBackoffMs: 100, maxBackoffMs: 800, burst: 4, windowMs: 60_000, stableAfterMs: 60_000 });
}

t.test('a crashing service is restarted with exponential back-off', async (t) => {
  const dir = t.testdir();
  const lines: string[] = [];
  const sv = supervisor(dir, lines);
  t.teardown(() => sv.stopAll());
  const starts: number[] = [];
  const marker = join(dir, 'starts');
  sv.start({ name: 'crashy', command: '/bin/sh', args: ['-c', `echo started >> ${marker}; echo oops >&2; exit 3`] });
  await until(() => (sv.get('crashy')?.restarts ?? 0) >= 4, 15_000);
  starts.push(...readFileSync(marker, 'utf8').trim().split('\n').map(() => 1));
  t.ok(starts.length >= 4, 'restarted');
  const delays = lines.filter((l) => l.includes('crashy exited')).map((l) => Number(/restarting in ([\d.]+) s/.exec(l)?.[1]));
  t.same(delays.slice(0, 4), [0.1, 0.2, 0.4, 0.8], 'delays double');
  t.match(lines[0], /service crashy exited \(code 3\)/);
  const log = readFileSync(join(dir, 'crashy.log'), 'utf8');
  t.match(log, /oops/, 'stderr in the service log');
  t.match(log, /exited \(code 3\)/);
});

t.test('the rate limit holds a service that restarts too often at the longest delay', async (t) => {
  const dir = t.testdir();
  const lines: string[] = [];
  const sv = new Supervisor({ logDir: dir, log: createLogger({ debug: false, write: (s) => lines.push(s) }), initialBackoffMs: 100, maxBackoffMs: 500, burst: 3, windowMs: 60_000, stableAfterMs: 0 });
  t.teardown(() => sv.stopAll());
  sv.start({ name: 'flappy', command: '/bin/false', args: [] });
  await until(() => (sv.get('flappy')?.restarts ?? 0) >= 4, 10_000);
  const delays = lines.map((l) => Number(/restarting in ([\d.]+) s/.exec(l)?.[1]));
  t.same(delays.slice(0, 4), [0.1, 0.1, 0.1, 0.5], 'stable runs reset the back-off, but the burst limit still applies');
});

t.test('stop: SIGTERM, then SIGKILL after the timeout; stopAll goes in reverse order', async (t) => {
  const dir = t.testdir();
  const order = join(dir, 'order');
  const sv = supervisor(dir);
  sv.start({ name: 'first', command: '/bin/sh', args: ['-c', `trap 'echo first >> ${order}; exit 0' TERM; while :; do sleep 0.05; done`] });
  sv.start({ name: 'second', command: '/bin/sh', args: ['-c', `trap 'echo second >> ${order}; exit 0' TERM; while :; do sleep 0.05; done`] });
  sv.start({ name: 'stubborn', command: '/bin/sh', args: ['-c', "trap '' TERM; while :; do sleep 0.05; done"], stopTimeoutMs: 300 });
  await until(() => sv.list().every((s) => s.state === 'running'));
  await sleep(200);
  const start = Date.now();
  await sv.stopAll();
  t.ok(Date.now() - start >= 300, 'waited for the stubborn one');
  t.same(sv.list().map((s) => [s.name, s.state]), [['first', 'stopped'], ['second', 'stopped'], ['stubborn', 'stopped']]);
  t.equal(sv.get('stubborn')?.lastExit?.signal, 'SIGKILL');
  t.equal(readFileSync(order, 'utf8'), 'second\nfirst\n');
  t.equal(sv.get('first')?.restarts, 0, 'a stopped service is not restarted');
});

t.test('a service that cannot start is retried, not fatal', async (t) => {
  const dir = t.testdir();
  const sv = supervisor(dir);
  t.teardown(() => sv.stopAll());
  sv.start({ name: 'missing', command: '/nonexistent/binary', args: [] });
  await until(() => (sv.get('missing')?.restarts ?? 0) >= 1);
  t.equal(sv.get('missing')?.state === 'backoff' || sv.get('missing')?.state === 'running', true);
  t.match(readFileSync(join(dir, 'missing.log'), 'utf8'), /cannot start: spawn \/nonexistent\/binary ENOENT/);
});

t.test('logs rotate by size and keep a fixed number of generations', async (t) => {
  const dir = t.testdir();
  const log = new RotatingLog(join(dir, 'svc.log'), 100, 2);
  for (let i = 0; i < 10; i++) log.write(`${String(i).repeat(40)}\n`);
  t.same(readdirSync(dir).sort(), ['svc.log', 'svc.log.1', 'svc.log.2']);
  t.ok(readFileSync(join(dir, 'svc.log'), 'utf8').length <= 100);
  t.match(readFileSync(join(dir, 'svc.log'), 'utf8'), /9{40}/);
  writeFileSync(join(dir, 'other'), '');
});

/** Whether a process is alive (signal 0). */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

t.test('a persistently crashing service is restarted 1 s, 2 s, 4 s apart (real timings)', async (t) => {
  const dir = t.testdir();
  const lines: string[] = [];
  const sv = new Supervisor({ logDir: dir, log: createLogger({ debug: false, write: (s) => lines.push(s) }), initialBackoffMs: 1000, maxBackoffMs: 60_000, burst: 10, windowMs: 300_000, stableAfterMs: 60_000 });
  t.teardown(() => sv.stopAll());
  const marker = join(dir, 'starts');
  sv.start({ name: 'crashy', command: '/bin/sh', args: ['-c', `date +%s%N >> ${marker}; exit 1`] });
  await until(() => existsSync(marker) && readFileSync(marker, 'utf8').trim().split('\n').length >= 4, 15_000);
  await sv.stop('crashy');
  const starts = readFileSync(marker, 'utf8').trim().split('\n').map((n) => Number(BigInt(n) / 1_000_000n));
  const gaps = starts.slice(1, 4).map((at, i) => at - starts[i]!);
  for (const [i, want] of [1000, 2000, 4000].entries()) {
    t.ok(gaps[i]! >= want - 20 && gaps[i]! <= want + 400, `restart ${i + 1} came ${gaps[i]} ms after the start before it (want ${want} ms)`);
  }
  t.ok(gaps[1]! > gaps[0]! * 1.7 && gaps[2]! > gaps[1]! * 1.7, `the gaps double: ${gaps.join(', ')} ms`);
});

t.test("the exit is seen even while a forked child holds the service's stdout", async (t) => {
  const dir = t.testdir();
  const lines: string[] = [];
  const sv = supervisor(dir, lines);
  const pids = join(dir, 'pids');
  // The service forks a sleep that inherits stdout, then exits at once.
  sv.start({ name: 'forker', command: '/bin/sh', args: ['-c', `sleep 30 & echo $! >> ${pids}; exit 4`] });
  const start = Date.now();
  await until(() => (sv.get('forker')?.restarts ?? 0) >= 2, 5_000);
  const took = Date.now() - start;
  await until(() => readFileSync(pids, 'utf8').trim().split('\n').length >= 2);
  const sleeps = readFileSync(pids, 'utf8').trim().split('\n').map(Number);
  t.ok(took < 2_000, `two exits seen and restarted within ${took} ms, with the first sleep still holding stdout`);
  t.match(lines[0], /service forker exited \(code 4\); restarting in 0\.1 s/);
  t.ok(alive(sleeps[0]!), "the forked child is still running (it is not the service's exit)");
  await sv.stopAll();
  await until(() => sleeps.every((p) => !alive(p)), 2_000);
  t.pass('stopping the service also ended the children its earlier runs left');
});

t.test('stop ends the whole process group, also children a service left behind', async (t) => {
  const dir = t.testdir();
  const sv = supervisor(dir);
  const pids = join(dir, 'pids');
  sv.start({ name: 'parent', command: '/bin/sh', args: ['-c', `sleep 30 & echo $! >> ${pids}; trap 'exit 0' TERM; while :; do sleep 0.05; done`] });
  t.teardown(() => sv.stopAll());
  await until(() => existsSync(pids));
  const child = Number(readFileSync(pids, 'utf8').trim());
  t.ok(alive(child), 'the child runs');
  const start = Date.now();
  await sv.stop('parent');
  t.ok(Date.now() - start < 2_000, 'stopped promptly');
  await until(() => !alive(child), 2_000);
  t.notOk(alive(child), 'the child of the service was stopped with it');
  t.equal(sv.get('parent')?.state, 'stopped');
});

t.test('stop gives up on a process that SIGKILL does not end, after a bounded wait', async (t) => {
  const dir = t.testdir();
  const lines: string[] = [];
  const sv = new Supervisor({ logDir: dir, log: createLogger({ debug: false, write: (s) => lines.push(s) }), killWaitMs: 300 });
  // The supervisor cannot be shown a real unkillable process; a group it may not signal stands in (the kill fails, nothing exits).
  const realKill = process.kill;
  sv.start({ name: 'stuck', command: '/bin/sh', args: ['-c', "trap '' TERM; while :; do sleep 0.05; done"], stopTimeoutMs: 200 });
  await until(() => sv.get('stuck')?.state === 'running');
  const pid = sv.get('stuck')!.pid!;
  process.kill = ((p: number, sig?: string | number) => (p === -pid ? true : realKill(p, sig))) as typeof process.kill;
  t.teardown(() => {
    process.kill = realKill;
    realKill(-pid, 'SIGKILL');
  });
  const start = Date.now();
  await sv.stop('stuck');
  const took = Date.now() - start;
  process.kill = realKill;
  t.ok(took >= 500 && took < 1500, `stop returned after the stop timeout and the kill wait (${took} ms)`);
  t.equal(sv.get('stuck')?.state, 'stopped');
  t.ok(lines.some((l) => /did not die within 300 ms of SIGKILL; left behind/.test(l)), 'and said so');
});

t.test('service logs: folder 0750, files 0640, also old files and after rotation; argv redacted', async (t) => {
  const dir = join(t.testdir(), 'log');
  mkdirSync(dir, { mode: 0o755 });
  chmodSync(dir, 0o755);
  writeFileSync(join(dir, 'svc.log'), 'old\n');
  chmodSync(join(dir, 'svc.log'), 0o644);
  writeFileSync(join(dir, 'svc.log.1'), 'older\n');
  chmodSync(join(dir, 'svc.log.1'), 0o666);
  const log = new RotatingLog(join(dir, 'svc.log'), 100, 2);
  t.equal(statSync(dir).mode & 0o777, 0o750, 'folder 0750');
  t.equal(statSync(join(dir, 'svc.log')).mode & 0o777, 0o640, 'an old file tightened');
  t.equal(statSync(join(dir, 'svc.log.1')).mode & 0o777, 0o640, 'an old generation tightened');
  for (let i = 0; i < 10; i++) log.write(`${String(i).repeat(40)}\n`);
  t.same(readdirSync(dir).sort(), ['svc.log', 'svc.log.1', 'svc.log.2']);
  for (const f of readdirSync(dir)) t.equal(statSync(join(dir, f)).mode & 0o777, 0o640, `${f} 0640 after rotation`);
  const sv = supervisor(dir);
  sv.start({ name: 'k3s', command: '/bin/true', args: ['agent', '--token', 'S3CRET', '--agent-token=S3CRET2', '-t', 'S3CRET3'], restart: 'never' });
  await until(() => sv.get('k3s')?.state === 'exited');
  const text = readFileSync(join(dir, 'k3s.log'), 'utf8');
  t.match(text, /starting \/bin\/true agent --token <redacted> --agent-token=<redacted> -t <redacted>/);
  t.notMatch(text, /S3CRET/);
  t.equal(statSync(join(dir, 'k3s.log')).mode & 0o777, 0o640);
});

t.test('the boot log: 0640 in a 0750 folder', async (t) => {
  const dir = join(t.testdir(), 'cairn');
  mkdirSync(dir, { mode: 0o755 });
  chmodSync(dir, 0o755);
  const logger = createLogger({ debug: false, write: () => undefined });
  logger.info('before the file');
  logger.toFile(join(dir, 'boot.log'));
  logger.info('after');
  t.equal(statSync(dir).mode & 0o777, 0o750);
  t.equal(statSync(join(dir, 'boot.log')).mode & 0o777, 0o640);
  t.match(readFileSync(join(dir, 'boot.log'), 'utf8'), /before the file\n.*after\n/);
});
