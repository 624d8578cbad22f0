// The upgrade payload: written by the oci writer from small fixture files,
// read back through every kind of source (archive, layout folder, plain
// folder, http URL), and every kind of broken source refused with a message
// that says what is wrong.
import t, { type Test } from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { createReadStream, existsSync, readFileSync, statSync } from 'node:fs';
import { chmod, copyFile, symlink, mkdir, readFile, readdir, rm, truncate, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { gzipSync } from 'node:zlib';
import tar from 'tar-stream';
import { elfIsDynamic } from '../../src/builder/initramfs/index.js';
import { buildOciArchive, oci, renderRunner } from '../../src/builder/outputs/oci.js';
import type { Arch, SystemArtifacts } from '../../src/builder/types.js';
import { generateKeys, verifyRecord } from '../../src/upgrade/keys.js';
import { COMPONENTS, openPayload, parseRecord, renderRecord, type OpenedPayload, type PayloadRecord } from '../../src/upgrade/payload.js';
import { tempDir } from '../builder/support.js';

const SDE = 1_700_000_000;
/** A static busybox (busybox-static) of this machine, standing in for the image root's. */
const HOST_BUSYBOX = ['/usr/bin/busybox', '/bin/busybox'].find((p) => existsSync(p) && !elfIsDynamic(readFileSync(p))) ?? '';
if (!HOST_BUSYBOX) throw new Error('these tests need a static busybox on the machine: apt-get install busybox-static');
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const digestOf = (b: Buffer) => `sha256:${sha(b)}`;

interface Fixture {
  system: SystemArtifacts;
  files: Record<(typeof COMPONENTS)[number], Buffer>;
}

/** A system of small files: sizes that are not multiples of 512, a squashfs of a few MiB (several read chunks). */
async function fixture(dir: string, opts: { arch?: Arch; version?: string; sde?: number; squashfs?: Buffer; kernel?: Buffer } = {}): Promise<Fixture> {
  // the image root: only its static busybox is read (the upgrade image's /bin/sh)
  await mkdir(path.join(dir, 'rootfs/usr/bin'), { recursive: true });
  await copyFile(HOST_BUSYBOX, path.join(dir, 'rootfs/usr/bin/busybox'));
  const arch = opts.arch ?? 'amd64';
  const version = opts.version ?? '1.2.3';
  const files = {
    kernel: opts.kernel ?? randomBytes(70_001),
    initrd: randomBytes(30_007),
    'rootfs.squashfs': opts.squashfs ?? randomBytes(3 * 1024 * 1024 + 13),
    'release.json': Buffer.from(`${JSON.stringify({ name: 'default', version, arch }, null, 2)}\n`),
  };
  const at = (n: string) => path.join(dir, n);
  for (const [n, b] of Object.entries(files)) await writeFile(at(n), b);
  const system: SystemArtifacts = {
    name: 'default',
    version,
    arch,
    kernelRelease: '6.12.0-test',
    kernel: at('kernel'),
    initramfs: at('initrd'),
    squashfs: at('rootfs.squashfs'),
    cmdline: '',
    release: at('release.json'),
    rootfs: at('rootfs'),
    sourceDateEpoch: opts.sde ?? SDE,
  };
  return { system, files };
}

async function archiveOf(t: Test, opts: Parameters<typeof fixture>[1] & { signingKey?: string } = {}) {
  const dir = await tempDir('cairn-payload-');
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const fx = await fixture(path.join(dir, 'sys'), opts);
  await mkdir(path.join(dir, 'work'));
  const archive = path.join(dir, 'payload.oci.tar');
  const result = await buildOciArchive(fx.system, path.join(dir, 'work'), archive, { signingKey: opts.signingKey });
  return { dir, archive, result, ...fx };
}

/** Unpacks a tar with tar-stream (an OCI archive into a layout folder, a layer into a file system). */
async function untar(file: string | Buffer, dest: string): Promise<string[]> {
  const names: string[] = [];
  const extract = tar.extract();
  const feeding = Buffer.isBuffer(file) ? pipeline(async function* () { yield file; }, extract) : pipeline(createReadStream(file), extract);
  for await (const entry of extract) {
    const h = entry.header;
    names.push(h.name);
    const to = path.join(dest, h.name);
    if (h.type === 'directory') await mkdir(to, { recursive: true });
    else if (h.type === 'symlink') {
      await mkdir(path.dirname(to), { recursive: true });
      await rm(to, { force: true });
      await symlink(h.linkname, to);
      entry.resume();
    } else {
      await mkdir(path.dirname(to), { recursive: true });
      const chunks: Buffer[] = [];
      for await (const c of entry) chunks.push(c as Buffer);
      await writeFile(to, Buffer.concat(chunks));
      await chmod(to, h.mode);
    }
  }
  await feeding;
  return names;
}

async function tarEntries(file: string): Promise<{ name: string; size: number; mode: number; uid: number; gid: number; mtime: number; type: string }[]> {
  const out = [];
  const extract = tar.extract();
  const feeding = pipeline(createReadStream(file), extract);
  for await (const entry of extract) {
    const h = entry.header;
    out.push({ name: h.name, size: h.size, mode: h.mode, uid: h.uid, gid: h.gid, mtime: h.mtime.getTime() / 1000, type: h.type });
    entry.resume();
  }
  await feeding;
  return out;
}

interface Layout {
  index: { manifests: { digest: string; size: number; mediaType: string; platform?: Record<string, string> }[] };
  manifest: { config: { digest: string }; layers: { mediaType: string; digest: string; size: number; annotations?: Record<string, string> }[] };
  config: { architecture: string; variant?: string; os: string; rootfs: { diff_ids: string[] }; history: unknown[]; config: { Labels: Record<string, string> } };
  blob: (digest: string) => string;
}

async function readLayout(dir: string): Promise<Layout> {
  const blob = (d: string) => path.join(dir, 'blobs/sha256', d.slice(7));
  const index = JSON.parse(await readFile(path.join(dir, 'index.json'), 'utf8')) as Layout['index'];
  const manifest = JSON.parse(await readFile(blob(index.manifests[0]!.digest), 'utf8')) as Layout['manifest'];
  const config = JSON.parse(await readFile(blob(manifest.config.digest), 'utf8')) as Layout['config'];
  return { index, manifest, config, blob };
}

/** Writes a JSON blob into a layout; returns its descriptor fields. */
async function putBlob(dir: string, data: Buffer): Promise<{ digest: string; size: number }> {
  const digest = digestOf(data);
  await writeFile(path.join(dir, 'blobs/sha256', digest.slice(7)), data);
  return { digest, size: data.length };
}

async function extractAll(t: Test, p: OpenedPayload, files: Fixture['files'], dest: string): Promise<void> {
  await mkdir(dest, { recursive: true });
  for (const c of COMPONENTS) {
    const to = path.join(dest, c);
    await p.extract(c, to);
    t.ok(readFileSync(to).equals(files[c]), `${c} arrives byte for byte`);
    t.equal(statSync(to).mode & 0o777, 0o644, `${c} is 0644`);
  }
}

const work = async (t: Test) => {
  const d = await tempDir('cairn-payload-work-');
  t.teardown(() => rm(d, { recursive: true, force: true }));
  return d;
};

// ----- the format ------------------------------------------------------------

t.test('the archive: one layer per component, annotated; payload.json records each component; valid OCI config', async (t) => {
  const a = await archiveOf(t);
  const layout = path.join(a.dir, 'layout');
  const names = await untar(a.archive, layout);
  const blobNames = names.filter((n) => n.startsWith('blobs/sha256/') && n.length > 'blobs/sha256/'.length);
  t.same(names.slice(-2), ['index.json', 'oci-layout']);
  t.same(blobNames, [...blobNames].sort(), 'blobs in digest order');
  const l = await readLayout(layout);
  t.equal(l.index.manifests.length, 1);
  t.same(l.index.manifests[0]!.platform, { architecture: 'amd64', os: 'linux' });
  t.same(l.manifest.layers.map((x) => x.annotations?.['io.cairn.component']), ['runner', 'kernel', 'initrd', 'rootfs.squashfs', 'payload']);
  t.same(l.manifest.layers.map((x) => x.mediaType), Array(5).fill('application/vnd.oci.image.layer.v1.tar'), 'uncompressed layers');
  t.same(l.config.rootfs.diff_ids, l.manifest.layers.map((x) => x.digest), 'diff_ids are the (uncompressed) layers');
  t.equal(l.config.history.length, 5, 'one history entry per layer');
  t.same((l.config.config as Record<string, unknown>).Entrypoint, ['/usr/bin/cairn'], 'the image runs /usr/bin/cairn');
  t.equal(l.config.os, 'linux');
  t.equal(l.config.architecture, 'amd64');
  t.equal(l.config.config.Labels['org.opencontainers.image.version'], '1.2.3');
  t.equal(l.config.config.Labels['io.cairn.signed-by'], undefined, 'unsigned');
  t.same(a.result.layers.map((x) => x.digest), l.manifest.layers.map((x) => x.digest));
  for (const x of l.manifest.layers) t.equal(digestOf(await readFile(l.blob(x.digest))), x.digest, `blob ${x.annotations?.['io.cairn.component']} matches its digest`);

  const contents: Record<string, string[]> = {};
  for (const x of l.manifest.layers) {
    const entries = await tarEntries(l.blob(x.digest));
    contents[x.annotations!['io.cairn.component']!] = entries.map((e) => e.name);
    for (const e of entries) {
      t.equal(`${e.uid}:${e.gid}`, '0:0', `${e.name} owned by 0:0`);
      t.equal(e.mtime, 0, `${e.name}: time 0, so the layer's bytes are its files' bytes`);
      const runnable = e.type === 'directory' || e.name === 'bin/busybox' || e.name === 'usr/bin/cairn';
      t.equal(e.mode, e.type === 'symlink' ? 0o777 : runnable ? 0o755 : 0o644, `${e.name} mode`);
    }
  }
  t.same(contents, {
    runner: ['bin/', 'bin/busybox', 'bin/sh', 'usr/', 'usr/bin/', 'usr/bin/cairn'],
    kernel: ['cairn/', 'cairn/kernel'],
    initrd: ['cairn/', 'cairn/initrd'],
    'rootfs.squashfs': ['cairn/', 'cairn/rootfs.squashfs'],
    payload: ['cairn/', 'cairn/payload.json', 'cairn/release.json'],
  });

  // the unpacked image: /cairn/... as a container runtime lays the layers out
  const fs = path.join(a.dir, 'fs');
  for (const x of l.manifest.layers) await untar(l.blob(x.digest), fs);
  t.same((await readdir(path.join(fs, 'cairn'))).sort(), ['initrd', 'kernel', 'payload.json', 'release.json', 'rootfs.squashfs']);
  const recordBytes = await readFile(path.join(fs, 'cairn/payload.json'));
  const record = JSON.parse(recordBytes.toString()) as PayloadRecord;
  t.same(Object.keys(record), ['format', 'name', 'version', 'arch', 'sourceDateEpoch', 'components'], 'fixed key order');
  t.same(Object.keys(record.components), ['kernel', 'initrd', 'rootfs.squashfs', 'release.json']);
  t.same(record, {
    format: 1,
    name: 'default',
    version: '1.2.3',
    arch: 'amd64',
    sourceDateEpoch: SDE,
    components: Object.fromEntries(COMPONENTS.map((c) => [c, { sha256: sha(a.files[c]), size: a.files[c].length }])),
  });
  t.ok(renderRecord(parseRecord(recordBytes, 'payload.json')).equals(recordBytes), 'parse and render give the same bytes');
  t.same(a.result.record, record);
  t.notOk(existsSync(path.join(fs, 'cairn/k3s')), 'no separate k3s: it is in the squashfs');

  const skopeo = spawnSync('skopeo', ['inspect', `oci-archive:${a.archive}`], { encoding: 'utf8' });
  if (skopeo.error) t.comment('skopeo is not installed: the archive is not checked by it');
  else {
    t.equal(skopeo.status, 0, `skopeo inspect reads it ${skopeo.stderr}`);
    const meta = JSON.parse(skopeo.stdout) as { Layers: string[]; Architecture: string };
    t.same(meta.Layers, l.manifest.layers.map((x) => x.digest));
    t.equal(meta.Architecture, 'amd64');
  }
});

t.test('deterministic: the same inputs give the same bytes; a layer moves only when its component changes', async (t) => {
  const dir = await tempDir('cairn-payload-det-');
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const fx = await fixture(path.join(dir, 'sys'));
  await mkdir(path.join(dir, 'work'));
  const one = await buildOciArchive(fx.system, path.join(dir, 'work'), path.join(dir, 'one.tar'));
  const two = await buildOciArchive(fx.system, path.join(dir, 'work'), path.join(dir, 'two.tar'));
  t.ok(readFileSync(path.join(dir, 'one.tar')).equals(readFileSync(path.join(dir, 'two.tar'))), 'byte-identical archives');
  t.equal(one.manifestDigest, two.manifestDigest);
  t.same(await readdir(path.join(dir, 'work')), [], 'the layer files are removed from the work folder');

  // a later build (another SOURCE_DATE_EPOCH) with a new squashfs and the same kernel and initrd
  await writeFile(fx.system.squashfs, randomBytes(2 * 1024 * 1024 + 1));
  const three = await buildOciArchive({ ...fx.system, sourceDateEpoch: SDE + 86_400 }, path.join(dir, 'work'), path.join(dir, 'three.tar'));
  const by = (r: typeof one) => Object.fromEntries(r.layers.map((l) => [l.component, l.digest]));
  t.equal(by(three).kernel, by(one).kernel, 'the kernel layer is the same blob');
  t.equal(by(three).initrd, by(one).initrd, 'the initrd layer is the same blob');
  t.not(by(three)['rootfs.squashfs'], by(one)['rootfs.squashfs'], 'the squashfs layer moved');
  t.not(by(three).payload, by(one).payload, 'the record layer moved');
  t.equal(three.record.sourceDateEpoch, SDE + 86_400);

  // each arch's platform
  for (const [arch, platform] of [['arm64', { architecture: 'arm64', os: 'linux', variant: 'v8' }], ['armv7', { architecture: 'arm', os: 'linux', variant: 'v7' }]] as const) {
    await buildOciArchive({ ...fx.system, arch }, path.join(dir, 'work'), path.join(dir, `${arch}.tar`));
    const layout = path.join(dir, `layout-${arch}`);
    await untar(path.join(dir, `${arch}.tar`), layout);
    const l = await readLayout(layout);
    t.same(l.index.manifests[0]!.platform, platform, `${arch}: index platform`);
    t.same({ architecture: l.config.architecture, variant: l.config.variant, os: l.config.os }, platform, `${arch}: config platform`);
  }
});

t.test('the oci writer: <stem>.oci.tar in the output folder, signed when the build has a key', async (t) => {
  const dir = await tempDir('cairn-payload-writer-');
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const fx = await fixture(path.join(dir, 'sys'));
  const key = generateKeys(path.join(dir, 'keys'), 'k');
  await mkdir(path.join(dir, 'out'));
  await mkdir(path.join(dir, 'work'));
  const lines: string[] = [];
  const arts = await oci(fx.system, { outDir: path.join(dir, 'out'), workDir: path.join(dir, 'work'), log: (l) => lines.push(l), signingKey: key.privateKey });
  t.same(arts, [{ file: 'default-1.2.3-amd64.oci.tar', format: 'oci', arch: 'amd64' }]);
  t.match(lines.join('\n'), `signed by key ${key.fingerprint}`);
  const layout = path.join(dir, 'layout');
  await untar(path.join(dir, 'out/default-1.2.3-amd64.oci.tar'), layout);
  const l = await readLayout(layout);
  t.equal(l.config.config.Labels['io.cairn.signed-by'], key.fingerprint);
  const last = await tarEntries(l.blob(l.manifest.layers[4]!.digest));
  t.same(last.map((e) => e.name), ['cairn/', 'cairn/payload.json', 'cairn/payload.json.sig', 'cairn/release.json']);
  t.equal(last[2]!.size, 64, 'a raw ed25519 signature');

  // the image's /bin/sh is the root's static busybox: without one there is no runnable image
  const bb = path.join(fx.system.rootfs, 'usr/bin/busybox');
  const dynamic = ['/bin/ls', '/usr/bin/ls'].find((x) => existsSync(x) && elfIsDynamic(readFileSync(x)));
  if (dynamic) {
    await copyFile(dynamic, bb);
    await t.rejects(buildOciArchive(fx.system, path.join(dir, 'work'), path.join(dir, 'x.tar')), { name: 'UserError', message: /usr\/bin\/busybox is a dynamically linked busybox: the upgrade image needs a static one/, hint: /busybox-static/ });
  }
  await writeFile(bb, '#!/bin/sh\n');
  await t.rejects(buildOciArchive(fx.system, path.join(dir, 'work'), path.join(dir, 'x.tar')), { name: 'UserError', message: /usr\/bin\/busybox is not a busybox executable/ });
  await rm(bb);
  await t.rejects(buildOciArchive(fx.system, path.join(dir, 'work'), path.join(dir, 'x.tar')), { name: 'UserError', message: /the image root .* has no busybox \(looked in \/usr\/bin and \/bin\)/, hint: /busybox-static/ });
  t.notOk(existsSync(path.join(dir, 'x.tar')), 'no archive written');
});

t.test('the image runs: /usr/bin/cairn copies the payload to the node at /host and runs the node\'s cairn upgrade on it', { skip: process.getuid?.() !== 0 && 'needs root (chroot)' }, async (t) => {
  const key = generateKeys(path.join(await work(t), 'keys'), 'k');
  const a = await archiveOf(t, { signingKey: key.privateKey });
  const layout = path.join(a.dir, 'layout');
  await untar(a.archive, layout);
  const l = await readLayout(layout);
  // the container's root, as a runtime lays the layers out
  const c = path.join(a.dir, 'container');
  for (const x of l.manifest.layers) await untar(l.blob(x.digest), c);
  t.equal(readFileSync(path.join(c, 'usr/bin/cairn'), 'utf8'), renderRunner());
  const bare = spawnSync('chroot', [c, '/usr/bin/cairn', 'upgrade'], { encoding: 'utf8' });
  t.equal(bare.status, 1, 'no node mounted at /host');
  t.match(bare.stderr, /no cairn node at \/host \(\/host\/usr\/local\/bin\/cairn is missing\): mount the node's root filesystem at \/host/);
  const help = spawnSync('chroot', [c, '/usr/bin/cairn', '--help'], { encoding: 'utf8' });
  t.equal(help.status, 0);
  t.match(help.stdout, /usage: cairn upgrade \[options\]/);

  // the node: a shell, and a cairn that reports how it was called and what it was given
  const host = path.join(c, 'host');
  await mkdir(path.join(host, 'bin'), { recursive: true });
  await mkdir(path.join(host, 'usr/local/bin'), { recursive: true });
  await mkdir(path.join(host, 'out'));
  await copyFile(HOST_BUSYBOX, path.join(host, 'bin/busybox'));
  await symlink('busybox', path.join(host, 'bin/sh'));
  await writeFile(
    path.join(host, 'usr/local/bin/cairn'),
    '#!/bin/sh\necho "$@" > /out/args\ncd /var/lib/cairn/upgrade-payload && /bin/busybox sha256sum * > /out/sums\nexit 3\n',
    { mode: 0o755 },
  );
  await mkdir(path.join(host, 'var/lib/cairn/upgrade-payload.new'), { recursive: true });
  await writeFile(path.join(host, 'var/lib/cairn/upgrade-payload.new/stale'), 'from a job that was killed');
  const r = spawnSync('chroot', [c, '/usr/bin/cairn', 'upgrade', '--check'], { encoding: 'utf8' });
  t.equal(r.status, 3, `the node's cairn's exit status is the job's ${r.stderr}`);
  t.equal(readFileSync(path.join(host, 'out/args'), 'utf8'), 'upgrade --source /var/lib/cairn/upgrade-payload --check\n');
  const sums = Object.fromEntries(readFileSync(path.join(host, 'out/sums'), 'utf8').trim().split('\n').map((x) => x.split(/\s+/).reverse()));
  t.same(Object.keys(sums).sort(), ['initrd', 'kernel', 'payload.json', 'payload.json.sig', 'release.json', 'rootfs.squashfs'], 'every payload file, the signature too, and nothing stale');
  for (const comp of COMPONENTS) t.equal(sums[comp], sha(a.files[comp]), `${comp} copied intact`);
  t.notOk(existsSync(path.join(host, 'var/lib/cairn/upgrade-payload')), 'the copy is removed afterwards');
  t.notOk(existsSync(path.join(host, 'var/lib/cairn/upgrade-payload.new')));
  // and the copy is what cairn upgrade reads: a folder of payload files
  await rm(path.join(host, 'out/args'));
  await writeFile(path.join(host, 'usr/local/bin/cairn'), '#!/bin/sh\n/bin/busybox cp -r /var/lib/cairn/upgrade-payload /out/payload\n', { mode: 0o755 });
  t.equal(spawnSync('chroot', [c, '/usr/bin/cairn', 'upgrade'], { encoding: 'utf8' }).status, 0);
  const p = await openPayload(path.join(host, 'out/payload'), { arch: 'amd64', workDir: await work(t) });
  t.equal(p.kind, 'folder');
  t.same(p.record, a.result.record);
  t.ok(p.signature);
  await p.close();
});

// ----- reading it back: every kind of source ---------------------------------------

t.test('an OCI archive: the record, the signature, each component streamed to its file', async (t) => {
  const key = generateKeys(path.join(await work(t), 'keys'), 'k');
  const a = await archiveOf(t, { signingKey: key.privateKey });
  const lines: string[] = [];
  const p = await openPayload(a.archive, { arch: 'amd64', workDir: await work(t), log: (l) => lines.push(l) });
  t.equal(p.kind, 'archive');
  t.same(p.record, a.result.record);
  t.ok(p.recordBytes.equals(renderRecord(a.result.record)), 'recordBytes are the bytes that were signed');
  t.equal(p.signature?.length, 64);
  t.equal(p.bytes, COMPONENTS.reduce((n, c) => n + a.files[c].length, 0));
  t.match(lines.join('\n'), /default 1\.2\.3 amd64, [\d.]+ MiB, signed/);
  const trusted = path.join(a.dir, 'trusted');
  await mkdir(trusted);
  await copyFile(key.publicKey, path.join(trusted, `${key.fingerprint}.pub`));
  t.same(verifyRecord(p.recordBytes, p.signature, trusted), { signed: true, trusted: true, key: key.fingerprint });
  await extractAll(t, p, a.files, path.join(a.dir, 'got'));
  // extract overwrites what is there
  await writeFile(path.join(a.dir, 'got/kernel'), 'old');
  await p.extract('kernel', path.join(a.dir, 'got/kernel'));
  t.ok(readFileSync(path.join(a.dir, 'got/kernel')).equals(a.files.kernel));
  await p.close();
  await t.rejects(p.extract('kernel', path.join(a.dir, 'x')), /closed/);
  // no arch given: the only image is taken
  const q = await openPayload(a.archive, { workDir: await work(t) });
  t.equal(q.record.arch, 'amd64');
  await q.close();
});

t.test('an OCI layout folder (the archive unpacked)', async (t) => {
  const a = await archiveOf(t);
  const layout = path.join(a.dir, 'layout');
  await untar(a.archive, layout);
  const p = await openPayload(layout, { arch: 'amd64', workDir: await work(t) });
  t.equal(p.kind, 'layout');
  t.same(p.record, a.result.record);
  t.equal(p.signature, undefined);
  await extractAll(t, p, a.files, path.join(a.dir, 'got'));
  await p.close();
});

t.test('a folder of payload files: the unpacked image (with cairn/) and cairn/ itself', async (t) => {
  const key = generateKeys(path.join(await work(t), 'keys'), 'k');
  const a = await archiveOf(t, { signingKey: key.privateKey });
  const layout = path.join(a.dir, 'layout');
  await untar(a.archive, layout);
  const l = await readLayout(layout);
  const fs = path.join(a.dir, 'fs');
  for (const x of l.manifest.layers) await untar(l.blob(x.digest), fs);
  for (const src of [fs, path.join(fs, 'cairn')]) {
    const p = await openPayload(src, { arch: 'amd64', workDir: await work(t) });
    t.equal(p.kind, 'folder');
    t.same(p.record, a.result.record);
    t.equal(p.signature?.length, 64, 'the signature is read too');
    await extractAll(t, p, a.files, path.join(a.dir, `got-${path.basename(src)}`));
    await p.close();
  }
});

/** A local server for the archive: whole, cut off mid-body, ended early without a length, or missing. */
async function serve(t: Test, archive: string): Promise<string> {
  const data = await readFile(archive);
  const server: Server = createServer((req, res) => {
    if (req.url === '/payload.oci.tar') {
      res.writeHead(200, { 'content-length': data.length, 'content-type': 'application/x-tar' });
      res.end(data);
    } else if (req.url === '/cut.oci.tar') {
      res.writeHead(200, { 'content-length': data.length });
      res.write(data.subarray(0, Math.floor(data.length / 2)), () => res.socket?.destroy());
    } else if (req.url === '/chunked.oci.tar') {
      res.writeHead(200, { 'transfer-encoding': 'chunked' });
      res.end(data.subarray(0, Math.floor(data.length / 2)));
    } else {
      res.writeHead(404);
      res.end('no such file');
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

t.test('an http URL: downloaded into workDir, streamed; removed on close', async (t) => {
  const a = await archiveOf(t);
  const base = await serve(t, a.archive);
  const wd = await work(t);
  const lines: string[] = [];
  const p = await openPayload(`${base}/payload.oci.tar`, { arch: 'amd64', workDir: path.join(wd, 'dl'), log: (l) => lines.push(l) });
  t.equal(p.kind, 'url');
  t.same(p.record, a.result.record);
  t.match(lines.join('\n'), /downloading http:\/\/127\.0\.0\.1:\d+\/payload\.oci\.tar/);
  t.equal((await readdir(path.join(wd, 'dl'))).length, 1, 'the download sits in workDir');
  await extractAll(t, p, a.files, path.join(a.dir, 'got'));
  await p.close();
  t.same(await readdir(path.join(wd, 'dl')), [], 'and is gone after close');
});

t.test('an http URL that fails: HTTP errors, a refused connection, a body cut short (with and without a length)', async (t) => {
  const a = await archiveOf(t);
  const base = await serve(t, a.archive);
  const wd = await work(t);
  await t.rejects(openPayload(`${base}/missing.oci.tar`, { workDir: wd }), { name: 'UserError', message: /cannot download http:\/\/127\.0\.0\.1:\d+\/missing\.oci\.tar: the server answered HTTP 404/ });
  await t.rejects(openPayload(`${base}/cut.oci.tar`, { workDir: wd }), { name: 'UserError', message: /the download of .*cut\.oci\.tar broke off after \d+ bytes of \d+ .*truncated/ });
  await t.rejects(openPayload(`${base}/chunked.oci.tar`, { workDir: wd }), { name: 'UserError', message: /chunked\.oci\.tar is truncated/ }, 'no length announced: the archive itself is found cut');
  const closed = createServer();
  await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
  const port = (closed.address() as AddressInfo).port;
  await new Promise<void>((resolve) => closed.close(() => resolve()));
  await t.rejects(openPayload(`http://127.0.0.1:${port}/x.oci.tar`, { workDir: wd }), { name: 'UserError', message: /cannot download http:\/\/127\.0\.0\.1:\d+\/x\.oci\.tar: ECONNREFUSED/ });
  await t.rejects(openPayload(`http://user:secret@127.0.0.1:${port}/x.oci.tar?token=abc`, { workDir: wd }), { message: /^cannot download http:\/\/127\.0\.0\.1:\d+\/x\.oci\.tar\?…: / }, 'no credentials in the message');
  t.same(await readdir(wd), [], 'nothing left in workDir');
  await t.rejects(openPayload('ftp://example.org/x.tar', { workDir: wd }), { message: /cannot read a payload from ftp:/ });
});

t.test('a multi-arch index: the node picks its arch; none matching names the arches there', async (t) => {
  const amd = await archiveOf(t, { arch: 'amd64' });
  const arm = await archiveOf(t, { arch: 'arm64' });
  const layout = path.join(amd.dir, 'multi');
  await untar(amd.archive, layout);
  const amdIndex = JSON.parse(await readFile(path.join(layout, 'index.json'), 'utf8')) as Layout['index'];
  await untar(arm.archive, layout);
  await mkdir(path.join(arm.dir, 'l'));
  await untar(arm.archive, path.join(arm.dir, 'l'));
  const armIndex = JSON.parse(await readFile(path.join(arm.dir, 'l/index.json'), 'utf8')) as Layout['index'];
  await writeFile(path.join(layout, 'index.json'), JSON.stringify({ ...amdIndex, manifests: [...amdIndex.manifests, ...armIndex.manifests] }));
  const p = await openPayload(layout, { arch: 'arm64', workDir: await work(t) });
  t.equal(p.record.arch, 'arm64');
  await extractAll(t, p, arm.files, path.join(arm.dir, 'got'));
  await p.close();
  const q = await openPayload(layout, { arch: 'amd64', workDir: await work(t) });
  t.equal(q.record.arch, 'amd64');
  await q.close();
  await t.rejects(openPayload(layout, { arch: 'armv7', workDir: await work(t) }), { name: 'UserError', message: /has no image for armv7: it has amd64, arm64/ });
  await t.rejects(openPayload(layout, { workDir: await work(t) }), { name: 'UserError', message: /has images for amd64, arm64; which one is meant/ });
  await t.rejects(openPayload(layout, { arch: 'sparc', workDir: await work(t) }), { message: /unknown arch "sparc"/ });
});

t.test('the wrong arch: a single-arch archive and a folder of payload files', async (t) => {
  const a = await archiveOf(t, { arch: 'arm64' });
  await t.rejects(openPayload(a.archive, { arch: 'amd64', workDir: await work(t) }), { name: 'UserError', message: /has no image for amd64: it has arm64/ });
  const layout = path.join(a.dir, 'layout');
  await untar(a.archive, layout);
  const l = await readLayout(layout);
  const fs = path.join(a.dir, 'fs');
  for (const x of l.manifest.layers) await untar(l.blob(x.digest), fs);
  await t.rejects(openPayload(fs, { arch: 'amd64', workDir: await work(t) }), { name: 'UserError', message: /is a payload for arm64; this node is amd64/ });
});

t.test('layers without annotations and compressed with gzip (as a registry copy may have them) are read too', async (t) => {
  const a = await archiveOf(t);
  const layout = path.join(a.dir, 'layout');
  await untar(a.archive, layout);
  const l = await readLayout(layout);
  const layers = [];
  for (const x of l.manifest.layers) {
    const gz = gzipSync(await readFile(l.blob(x.digest)));
    layers.push({ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', ...(await putBlob(layout, gz)) });
  }
  const manifest = await putBlob(layout, Buffer.from(JSON.stringify({ ...l.manifest, layers })));
  await writeFile(path.join(layout, 'index.json'), JSON.stringify({ ...l.index, manifests: [{ ...l.index.manifests[0], ...manifest }] }));
  const lines: string[] = [];
  const p = await openPayload(layout, { arch: 'amd64', workDir: await work(t), log: (x) => lines.push(x) });
  t.match(lines.join('\n'), /without cairn's annotations; looking into them/);
  t.same(p.record, a.result.record);
  await extractAll(t, p, a.files, path.join(a.dir, 'got'));
  await p.close();

  const zstd = await putBlob(layout, Buffer.from(JSON.stringify({ ...l.manifest, layers: l.manifest.layers.map((x) => ({ ...x, mediaType: 'application/vnd.oci.image.layer.v1.tar+zstd' })) })));
  await writeFile(path.join(layout, 'index.json'), JSON.stringify({ ...l.index, manifests: [{ ...l.index.manifests[0], ...zstd }] }));
  await t.rejects(openPayload(layout, { workDir: await work(t) }), { name: 'UserError', message: /is application\/vnd\.oci\.image\.layer\.v1\.tar\+zstd, which this cairn cannot unpack/ });
});

// ----- broken sources -------------------------------------------------------------

t.test('a flipped byte in the squashfs layer: the component is refused and its file removed; the others still arrive', async (t) => {
  const a = await archiveOf(t);
  const data = await readFile(a.archive);
  const at = data.indexOf(a.files['rootfs.squashfs'].subarray(1_000_000, 1_000_064));
  t.ok(at > 0, 'the squashfs bytes are in the archive');
  data[at + 10] = data[at + 10]! ^ 0x01;
  await writeFile(a.archive, data);
  const p = await openPayload(a.archive, { arch: 'amd64', workDir: await work(t) });
  const dest = path.join(a.dir, 'rootfs.squashfs');
  await t.rejects(p.extract('rootfs.squashfs', dest), {
    name: 'UserError',
    message: new RegExp(`^rootfs\\.squashfs in .*payload\\.oci\\.tar is tampered or corrupt: payload\\.json says ${a.files['rootfs.squashfs'].length} bytes with sha256 ${sha(a.files['rootfs.squashfs'])}; it holds ${a.files['rootfs.squashfs'].length} bytes with sha256 [0-9a-f]{64}$`),
  });
  t.notOk(existsSync(dest), 'the bad file is removed');
  await p.extract('kernel', path.join(a.dir, 'kernel'));
  t.ok(readFileSync(path.join(a.dir, 'kernel')).equals(a.files.kernel));
  await p.close();
});

t.test('a changed byte outside the file data (tar padding): the layer digest catches it', async (t) => {
  const a = await archiveOf(t);
  const data = await readFile(a.archive);
  const end = data.indexOf(a.files.kernel.subarray(-64)) + 64;
  t.equal(data[end], 0, 'padding after the kernel');
  data[end] = 1;
  await writeFile(a.archive, data);
  const p = await openPayload(a.archive, { arch: 'amd64', workDir: await work(t) });
  const dest = path.join(a.dir, 'kernel');
  await t.rejects(p.extract('kernel', dest), { name: 'UserError', message: /the layer sha256:[0-9a-f]{64} \(kernel\) does not match its digest \(it hashes to sha256:[0-9a-f]{64}, \d+ bytes\): tampered or corrupt/ });
  t.notOk(existsSync(dest));
  await p.close();
});

t.test('payload.json changed after signing: in an archive the layer digest refuses it, in a folder the signature does', async (t) => {
  const dir = await work(t);
  const key = generateKeys(path.join(dir, 'keys'), 'k');
  const trusted = path.join(dir, 'trusted');
  await mkdir(trusted);
  await copyFile(key.publicKey, path.join(trusted, `${key.fingerprint}.pub`));
  const a = await archiveOf(t, { signingKey: key.privateKey });

  const data = await readFile(a.archive);
  const at = data.indexOf('"version": "1.2.3"');
  t.ok(at > 0);
  data.write('"version": "1.2.4"', at);
  await writeFile(path.join(a.dir, 'edited.tar'), data);
  await t.rejects(openPayload(path.join(a.dir, 'edited.tar'), { workDir: dir }), { name: 'UserError', message: /the layer sha256:[0-9a-f]{64} \(payload\) does not match its digest/ });

  const layout = path.join(a.dir, 'layout');
  await untar(a.archive, layout);
  const l = await readLayout(layout);
  const fs = path.join(a.dir, 'fs');
  for (const x of l.manifest.layers) await untar(l.blob(x.digest), fs);
  const rec = path.join(fs, 'cairn/payload.json');
  await writeFile(rec, (await readFile(rec, 'utf8')).replace('"version": "1.2.3"', '"version": "1.2.4"'));
  const p = await openPayload(fs, { arch: 'amd64', workDir: dir });
  t.equal(p.record.version, '1.2.4', 'read as written');
  t.throws(() => verifyRecord(p.recordBytes, p.signature, trusted), {
    name: 'UserError',
    message: new RegExp(`signature is not from a key this node trusts, or payload\\.json was changed after signing: its image trusts keys ${key.fingerprint}`),
  });
  await p.close();
});

t.test('signatures on real payloads: unsigned with a trusted key, a key the node does not trust, no keys at all', async (t) => {
  const dir = await work(t);
  const trustedKey = generateKeys(path.join(dir, 'keys'), 'node');
  const otherKey = generateKeys(path.join(dir, 'keys'), 'other');
  const trusted = path.join(dir, 'trusted');
  await mkdir(trusted);
  await copyFile(trustedKey.publicKey, path.join(trusted, `${trustedKey.fingerprint}.pub`));

  const unsigned = await archiveOf(t);
  const pu = await openPayload(unsigned.archive, { arch: 'amd64', workDir: dir });
  t.throws(() => verifyRecord(pu.recordBytes, pu.signature, trusted), { name: 'UserError', message: new RegExp(`only takes signed payloads: its image trusts keys ${trustedKey.fingerprint}`), hint: /cairn build --sign KEY/ });
  t.same(verifyRecord(pu.recordBytes, pu.signature, path.join(dir, 'no-keys')), { signed: false, trusted: false }, 'an image without keys takes it');
  await pu.close();

  const wrong = await archiveOf(t, { signingKey: otherKey.privateKey });
  const pw = await openPayload(wrong.archive, { arch: 'amd64', workDir: dir });
  t.throws(() => verifyRecord(pw.recordBytes, pw.signature, trusted), { name: 'UserError', message: new RegExp(`signature is not from a key this node trusts.*trusts keys ${trustedKey.fingerprint}$`) });
  t.same(verifyRecord(pw.recordBytes, pw.signature, path.join(dir, 'no-keys')), { signed: true, trusted: false });
  await pw.close();
});

t.test('truncated and damaged archives', async (t) => {
  const a = await archiveOf(t);
  const wd = await work(t);
  const full = await readFile(a.archive);
  const cut = path.join(a.dir, 'cut.tar');
  await writeFile(cut, full.subarray(0, Math.floor(full.length / 2)));
  await t.rejects(openPayload(cut, { workDir: wd }), { name: 'UserError', message: /cut\.tar is truncated: its entry blobs\/sha256\/[0-9a-f]{64} needs \d+ bytes, the file ends \d+ bytes into it/ });
  await writeFile(cut, full.subarray(0, full.length - 1024));
  await t.rejects(openPayload(cut, { workDir: wd }), { name: 'UserError', message: /cut\.tar is truncated: the tar archive ends after \d+ bytes, without its end marker/ });
  await writeFile(cut, full.subarray(0, 100));
  await t.rejects(openPayload(cut, { workDir: wd }), { message: /is not an OCI archive: it is too short to be a tar file/ });

  const damaged = Buffer.from(full);
  damaged[0] = damaged[0]! ^ 0xff;
  await writeFile(cut, damaged);
  await t.rejects(openPayload(cut, { workDir: wd }), { name: 'UserError', message: /cut\.tar is not an OCI archive: it is not a tar file/ });

  const junk = path.join(a.dir, 'junk.bin');
  await writeFile(junk, randomBytes(4096));
  await t.rejects(openPayload(junk, { workDir: wd }), { name: 'UserError', message: /junk\.bin is not an OCI archive: it is not a tar file/ });
  await writeFile(junk, gzipSync(full.subarray(0, 10_000)));
  await t.rejects(openPayload(junk, { workDir: wd }), { name: 'UserError', message: /junk\.bin is gzip-compressed, not an OCI archive/ });

  // a tar that is no OCI image
  const pack = tar.pack();
  pack.entry({ name: 'hello.txt' }, 'hello\n');
  pack.finalize();
  const chunks: Buffer[] = [];
  for await (const c of pack) chunks.push(c as Buffer);
  await writeFile(junk, Buffer.concat(chunks));
  await t.rejects(openPayload(junk, { workDir: wd }), { name: 'UserError', message: /junk\.bin has no index\.json: it is not an OCI image/ });
});

t.test('a damaged layout folder: missing index.json, manifest or layer; a truncated blob; malformed JSON; an image that is not cairn\'s', async (t) => {
  const a = await archiveOf(t);
  const wd = await work(t);
  const fresh = async (name: string) => {
    const d = path.join(a.dir, name);
    await untar(a.archive, d);
    return { dir: d, l: await readLayout(d) };
  };
  {
    const { dir } = await fresh('no-index');
    await rm(path.join(dir, 'index.json'));
    await t.rejects(openPayload(dir, { workDir: wd }), { name: 'UserError', message: /no-index has no index\.json: the OCI image is incomplete or truncated/ });
  }
  {
    const { dir, l } = await fresh('no-manifest');
    await rm(l.blob(l.index.manifests[0]!.digest));
    await t.rejects(openPayload(dir, { workDir: wd }), { name: 'UserError', message: /no-manifest has no blob sha256:[0-9a-f]{64} \(the image manifest\): the image is incomplete or truncated/ });
  }
  {
    const { dir, l } = await fresh('no-layer');
    await rm(l.blob(l.manifest.layers.find((x) => x.annotations?.['io.cairn.component'] === 'rootfs.squashfs')!.digest));
    await t.rejects(openPayload(dir, { workDir: wd }), { name: 'UserError', message: new RegExp(`no-layer has no blob ${l.manifest.layers.find((x) => x.annotations?.['io.cairn.component'] === 'rootfs.squashfs')!.digest} \\(the layer rootfs\\.squashfs\\)`) });
  }
  {
    const { dir, l } = await fresh('short-layer');
    await truncate(l.blob(l.manifest.layers.find((x) => x.annotations?.['io.cairn.component'] === 'rootfs.squashfs')!.digest), 1000);
    await t.rejects(openPayload(dir, { workDir: wd }), { name: 'UserError', message: /the layer sha256:[0-9a-f]{64} \(rootfs\.squashfs\) is 1000 bytes, its descriptor says \d+: truncated or corrupt/ });
  }
  {
    const { dir, l } = await fresh('bad-manifest');
    const m = l.blob(l.index.manifests[0]!.digest);
    const bytes = await readFile(m);
    bytes[10] = bytes[10]! ^ 0x20;
    await writeFile(m, bytes);
    await t.rejects(openPayload(dir, { workDir: wd }), { name: 'UserError', message: /the image manifest does not match its digest sha256:[0-9a-f]{64} \(it hashes to sha256:[0-9a-f]{64}\): tampered or corrupt/ });
  }
  {
    const { dir } = await fresh('bad-index');
    await writeFile(path.join(dir, 'index.json'), '{"manifests": [');
    await t.rejects(openPayload(dir, { workDir: wd }), { name: 'UserError', message: /index\.json is not valid JSON/ });
    await writeFile(path.join(dir, 'index.json'), '{"manifests": [{"digest": "sha256:../../etc/passwd", "size": 1}]}');
    await t.rejects(openPayload(dir, { workDir: wd }), { name: 'UserError', message: /has no valid sha256 digest/ }, 'a digest is never a path');
    await writeFile(path.join(dir, 'index.json'), '{"manifests": []}');
    await t.rejects(openPayload(dir, { workDir: wd }), { message: /index\.json names no image/ });
  }
  {
    // an OCI image, but not a cairn upgrade image
    const dir = path.join(a.dir, 'foreign');
    await mkdir(path.join(dir, 'blobs/sha256'), { recursive: true });
    const pack = tar.pack();
    pack.entry({ name: 'etc/hello' }, 'hello\n');
    pack.finalize();
    const chunks: Buffer[] = [];
    for await (const c of pack) chunks.push(c as Buffer);
    const layer = await putBlob(dir, Buffer.concat(chunks));
    const config = await putBlob(dir, Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [layer.digest] } })));
    const manifest = await putBlob(dir, Buffer.from(JSON.stringify({ schemaVersion: 2, config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config }, layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', ...layer }] })));
    await writeFile(path.join(dir, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', ...manifest, platform: { architecture: 'amd64', os: 'linux' } }] }));
    await writeFile(path.join(dir, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
    await t.rejects(openPayload(dir, { arch: 'amd64', workDir: wd }), { name: 'UserError', message: /foreign is an OCI image but not a cairn upgrade image: no layer holds cairn\/payload\.json/ });
  }
});

t.test('a folder of payload files that is wrong: malformed or unknown payload.json, missing, short or changed components', async (t) => {
  const a = await archiveOf(t);
  const wd = await work(t);
  const layout = path.join(a.dir, 'layout');
  await untar(a.archive, layout);
  const l = await readLayout(layout);
  const fresh = async (name: string) => {
    const d = path.join(a.dir, name);
    for (const x of l.manifest.layers) await untar(l.blob(x.digest), d);
    return path.join(d, 'cairn');
  };
  const rec = (d: string) => path.join(d, 'payload.json');
  const record = JSON.parse(await readFile(rec(await fresh('x')), 'utf8')) as Record<string, unknown>;

  const d = await fresh('bad');
  await writeFile(rec(d), '{"format": 1, "name": ');
  await t.rejects(openPayload(d, { workDir: wd }), { name: 'UserError', message: /payload\.json is not valid JSON/ });
  await writeFile(rec(d), JSON.stringify({ ...record, format: 2 }));
  await t.rejects(openPayload(d, { workDir: wd }), { name: 'UserError', message: /payload\.json has format 2, which this cairn does not know \(it reads format 1\)/ });
  await writeFile(rec(d), JSON.stringify({ name: 'x' }));
  await t.rejects(openPayload(d, { workDir: wd }), { message: /has no "format": it is not a cairn payload record/ });
  await writeFile(rec(d), '[]');
  await t.rejects(openPayload(d, { workDir: wd }), { message: /is not a JSON object/ });
  const comps = record.components as Record<string, unknown>;
  await writeFile(rec(d), JSON.stringify({ ...record, version: '../../etc', arch: 'mips', components: { ...comps, kernel: { sha256: 'abc', size: -1 }, extra: {} } }));
  await t.rejects(openPayload(d, { workDir: wd }), {
    name: 'UserError',
    message: /payload\.json is malformed: "version" must be a version .*"\.\.\/\.\.\/etc"; "arch" must be one of amd64, arm64, armv7, not "mips"; "components" has "extra", .*; components\.kernel\.sha256 must be 64 hex digits, not "abc"; components\.kernel\.size must be a byte count, not -1/,
  });
  const { initrd: _gone, ...noInitrd } = comps;
  await writeFile(rec(d), JSON.stringify({ ...record, components: noInitrd }));
  await t.rejects(openPayload(d, { workDir: wd }), { message: /"components" has no "initrd"/ });

  const missing = await fresh('missing');
  await rm(path.join(missing, 'initrd'));
  await t.rejects(openPayload(missing, { workDir: wd }), { name: 'UserError', message: /missing\/cairn has no initrd: the payload is incomplete/ });

  const short = await fresh('short');
  await truncate(path.join(short, 'rootfs.squashfs'), 4096);
  await t.rejects(openPayload(short, { workDir: wd }), { name: 'UserError', message: new RegExp(`rootfs\\.squashfs in .*short/cairn is tampered or corrupt: payload\\.json says ${a.files['rootfs.squashfs'].length} bytes .*; the file is 4096 bytes`) });

  const changed = await fresh('changed');
  const k = await readFile(path.join(changed, 'kernel'));
  k[5000] = k[5000]! ^ 0x80;
  await writeFile(path.join(changed, 'kernel'), k);
  const p = await openPayload(changed, { workDir: wd });
  const dest = path.join(a.dir, 'kernel.out');
  await t.rejects(p.extract('kernel', dest), { name: 'UserError', message: new RegExp(`^kernel in .*changed/cairn is tampered or corrupt: payload\\.json says ${k.length} bytes with sha256 ${sha(a.files.kernel)}; it holds ${k.length} bytes with sha256 ${sha(k)}$`) });
  t.notOk(existsSync(dest), 'removed');
  // a component that grew after opening: stopped as soon as it is too long
  const grown = await fresh('grown');
  const q = await openPayload(grown, { workDir: wd });
  await writeFile(path.join(grown, 'initrd'), Buffer.concat([a.files.initrd, Buffer.from('more')]));
  await t.rejects(q.extract('initrd', dest), { message: /initrd in .* is tampered or corrupt: payload\.json says \d+ bytes .*; more than \d+ bytes arrived/ });
  t.notOk(existsSync(dest));
});

t.test('sources that are none of the kinds', async (t) => {
  const wd = await work(t);
  await t.rejects(openPayload(path.join(wd, 'nothing.tar'), { workDir: wd }), { name: 'UserError', message: /the payload .*nothing\.tar does not exist/ });
  await t.rejects(openPayload('/dev/null', { workDir: wd }), { name: 'UserError', message: /the payload \/dev\/null is neither a file nor a folder/ });
  const empty = path.join(wd, 'empty');
  await mkdir(empty);
  await writeFile(path.join(empty, 'README'), 'x');
  await t.rejects(openPayload(empty, { workDir: wd }), { name: 'UserError', message: /empty holds neither an OCI image layout \(index\.json, oci-layout\) nor payload files/ });
});

t.test('an extract that is aborted removes its file', async (t) => {
  const a = await archiveOf(t);
  const controller = new AbortController();
  const p = await openPayload(a.archive, { arch: 'amd64', workDir: await work(t), signal: controller.signal });
  const dest = path.join(a.dir, 'sq');
  const running = p.extract('rootfs.squashfs', dest);
  setTimeout(() => controller.abort(new Error('stop now')), 5);
  await t.rejects(running, /stop now|aborted/);
  t.notOk(existsSync(dest));
  await p.close();
});
