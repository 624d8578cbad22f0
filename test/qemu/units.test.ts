// The harness' pure parts and small helpers: bzImage payloads and PVH notes,
// console text, seed files, artifact detection, host acceleration, the PXE
// HTTP server.
import t from 'tap';
import { existsSync, readdirSync, writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import { ConsoleText, tailLines } from '../../qemu/console.js';
import { hostAccel } from '../../qemu/host.js';
import { serveFolder } from '../../qemu/http.js';
import { detectArtifact, detectDiskFormat } from '../../qemu/machine.js';
import { bzImagePayload, extractVmlinux, hasPvhNote } from '../../qemu/pvh.js';
import { seedFiles } from '../../qemu/seed.js';
import { makeSshKey, sshArgs, sshRun } from '../../qemu/ssh.js';
import { archFromName } from '../../src/cli/commands/run.js';
import { UserError } from '../../src/errors.js';

/** A minimal ELF64 with one PT_NOTE segment holding the given (name, type) notes. */
function elfWithNotes(notes: [string, number][]): Buffer {
  const noteBufs = notes.map(([name, type]) => {
    const n = Buffer.alloc(12 + ((name.length + 1 + 3) & ~3) + 8);
    n.writeUInt32LE(name.length + 1, 0);
    n.writeUInt32LE(8, 4);
    n.writeUInt32LE(type, 8);
    n.write(name, 12, 'latin1');
    return n;
  });
  const note = Buffer.concat(noteBufs);
  const elf = Buffer.alloc(64 + 56 + note.length);
  elf.writeUInt32BE(0x7f454c46, 0);
  elf[4] = 2; // 64-bit
  elf[5] = 1; // little endian
  elf.writeBigUInt64LE(64n, 0x20); // e_phoff
  elf.writeUInt16LE(56, 0x36); // e_phentsize
  elf.writeUInt16LE(1, 0x38); // e_phnum
  elf.writeUInt32LE(4, 64); // PT_NOTE
  elf.writeBigUInt64LE(120n, 64 + 8); // p_offset
  elf.writeBigUInt64LE(BigInt(note.length), 64 + 32); // p_filesz
  note.copy(elf, 120);
  return elf;
}

/** A minimal bzImage whose payload is `payload` (compressed already), followed by the size word. */
function bzImage(payload: Buffer, size: number, setupSects = 1): Buffer {
  const start = ((setupSects || 4) + 1) * 512;
  const offset = 0x40;
  const img = Buffer.alloc(start + offset + payload.length + 4 + 16);
  img[0x1f1] = setupSects;
  img.write('HdrS', 0x202, 'latin1');
  img.writeUInt16LE(0x20f, 0x206);
  img.writeUInt32LE(offset, 0x248);
  img.writeUInt32LE(payload.length + 4, 0x24c);
  payload.copy(img, start + offset);
  img.writeUInt32LE(size, start + offset + payload.length);
  return img;
}

t.test('bzImage payload: found, compression told by magic, size from the last word', async (t) => {
  const elf = elfWithNotes([['Xen', 18]]);
  const gz = gzipSync(elf);
  const img = bzImage(gz, elf.length);
  const p = bzImagePayload(img);
  t.same(p, { offset: 1024 + 0x40, length: gz.length, compression: 'gzip', size: elf.length });
  t.same(await extractVmlinux(img), elf);
  t.equal(bzImagePayload(bzImage(Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0]), 1)).compression, 'zstd');
  t.equal(bzImagePayload(bzImage(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0, 0, 0]), 1)).compression, 'xz');
  t.equal(bzImagePayload(bzImage(Buffer.from([0x1f, 0x8b, 0, 0, 0, 0, 0, 0]), 1, 0)).offset, 5 * 512 + 0x40, 'setup_sects 0 means 4');
});

t.test('bzImage payload: bad input', async (t) => {
  t.throws(() => bzImagePayload(Buffer.alloc(100)), /not an x86 bzImage/);
  t.throws(() => bzImagePayload(Buffer.alloc(4096)), /not an x86 bzImage/);
  const old = bzImage(Buffer.alloc(8), 1);
  old.writeUInt16LE(0x206, 0x206);
  t.throws(() => bzImagePayload(old), /older than 2\.08/);
  const outside = bzImage(Buffer.alloc(8), 1);
  outside.writeUInt32LE(1 << 30, 0x24c);
  t.throws(() => bzImagePayload(outside), /outside the file/);
  t.throws(() => bzImagePayload(bzImage(Buffer.from('PLAINTEXT'), 1)), /unknown payload compression/);
  const elf = elfWithNotes([['Xen', 18]]);
  await t.rejects(extractVmlinux(bzImage(gzipSync(elf), elf.length + 1)), /says/);
  await t.rejects(extractVmlinux(bzImage(gzipSync(Buffer.from('not an elf')), 10)), /not an ELF/);
});

