import t from 'tap';
import { execCommand } from '../../src/init/exec.js';

t.test('a command: its exit code, its output without the final newline, its input', async (t) => {
  const r = await execCommand('sh', ['-c', 'read x; echo "out $x"; echo "err" >&2; exit 3'], { input: 'hello\n' });
  t.same(r, { code: 3, stdout: 'out hello', stderr: 'err', timedOut: false });
  t.equal((await execCommand('printf', ['a\\n\\n'])).stdout, 'a\n', 'one final newline is taken off, not more');
});

t.test("the environment given adds to the init's own; cwd", async (t) => {
  process.env.CAIRN_EXEC_TEST = 'from the init';
  t.teardown(() => delete process.env.CAIRN_EXEC_TEST);
  const r = await execCommand('sh', ['-c', 'echo "$CAIRN_EXEC_TEST / $EXTRA / $(pwd)"'], { env: { EXTRA: 'given' }, cwd: '/tmp' });
  t.equal(r.stdout, 'from the init / given / /tmp');
});

t.test('a command that does not exist did not start: code 127 and why', async (t) => {
  const r = await execCommand('/nonexistent/cairn-no-such-program', []);
  t.equal(r.code, 127);
  t.equal(r.notStarted, true);
  t.match(r.stderr, /^\/nonexistent\/cairn-no-such-program: spawn \/nonexistent\/cairn-no-such-program ENOENT$/);
});

t.test('a command that runs out of time is killed', async (t) => {
  const start = Date.now();
  const r = await execCommand('sleep', ['30'], { timeoutMs: 200 });
  t.ok(Date.now() - start < 5000, 'it did not run on');
  t.equal(r.timedOut, true);
  t.equal(r.signal, 'SIGKILL');
  t.equal(r.code, 128);
});

t.test('an abort kills it; an abort before the start does not start it', async (t) => {
  const ac = new AbortController();
  const p = execCommand('sleep', ['30'], { signal: ac.signal });
  setTimeout(() => ac.abort(), 100);
  const r = await p;
  t.equal(r.aborted, true);
  t.equal(r.signal, 'SIGKILL');
  t.equal(r.timedOut, false);
  const before = await execCommand('sh', ['-c', 'echo ran'], { signal: AbortSignal.abort() });
  t.same([before.code, before.aborted, before.stdout], [130, true, '']);
});
