// Real amd64 boots under TCG (KVM only where kvm_intel/kvm_amd is loaded) of the
// small fixture: the direct PVH path, the bzImage, the ISO under SeaBIOS and
// OVMF, raw and qcow2 disks on overlays, PXE through iPXE; the console driven
// both ways, the seed and the ssh forward, clean shutdown and cleanup.
import t, { type Test } from 'tap';
import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import * as pty from 'node-pty';
import { bootForTest, ConsoleWaitError, overlay, type BootOptions, type Vm } from '../../qemu/harness.js';
import { renderIpxe } from '../../src/builder/outputs/pxe.js';
import { MARKER, PROMPT, qemuFixture, type Fixture } from './fixture.js';

const BOOT_MS = 60_000;
let fx: Fixture;
const times: string[] = [];

t.before(async () => {
  fx = await qemuFixture('amd64');
});

t.teardown(() => {
  if (times.length) t.comment(`boot to marker under ${process.env.CAIRN_QEMU_ACCEL ?? 'the default accelerator'}: ${times.join(', ')}`);
});

async function bootToMarker(t: Test, name: string, opts: Omit<BootOptions, 'name'>): Promise<Vm> {
  const vm = await bootForTest(t, { noReboot: true, ...opts, name });
  const r = await vm.waitFor(MARKER, BOOT_MS);
  times.push(`${name} ${(r.elapsedMs / 1000).toFixed(1)} s`);
  t.pass(`${name}: marker after ${r.elapsedMs} ms`);
  return vm;
}

function sha256(file: string): string {
  return createHash('sha256').update(readFileSync(file)).digest('hex');
}

function readBanner(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const sock = net.connect(port, '127.0.0.1');
    let data = '';
    sock.setTimeout(10_000, () => sock.destroy(new Error('no banner in 10 s')));
    sock.on('data', (d) => {
      data += d.toString();
      if (data.includes('\n')) {
        sock.destroy();
        resolve(data.trim());
      }
    });
    sock.on('error', reject);
    sock.on('close', () => resolve(data.trim()));
  });
}

function gone(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return false;
  } catch {
    return true;
  }
}

