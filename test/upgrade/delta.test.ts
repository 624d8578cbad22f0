// Delta payloads: the oci writer's delta (rootfs.squashfs as a zstd patch
// against the previous version, the components that are the previous
// version's left out) read back through openPayload and applied against the
// installed base, the unchanged components copied from the base's folder; a
// wrong or missing base (squashfs or kernel), a tampered patch, a base kernel
// that changed after the open and a patch that makes another squashfs refused
// with nothing left behind; the signature over delta.unchanged; cairn build
// --delta-from through the pipeline, and every previous build a delta cannot
// be made against refused before any stage runs.
import t, { type Test } from 'tap';
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, existsSync, readFileSync, readdirSync } from 'node:fs';
import { copyFile, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { readState, renderState } from '../../src/boot/state.js';
import { StageCache } from '../../src/builder/cache.js';
import { elfIsDynamic } from '../../src/builder/initramfs/index.js';
import { buildOciArchive, oci } from '../../src/builder/outputs/oci.js';
import { build } from '../../src/builder/pipeline.js';
import { previousPayloads } from '../../src/builder/previous.js';
import { loadSpec } from '../../src/builder/spec.js';
import { rootfsInputs, rootfsKey } from '../../src/builder/stages/rootfs.js';
import { mksquashfsArgs, squashfsInputs } from '../../src/builder/stages/squashfs.js';
import type { Arch, SystemArtifacts } from '../../src/builder/types.js';
import { DELTA_WINDOW_LOG, PATCH_FILE, makePatch } from '../../src/upgrade/delta.js';
import { generateKeys, verifyRecord } from '../../src/upgrade/keys.js';
import { COMPONENTS, openPayload, parseRecord, renderRecord, type ComponentName, type ComponentRecord, type OpenOptions } from '../../src/upgrade/payload.js';
import { upgrade } from '../../src/upgrade/upgrade.js';
import type { Exec } from '../../src/init/exec.js';
import tar from 'tar-stream';
import { makeFakeRoot, quickBuild, tempDir, writeSpec, KR } from '../builder/support.js';

const HOST_BUSYBOX = ['/usr/bin/busybox', '/bin/busybox'].find((p) => existsSync(p) && !elfIsDynamic(readFileSync(p))) ?? '';
if (!HOST_BUSYBOX) throw new Error('these tests need a static busybox on the machine: apt-get install busybox-static');
if (spawnSync('zstd', ['--version']).status !== 0) throw new Error('these tests need zstd on the machine: apt-get install zstd');
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

async function work(t: Test, prefix = 'cairn-delta-'): Promise<string> {
  const dir = await tempDir(prefix);
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** A squashfs-like file: random (so that only the patch can make it small), several read chunks. */
function baseSquashfs(): Buffer {
  return randomBytes(3 * 1024 * 1024 + 13);
}

/** The base with one small change in the middle (a file of another size: everything after it moves) and a tail changed. */
function changed(base: Buffer): Buffer {
  const mid = 1_500_000;
  return Buffer.concat([base.subarray(0, mid), randomBytes(700), base.subarray(mid + 300, base.length - 64), randomBytes(64)]);
}

async function system(dir: string, opts: { version: string; squashfs: Buffer; arch?: Arch; kernel?: Buffer; initrd?: Buffer }): Promise<SystemArtifacts> {
  await mkdir(path.join(dir, 'rootfs/usr/bin'), { recursive: true });
  await copyFile(HOST_BUSYBOX, path.join(dir, 'rootfs/usr/bin/busybox'));
  const arch = opts.arch ?? 'amd64';
  const at = (n: string) => path.join(dir, n);
  await writeFile(at('kernel'), opts.kernel ?? Buffer.from('kernel of every version\n'.repeat(3000)));
  await writeFile(at('initrd'), opts.initrd ?? Buffer.from(`initrd ${opts.version}\n`));
  await writeFile(at('rootfs.squashfs'), opts.squashfs);
  await writeFile(at('release.json'), `${JSON.stringify({ name: 'default', version: opts.version, arch, inputs: { cmdline: 'console=ttyS0' } })}\n`);
  return {
    name: 'default', version: opts.version, arch, kernelRelease: '6.12.0-test', kernel: at('kernel'), initramfs: at('initrd'), squashfs: at('rootfs.squashfs'),
    cmdline: 'console=ttyS0', release: at('release.json'), rootfs: at('rootfs'), sourceDateEpoch: 1_700_000_000,
  };
}

/** A version's payload.json components, from its files (what its full payload's record names). */
async function componentsOf(sys: SystemArtifacts): Promise<Record<ComponentName, ComponentRecord>> {
  const of = async (f: string) => {
    const data = await readFile(f);
    return { sha256: sha(data), size: data.length };
  };
  return { kernel: await of(sys.kernel), initrd: await of(sys.initramfs), 'rootfs.squashfs': await of(sys.squashfs), 'release.json': await of(sys.release) };
}

/** The delta option of buildOciArchive against `base`. */
async function against(base: SystemArtifacts) {
  return { version: base.version, squashfs: base.squashfs, components: await componentsOf(base) };
}

/**
 * Version 1.0 (the base, installed on the node: its folder v1/ holds kernel,
 * initrd, rootfs.squashfs and release.json as cairn/system/1.0/ does) and 2.0
 * (a small change to its squashfs, another initrd, the same kernel), the full
 * 2.0 payload and the delta from 1.0.
 */
async function pair(t: Test, opts: { signingKey?: string; arch?: Arch } = {}) {
  const dir = await work(t);
  const a = baseSquashfs();
  const b = changed(a);
  const v1 = await system(path.join(dir, 'v1'), { version: '1.0', squashfs: a, arch: opts.arch });
  const v2 = await system(path.join(dir, 'v2'), { version: '2.0', squashfs: b, arch: opts.arch });
  await mkdir(path.join(dir, 'work'));
  const full = path.join(dir, 'default-2.0-amd64.oci.tar');
  const delta = path.join(dir, 'default-2.0-amd64.delta-from-1.0.oci.tar');
  const fullResult = await buildOciArchive(v2, path.join(dir, 'work'), full, { signingKey: opts.signingKey });
  const result = await buildOciArchive(v2, path.join(dir, 'work'), delta, { signingKey: opts.signingKey, delta: await against(v1) });
  const installed = (version: string) => (version === '1.0' ? v1.squashfs : undefined);
  return { dir, a, b, v1, v2, full, delta, fullResult, result, installed };
}

/** The image manifest of an OCI archive, read with a plain tar reader (not the code under test). */
async function manifestOf(archive: string): Promise<{ layers: { digest: string; size: number; annotations?: Record<string, string> }[] }> {
  const files = new Map<string, Buffer>();
  const extract = tar.extract();
  createReadStream(archive).pipe(extract);
  for await (const entry of extract) {
    const chunks: Buffer[] = [];
    for await (const c of entry) chunks.push(c as Buffer);
    files.set(entry.header.name, Buffer.concat(chunks));
  }
  const blob = (digest: string) => files.get(`blobs/sha256/${digest.slice('sha256:'.length)}`)!;
  const index = JSON.parse(files.get('index.json')!.toString()) as { manifests: { digest: string }[] };
  return JSON.parse(blob(index.manifests[0]!.digest).toString());
}

/** A copy of the base's folder (cairn/system/1.0 on a node), with some of its files replaced. */
async function baseCopy(p: Awaited<ReturnType<typeof pair>>, replace: Partial<Record<ComponentName, Buffer | null>> = {}): Promise<string> {
  const dir = path.join(p.dir, `base-${randomBytes(3).toString('hex')}`);
  await mkdir(dir);
  for (const c of COMPONENTS) {
    const r = replace[c];
    if (r === null) continue;
    await writeFile(path.join(dir, c), r ?? (await readFile(path.join(p.dir, 'v1', c))));
  }
  return path.join(dir, 'rootfs.squashfs');
}

function openOpts(dir: string, more: Partial<OpenOptions> = {}): OpenOptions {
  return { arch: 'amd64', workDir: path.join(dir, 'scratch'), ...more };
}

t.test('a delta payload: the patch in place of the squashfs, applied to the installed base, gives the new squashfs', async (t) => {
  const p = await pair(t);
  const r = p.result;
  t.same(r.record.delta, { component: 'rootfs.squashfs', base: { version: '1.0', sha256: sha(p.a) }, patch: r.record.delta!.patch, unchanged: ['kernel'] }, 'the kernel is 1.0\'s: left out; the initrd changed: carried');
  t.same(r.record.components, p.fullResult.record.components, "components name the result: the same record as the full payload's");
  t.same(r.record.components['rootfs.squashfs'], { sha256: sha(p.b), size: p.b.length });
  const { delta: _d, ...rest } = r.record;
  t.same(rest, p.fullResult.record, 'the rest of the record is the full payload\'s');
  t.same(r.layers.map((l) => l.component), ['runner', 'initrd', PATCH_FILE, 'payload']);
  const manifest = await manifestOf(p.delta);
  t.same(manifest.layers.map((l) => l.annotations?.['io.cairn.component']), ['runner', 'initrd', PATCH_FILE, 'payload'], 'the archive\'s manifest has no kernel layer');
  const digest = (x: typeof r, c: string) => x.layers.find((l) => l.component === c)?.digest;
  t.notOk(manifest.layers.some((l) => l.digest === digest(p.fullResult, 'kernel')), 'nor the full payload\'s kernel blob');
  const archive = readFileSync(p.delta);
  t.notOk(archive.includes('kernel of every version'), 'the kernel\'s bytes are nowhere in the archive');
  t.ok(readFileSync(p.full).includes('kernel of every version'), '(they are in the full one)');
  for (const c of ['runner', 'initrd']) t.equal(digest(r, c), digest(p.fullResult, c), `the ${c} layer is the full payload's blob`);
  const patchSize = r.record.delta!.patch.size;
  t.ok(patchSize < p.b.length / 50, `the patch (${patchSize} bytes) is a small part of the squashfs (${p.b.length})`);
  const saved = readFileSync(p.full).length - archive.length;
  const kernelSize = p.fullResult.record.components.kernel.size;
  t.ok(saved > p.b.length + kernelSize - patchSize - 8192, `the delta archive is smaller than the full one by the squashfs and the kernel less the patch (${saved} bytes)`);

  const lines: string[] = [];
  const opened = await openPayload(p.delta, openOpts(p.dir, { installed: p.installed, log: (l) => lines.push(l) }));
  t.same(opened.record, r.record);
  t.ok(opened.recordBytes.equals(renderRecord(r.record)));
  t.match(JSON.parse(opened.recordBytes.toString()).delta, { component: 'rootfs.squashfs', base: { version: '1.0' } }, 'payload.json has the delta field');
  t.match(lines.join('\n'), /a delta against 1\.0, its patch 0\.\d MiB; kernel from 1\.0 on this node/);
  const got = path.join(p.dir, 'got');
  await mkdir(got);
  for (const c of COMPONENTS) await opened.extract(c, path.join(got, c));
  t.ok(readFileSync(path.join(got, 'rootfs.squashfs')).equals(p.b), 'rootfs.squashfs is the new squashfs, byte for byte');
  for (const c of ['kernel', 'initrd', 'release.json'] as const) t.ok(readFileSync(path.join(got, c)).equals(readFileSync(path.join(p.dir, 'v2', c === 'initrd' ? 'initrd' : c))), `${c} as built`);
  t.same(readdirSync(path.join(p.dir, 'scratch')), [], 'the patch is not left in the scratch folder');
  await opened.close();

  // the full payload still reads as before: no delta field in its record
  t.notOk('delta' in JSON.parse(renderRecord(p.fullResult.record).toString()));
});

t.test('a delta is deterministic: the same inputs give the same bytes', async (t) => {
  const p = await pair(t);
  const again = path.join(p.dir, 'again.oci.tar');
  await buildOciArchive(p.v2, path.join(p.dir, 'work'), again, { delta: await against(p.v1) });
  t.equal(sha(readFileSync(again)), sha(readFileSync(p.delta)));
});

t.test('a node without the base, or with another squashfs of that version, is told to take the full payload', async (t) => {
  const p = await pair(t);
  const hint = /^use the full payload default-2\.0-amd64\.oci\.tar$/;
  await t.rejects(openPayload(p.delta, openOpts(p.dir, { installed: () => undefined })), {
    name: 'UserError',
    message: /is a delta against version 1\.0, which this node does not have \(no cairn\/system\/1\.0\/rootfs\.squashfs\)/,
    hint,
  });
  const other = path.join(p.dir, 'other.squashfs');
  await writeFile(other, changed(p.a));
  await t.rejects(openPayload(p.delta, openOpts(p.dir, { installed: () => other })), {
    name: 'UserError',
    message: new RegExp(`not this node's: the delta was made from a squashfs with sha256 ${sha(p.a)}, ${other} has ${sha(readFileSync(other))}`),
    hint,
  });
  // opened without knowing the installed versions: it reads, but cannot be applied
  const q = await openPayload(p.delta, openOpts(p.dir));
  const dest = path.join(p.dir, 'dest');
  await t.rejects(q.extract('rootfs.squashfs', dest), { name: 'UserError', message: /where installed versions are was not given/, hint });
  t.notOk(existsSync(dest));
  await t.rejects(q.extract('kernel', dest), { name: 'UserError', message: /where installed versions are was not given/, hint }, 'nor can the kernel it leaves out be had');
  t.notOk(existsSync(dest));
  await q.extract('initrd', dest);
  t.ok(readFileSync(dest).equals(readFileSync(p.v2.initramfs)), 'the components it carries extract as from a full payload');
  await q.close();
});

t.test('an unchanged kernel is taken from the base version\'s folder, checked', async (t) => {
  const p = await pair(t);
  // the base's folder elsewhere, so that the kernel can only come from there
  const squashfs = await baseCopy(p);
  const q = await openPayload(p.delta, openOpts(p.dir, { installed: (v) => (v === '1.0' ? squashfs : undefined) }));
  const dest = path.join(p.dir, 'kernel');
  await q.extract('kernel', dest);
  t.ok(readFileSync(dest).equals(readFileSync(p.v2.kernel)), 'the kernel payload.json names, byte for byte');
  t.equal(sha(readFileSync(dest)), p.result.record.components.kernel.sha256);
  await q.close();
});

t.test('a node whose base kernel is another one, or missing, is refused when the payload is opened', async (t) => {
  const p = await pair(t);
  const hint = /^use the full payload default-2\.0-amd64\.oci\.tar$/;
  const want = p.result.record.components.kernel;
  const other = Buffer.from('another kernel\n');
  const squashfs = await baseCopy(p, { kernel: other });
  await t.rejects(openPayload(p.delta, openOpts(p.dir, { installed: () => squashfs })), {
    name: 'UserError',
    message: new RegExp(`is a delta against a version 1\\.0 that is not this node's: it takes the kernel of 1\\.0 \\(${want.size} bytes with sha256 ${want.sha256}\\) from this node, and ${path.dirname(squashfs)}/kernel has ${other.length} bytes with sha256 ${sha(other)}`),
    hint,
  });
  // the same size, one byte off
  const flipped = readFileSync(p.v1.kernel);
  flipped[100] = flipped[100]! ^ 1;
  const same = await baseCopy(p, { kernel: flipped });
  await t.rejects(openPayload(p.delta, openOpts(p.dir, { installed: () => same })), { name: 'UserError', message: /not this node's: it takes the kernel of 1\.0/, hint });
  const none = await baseCopy(p, { kernel: null });
  await t.rejects(openPayload(p.delta, openOpts(p.dir, { installed: () => none })), {
    name: 'UserError',
    message: /is a delta that takes the kernel of version 1\.0 from this node, which has none \(no cairn\/system\/1\.0\/kernel\)/,
    hint,
  });
  // an initrd that differs does not matter: the delta carries its own
  const initrd = await baseCopy(p, { initrd: Buffer.from('some other initrd') });
  const q = await openPayload(p.delta, openOpts(p.dir, { installed: () => initrd }));
  t.notOk(q.record.delta?.unchanged?.includes('initrd'), 'the delta carries its own initrd, so a base with another one opens');
  await q.close();
});

t.test('a base kernel that changed after the open is refused at extract, with nothing left at dest', async (t) => {
  const p = await pair(t);
  const squashfs = await baseCopy(p);
  const kernel = path.join(path.dirname(squashfs), 'kernel');
  const want = p.result.record.components.kernel;
  const q = await openPayload(p.delta, openOpts(p.dir, { installed: () => squashfs }));
  const flipped = readFileSync(kernel);
  flipped[flipped.length - 1] = flipped[flipped.length - 1]! ^ 0xff;
  await writeFile(kernel, flipped);
  const dest = path.join(p.dir, 'dest');
  await t.rejects(q.extract('kernel', dest), {
    name: 'UserError',
    message: new RegExp(`^kernel of the base version, taken from ${kernel} for the delta in .* is not the one payload\\.json names \\(${want.size} bytes with sha256 ${want.sha256}\\): it holds ${want.size} bytes with sha256 ${sha(flipped)}; it changed after the payload was opened`),
    hint: 'use the full payload default-2.0-amd64.oci.tar',
  });
  t.notOk(existsSync(dest), 'nothing at dest');
  // a longer one: refused as the bytes arrive
  await writeFile(kernel, Buffer.concat([readFileSync(p.v1.kernel), Buffer.from('more')]));
  await writeFile(dest, 'what was there');
  await t.rejects(q.extract('kernel', dest), { name: 'UserError', message: new RegExp(`^kernel of the base version.*: more than ${want.size} bytes arrived`) });
  t.notOk(existsSync(dest), 'nothing at dest');
  // the base as it was: the kernel extracts again
  await copyFile(p.v1.kernel, kernel);
  await q.extract('kernel', dest);
  t.ok(readFileSync(dest).equals(readFileSync(p.v2.kernel)));
  await q.close();
});

/** Where the patch's bytes are in an archive: the blob of its layer, after the layer's two tar headers (cairn/ and the file). */
function patchOffset(archive: Buffer, layerDigest: string): number {
  const name = Buffer.from(`blobs/sha256/${layerDigest.slice('sha256:'.length)}\0`);
  const header = archive.indexOf(name);
  if (header < 0 || header % 512 !== 0) throw new Error('no patch layer blob in the archive');
  return header + 512 + 1024;
}

t.test('a tampered patch is refused, with nothing left at dest', async (t) => {
  const p = await pair(t);
  const bytes = readFileSync(p.delta);
  const at = patchOffset(bytes, p.result.layers.find((l) => l.component === PATCH_FILE)!.digest);
  bytes[at + 100] = bytes[at + 100]! ^ 0xff;
  const bad = path.join(p.dir, 'tampered.oci.tar');
  await writeFile(bad, bytes);
  const q = await openPayload(bad, openOpts(p.dir, { installed: p.installed }));
  const dest = path.join(p.dir, 'dest');
  await t.rejects(q.extract('rootfs.squashfs', dest), { name: 'UserError', message: /rootfs\.squashfs\.zstpatch in .* is tampered or corrupt/ });
  t.notOk(existsSync(dest), 'nothing at dest');
  t.same(readdirSync(path.join(p.dir, 'scratch')), [], 'no patch left in the scratch folder');
  await q.close();
});

/** The delta as a folder of payload files (what the upgrade image hands the node), payload.json as given. */
async function deltaFolder(p: Awaited<ReturnType<typeof pair>>, patch: string, recordBytes: Buffer): Promise<string> {
  const dir = path.join(p.dir, `folder-${randomBytes(3).toString('hex')}`);
  await mkdir(dir);
  // the components the delta carries: not the ones it takes from the base
  for (const c of ['kernel', 'initrd', 'release.json']) if (!(p.result.record.delta!.unchanged as string[]).includes(c)) await copyFile(path.join(p.dir, 'v2', c), path.join(dir, c));
  await copyFile(patch, path.join(dir, PATCH_FILE));
  await writeFile(path.join(dir, 'payload.json'), recordBytes);
  return dir;
}

t.test('a folder of delta payload files; a patch that makes another squashfs fails the result\'s sha256, nothing left at dest', async (t) => {
  const p = await pair(t);
  const patch = path.join(p.dir, 'good.zstpatch');
  t.same(await makePatch(p.v1.squashfs, p.v2.squashfs, patch), p.result.record.delta!.patch, 'the same patch as in the archive');
  const good = await deltaFolder(p, patch, renderRecord(p.result.record));
  const q = await openPayload(good, openOpts(p.dir, { installed: p.installed }));
  t.equal(q.kind, 'folder');
  const dest = path.join(p.dir, 'dest');
  await q.extract('rootfs.squashfs', dest);
  t.ok(readFileSync(dest).equals(p.b), 'the folder form applies too');
  await rm(dest);
  t.notOk(existsSync(path.join(good, 'kernel')), 'the folder has no kernel');
  await q.extract('kernel', dest);
  t.ok(readFileSync(dest).equals(readFileSync(p.v2.kernel)), 'its kernel comes from the base');
  await rm(dest);

  // a patch that is what payload.json's delta.patch says, but that makes another squashfs than components names
  const wrong = path.join(p.dir, 'wrong.zstpatch');
  const made = await makePatch(p.v1.squashfs, path.join(p.dir, 'v1', 'kernel'), wrong);
  const record = { ...p.result.record, delta: { ...p.result.record.delta!, patch: made } };
  const bad = await deltaFolder(p, wrong, renderRecord(record));
  const r = await openPayload(bad, openOpts(p.dir, { installed: p.installed }));
  await t.rejects(r.extract('rootfs.squashfs', dest), {
    name: 'UserError',
    message: new RegExp(`rootfs\\.squashfs made from the delta in .* is not the one payload\\.json names \\(${p.b.length} bytes with sha256 ${sha(p.b)}\\)`),
    hint: /use the full payload default-2\.0-amd64\.oci\.tar/,
  });
  t.notOk(existsSync(dest), 'nothing at dest');
  t.same(readdirSync(path.join(p.dir, 'scratch')), [], 'no patch left in the scratch folder');

  // a folder whose patch file has another size than the record says
  await writeFile(path.join(good, PATCH_FILE), 'short');
  await t.rejects(openPayload(good, openOpts(p.dir, { installed: p.installed })), { name: 'UserError', message: /rootfs\.squashfs\.zstpatch in .* is tampered or corrupt/ });
});

t.test('a signed delta verifies, and its delta field is covered by the signature', async (t) => {
  const key = generateKeys(path.join(await work(t), 'keys'), 'k');
  const p = await pair(t, { signingKey: key.privateKey });
  t.equal(p.result.signedBy, key.fingerprint);
  const trusted = path.join(p.dir, 'trusted');
  await mkdir(trusted);
  await copyFile(key.publicKey, path.join(trusted, `${key.fingerprint}.pub`));
  const q = await openPayload(p.delta, openOpts(p.dir, { installed: p.installed }));
  t.same(verifyRecord(q.recordBytes, q.signature, trusted), { signed: true, trusted: true, key: key.fingerprint });
  const moved = Buffer.from(q.recordBytes.toString().replace(`"sha256": "${sha(p.a)}"`, `"sha256": "${'0'.repeat(64)}"`));
  t.not(moved.toString(), q.recordBytes.toString());
  t.throws(() => verifyRecord(moved, q.signature, trusted), { name: 'UserError', message: /payload\.json was changed after signing/ }, 'another base in the record breaks the signature');
  t.match(q.recordBytes.toString(), /"unchanged": \[\s*"kernel"\s*\]/, 'payload.json names the kernel unchanged');
  for (const [to, what] of [['[]', 'none'], ['["kernel", "initrd"]', 'the initrd too']] as const) {
    const edited = Buffer.from(q.recordBytes.toString().replace(/"unchanged": \[[^\]]*\]/, `"unchanged": ${to}`));
    t.not(edited.toString(), q.recordBytes.toString());
    t.ok(parseRecord(edited, 'edited'), `the edited record (${what} unchanged) is well-formed`);
    t.throws(() => verifyRecord(edited, q.signature, trusted), { name: 'UserError', message: /payload\.json was changed after signing/ }, `another delta.unchanged (${what}) breaks the signature`);
  }
  await q.close();
});

t.test('a delta.unchanged that is not a list of components the base can give is malformed', async (t) => {
  const p = await pair(t);
  const record = JSON.parse(renderRecord(p.result.record).toString()) as { delta: Record<string, unknown> };
  const withUnchanged = (u: unknown) => {
    const d = { ...record.delta };
    if (u === undefined) delete d.unchanged;
    else d.unchanged = u;
    return Buffer.from(JSON.stringify({ ...record, delta: d }));
  };
  t.same(parseRecord(withUnchanged(['kernel', 'initrd']), 'x').delta?.unchanged, ['kernel', 'initrd'], 'kernel and initrd, in payload order');
  const cases: [unknown, RegExp][] = [
    [undefined, /delta\.unchanged must be a list of components from kernel, initrd \(the base version's, left out of the payload\), not undefined/],
    ['kernel', /delta\.unchanged must be a list of components from kernel, initrd .*not "kernel"/],
    [['rootfs.squashfs'], /delta\.unchanged must be a list of components from kernel, initrd; it has "rootfs\.squashfs"/],
    [['release.json'], /it has "release\.json"/],
    [['kernel', 'firmware', 7], /it has "firmware", 7/],
    [['kernel', 'kernel'], /delta\.unchanged must name each component once, in payload order \(kernel, initrd\), not \["kernel","kernel"\]/],
    [['initrd', 'kernel'], /each component once, in payload order/],
  ];
  for (const [u, message] of cases) t.throws(() => parseRecord(withUnchanged(u), 'payload.json'), { name: 'UserError', message }, `unchanged: ${JSON.stringify(u)}`);
  // a folder whose payload.json says the initrd is unchanged too: refused by the base check (1.0's initrd is another one)
  const both = { ...p.result.record, delta: { ...p.result.record.delta!, unchanged: ['kernel', 'initrd'] as ComponentName[] } };
  const patch = path.join(p.dir, 'patch');
  await makePatch(p.v1.squashfs, p.v2.squashfs, patch);
  const folder = await deltaFolder(p, patch, renderRecord(both));
  await t.rejects(openPayload(folder, openOpts(p.dir, { installed: p.installed })), { name: 'UserError', message: /not this node's: it takes the initrd of 1\.0/ });
});

// scripts/setup.sh installs squashfs-tools: as root (CI) a missing mksquashfs fails the test instead
const noMksquashfs = spawnSync('mksquashfs', ['-version']).status !== 0 && process.getuid?.() !== 0 ? 'no mksquashfs on this machine (not root: scripts/setup.sh could not install it)' : false;

t.test('a real mksquashfs pair (the builder\'s options), one file changed: a small patch that applies', { skip: noMksquashfs }, async (t) => {
  const dir = await work(t);
  const tree = path.join(dir, 'tree');
  await mkdir(path.join(tree, 'usr/lib/cairn'), { recursive: true });
  await mkdir(path.join(tree, 'usr/bin'), { recursive: true });
  await writeFile(path.join(tree, 'usr/lib/big.bin'), randomBytes(2 * 1024 * 1024));
  await writeFile(path.join(tree, 'usr/lib/cairn/init.js'), 'console.log("init 1");\n'.repeat(2000));
  await writeFile(path.join(tree, 'usr/bin/tool'), randomBytes(500_000));
  const sq = (out: string) => {
    const r = spawnSync('mksquashfs', mksquashfsArgs(tree, out, squashfsInputs('x', 'zstd', 3, 1_700_000_000), 1).filter((a) => a !== '-progress').concat('-quiet'));
    if (r.status !== 0) throw new Error(`mksquashfs: ${r.stderr}`);
  };
  sq(path.join(dir, 'a.squashfs'));
  await writeFile(path.join(tree, 'usr/lib/cairn/init.js'), 'console.log("init 2");\n'.repeat(2001));
  sq(path.join(dir, 'b.squashfs'));
  const a = await readFile(path.join(dir, 'a.squashfs'));
  const b = await readFile(path.join(dir, 'b.squashfs'));
  t.not(sha(a), sha(b));
  const patch = await makePatch(path.join(dir, 'a.squashfs'), path.join(dir, 'b.squashfs'), path.join(dir, 'p'));
  t.ok(patch.size < b.length / 20, `patch ${patch.size} bytes for a squashfs of ${b.length}`);
  const v1 = await system(path.join(dir, 'v1'), { version: '1.0', squashfs: a });
  const v2 = await system(path.join(dir, 'v2'), { version: '2.0', squashfs: b });
  await mkdir(path.join(dir, 'work'));
  const delta = path.join(dir, 'delta.oci.tar');
  await buildOciArchive(v2, path.join(dir, 'work'), delta, { delta: await against(v1) });
  const q = await openPayload(delta, openOpts(dir, { installed: (v) => (v === '1.0' ? v1.squashfs : undefined) }));
  await q.extract('rootfs.squashfs', path.join(dir, 'got'));
  t.ok(readFileSync(path.join(dir, 'got')).equals(b));
  await q.close();
  t.equal(DELTA_WINDOW_LOG, 27);
});

// ----- cairn upgrade: the base is the version the node keeps ----------------------

const exec: Exec = async () => ({ code: 0, stdout: '', stderr: '', timedOut: false });

/** A node booted from CAIRN_STATE running 1.0, whose squashfs is `squashfs` and kernel `kernel`. */
async function nodeRoot(dir: string, squashfs: Buffer, kernel: Buffer): Promise<string> {
  const root = path.join(dir, 'node');
  const put = async (p: string, data: string | Buffer) => {
    await mkdir(path.join(root, p, '..'), { recursive: true });
    await writeFile(path.join(root, p), data);
  };
  await put('run/cairn/boot.env', 'CAIRN_BOOT_MODE=state\nCAIRN_BOOT_VERSION=1.0\n');
  for (const f of ['initrd', 'release.json']) await put(`cairn/system/1.0/${f}`, `1.0 ${f}`);
  await put('cairn/system/1.0/kernel', kernel);
  await put('cairn/system/1.0/rootfs.squashfs', squashfs);
  await put('cairn/grub/grubenv', renderState({ active: '1.0' }));
  await mkdir(path.join(root, 'var/lib/cairn'), { recursive: true });
  return root;
}

t.test('cairn upgrade with a delta: 2.0 made from the running 1.0; a node whose 1.0 differs refused, its disk as it was', async (t) => {
  const p = await pair(t);
  const kernel = readFileSync(p.v1.kernel);
  const root = await nodeRoot(p.dir, p.a, kernel);
  const r = await upgrade({ root, source: p.delta, exec, log: () => undefined, arch: 'amd64' });
  t.equal(r.outcome, 'staged');
  t.ok(readFileSync(path.join(root, 'cairn/system/2.0/rootfs.squashfs')).equals(p.b), 'the new version\'s squashfs');
  t.ok(readFileSync(path.join(root, 'cairn/system/2.0/kernel')).equals(readFileSync(p.v2.kernel)), 'its kernel, taken from 1.0');
  t.ok(readFileSync(path.join(root, 'cairn/system/2.0/initrd')).equals(readFileSync(p.v2.initramfs)), 'its initrd, from the payload');
  t.match(readFileSync(path.join(root, 'cairn/system/2.0/SHA256SUMS'), 'utf8'), `${sha(p.b)}  rootfs.squashfs\n`);
  t.equal(readState(path.join(root, 'cairn/grub/grubenv'))?.trial, '2.0');

  const other = await nodeRoot(path.join(p.dir, 'other'), changed(p.a), kernel);
  const before = readdirSync(path.join(other, 'cairn/system')).sort();
  const grubenv = readFileSync(path.join(other, 'cairn/grub/grubenv'));
  await t.rejects(upgrade({ root: other, source: p.delta, exec, log: () => undefined, arch: 'amd64' }), {
    name: 'UserError',
    message: /is a delta against a version 1\.0 that is not this node's/,
    hint: 'use the full payload default-2.0-amd64.oci.tar',
  });
  t.same(readdirSync(path.join(other, 'cairn/system')).sort(), before, 'no version written');
  t.ok(readFileSync(path.join(other, 'cairn/grub/grubenv')).equals(grubenv), 'the boot state as it was');
  // the full payload upgrades that node
  t.equal((await upgrade({ root: other, source: p.full, exec, log: () => undefined, arch: 'amd64' })).outcome, 'staged');
});

t.test('cairn upgrade with a delta on a node whose 1.0 kernel is another one: refused, its disk as it was; the full payload upgrades it', async (t) => {
  const p = await pair(t);
  const root = await nodeRoot(p.dir, p.a, Buffer.from('the kernel this node boots\n'));
  const before = readdirSync(path.join(root, 'cairn/system')).sort();
  const grubenv = readFileSync(path.join(root, 'cairn/grub/grubenv'));
  await t.rejects(upgrade({ root, source: p.delta, exec, log: () => undefined, arch: 'amd64' }), {
    name: 'UserError',
    message: /is a delta against a version 1\.0 that is not this node's: it takes the kernel of 1\.0 .* from this node, and .*cairn\/system\/1\.0\/kernel has 27 bytes/,
    hint: 'use the full payload default-2.0-amd64.oci.tar',
  });
  t.same(readdirSync(path.join(root, 'cairn/system')).sort(), before, 'no version written');
  t.ok(readFileSync(path.join(root, 'cairn/grub/grubenv')).equals(grubenv), 'the boot state as it was');
  await t.rejects(upgrade({ root, source: p.delta, exec, log: () => undefined, arch: 'amd64', check: true }), { name: 'UserError', message: /it takes the kernel of 1\.0/ }, '--check says so too');
  t.equal((await upgrade({ root, source: p.full, exec, log: () => undefined, arch: 'amd64' })).outcome, 'staged');
  t.ok(readFileSync(path.join(root, 'cairn/system/2.0/kernel')).equals(readFileSync(p.v2.kernel)));
});

t.test('cairn upgrade --check of a delta: the base is checked too', async (t) => {
  const p = await pair(t);
  const root = await nodeRoot(p.dir, p.a, readFileSync(p.v1.kernel));
  t.equal((await upgrade({ root, source: p.delta, exec, log: () => undefined, arch: 'amd64', check: true })).outcome, 'checked', 'the node that has the base passes');
  await rm(path.join(root, 'cairn/system/1.0/rootfs.squashfs'));
  await t.rejects(upgrade({ root, source: p.delta, exec, log: () => undefined, arch: 'amd64', check: true }), { name: 'UserError', message: /which this node does not have/ });
});

// ----- cairn build --delta-from ----------------------------------------------------

/** A fake root with the host's static busybox (the upgrade image's /bin/sh), planted as the rootfs stage's entry. */
async function plantRootfs(cacheDir: string, specFile: string): Promise<void> {
  const spec = loadSpec(specFile);
  const cache = new StageCache(cacheDir);
  await cache.open();
  const inputs = rootfsInputs(spec, 'amd64', `snapshot:${spec.debian.snapshot}`);
  await cache.get('rootfs', rootfsKey(inputs), inputs, async (dir) => {
    await makeFakeRoot(path.join(dir, 'rootfs'));
    await rm(path.join(dir, 'rootfs/usr/bin/busybox'));
    await copyFile(HOST_BUSYBOX, path.join(dir, 'rootfs/usr/bin/busybox'));
    return { kernelRelease: KR, packages: inputs.packages };
  });
  await cache.close();
}

t.test('cairn build --delta-from: the delta beside the full payload, in SHA256SUMS and build.json; it makes the full payload\'s squashfs', async (t) => {
  const dir = await work(t);
  const cacheDir = path.join(dir, 'cache');
  const spec1 = await writeSpec(dir, { version: '0.0.1', formats: ['oci'] }, 'v1.yaml');
  const spec2 = await writeSpec(dir, { version: '0.0.2', formats: ['oci'] }, 'v2.yaml');
  await plantRootfs(cacheDir, spec1);
  const out1 = path.join(dir, 'out1');
  const out2 = path.join(dir, 'out2');
  await build(quickBuild(spec1, cacheDir, out1, { formats: ['oci'], outputs: { oci } }).opts);
  const q = quickBuild(spec2, cacheDir, out2, { formats: ['oci'], outputs: { oci }, deltaFrom: out1 });
  const record = await build(q.opts);
  t.same(record.artifacts.map((a) => a.file), ['test-0.0.2-amd64.delta-from-0.0.1.oci.tar', 'test-0.0.2-amd64.oci.tar']);
  const sums = readFileSync(path.join(out2, 'SHA256SUMS'), 'utf8');
  t.match(sums, /^[0-9a-f]{64} {2}test-0\.0\.2-amd64\.delta-from-0\.0\.1\.oci\.tar$/m);
  t.match(q.lines.join(''), /a patch of \d+ bytes for a squashfs of \d+/);

  t.match(q.lines.join(''), /kernel, initrd left out \(0\.0\.1's, taken from the node\)/);

  const fullOpened = await openPayload(path.join(out2, 'test-0.0.2-amd64.oci.tar'), openOpts(dir));
  // 0.0.1 installed: its folder as cairn/system/0.0.1 holds it
  const baseDir = path.join(dir, 'system-0.0.1');
  await mkdir(baseDir);
  const prev = await openPayload(path.join(out1, 'test-0.0.1-amd64.oci.tar'), openOpts(dir));
  for (const c of COMPONENTS) await prev.extract(c, path.join(baseDir, c));
  await prev.close();
  const deltaFile = path.join(out2, 'test-0.0.2-amd64.delta-from-0.0.1.oci.tar');
  const d = await openPayload(deltaFile, openOpts(dir, { installed: (v) => (v === '0.0.1' ? path.join(baseDir, 'rootfs.squashfs') : undefined) }));
  t.same(d.record.components, fullOpened.record.components);
  t.equal(d.record.delta?.base.version, '0.0.1');
  t.same(d.record.delta?.unchanged, ['kernel', 'initrd'], 'a release of the same kernel and initramfs leaves both out');
  t.same((await manifestOf(deltaFile)).layers.map((l) => l.annotations?.['io.cairn.component']), ['runner', PATCH_FILE, 'payload']);
  for (const c of COMPONENTS) {
    await d.extract(c, path.join(dir, `made-${c}`));
    await fullOpened.extract(c, path.join(dir, `full-${c}`));
    t.ok(readFileSync(path.join(dir, `made-${c}`)).equals(readFileSync(path.join(dir, `full-${c}`))), `the delta makes the full payload's ${c}`);
  }
  await d.close();
  await fullOpened.close();

  // the archive itself as PREVIOUS: the same delta, byte for byte
  const out3 = path.join(dir, 'out3');
  await build(quickBuild(spec2, cacheDir, out3, { formats: ['oci'], outputs: { oci }, deltaFrom: path.join(out1, 'test-0.0.1-amd64.oci.tar') }).opts);
  const file = 'test-0.0.2-amd64.delta-from-0.0.1.oci.tar';
  t.equal(sha(readFileSync(path.join(out3, file))), sha(readFileSync(path.join(out2, file))), 'deterministic: the same inputs, the same delta');

  // refused before any stage: another arch, the same version, a delta as base, another image, no oci output
  const refuse = async (opts: Record<string, unknown>, message: RegExp, what: string) => {
    const out = path.join(dir, `refused-${randomBytes(3).toString('hex')}`);
    const r = quickBuild((opts.spec as string | undefined) ?? spec2, cacheDir, out, { formats: ['oci'], outputs: { oci }, ...opts });
    await t.rejects(build(r.opts), { name: 'UserError', message }, what);
    t.notMatch(r.lines.join(''), /stage (system|squashfs)/, `${what}: no stage ran`);
  };
  await refuse({ arches: ['arm64'], deltaFrom: out1 }, /--delta-from .*out1 has no full arm64 upgrade payload \(test-0\.0\.1-arm64\.oci\.tar\); it has amd64/, 'a folder without the arch');
  await refuse({ arches: ['arm64'], deltaFrom: path.join(out1, 'test-0.0.1-amd64.oci.tar') }, /is a payload for amd64; this build makes arm64/, 'an archive of another arch');
  await refuse({ spec: spec1, deltaFrom: out1 }, /is version 0\.0\.1, the version this build makes/, 'the same version');
  await refuse({ deltaFrom: path.join(out2, file) }, /is itself a delta payload \(against 0\.0\.1\)/, 'a delta as the base');
  await refuse({ formats: ['pxe'], deltaFrom: out1 }, /this build makes no oci output/, 'no oci output');
  const spec3 = await writeSpec(dir, { name: 'other', version: '0.0.3', formats: ['oci'] }, 'other.yaml');
  await refuse({ spec: spec3, deltaFrom: out1 }, /is a build of the image "test"; this build makes "other"/, 'another image');
  await refuse({ deltaFrom: path.join(dir, 'nothing') }, /--delta-from .*nothing does not exist/, 'a path that is not there');
});

t.test('previousPayloads: an archive of another arch or image is refused with what to give instead', async (t) => {
  const dir = await work(t);
  const arm = path.join(dir, 'default-1.0-arm64.oci.tar');
  const v1 = await system(path.join(dir, 'v1'), { version: '1.0', squashfs: baseSquashfs(), arch: 'arm64' });
  await mkdir(path.join(dir, 'work'));
  await buildOciArchive(v1, path.join(dir, 'work'), arm);
  await t.rejects(previousPayloads(arm, { name: 'default', version: '2.0', arches: ['amd64'] }, dir), {
    name: 'UserError',
    message: `--delta-from ${arm} is a payload for arm64; this build makes amd64`,
    hint: 'give the previous amd64 payload (default-1.0-amd64.oci.tar)',
  });
  await t.rejects(previousPayloads(arm, { name: 'edge', version: '2.0', arches: ['arm64'] }, dir), { name: 'UserError', message: /is a payload of the image "default"; this build makes "edge"/ });
  const ok = await previousPayloads(arm, { name: 'default', version: '2.0', arches: ['arm64'] }, dir);
  t.same([...ok.entries()], [['arm64', { archive: arm, version: '1.0' }]]);
});