t.test('PVH note: XEN_ELFNOTE_PHYS32_ENTRY in a PT_NOTE segment', async (t) => {
  t.ok(hasPvhNote(elfWithNotes([['GNU', 3], ['Xen', 18]])));
  t.notOk(hasPvhNote(elfWithNotes([['Xen', 5], ['Linux', 18]])));
  t.notOk(hasPvhNote(Buffer.from('not an elf at all, not at all, not at all, not at all, not at all!')));
  t.notOk(hasPvhNote(Buffer.alloc(10)));
});

t.test('console text: escape sequences and carriage returns removed, split sequences held', async (t) => {
  const c = new ConsoleText();
  c.push('\x1b[2J\x1b[1;1HBdsDxe: loading\r\n');
  c.push('cairn: \x1b[32mok\x1b');
  t.equal(c.text, 'BdsDxe: loading\ncairn: ok', 'an unfinished sequence waits');
  c.push('[0m done\r\n\x1b]0;title\x07plain\x1b(B tail\r\n');
  t.equal(c.text, 'BdsDxe: loading\ncairn: ok done\nplain tail\n');
  t.equal(tailLines('a\nb\nc\n', 2), 'b\nc');
  t.equal(tailLines('a\nb', 5), 'a\nb');
});

t.test('seed files: #cloud-config added when missing, instance-id from the content, hostname', async (t) => {
  const a = seedFiles('hostname: node-1\nssh_authorized_keys: [github:someone]\n', 'a.yaml');
  t.equal(a.userData, '#cloud-config\nhostname: node-1\nssh_authorized_keys: [github:someone]\n');
  t.match(a.instanceId, /^iid-cairn-[0-9a-f]{16}$/);
  t.equal(a.metaData, `instance-id: ${a.instanceId}\nlocal-hostname: node-1\n`);
  t.same(a.diagnostics, []);
  const b = seedFiles('#cloud-config\nhostname: node-1\nssh_authorized_keys: [github:someone]\n', 'b.yaml');
  t.equal(b.userData, a.userData, 'not added twice');
  t.equal(b.instanceId, a.instanceId, 'the same user-data is the same instance');
  t.not(seedFiles('hostname: node-2\n', 'c.yaml').instanceId, a.instanceId);
  const noHost = seedFiles('run_cmd: [true]', 'd.yaml');
  t.equal(noHost.metaData, `instance-id: ${noHost.instanceId}\n`, 'no local-hostname without a hostname');
  t.equal(noHost.userData, '#cloud-config\nrun_cmd: [true]\n', 'a final newline added');
  const script = seedFiles('#!/bin/sh\necho hi\n', 'e.sh');
  t.equal(script.userData, '#!/bin/sh\necho hi\n', 'a script stays a script');
  const bad = seedFiles('hostname: "a b"\n', 'bad.yaml');
  t.match(bad.diagnostics, [{ severity: 'error', file: 'bad.yaml', line: 1, path: 'hostname' }]);
  t.notMatch(bad.metaData, /local-hostname/, 'an invalid hostname is left out');
});