t.test('direct PVH kernel: marker, the seed, ssh forward, a shell on the console, the power button, cleanup', async (t) => {
  const vm = await bootToMarker(t, 'pvh', {
    artifact: { kind: 'kernel', kernel: fx.kernel, initrd: fx.initrd, append: 'quiet fixture=shell' },
    configText: 'hostname: fixture-node\n',
    sshPort: 'auto',
  });
  const kernel = vm.args[vm.args.indexOf('-kernel') + 1] ?? '';
  t.match(path.basename(kernel), /^vmlinux-[0-9a-f]{16}$/, 'the uncompressed vmlinux, booted through PVH');
  t.equal(path.dirname(kernel), fx.dir, 'cached beside the kernel');
  t.match(vm.output, /fixture: seed on \/dev\/vd\w: instance-id: iid-cairn-[0-9a-f]{16} local-hostname: fixture-node/);
  t.match(vm.output, /fixture: user-data: #cloud-config\nfixture: user-data: hostname: fixture-node/);
  t.ok(vm.sshPort, 'a free host port was chosen');
  t.equal(await readBanner(vm.sshPort ?? 0), 'SSH-2.0-cairn-fixture', 'the host port reaches the guest\'s port 22');

  const any = await vm.waitForAny([/no such line/, PROMPT], 10_000);
  t.equal(any.which, 1, 'waitForAny says which marker came');
  vm.sendLine('echo $((6*7)) > /dev/console; echo "sum=$((40+2))"');
  const sum = await vm.waitFor(/sum=(\d+)/, 10_000);
  t.same(sum.groups, ['42'], 'typed into the console, answered on it');
  // a line marker (m flag) keeps its meaning among others: ^ and $ at each line, not only at the end of the console
  vm.sendLine("printf 'any-%s\\nafter\\n' line");
  const anyLine = await vm.waitForAny([/^no such line$/m, /^any-line\r?$/m], 10_000);
  t.same([anyLine.which, anyLine.match.trim()], [1, 'any-line'], 'waitForAny with line markers');

  const clean = await vm.shutdown(30_000);
  t.ok(clean, 'the guest powered off on the ACPI power button');
  t.match(vm.output, /fixture: power button pressed/);
  t.notOk(vm.running);
  const { dir, pid } = vm;
  await vm.close();
  t.notOk(existsSync(dir), 'the temp folder is removed');
  t.ok(gone(pid), 'QEMU is gone');
  t.notOk(existsSync(vm.logFile), 'the log of a passing boot is removed');
});

t.test('bzImage through the firmware\'s Linux loader (pvh: false)', async (t) => {
  const vm = await bootToMarker(t, 'bzImage', { artifact: { kind: 'kernel', kernel: fx.kernel, initrd: fx.initrd, append: 'quiet', pvh: false } });
  t.equal(vm.args[vm.args.indexOf('-kernel') + 1], fx.kernel);
  t.ok(await vm.waitExit(10_000), 'powered off');
});

t.test('ISO under SeaBIOS (GRUB from the CD)', async (t) => {
  const vm = await bootToMarker(t, 'iso-bios', { artifact: { kind: 'iso', path: fx.iso ?? '' } });
  t.notOk(vm.args.some((a) => a.includes('pflash')));
  t.ok(await vm.waitExit(10_000));
});

t.test('ISO under OVMF (UEFI), with a per-VM variable store', async (t) => {
  const vm = await bootToMarker(t, 'iso-uefi', { artifact: { kind: 'iso', path: fx.iso ?? '' }, firmware: 'uefi' });
  t.ok(vm.args.some((a) => a.startsWith('if=pflash') && a.includes(path.join(vm.dir, 'efivars.fd'))));
  t.ok(await vm.waitExit(10_000));
});

t.test('raw disk on a throwaway overlay: the image is never written', async (t) => {
  const before = sha256(fx.raw ?? '');
  const vm = await bootToMarker(t, 'raw-bios', { artifact: { kind: 'raw', path: fx.raw ?? '' }, diskSize: '1G' });
  t.ok(vm.args.some((a) => a.startsWith(`file=${path.join(vm.dir, 'disk.qcow2')},format=qcow2`)));
  t.ok(await vm.waitExit(10_000));
  t.equal(sha256(fx.raw ?? ''), before);
});

t.test('qcow2 disk under UEFI', async (t) => {
  const before = sha256(fx.qcow2 ?? '');
  const vm = await bootToMarker(t, 'qcow2-uefi', { artifact: { kind: 'qcow2', path: fx.qcow2 ?? '' }, firmware: 'uefi' });
  t.ok(await vm.waitExit(10_000));
  t.equal(sha256(fx.qcow2 ?? ''), before);
});

t.test('pxe: iPXE fetches the script over TFTP, the kernel and initramfs over HTTP from the host', async (t) => {
  const vm = await bootToMarker(t, 'pxe', { artifact: { kind: 'pxe', dir: fx.pxe ?? '' } });
  t.ok(vm.http);
  t.match(vm.http?.guestUrl, /^http:\/\/10\.0\.2\.2:\d+$/);
  t.match(vm.http?.requests, [ // fetched from the URL filled into boot.ipxe
    { method: 'GET', path: '/vmlinuz', status: 200 },
    { method: 'GET', path: '/initrd.gz', status: 200 },
  ]);
  t.ok(await vm.waitExit(10_000));
});

t.test('pxe: a folder as cairn build writes it (boot.ipxe reads ${cairn-base}) boots through a chain script', async (t) => {
  const dir = t.testdir();
  copyFileSync(fx.kernel, path.join(dir, 'vmlinuz'));
  copyFileSync(fx.initrd, path.join(dir, 'initrd'));
  writeFileSync(path.join(dir, 'boot.ipxe'), renderIpxe({ name: 'fixture', version: '0.0.1', arch: 'amd64', cmdline: 'quiet' }, 'fixture-0.0.1-amd64-pxe', '0'.repeat(64)));
  const vm = await bootToMarker(t, 'pxe-cairn', { artifact: { kind: 'pxe', dir } });
  t.same(vm.args.filter((a) => a.startsWith('user,')).map((a) => /bootfile=([^,]+)/.exec(a)?.[1]), ['cairn-chain.ipxe']);
  t.match(vm.output, new RegExp(`fixture: cmdline .*cairn\\.root_url=http://10\\.0\\.2\\.2:${vm.http?.port}/rootfs\\.squashfs`));
  t.match(vm.http?.requests, [{ path: '/vmlinuz', status: 200 }, { path: '/initrd', status: 200 }]);
  t.same(readdirSync(dir).sort(), ['boot.ipxe', 'initrd', 'vmlinuz'], 'the folder is left as it was');
  t.ok(await vm.waitExit(10_000));
});

t.test('a writable disk keeps what the VM wrote across a reset and a power cut', async (t) => {
  const dir = t.testdir();
  const disk = path.join(dir, 'state.qcow2');
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', disk, '16M']);
  const opts = { artifact: { kind: 'kernel' as const, kernel: fx.kernel, initrd: fx.initrd, append: 'quiet fixture=shell' }, extraDisks: [{ path: disk, writable: true }], noReboot: false };
  const first = await bootToMarker(t, 'state-1', opts);
  await first.waitFor(PROMPT, 10_000);
  first.sendLine('echo "written at boot $((1+1-1))" | dd of=/dev/vda conv=notrunc,fsync 2>/dev/null; echo wrote-it');
  await first.waitFor(/^wrote-it$/m, 10_000);
  await first.reset();
  await first.waitFor(MARKER, BOOT_MS);
  await first.waitFor(PROMPT, 10_000);
  first.sendLine('head -c 17 /dev/vda; echo');
  await first.waitFor(/^written at boot 1$/m, 10_000);
  await first.kill(); // a power cut: what was flushed (fsync) survives
  await first.close();
  const second = await bootToMarker(t, 'state-2', opts);
  await second.waitFor(PROMPT, 10_000);
  second.sendLine('head -c 17 /dev/vda; echo');
  await second.waitFor(/^written at boot 1$/m, 10_000);
  await second.close();
  t.ok(existsSync(disk), 'the disk outlives the VMs');
});

t.test('a writable boot disk is used in place and grown to diskSize', async (t) => {
  const dir = t.testdir();
  const disk = path.join(dir, 'node.qcow2');
  await overlay(fx.raw ?? '', disk);
  const vm = await bootToMarker(t, 'writable-disk', { artifact: { kind: 'qcow2', path: disk, writable: true }, diskSize: '256M' });
  t.ok(vm.args.includes(`file=${disk},format=qcow2,if=none,id=disk0`));
  t.ok(await vm.waitExit(10_000));
  const info = JSON.parse(execFileSync('qemu-img', ['info', '--output=json', disk], { encoding: 'utf8' })) as { 'virtual-size': number };
  t.equal(info['virtual-size'], 256 * 1024 * 1024);
});

t.test('a folder served over HTTP to a direct kernel boot; {{http}} filled into its command line', async (t) => {
  const dir = t.testdir({ 'hello.txt': 'hello from the host\n' });
  const vm = await bootToMarker(t, 'serve', { artifact: { kind: 'kernel', kernel: fx.kernel, initrd: fx.initrd, append: 'quiet fixture.fetch={{http}}/hello.txt' }, serveDir: dir });
  t.match(vm.args[vm.args.indexOf('-append') + 1], new RegExp(`fixture\\.fetch=http://10\\.0\\.2\\.2:${vm.http?.port}/hello\\.txt`));
  t.match(vm.output, /fixture: fetched hello from the host/);
  t.match(vm.http?.requests, [{ method: 'GET', path: '/hello.txt', status: 200 }]);
});

t.test('a failed wait names the marker and shows the console tail; the log is kept', async (t) => {
  const vm = await bootForTest(t, { name: 'fail', artifact: { kind: 'kernel', kernel: fx.kernel, initrd: fx.initrd, append: 'quiet fixture=shell' }, noReboot: true });
  await vm.waitFor(PROMPT, BOOT_MS);
  const timeout = await vm.waitFor('NO SUCH MARKER', 1_500).catch((e: unknown) => e);
  t.type(timeout, ConsoleWaitError);
  const err = timeout as ConsoleWaitError;
  t.match(err.message, /fail: "NO SUCH MARKER" did not show on the console within 1500 ms/);
  t.match(err.message, `--- console log: ${vm.logFile}; its last lines: ---`);
  t.match(vm.logFile, /cairn-qemu-logs\/fail-\d+-\d+\.log$/);
  t.match(err.tail, MARKER, 'the tail shows what the console said');
  t.ok(err.tail.split('\n').length <= 60, 'at most 60 lines');
  vm.sendLine('poweroff -f');
  const exited = await vm.waitFor(/never printed/, BOOT_MS).then(() => new Error('found'), (e: unknown) => e as Error);
  t.match(exited.message, /QEMU exited \(code 0\) before \/never printed\/ showed on the console/);
  await t.rejects(vm.waitFor('again', 1_000), /QEMU had exited/);
  const log = vm.logFile;
  await vm.close();
  t.ok(existsSync(log), 'the log of a failed wait is kept');
  t.match(readFileSync(log, 'utf8'), MARKER);
  rmSync(log);
});

t.test('cairn run boots a raw image with the console on the terminal', async (t) => {
  const cairn = new URL('../../bin/cairn', import.meta.url).pathname;
  if (!existsSync(new URL('../../dist/cairn.js', import.meta.url))) t.fail('npm run build first');
  const started = Date.now();
  const p = pty.spawn(process.execPath, [cairn, 'run', fx.raw ?? '', '--mem', '512'], { cols: 200, rows: 40, env: process.env as Record<string, string> });
  let out = '';
  p.onData((d) => (out += d));
  const code = await new Promise<number>((resolve) => {
    const timer = setTimeout(() => p.kill('SIGKILL'), BOOT_MS);
    p.onExit(({ exitCode }) => {
      clearTimeout(timer);
      resolve(exitCode);
    });
  });
  t.match(out, /cairn: booting .*fixture\.img: raw on amd64 \(\w+, bios\); Ctrl-A X quits/);
  t.match(out, MARKER);
  t.equal(code, 0, 'QEMU powered off, cairn run exited 0');
  times.push(`cairn-run ${((Date.now() - started) / 1000).toFixed(1)} s`);
});

t.test('QEMU and the temp files are cleaned up when the test process is killed', async (t) => {
  const script = `
    import { boot } from ${JSON.stringify(new URL('../../qemu/harness.ts', import.meta.url).pathname)};
    const vm = await boot({ artifact: { kind: 'kernel', kernel: ${JSON.stringify(fx.kernel)}, initrd: ${JSON.stringify(fx.initrd)}, append: 'quiet fixture=shell' } });
    await vm.waitFor(${JSON.stringify(PROMPT)}, ${BOOT_MS});
    console.log(JSON.stringify({ pid: vm.pid, dir: vm.dir }));
    setInterval(() => {}, 1000);
  `;
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { cwd: new URL('../..', import.meta.url).pathname, stdio: ['ignore', 'pipe', 'inherit'] });
  const info = await new Promise<{ pid: number; dir: string }>((resolve, reject) => {
    let buf = '';
    child.stdout.on('data', (d: Buffer) => {
      buf += d.toString();
      const line = buf.split('\n').find((l) => l.startsWith('{'));
      if (line) resolve(JSON.parse(line) as { pid: number; dir: string });
    });
    child.on('exit', (code) => reject(new Error(`child exited ${code}`)));
  });
  t.ok(existsSync(info.dir));
  t.notOk(gone(info.pid), 'QEMU runs');
  child.kill('SIGTERM');
  await new Promise((resolve) => child.on('exit', resolve));
  for (let i = 0; i < 50 && !gone(info.pid); i++) await new Promise((r) => setTimeout(r, 100));
  t.ok(gone(info.pid), 'QEMU was killed');
  t.notOk(existsSync(info.dir), 'the temp folder was removed');
});
