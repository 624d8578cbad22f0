import t from 'tap';
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
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
