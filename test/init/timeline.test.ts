import t from 'tap';
import { mkdtempSync, readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { bootClock, processStartMs, renderBootSvg, stage1Times, timelineOf, timelineRows, type BootTimeline } from '../../src/init/timeline.js';
import { phase, runPhases } from '../../src/init/phase.js';
import { createLogger } from '../../src/init/log.js';
import { Supervisor } from '../../src/init/supervisor.js';
import { renderStatus } from '../../src/cli/commands/node.js';
import type { NodeStatus } from '../../src/init/status.js';

const proc = () => {
  const d = mkdtempSync(join(tmpdir(), 'cairn-proc-'));
  mkdirSync(join(d, 'self'));
  return d;
};

t.test('the boot clock starts at /proc/uptime and runs on', async (t) => {
  const d = proc();
  writeFileSync(join(d, 'uptime'), '12.34 3.21\n');
  const clock = bootClock(d);
  const a = clock();
  t.ok(a >= 12340 && a < 12340 + 500, `starts at 12.34 s (${a})`);
  await new Promise((r) => setTimeout(r, 120));
  t.ok(clock() - a >= 100, 'advances with the monotonic clock');
});

t.test("a process' start time from /proc/<pid>/stat, even with spaces and a ')' in its name", async (t) => {
  const d = proc();
  // field 22 (starttime) is 1234 ticks of 1/100 s
  const after = ['S', '1', '1', '1', '0', '-1', '4194560', '100', '0', '0', '0', '5', '3', '0', '0', '20', '0', '1', '0', '1234', '123456'];
  writeFileSync(join(d, 'self', 'stat'), `1 (node ) x) ${after.join(' ')}\n`);
  t.equal(processStartMs(d), 12340);
  t.equal(processStartMs(join(d, 'nowhere')), undefined, 'no /proc: no time');
  t.ok((processStartMs('/proc') ?? -1) >= 0, 'this process has one');
});

t.test("the first stage's times from boot.env", async (t) => {
  t.same(stage1Times('CAIRN_BOOT_MODE=live\nCAIRN_STAGE1_START=1.52\nCAIRN_STAGE1_FOUND=2.07\nCAIRN_STAGE1_END=3.10\n'), { stage1StartMs: 1520, stage1FoundMs: 2070, stage1EndMs: 3100 });
  t.same(stage1Times('CAIRN_STAGE1_START=\nCAIRN_STAGE1_END=x\n'), { stage1StartMs: undefined, stage1FoundMs: undefined, stage1EndMs: undefined }, 'empty or bad values are no times');
});

t.test('phases and services record their start on the boot clock', async (t) => {
  let now = 5000;
  const clock = () => (now += 100);
  const results = await runPhases(
    [phase('one', 1000, async () => undefined), phase('two', 1000, async () => { throw new Error('no'); })],
    {},
    createLogger({ debug: false, write: () => undefined }),
    undefined,
    clock,
  );
  t.same(results.map((r) => [r.name, r.startMs]), [['one', 5100], ['two', 5200]]);

  const logDir = mkdtempSync(join(tmpdir(), 'cairn-sv-'));
  let at = 9000;
  const sv = new Supervisor({ logDir, log: createLogger({ debug: false, write: () => undefined }), initialBackoffMs: 20, clock: () => (at += 1000) });
  sv.start({ name: 'quick', command: 'sh', args: ['-c', 'exit 1'], restart: 'always' });
  t.equal(sv.get('quick')?.firstStartMs, 10000);
  await new Promise((r) => setTimeout(r, 300));
  t.ok((sv.get('quick')?.restarts ?? 0) >= 1, 'it was started again');
  t.equal(sv.get('quick')?.firstStartMs, 10000, 'a restart keeps the first start');
  await sv.stopAll();
});

/** The tags left open or closed out of order (a stand-in for an XML parser: the SVG has no comments, CDATA or entities but the five). */
function unbalanced(xml: string): string[] {
  const stack: string[] = [];
  const wrong: string[] = [];
  for (const m of xml.matchAll(/<(\/?)([a-zA-Z]+)[^>]*?(\/?)>/g)) {
    if (m[3]) continue;
    if (!m[1]) stack.push(m[2]!);
    else if (stack.pop() !== m[2]) wrong.push(m[2]!);
  }
  return [...wrong, ...stack];
}

const timeline: BootTimeline = {
  stage1StartMs: 1500,
  stage1FoundMs: 2000,
  stage1EndMs: 3000,
  initStartMs: 3100,
  initReadyMs: 6100,
  phases: [
    { name: 'mounts', startMs: 6200, endMs: 6400, ok: true },
    { name: 'a<b & "c"', startMs: 6400, endMs: 8400, ok: false },
  ],
  services: [{ name: 'k3s', startMs: 8000 }],
  completeMs: 9000,
};

t.test('the timeline of a status: only phases with a start, their end from their length', async (t) => {
  const st = {
    times: { stage1StartMs: 1500, completeMs: 9000 },
    phases: [{ name: 'mounts', ok: true, ms: 200, startMs: 6200 }, { name: 'old', ok: true, ms: 5 }],
    services: [{ name: 'k3s', state: 'running' as const, restarts: 0, firstStartMs: 8000 }, { name: 'sshd', state: 'running' as const, restarts: 0 }],
  };
  t.same(timelineOf(st), { stage1StartMs: 1500, completeMs: 9000, phases: [{ name: 'mounts', startMs: 6200, endMs: 6400, ok: true }], services: [{ name: 'k3s', startMs: 8000 }] });
});

t.test('the chart: a row per span in time order, bars where the times say, the failed phase in its colour', async (t) => {
  const rows = timelineRows(timeline);
  t.same(rows.map((r) => [r.label, r.startMs, r.endMs, r.kind]), [
    ['kernel', 0, 1500, 'kernel'],
    ['first stage: find the system', 1500, 2000, 'stage1'],
    ['first stage: mount it, switch root', 2000, 3000, 'stage1'],
    ['init: node starts, loads the init', 3100, 6100, 'node'],
    ['mounts', 6200, 6400, 'phase'],
    ['a<b & "c"', 6400, 8400, 'failed'],
    ['service k3s', 8000, 9000, 'service'],
  ]);
  const svg = renderBootSvg(timeline, 'test boot');
  const bars = [...svg.matchAll(/<rect class="(\w+)" x="([\d.]+)" y="[\d.]+" width="([\d.]+)"/g)].map((m) => [m[1], Number(m[2]), Number(m[3])]);
  // 40 px a second (a boot under a minute), the axis at x = 260
  t.same(bars, [
    ['kernel', 260, 60],
    ['stage1', 320, 20],
    ['stage1', 340, 40],
    ['node', 384, 120],
    ['phase', 508, 8],
    ['failed', 516, 80],
    ['service', 580, 40],
  ]);
  t.match(svg, /^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg"/);
  t.match(svg, />a&lt;b &amp; &quot;c&quot;</, 'labels are escaped');
  t.notMatch(svg, /a<b/, 'no raw markup from a name');
  t.match(svg, /test boot: boot complete at 9\.0 s/);
  t.match(svg, /<line x1="620" y1="46" x2="620"[^>]*stroke-dasharray/, 'the boot-complete line at 9 s');
  t.equal((svg.match(/<text [^>]*>\d+ s<\/text>/g) ?? []).length, 10, 'an axis tick for each second, 0 to 9');
  t.same(unbalanced(svg), [], 'every element closed, in order');
});

t.test('cairn status: when each phase started', async (t) => {
  const st = { version: '1', bootMode: 'live', bootedAt: '', bootComplete: true, phases: [{ name: 'mounts', ok: true, ms: 200, startMs: 6200 }, { name: 'old', ok: true, ms: 5 }], services: [], configProblems: [], history: [], updatedAt: '' } as NodeStatus;
  const out = renderStatus(st);
  t.match(out, /^PHASE\s+AT\s+MS\s+RESULT$/m);
  t.match(out, /^mounts\s+6\.2s\s+200\s+ok$/m);
  t.match(out, /^old\s+-\s+5\s+ok$/m);
});

t.test('cairn status --plot: an SVG from the node status; a clear error without boot times or a writable file', async (t) => {
  const root = mkdtempSync(join(tmpdir(), 'cairn-root-'));
  mkdirSync(join(root, 'run/cairn'), { recursive: true });
  const st = { version: '1.2', bootMode: 'live', bootedAt: '', bootComplete: true, phases: timeline.phases.map((p) => ({ name: p.name, ok: p.ok, ms: p.endMs - p.startMs, startMs: p.startMs })), services: [{ name: 'k3s', state: 'running', restarts: 0, firstStartMs: 8000 }], configProblems: [], history: [], updatedAt: '', times: { stage1StartMs: 1500, completeMs: 9000 } };
  writeFileSync(join(root, 'run/cairn/status.json'), JSON.stringify(st));
  const cli = (...args: string[]) => execa('node', ['dist/cairn.js', 'status', '--root', root, ...args], { reject: false });
  const out = join(root, 'boot.svg');
  const r = await cli('--plot', out);
  t.equal(r.exitCode, 0, r.stderr);
  t.equal(r.stdout, `boot timeline: ${out}`);
  const svg = readFileSync(out, 'utf8');
  t.match(svg, /cairn 1\.2 \(live boot\): boot complete at 9\.0 s/);
  t.equal((svg.match(/<rect class="/g) ?? []).length, 4, 'kernel, two phases, k3s');
  const bad = await cli('--plot', join(root, 'no/such/dir/boot.svg'));
  t.equal(bad.exitCode, 1);
  t.match(bad.stderr, /cannot write the boot timeline to .*no\/such\/dir\/boot\.svg: ENOENT.*\n.*give --plot a file in a folder that exists/s);
  writeFileSync(join(root, 'run/cairn/status.json'), JSON.stringify({ ...st, times: undefined }));
  const old = await cli('--plot', out);
  t.equal(old.exitCode, 1);
  t.match(old.stderr, /has no boot times/);
});
