// The boot decisions (src/boot/state.ts) and their sh twin (src/boot/shell.ts)
// against the shared table; GRUB's twin is booted in grub-choose.test.ts.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { renderGrubEnv } from '../../src/boot/grubenv.js';
import { shellStateFunctions } from '../../src/boot/shell.js';
import { abandon, choose, envToState, keep, onBoot, parseState, promote, renderState, startTrial, writeState, type BootState } from '../../src/boot/state.js';
import { BOOT_CASES, caseFiles, type BootCase } from './boot-cases.js';

function layout(dir: string, c: BootCase): { sys: string; env: string } {
  const sys = join(dir, 'system');
  for (const f of caseFiles(c)) {
    mkdirSync(dirname(join(sys, f)), { recursive: true });
    writeFileSync(join(sys, f), 'x');
  }
  mkdirSync(sys, { recursive: true });
  const env = join(dir, 'grubenv');
  writeFileSync(env, renderGrubEnv(c.env));
  return { sys, env };
}

const bootable = (c: BootCase) => (v: string) => c.present[v] === 'all';

t.test('TypeScript: every case of the table', async (t) => {
  for (const c of BOOT_CASES) {
    const s = envToState(c.env);
    t.ok(s, `${c.name}: a state`);
    const r = choose(s!, bootable(c));
    t.same({ version: r.version, kind: r.kind }, c.want, `${c.name}: boots ${c.want.version ?? 'nothing'}`);
    t.same(parseState(renderState(r.state)), c.after, `${c.name}: the state saved`);
  }
  t.equal(envToState({ cairn_trial: '2.0' }), undefined, 'no active version: no state');
});

// The first stage runs busybox sh; the host's busybox runs the same functions.
const shells = ['sh', 'busybox'].filter((s) => spawnSync(s === 'busybox' ? 'busybox' : 'sh', s === 'busybox' ? ['sh', '-c', 'true'] : ['-c', 'true']).status === 0);

function runShell(shell: string, script: string, cwd: string): { stdout: string; status: number | null; stderr: string } {
  const full = `${shellStateFunctions()}\n${script}`;
  const r = shell === 'busybox' ? spawnSync('busybox', ['sh', '-c', full], { cwd, encoding: 'utf8' }) : spawnSync('sh', ['-c', full], { cwd, encoding: 'utf8' });
  return { stdout: r.stdout, status: r.status, stderr: r.stderr };
}

t.test('sh (the first stage): every case of the table', async (t) => {
  t.ok(shells.includes('busybox'), 'busybox is on the host (scripts/setup.sh installs busybox-static)');
  for (const shell of shells) {
    for (const c of BOOT_CASES) {
      const dir = t.testdir();
      const { sys, env } = layout(dir, c);
      const r = runShell(shell, `cairn_choose "${sys}" "${env}" && echo "boot=[$CHOSEN] kind=[$CHOSEN_KIND]"`, dir);
      t.equal(r.status, 0, `${shell}: ${c.name}: ran (${r.stderr.trim()})`);
      t.equal(r.stdout.trim(), `boot=[${c.want.version ?? ''}] kind=[${c.want.kind ?? ''}]`, `${shell}: ${c.name}`);
      const saved = readFileSync(env);
      t.equal(saved.length, 1024, `${shell}: ${c.name}: one 1024-byte block`);
      t.same(parseState(saved), c.after, `${shell}: ${c.name}: the state saved`);
    }
  }
});

t.test('sh writes the block byte for byte as renderState does', async (t) => {
  const s: BootState = { active: '1.0', fallback: '0.9', trial: '2.0', tries: 2, deadline: 300, failed: '1.5' };
  for (const shell of shells) {
    const dir = t.testdir();
    const env = join(dir, 'grubenv');
    const r = runShell(shell, `S_ACTIVE=1.0 S_FALLBACK=0.9 S_TRIAL=2.0 S_TRIES=2 S_DEADLINE=300 S_FAILED=1.5; cairn_state_save "${env}"`, dir);
    t.equal(r.status, 0, r.stderr);
    t.same(readFileSync(env), renderState(s), `${shell}: identical`);
  }
});