t.test('artifact detection: by extension, by content, pxe folders; errors for the user', async (t) => {
  const dir = t.testdir({ 'a.iso': '', 'b.qcow2': '', 'c.raw': '', 'd.img': '', pxe: { 'boot.ipxe': '#!ipxe\n' }, other: { 'x.ipxe': '#!ipxe\n' }, empty: {}, unknown: 'hello' });
  t.same(await detectArtifact(path.join(dir, 'a.iso')), { kind: 'iso', path: path.join(dir, 'a.iso') });
  t.equal((await detectArtifact(path.join(dir, 'b.qcow2'))).kind, 'qcow2');
  t.equal((await detectArtifact(path.join(dir, 'c.raw'))).kind, 'raw');
  t.equal((await detectArtifact(path.join(dir, 'd.img'))).kind, 'raw');
  t.same(await detectArtifact(path.join(dir, 'pxe')), { kind: 'pxe', dir: path.join(dir, 'pxe'), bootfile: 'boot.ipxe' });
  t.same(await detectArtifact(path.join(dir, 'other')), { kind: 'pxe', dir: path.join(dir, 'other'), bootfile: 'x.ipxe' });
  const qcow = Buffer.alloc(512);
  qcow.write('QFI\xfb', 0, 'latin1');
  writeFileSync(path.join(dir, 'disk-q'), qcow);
  t.equal((await detectArtifact(path.join(dir, 'disk-q'))).kind, 'qcow2');
  t.equal(await detectDiskFormat(path.join(dir, 'disk-q')), 'qcow2');
  const iso = Buffer.alloc(32768 + 2048);
  iso.write('\x01CD001', 32768, 'latin1');
  writeFileSync(path.join(dir, 'disk-i'), iso);
  t.equal((await detectArtifact(path.join(dir, 'disk-i'))).kind, 'iso');
  const mbr = Buffer.alloc(1024);
  mbr[510] = 0x55;
  mbr[511] = 0xaa;
  writeFileSync(path.join(dir, 'disk-m'), mbr);
  t.equal((await detectArtifact(path.join(dir, 'disk-m'))).kind, 'raw');
  t.equal(await detectDiskFormat(path.join(dir, 'disk-m')), 'raw');
  await t.rejects(detectArtifact(path.join(dir, 'missing.iso')), UserError);
  await t.rejects(detectArtifact(path.join(dir, 'missing.iso')), /does not exist/);
  await t.rejects(detectArtifact(path.join(dir, 'empty')), /without an iPXE script/);
  await t.rejects(detectArtifact(path.join(dir, 'unknown')), /cannot tell what kind of image/);
});

t.test('arch from the artifact name', async (t) => {
  t.equal(archFromName('out/cairn-0.1.0-arm64.iso'), 'arm64');
  t.equal(archFromName('out/cairn-armv7.img'), 'armv7');
  t.equal(archFromName('out/cairn_amd64.qcow2'), 'amd64');
  t.equal(archFromName('disk-aarch64.raw'), 'arm64');
  t.equal(archFromName('disk-armhf.raw'), 'armv7');
  t.equal(archFromName('out/pxe'), 'amd64');
  t.equal(archFromName('farming.iso'), 'amd64', 'only whole words');
});

t.test('acceleration: KVM only with kvm_intel or kvm_amd loaded, never for foreign arches', async (t) => {
  const saved = process.env.CAIRN_QEMU_ACCEL;
  delete process.env.CAIRN_QEMU_ACCEL;
  t.teardown(() => {
    if (saved !== undefined) process.env.CAIRN_QEMU_ACCEL = saved;
  });
  const pvm = t.testdir({ kvm: {}, kvm_pvm: {} });
  t.equal(hostAccel('amd64', pvm), 'tcg', 'PVM: /dev/kvm is there but stock kernels hang on it');
  const intel = t.testdir({ kvm: {}, kvm_intel: {} });
  const amd = t.testdir({ kvm: {}, kvm_amd: {} });
  const x86 = process.arch === 'x64' && existsSync('/dev/kvm');
  t.equal(hostAccel('amd64', intel), x86 ? 'kvm' : 'tcg');
  t.equal(hostAccel('amd64', amd), x86 ? 'kvm' : 'tcg');
  if (process.arch === 'x64') {
    t.equal(hostAccel('arm64', intel), 'tcg');
    t.equal(hostAccel('armv7', intel), 'tcg');
  }
  process.env.CAIRN_QEMU_ACCEL = 'tcg';
  t.equal(hostAccel('amd64', intel), 'tcg', 'CAIRN_QEMU_ACCEL overrides');
  delete process.env.CAIRN_QEMU_ACCEL;
});

function get(port: number, p: string, headers: http.OutgoingHttpHeaders = {}, method = 'GET'): Promise<{ status: number; body: string; headers: http.IncomingHttpHeaders }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path: p, headers, method }, (res) => {
      let body = '';
      res.setEncoding('latin1');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body, headers: res.headers }));
    });
    req.on('error', reject);
    req.end();
  });
}

