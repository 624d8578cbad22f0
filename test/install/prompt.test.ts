// The interactive installer's questions on a real terminal (node-pty): the
// disks with sizes, models and contents, a wrong answer asked again, the
// password typed without echo, the confirmation; what the answers make.
import t from 'tap';
import { spawn } from 'node-pty';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { REPO } from '../boot/image.js';

const GIB = 1024 ** 3;
const lsblk = JSON.stringify({
  blockdevices: [
    { name: 'sr0', path: '/dev/sr0', size: 300 * 1048576, type: 'rom', ro: true, rm: true, model: 'QEMU DVD-ROM', mountpoints: ['/run/cairn/live'] },
    { name: 'sda', path: '/dev/sda', size: 240 * GIB, type: 'disk', model: 'Samsung SSD 860', pttype: 'gpt', mountpoints: [null], children: [{ name: 'sda1', path: '/dev/sda1', size: 100 * GIB, type: 'part', fstype: 'ext4', label: 'data', mountpoints: [null] }] },
    { name: 'sdb', path: '/dev/sdb', size: 32 * GIB, type: 'disk', model: 'Ultra Fit', rm: true, mountpoints: [null] },
    { name: 'sdc', path: '/dev/sdc', size: 16 * GIB, type: 'disk', model: 'Busy', mountpoints: [null], children: [{ name: 'sdc1', path: '/dev/sdc1', size: 16 * GIB, type: 'part', fstype: 'ext4', mountpoints: ['/var/lib/x'] }] },
  ],
});

/** The driver on a terminal: wait for text, type lines, collect the result. */
function session(file: string) {
  const p = spawn(join(REPO, 'node_modules/.bin/tsx'), [join(REPO, 'test/fixtures/install/prompt-driver.ts'), file], { name: 'xterm', cols: 200, rows: 50, cwd: REPO, env: { ...process.env, NODE_DISABLE_COLORS: '1' } as Record<string, string> });
  let out = '';
  let cursor = 0;
  p.onData((d) => (out += d));
  const exited = new Promise<number>((r) => p.onExit((e) => r(e.exitCode)));
  return {
    get output() {
      return out;
    },
    async expect(text: string, timeoutMs = 30_000): Promise<void> {
      const end = Date.now() + timeoutMs;
      while (!out.includes(text, cursor)) {
        if (Date.now() > end) throw new Error(`"${text}" did not come; the terminal showed:\n${out}`);
        await new Promise((r) => setTimeout(r, 25));
      }
      cursor = out.indexOf(text, cursor) + text.length;
    },
    line: (s: string) => p.write(`${s}\r`),
    /** Each question in turn, answered. */
    async answer(steps: [question: string, reply: string][]): Promise<void> {
      for (const [q, reply] of steps) {
        await this.expect(q);
        this.line(reply);
      }
    },
    async result(): Promise<unknown> {
      await exited;
      const m = /RESULT (.*)\r?\n/.exec(out);
      if (!m) throw new Error(`no result; the terminal showed:\n${out}`);
      return m[1] === 'none' ? undefined : JSON.parse(m[1]!.trim());
    },
  };
}

t.test('a password, typed without echo, after a wrong disk number', async (t) => {
  const file = join(t.testdir(), 'lsblk.json');
  writeFileSync(file, lsblk);
  const s = session(file);
  await s.expect('Install to which disk? [1-2] ');
  t.match(s.output, /1\) \/dev\/sda {2}240\.0 GiB {2}Samsung SSD 860 {2}\(holds a GPT partition table with \/dev\/sda1 "data" \(ext4\)\)/, 'the disk with data, its size, model and contents');
  t.match(s.output, /2\) \/dev\/sdb {2}32\.0 GiB {2}Ultra Fit {2}removable {2}\(empty\)/, 'the blank removable disk');
  t.notMatch(s.output, /sr0|sdc/, 'neither the CD drive nor a disk in use is offered');
  s.line('9');
  await s.expect('"9" is not one of 1-2');
  await s.answer([
    ['Install to which disk? [1-2] ', '1'],
    ['Config file or http(s) URL to install with (Enter for none): ', ''],
    ['Password for the cairn user (not shown; Enter for none): ', 'Hidden-Pw-77'],
  ]);
  await s.expect('Continue? [y/N] ');
  t.match(s.output, /cairn will erase \/dev\/sda {2}240\.0 GiB {2}Samsung SSD 860, which holds a GPT partition table with \/dev\/sda1 "data" \(ext4\), and install onto it\./, 'the confirmation names what is erased');
  s.line('y');
  const r = (await s.result()) as { device: string; configText: string; force: boolean };
  t.notOk(s.output.slice(0, s.output.indexOf('RESULT')).includes('Hidden-Pw-77'), 'the password was not echoed');
  t.same(r, { device: '/dev/sda', configText: 'cairn:\n  password: Hidden-Pw-77\n', force: true });
});

t.test('a config URL; then an SSH key, and no at the confirmation', async (t) => {
  const file = join(t.testdir(), 'lsblk.json');
  writeFileSync(file, lsblk);
  const a = session(file);
  await a.answer([
    ['Install to which disk? [1-2] ', '/dev/sdb'],
    ['(Enter for none): ', 'https://config.example/node.yaml'],
  ]);
  await a.expect('Continue? [y/N] ');
  t.notMatch(a.output, /Password/, 'no password asked when a config is given');
  a.line('y');
  t.same(await a.result(), { device: '/dev/sdb', configUrl: 'https://config.example/node.yaml', force: true });

  const b = session(file);
  await b.answer([
    ['Install to which disk? [1-2] ', '2'],
    ['(Enter for none): ', ''],
    ['(not shown; Enter for none): ', ''],
    ['SSH public key for cairn (ssh-ed25519 ..., github:USER; Enter for none): ', 'github:someone'],
    ['Continue? [y/N] ', ''],
  ]);
  t.equal(await b.result(), undefined, 'not confirmed: nothing to install');
});