t.test('the state is rewritten in place: same inode, same blocks (GRUB reads the file system without its journal)', async (t) => {
  const first: BootState = { active: '1.0' };
  const next: BootState = { active: '1.0', fallback: '0.9', trial: '2.0', tries: 3, deadline: 900 };
  const dir = t.testdir();
  const env = join(dir, 'grubenv');
  writeState(env, first);
  const ino = statSync(env).ino;
  writeState(env, next);
  t.equal(statSync(env).ino, ino, 'TypeScript: the same inode');
  t.same(readFileSync(env), renderState(next));
  t.same(readdirSync(dir), ['grubenv'], 'nothing left beside it');
  for (const shell of shells) {
    const r = runShell(shell, `S_ACTIVE=2.0 S_FALLBACK=1.0 S_TRIAL= S_TRIES= S_DEADLINE= S_FAILED=; cairn_state_save "${env}"`, dir);
    t.equal(r.status, 0, r.stderr);
    t.equal(statSync(env).ino, ino, `${shell}: the same inode`);
    t.same(readFileSync(env), renderState({ active: '2.0', fallback: '1.0' }), `${shell}: the new state`);
    t.same(readdirSync(dir), ['grubenv'], `${shell}: nothing left beside it`);
  }
  // a block of another size (not one the builder made) is replaced whole
  writeFileSync(env, 'short');
  writeState(env, next);
  t.same(readFileSync(env), renderState(next), 'a short file is replaced');
  // every pointer fits the first sector, so a torn write cannot mix two states
  const longest = 'v'.repeat(64);
  const full = renderState({ active: longest, fallback: longest, trial: longest, tries: 9, deadline: 99999, failed: longest });
  t.match(full.subarray(512).toString('latin1'), /^#+$/, 'the second sector is padding even with the longest names');
});

t.test('giving a version up: TypeScript and sh agree', async (t) => {
  const cases: { name: string; s: BootState; v: string; want: BootState | 'unchanged' }[] = [
    { name: 'a trial loses its tries', s: { active: '1.0', trial: '2.0', tries: 2, deadline: 60 }, v: '2.0', want: { active: '1.0', trial: '2.0', tries: 0, deadline: 60 } },
    { name: 'a broken active version hands over to the fallback', s: { active: '2.0', fallback: '1.0' }, v: '2.0', want: { active: '1.0', failed: '2.0' } },
    { name: 'a broken active version without a fallback: nothing to do', s: { active: '2.0' }, v: '2.0', want: 'unchanged' },
  ];
  for (const c of cases) {
    const got = abandon(c.s, c.v);
    t.same(got, c.want === 'unchanged' ? c.s : c.want, `TypeScript: ${c.name}`);
    for (const shell of shells) {
      const dir = t.testdir();
      const env = join(dir, 'grubenv');
      writeFileSync(env, renderState(c.s));
      const r = runShell(shell, `cairn_abandon "${env}" "${c.v}"; echo "rc=$?"`, dir);
      t.equal(r.stdout.trim(), c.want === 'unchanged' ? 'rc=1' : 'rc=0', `${shell}: ${c.name}: exit status`);
      t.same(parseState(readFileSync(env)), c.want === 'unchanged' ? c.s : c.want, `${shell}: ${c.name}`);
    }
  }
});

t.test('a trial: started, promoted after a good boot, or recorded as a rollback', async (t) => {
  const s0: BootState = { active: '1.0', fallback: '0.9', failed: '1.5' };
  const s1 = startTrial(s0, '2.0', 2, 120);
  t.same(s1, { active: '1.0', fallback: '0.9', trial: '2.0', tries: 2, deadline: 120 }, 'the last failure is forgotten');
  t.throws(() => startTrial(s0, '1.0'), /1\.0 is the active version already/);
  t.throws(() => startTrial(s0, '2.0', 0), /tries must be 1 to 9, not 0/);
  t.throws(() => startTrial(s0, '2.0', 10), /tries must be 1 to 9, not 10/);
  t.same([...keep(s1)].sort(), ['0.9', '1.0', '2.0'], 'active, fallback and trial are kept');
  // a good trial boot
  t.same(promote(s1, '2.0'), { active: '2.0', fallback: '1.0' });
  t.equal(promote(s1, '1.0'), s1, 'a good boot of another version promotes nothing');
  // the init's view as a boot starts
  t.same(onBoot({ ...s1, tries: 1 }, '2.0').event, { kind: 'trial', version: '2.0', triesLeft: 1 });
  const rb = onBoot({ ...s1, tries: 0 }, '1.0');
  t.same(rb.event, { kind: 'rollback', failed: '2.0', version: '1.0' });
  t.same(rb.state, { active: '1.0', fallback: '0.9', failed: '2.0' }, 'the trial is cleared, the failure kept');
  t.same(onBoot({ ...s1, tries: 1 }, '1.0').event, { kind: 'normal', version: '1.0' }, 'a boot of the active version while the trial has tries (chosen by hand) is no rollback');
  t.same(onBoot({ active: '2.0', fallback: '1.0' }, '1.0').event, { kind: 'fallback', version: '1.0', active: '2.0' });
});
