// Payload signing keys: `cairn keys generate`, signing with a private key
// file (and every way that file can be wrong), verifying against the keys an
// image trusts, and `cairn build --sign` baking the public key into the image.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { createHash, createPublicKey, generateKeyPairSync } from 'node:crypto';
import { chmodSync, copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { build } from '../../src/builder/pipeline.js';
import { oci as ociWriter } from '../../src/builder/outputs/oci.js';
import type { OutputWriter } from '../../src/builder/types.js';
import { fingerprint, generateKeys, publicKeyOf, signRecord, verifyRecord } from '../../src/upgrade/keys.js';
import { openPayload } from '../../src/upgrade/payload.js';
import { REPO, plantRootfs, quickBuild, tempDir, writeSpec } from '../builder/support.js';

/** The base64 body of a PEM file: what must never show up in a message. */
function pemBody(file: string): string[] {
  return readFileSync(file, 'utf8').split('\n').filter((l) => l && !l.startsWith('-----'));
}

function cli(...args: string[]) {
  const r = spawnSync(process.execPath, ['--import', 'tsx', path.join(REPO, 'src/cli/main.ts'), ...args], { encoding: 'utf8', cwd: REPO, env: { ...process.env, NO_COLOR: '1' } });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

t.test('generateKeys: a PKCS8 key (0600) and an SPKI public key (0644), whatever the umask; never overwrites', async (t) => {
  const dir = path.join(await tempDir(), 'keys');
  const old = process.umask(0o077);
  let k;
  try {
    k = generateKeys(dir, 'site');
  } finally {
    process.umask(old);
  }
  t.equal(k.privateKey, path.join(dir, 'site.key'));
  t.equal(k.publicKey, path.join(dir, 'site.pub'));
  t.equal(statSync(k.privateKey).mode & 0o777, 0o600);
  t.equal(statSync(k.publicKey).mode & 0o777, 0o644, 'the public key is readable by all, even under umask 077');
  t.match(readFileSync(k.privateKey, 'utf8'), /^-----BEGIN PRIVATE KEY-----\n/);
  t.match(readFileSync(k.publicKey, 'utf8'), /^-----BEGIN PUBLIC KEY-----\n/);
  // the fingerprint: sha256 of the raw key (the last 32 bytes of the SPKI DER), 16 hex digits
  const der = createPublicKey(readFileSync(k.publicKey)).export({ format: 'der', type: 'spki' });
  t.equal(der.length, 44);
  t.equal(k.fingerprint, createHash('sha256').update(der.subarray(12)).digest('hex').slice(0, 16));
  t.equal(publicKeyOf(k.privateKey).fingerprint, k.fingerprint, 'the public half derived from the private key file');
  t.equal(publicKeyOf(k.privateKey).pem, readFileSync(k.publicKey, 'utf8'));

  const before = readFileSync(k.privateKey);
  t.throws(() => generateKeys(dir, 'site'), { name: 'UserError', message: /site\.key exists already; cairn keys generate never overwrites a key/ });
  t.ok(readFileSync(k.privateKey).equals(before), 'the existing key is untouched');
  writeFileSync(path.join(dir, 'other.pub'), 'x');
  t.throws(() => generateKeys(dir, 'other'), { message: /other\.pub exists already/ });
  t.notOk(existsSync(path.join(dir, 'other.key')), 'nothing written when either file exists');
  t.throws(() => generateKeys(dir, '../escape'), { name: 'UserError', message: /cannot be a file name/ });
  writeFileSync(path.join(dir, 'plain'), '');
  t.throws(() => generateKeys(path.join(dir, 'plain'), 'x'), { message: /is not a folder/ });
});

t.test('cairn keys generate: prints the fingerprint and paths, never the private key', async (t) => {
  const dir = path.join(await tempDir(), 'k');
  const r = cli('keys', 'generate', '--out', dir, '--name', 'edge');
  t.equal(r.code, 0, r.err);
  const fp = publicKeyOf(path.join(dir, 'edge.key')).fingerprint;
  t.match(r.out, new RegExp(`^fingerprint ${fp}$`, 'm'));
  t.match(r.out, `public key ${path.join(dir, 'edge.pub')}`);
  t.match(r.out, `cairn build --sign ${path.join(dir, 'edge.key')}`);
  for (const line of pemBody(path.join(dir, 'edge.key'))) t.notOk(`${r.out}${r.err}`.includes(line), 'no line of the private key printed');
  t.notMatch(r.out, /PRIVATE KEY-----/);
  const again = cli('keys', 'generate', '--out', dir, '--name', 'edge');
  t.equal(again.code, 1);
  t.match(again.err, /edge\.key exists already/);
  const none = cli('keys', 'generate');
  t.equal(none.code, 1);
  t.match(none.err, /needs --out DIR/);
  t.match(cli('build', '--help').out, /--sign <key>/);
});

t.test('signRecord: each bad private key file is named with what is wrong, never its content', async (t) => {
  const dir = await tempDir();
  const k = generateKeys(dir, 'good');
  const record = Buffer.from('{"format":1}\n');
  const sig = signRecord(record, k.privateKey);
  t.equal(sig.length, 64);
  const secret = pemBody(k.privateKey);
  const refused = (file: string, message: RegExp, hint?: RegExp) => {
    try {
      signRecord(record, file);
      t.fail(`${file} was taken`);
    } catch (err) {
      const e = err as Error & { hint?: string };
      t.equal(e.name, 'UserError');
      t.match(e.message, message);
      if (hint) t.match(e.hint, hint);
      t.ok(e.message.includes(file) || e.message.includes(path.basename(file)), 'the message names the file');
      for (const line of secret) t.notOk(`${e.message}${e.hint ?? ''}`.includes(line), 'no key material in the error');
    }
  };
  refused(path.join(dir, 'missing.key'), /the signing key .*missing\.key does not exist/, /cairn keys generate/);
  refused(dir, /is not a file/);

  const open = path.join(dir, 'open.key');
  writeFileSync(open, readFileSync(k.privateKey));
  chmodSync(open, 0o644);
  refused(open, /open\.key can be read by others \(mode 0644\)/, new RegExp(`^chmod 600 ${open}$`));
  chmodSync(open, 0o640);
  refused(open, /mode 0640/, /chmod 600/);

  const notPem = path.join(dir, 'junk.key');
  writeFileSync(notPem, 'just some bytes\n', { mode: 0o600 });
  refused(notPem, /junk\.key is not a PEM file/);

  const garbled = path.join(dir, 'garbled.key');
  writeFileSync(garbled, '-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n', { mode: 0o600 });
  refused(garbled, /garbled\.key is not a private key cairn can read/);

  const rsa = path.join(dir, 'rsa.key');
  writeFileSync(rsa, generateKeyPairSync('rsa', { modulusLength: 1024 }).privateKey.export({ format: 'pem', type: 'pkcs8' }), { mode: 0o600 });
  refused(rsa, /rsa\.key is an rsa key; cairn signs with ed25519 keys/);

  const pub = path.join(dir, 'given.pub');
  writeFileSync(pub, readFileSync(k.publicKey), { mode: 0o600 });
  refused(pub, /given\.pub is a public key; signing needs the private key/);
});

t.test('verifyRecord: an image without keys takes anything; with keys, only what one of them signed', async (t) => {
  const dir = await tempDir();
  const a = generateKeys(path.join(dir, 'a'), 'a');
  const b = generateKeys(path.join(dir, 'b'), 'b');
  const record = Buffer.from('{"format":1,"name":"default"}\n');
  const sigA = signRecord(record, a.privateKey);
  const sigB = signRecord(record, b.privateKey);

  // no folder, an empty folder: no keys
  t.same(verifyRecord(record, undefined, path.join(dir, 'none')), { signed: false, trusted: false });
  t.same(verifyRecord(record, sigA, path.join(dir, 'none')), { signed: true, trusted: false });
  mkdirSync(path.join(dir, 'empty'));
  writeFileSync(path.join(dir, 'empty/README'), 'not a key');
  t.same(verifyRecord(record, undefined, path.join(dir, 'empty')), { signed: false, trusted: false }, 'only *.pub files are keys');

  // the image trusts a
  const trust = path.join(dir, 'trust');
  mkdirSync(trust);
  writeFileSync(path.join(trust, `${a.fingerprint}.pub`), readFileSync(a.publicKey));
  t.same(verifyRecord(record, sigA, trust), { signed: true, trusted: true, key: a.fingerprint });
  t.throws(() => verifyRecord(record, undefined, trust), {
    name: 'UserError',
    message: new RegExp(`the payload is not signed, and this node only takes signed payloads: its image trusts keys ${a.fingerprint}$`),
    hint: /cairn build --sign KEY/,
  });
  t.throws(() => verifyRecord(record, sigB, trust), {
    name: 'UserError',
    message: new RegExp(`signature is not from a key this node trusts.*its image trusts keys ${a.fingerprint}$`),
  }, 'a signature by another key');
  const edited = Buffer.from(record.toString().replace('default', 'defauls'));
  t.throws(() => verifyRecord(edited, sigA, trust), { message: /or payload\.json was changed after signing/ }, 'a record changed after signing');
  t.throws(() => verifyRecord(record, sigA.subarray(0, 63), trust), { message: /signature is not from a key this node trusts/ }, 'a cut signature');
  t.throws(() => verifyRecord(record, Buffer.alloc(0), trust), { message: /signature is not from a key this node trusts/ });

  // two trusted keys: either one's signature, named by its fingerprint
  writeFileSync(path.join(trust, 'b.pub'), readFileSync(b.publicKey));
  t.same(verifyRecord(record, sigB, trust), { signed: true, trusted: true, key: b.fingerprint });
  const c = generateKeys(path.join(dir, 'c'), 'c');
  const both = [a.fingerprint, b.fingerprint].sort().join(', ');
  t.throws(() => verifyRecord(record, signRecord(record, c.privateKey), trust), { message: new RegExp(`trusts keys (${a.fingerprint}, ${b.fingerprint}|${b.fingerprint}, ${a.fingerprint})$`) }, both);

  // a broken key file in the image is an error, not "no keys"
  writeFileSync(path.join(trust, 'broken.pub'), 'nonsense');
  t.throws(() => verifyRecord(record, sigA, trust), { name: 'UserError', message: /the trusted key .*broken\.pub is not a PEM public key/ });
  writeFileSync(path.join(trust, 'broken.pub'), generateKeyPairSync('rsa', { modulusLength: 1024 }).publicKey.export({ format: 'pem', type: 'spki' }));
  t.throws(() => verifyRecord(record, sigA, trust), { message: /broken\.pub is an rsa key/ });
  writeFileSync(path.join(dir, 'file'), '');
  t.throws(() => verifyRecord(record, sigA, path.join(dir, 'file')), { message: /is not a folder/ });
  t.equal(fingerprint(createPublicKey(readFileSync(a.publicKey))), a.fingerprint);
});

t.test('cairn build --sign: the payload is signed and the image trusts the key; a bad key stops the build first', async (t) => {
  const dir = await tempDir();
  const cacheDir = path.join(dir, 'cache');
  const spec = await writeSpec(dir, { formats: ['oci'] });
  await plantRootfs(cacheDir, spec, 'amd64');
  const k = generateKeys(path.join(dir, 'keys'), 'release');
  // the fake root's busybox is a stand-in: the upgrade image gets this machine's static one
  const bbRoot = path.join(dir, 'bb-root');
  mkdirSync(path.join(bbRoot, 'usr/bin'), { recursive: true });
  copyFileSync(['/usr/bin/busybox', '/bin/busybox'].find((p) => existsSync(p))!, path.join(bbRoot, 'usr/bin/busybox'));
  const oci: OutputWriter = (sys, ctx) => ociWriter({ ...sys, rootfs: bbRoot }, ctx);

  // unsigned first: no keys in the image
  const plain = quickBuild(spec, cacheDir, path.join(dir, 'out-plain'), { formats: ['oci'], outputs: { oci } });
  await build(plain.opts);
  const pu0 = await openPayload(path.join(dir, 'out-plain/test-0.0.1-amd64.oci.tar'), { arch: 'amd64', workDir: path.join(dir, 'work') });
  await pu0.extract('rootfs.squashfs', path.join(dir, 'plain.squashfs'));
  await pu0.close();
  const plainList = spawnSync('unsquashfs', ['-lln', path.join(dir, 'plain.squashfs')], { encoding: 'utf8' }).stdout;
  t.match(plainList, /usr\/lib\/cairn\/config\.yaml/);
  t.notMatch(plainList, /usr\/lib\/cairn\/keys/, 'an unsigned build bakes no keys');

  const signed = quickBuild(spec, cacheDir, path.join(dir, 'out'), { formats: ['oci'], outputs: { oci }, signingKey: k.privateKey });
  const record = await build(signed.opts);
  t.same(record.artifacts.map((a) => a.file), ['test-0.0.1-amd64.oci.tar']);
  const system = record.systems[0]!.stages.find((s) => s.name === 'system')!;
  t.notOk(system.cached, 'the system stage ran again: the key is one of its inputs');
  t.match(signed.lines.join(''), new RegExp(`payload signed by key ${k.fingerprint}`));

  const archive = path.join(dir, 'out/test-0.0.1-amd64.oci.tar');
  const p = await openPayload(archive, { arch: 'amd64', workDir: path.join(dir, 'work') });
  t.ok(p.signature, 'the payload carries a signature');
  // the image's own root: the squashfs holds /usr/lib/cairn/keys/<fingerprint>.pub
  const root = path.join(dir, 'root');
  await p.extract('rootfs.squashfs', path.join(dir, 'rootfs.squashfs'));
  const un = spawnSync('unsquashfs', ['-d', root, path.join(dir, 'rootfs.squashfs'), 'usr/lib/cairn/keys'], { encoding: 'utf8' });
  t.equal(un.status, 0, un.stderr);
  const keysDir = path.join(root, 'usr/lib/cairn/keys');
  t.same(readdirSync(keysDir), [`${k.fingerprint}.pub`]);
  t.equal(readFileSync(path.join(keysDir, `${k.fingerprint}.pub`), 'utf8'), readFileSync(k.publicKey, 'utf8'), 'the public key, derived from the private key file');
  t.equal(statSync(path.join(keysDir, `${k.fingerprint}.pub`)).mode & 0o777, 0o644);
  t.same(verifyRecord(p.recordBytes, p.signature, keysDir), { signed: true, trusted: true, key: k.fingerprint }, 'a node running this image takes this payload');
  await p.close();

  // the unsigned payload is refused by a node running the signed image
  const pu = await openPayload(path.join(dir, 'out-plain/test-0.0.1-amd64.oci.tar'), { arch: 'amd64', workDir: path.join(dir, 'work') });
  t.equal(pu.signature, undefined);
  t.throws(() => verifyRecord(pu.recordBytes, pu.signature, keysDir), { message: /only takes signed payloads/ });
  await pu.close();

  // a bad key: refused before any stage ran, naming the file
  chmodSync(k.privateKey, 0o644);
  const bad = quickBuild(spec, cacheDir, path.join(dir, 'out-bad'), { formats: ['oci'], outputs: { oci }, signingKey: k.privateKey });
  await t.rejects(build(bad.opts), { name: 'UserError', message: new RegExp(`${k.privateKey} can be read by others`) });
  t.notMatch(bad.lines.join(''), /stage /, 'no stage started');
  await t.rejects(build({ ...bad.opts, signingKey: path.join(dir, 'nope.key') }), { message: /nope\.key does not exist/ });
});