t.test('PXE HTTP server: files of one folder, ranges, nothing outside it', async (t) => {
  const dir = t.testdir({ pxe: { 'vmlinuz': '0123456789', sub: { 'x.txt': 'x' } }, 'secret.txt': 'no' });
  const root = path.join(dir, 'pxe');
  const srv = await serveFolder(root);
  t.teardown(() => srv.close());
  t.same((await get(srv.port, '/vmlinuz')).body, '0123456789');
  const part = await get(srv.port, '/vmlinuz', { range: 'bytes=2-4' });
  t.equal(part.status, 206);
  t.equal(part.body, '234');
  t.equal(part.headers['content-range'], 'bytes 2-4/10');
  t.equal((await get(srv.port, '/vmlinuz', { range: 'bytes=-3' })).body, '789');
  t.equal((await get(srv.port, '/vmlinuz', { range: 'bytes=20-' })).status, 416);
  t.equal((await get(srv.port, '/sub/x.txt')).body, 'x');
  const head = await get(srv.port, '/vmlinuz', {}, 'HEAD');
  t.equal(head.headers['content-length'], '10');
  t.equal((await get(srv.port, '/missing')).status, 404);
  t.equal((await get(srv.port, '/sub')).status, 404, 'folders are not listed');
  t.not((await get(srv.port, '/../secret.txt')).body, 'no');
  t.equal((await get(srv.port, '/..%2fsecret.txt')).status, 403, 'an encoded slash does not escape');
  t.equal((await get(srv.port, '/vmlinuz', {}, 'POST')).status, 405);
  t.match(srv.requests, [{ method: 'GET', path: '/vmlinuz', status: 200 }]);
  await srv.close();
  await srv.close();
});

const fixtureBoot = path.join(process.env.CAIRN_FIXTURE_DIR ?? '/var/tmp/cairn-fixture', 'amd64/rootfs/boot');
const fixtureKernel = existsSync(fixtureBoot) ? readdirSync(fixtureBoot).find((n) => n.startsWith('vmlinuz-')) : undefined;

t.test('the real fixture kernel: PVH vmlinux extracted', { skip: fixtureKernel ? false : 'no fixture kernel built yet (the boot tests build one)' }, async (t) => {
  const img = await readFile(path.join(fixtureBoot, fixtureKernel ?? ''));
  const p = bzImagePayload(img);
  t.ok(p.size > img.length, 'the payload grows when decompressed');
  const elf = await extractVmlinux(img);
  t.equal(elf.length, p.size);
  t.ok(hasPvhNote(elf), 'Debian kernels have CONFIG_PVH');
});

t.test('ssh: a throwaway key pair, and the argv of one command', async (t) => {
  const key = await makeSshKey('cairn-unit');
  t.match(key.publicKey, /^ssh-ed25519 \S+ cairn-unit$/);
  t.ok(existsSync(key.privateKey));
  t.same(sshArgs({ port: 2222, identity: key.privateKey }, 'cat /etc/hostname'), [
    '-p', '2222', '-o', 'BatchMode=yes', '-o', 'StrictHostKeyChecking=no', '-o', 'UserKnownHostsFile=/dev/null', '-o', 'LogLevel=ERROR', '-o', 'ConnectTimeout=10',
    '-o', 'IdentitiesOnly=yes', '-i', key.privateKey, 'cairn@127.0.0.1', 'cat /etc/hostname',
  ]);
  t.equal(sshArgs({ port: 1, user: 'root' }, 'x').at(-2), 'root@127.0.0.1');
  // a shared connection: opened by the first command, ended by itself when the guest stops answering
  const shared = sshArgs({ port: 1, controlPath: '/tmp/vm/ssh-1' }, 'x').join(' ');
  t.match(shared, /-o ControlMaster=auto -o ControlPath=\/tmp\/vm\/ssh-1 -o ControlPersist=120 -o ServerAliveInterval=5 -o ServerAliveCountMax=3 cairn@127\.0\.0\.1 x$/);
  t.notMatch(sshArgs({ port: 1 }, 'x').join(' '), /Control/, 'no shared connection unless asked');
  await key.remove();
  t.notOk(existsSync(key.privateKey));
});

t.test('ssh: nothing listening is exit code 255 with the reason', async (t) => {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise<void>((r) => srv.close(() => r()));
  const r = await sshRun({ port, timeoutMs: 10_000 }, 'true');
  t.equal(r.code, 255);
  t.match(r.stderr, /refused|closed|reset/i);
});
