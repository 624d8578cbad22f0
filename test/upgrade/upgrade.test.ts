// cairn upgrade against a node's file system in a folder: what it installs,
// and every refusal leaving the disk exactly as it was.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { buildOciArchive } from '../../src/builder/outputs/oci.js';
import type { Arch, SystemArtifacts } from '../../src/builder/types.js';
import { parseState, readState, renderState, type BootState } from '../../src/boot/state.js';
import { parseGrubEnv } from '../../src/boot/grubenv.js';
import { generateKeys } from '../../src/upgrade/keys.js';
import { upgrade, type UpgradeOptions } from '../../src/upgrade/upgrade.js';
import type { Exec } from '../../src/init/exec.js';

const exec: Exec = async () => ({ code: 0, stdout: '', stderr: '', timedOut: false });

/** A node root: booted from CAIRN_STATE, version `booted`, the boot state given, 1.0 installed. */
function nodeRoot(dir: string, opts: { booted?: string; state?: BootState; trust?: string } = {}): string {
  const root = join(dir, 'node');
  const put = (p: string, data: string | Buffer) => {
    mkdirSync(join(root, p, '..'), { recursive: true });
    writeFileSync(join(root, p), data);
  };
  put('run/cairn/boot.env', `CAIRN_BOOT_MODE=state\nCAIRN_BOOT_VERSION=${opts.booted ?? '1.0'}\n`);
  for (const f of ['kernel', 'initrd', 'rootfs.squashfs', 'release.json']) put(`cairn/system/1.0/${f}`, `1.0 ${f}`);
  put('cairn/grub/grubenv', renderState(opts.state ?? { active: '1.0' }));
  mkdirSync(join(root, 'var/lib/cairn'), { recursive: true });
  if (opts.trust) put(`usr/lib/cairn/keys/test.pub`, readFileSync(opts.trust));
  return root;
}

async function payload(dir: string, opts: { version?: string; arch?: Arch; signingKey?: string } = {}): Promise<string> {
  const version = opts.version ?? '2.0';
  const src = join(dir, `src-${version}-${opts.arch ?? 'amd64'}${opts.signingKey ? '-signed' : ''}`);
  mkdirSync(join(src, 'rootfs/usr/bin'), { recursive: true });
  // the upgrade image's /bin/sh comes from the image's busybox (the host's busybox-static here)
  copyFileSync(existsSync('/usr/bin/busybox') ? '/usr/bin/busybox' : '/bin/busybox', join(src, 'rootfs/usr/bin/busybox'));
  const files: Record<string, Buffer> = {
    kernel: randomBytes(50_001),
    initrd: randomBytes(20_003),
    'rootfs.squashfs': randomBytes(2 * 1024 * 1024 + 5),
    'release.json': Buffer.from(`${JSON.stringify({ name: 'default', version, arch: opts.arch ?? 'amd64', inputs: { cmdline: 'console=tty1 quiet' } })}\n`),
  };
  for (const [n, b] of Object.entries(files)) writeFileSync(join(src, n), b);
  const system: SystemArtifacts = {
    name: 'default', version, arch: opts.arch ?? 'amd64', kernelRelease: '6.12.0-test', kernel: join(src, 'kernel'), initramfs: join(src, 'initrd'), squashfs: join(src, 'rootfs.squashfs'),
    cmdline: 'console=tty1 quiet', release: join(src, 'release.json'), rootfs: join(src, 'rootfs'), sourceDateEpoch: 1_700_000_000,
  };
  mkdirSync(join(dir, 'work'), { recursive: true });
  const out = join(dir, `default-${version}-${opts.arch ?? 'amd64'}${opts.signingKey ? '-signed' : ''}.oci.tar`);
  await buildOciArchive(system, join(dir, 'work'), out, { signingKey: opts.signingKey });
  return out;
}

/** Every file under root with its sha256 (what "nothing changed" compares). */
function snapshotTree(root: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) {
        out[`${relative(root, p)}/`] = '';
        walk(p);
      } else out[relative(root, p)] = createHash('sha256').update(readFileSync(p)).digest('hex');
    }
  };
  walk(root);
  return out;
}

function opts(root: string, source: string, more: Partial<UpgradeOptions> = {}): UpgradeOptions {
  return { root, source, exec, log: () => undefined, arch: 'amd64', ...more };
}

t.test('an upgrade installs the version beside the running one and puts it on trial', async (t) => {
  const dir = t.testdir();
  const root = nodeRoot(dir);
  const src = await payload(dir);
  const r = await upgrade(opts(root, src, { tries: 2, deadline: 120 }));
  t.equal(r.outcome, 'staged');
  t.equal(r.message, 'version 2.0 is installed and on trial (2 tries, healthy within 120 s); the fallback is 1.0');
  t.same(readState(join(root, 'cairn/grub/grubenv')), { active: '1.0', trial: '2.0', tries: 2, deadline: 120 });
  const v = join(root, 'cairn/system/2.0');
  t.same(readdirSync(v).sort(), ['SHA256SUMS', 'bootenv', 'initrd', 'kernel', 'release.json', 'rootfs.squashfs']);
  const sums = readFileSync(join(v, 'SHA256SUMS'), 'utf8');
  t.match(sums, new RegExp(`^${createHash('sha256').update(readFileSync(join(v, 'rootfs.squashfs'))).digest('hex')}  rootfs\\.squashfs$`, 'm'), 'the sums the first stage checks');
  t.equal(parseGrubEnv(readFileSync(join(v, 'bootenv'))).cairn_cmdline, 'cairn.mode=state panic=10 console=ttyS0,115200 console=tty0 console=tty1 quiet', "the new version's own kernel command line");
  t.same(readdirSync(join(root, 'cairn/system')).sort(), ['1.0', '2.0'], 'no scratch folder left');
  t.equal(JSON.parse(readFileSync(join(root, 'var/lib/cairn/upgrade.json'), 'utf8')).outcome, 'staged');
  t.notOk(existsSync(join(root, 'run/cairn/upgrade.lock')), 'the lock is released');

  // the same again (a retried job before the reboot): staged again, nothing else
  t.equal((await upgrade(opts(root, src))).outcome, 'staged');
});

t.test("on a board whose loader does not count: the new version's command line is the board's", async (t) => {
  const dir = t.testdir();
  const root = nodeRoot(dir);
  writeFileSync(join(root, 'cairn/loader.json'), '{"board": "rpi4", "console": "console=ttyS1,115200 console=tty1"}\n');
  const src = await payload(dir, { arch: 'arm64' });
  t.equal((await upgrade(opts(root, src, { arch: 'arm64' }))).outcome, 'staged');
  t.equal(
    parseGrubEnv(readFileSync(join(root, 'cairn/system/2.0/bootenv'))).cairn_cmdline,
    'cairn.mode=state cairn.version=2.0 panic=10 watchdog.stop_on_reboot=0 console=ttyS1,115200 console=tty1 quiet',
    "the Pi's consoles instead of the payload's, what the first stage passes to kexec",
  );
  // a record that is not one: refused before anything is written
  writeFileSync(join(root, 'cairn/loader.json'), '{"board": "pc"}\n');
  const src3 = await payload(dir, { version: '3.0', arch: 'arm64' });
  const after = snapshotTree(root);
  await t.rejects(upgrade(opts(root, src3, { arch: 'arm64' })), { name: 'UserError', message: /loader\.json must be \{"board": "rpi4" or "jetson"/ });
  t.same(snapshotTree(root), after, 'nothing changed');

  // armv7: the first stage cannot start a trial (no kexec): refused, saying what to do instead
  writeFileSync(join(root, 'cairn/loader.json'), '{"board": "rpi4", "console": "console=ttyS1,115200"}\n');
  const src7 = await payload(dir, { version: '3.0', arch: 'armv7' });
  const before7 = snapshotTree(root);
  await t.rejects(upgrade(opts(root, src7, { arch: 'armv7' })), {
    name: 'UserError',
    message: "this rpi4 node cannot try 3.0 once: its loader does not count tries, and on armv7 the first stage cannot start a trial with kexec (Debian's armv7 kernel faults in kexec)",
    hint: 'write the new image onto the card instead (cairn flash default-3.0-armv7-rpi4.img DEVICE), or run the arm64 image, which upgrades in place',
  });
  t.same(snapshotTree(root), before7, 'nothing changed');
});

t.test('a version already running and good: exit 0, nothing to do', async (t) => {
  const dir = t.testdir();
  const root = nodeRoot(dir, { booted: '2.0', state: { active: '2.0', fallback: '1.0' } });
  const before = snapshotTree(root);
  const r = await upgrade(opts(root, await payload(dir)));
  t.same([r.outcome, r.message], ['current', 'already on 2.0']);
  t.same(snapshotTree(root), before, 'nothing changed');
});

t.test('older versions are deleted, never the active or the fallback one', async (t) => {
  const dir = t.testdir();
  const root = nodeRoot(dir, { state: { active: '1.0', fallback: '0.9' } });
  for (const v of ['0.8', '0.9']) for (const f of ['kernel', 'initrd', 'rootfs.squashfs']) {
    mkdirSync(join(root, 'cairn/system', v), { recursive: true });
    writeFileSync(join(root, 'cairn/system', v, f), v);
  }
  await upgrade(opts(root, await payload(dir)));
  t.same(readdirSync(join(root, 'cairn/system')).sort(), ['0.9', '1.0', '2.0']);
  t.same(readState(join(root, 'cairn/grub/grubenv')), { active: '1.0', fallback: '0.9', trial: '2.0', tries: 3, deadline: 900 });
});

t.test('refused, with the disk left as it was', async (t) => {
  const dir = t.testdir();
  const keys = generateKeys(join(dir, 'keys'), 'site');
  const other = generateKeys(join(dir, 'keys'), 'other');
  const good = await payload(dir);
  const signed = await payload(dir, { signingKey: keys.privateKey });
  const wrongKey = await payload(dir, { version: '2.1', signingKey: other.privateKey });
  const arm = await payload(dir, { arch: 'arm64' });
  // tampered: one byte of the squashfs changed inside the archive
  const tampered = join(dir, 'tampered.oci.tar');
  const bytes = readFileSync(good);
  const sq = readFileSync(join(dir, 'src-2.0-amd64/rootfs.squashfs'));
  const at = bytes.indexOf(sq.subarray(0, 64));
  t.ok(at > 0, 'the squashfs is in the archive');
  const bad = Buffer.from(bytes);
  bad[at + 1_000_000] = bad[at + 1_000_000]! ^ 0xff;
  writeFileSync(tampered, bad);
  const truncated = join(dir, 'truncated.oci.tar');
  writeFileSync(truncated, bytes.subarray(0, Math.floor(bytes.length / 2)));

  const cases: { name: string; root: () => string; source: string; more?: Partial<UpgradeOptions>; error: RegExp }[] = [
    { name: 'a tampered payload', root: () => nodeRoot(join(dir, 'n1')), source: tampered, error: /rootfs\.squashfs.*(sha256|tampered|corrupt)/is },
    { name: 'a truncated download', root: () => nodeRoot(join(dir, 'n2')), source: truncated, error: /truncated|incomplete|short|ends/i },
    { name: 'an unsigned payload on a node that trusts a key', root: () => nodeRoot(join(dir, 'n3'), { trust: keys.publicKey }), source: good, error: /only takes signed payloads/ },
    { name: 'a signature no trusted key verifies', root: () => nodeRoot(join(dir, 'n4'), { trust: keys.publicKey }), source: wrongKey, error: /signature/i },
    { name: 'another architecture', root: () => nodeRoot(join(dir, 'n5')), source: arm, error: /arm64/ },
    { name: 'a version rolled back before', root: () => nodeRoot(join(dir, 'n6'), { state: { active: '1.0', failed: '2.0' } }), source: good, error: /version 2\.0 was rolled back on this node/ },
    { name: 'a live boot', root: () => { const r = nodeRoot(join(dir, 'n7')); writeFileSync(join(r, 'run/cairn/boot.env'), 'CAIRN_BOOT_MODE=live\nCAIRN_BOOT_VERSION=1.0\n'); return r; }, source: good, error: /only a node installed on a disk/ },
    { name: 'a bad try count', root: () => nodeRoot(join(dir, 'n8')), source: good, more: { tries: 12 }, error: /tries must be a whole number from 1 to 9/ },
    { name: 'a missing source', root: () => nodeRoot(join(dir, 'n9')), source: join(dir, 'no-such.tar'), error: /no-such\.tar/ },
  ];
  for (const c of cases) {
    const root = c.root();
    const before = snapshotTree(root);
    await t.rejects(upgrade(opts(root, c.source, c.more)), c.error, c.name);
    t.same(snapshotTree(root), before, `${c.name}: nothing changed on disk`);
  }
  // the signed payload on the node that trusts its key goes through
  const root = nodeRoot(join(dir, 'n10'), { trust: keys.publicKey });
  t.equal((await upgrade(opts(root, signed))).outcome, 'staged', 'a payload signed by the trusted key is taken');
  // and a rolled-back version with --force
  const forced = nodeRoot(join(dir, 'n11'), { state: { active: '1.0', failed: '2.0' } });
  t.equal((await upgrade(opts(forced, good, { force: true }))).outcome, 'staged', '--force tries it again');
  t.same(parseState(readFileSync(join(forced, 'cairn/grub/grubenv'))), { active: '1.0', trial: '2.0', tries: 3, deadline: 900 });
});

t.test('too little space on CAIRN_STATE: refused before anything is written', { skip: process.getuid?.() !== 0 ? 'mounting a small tmpfs needs root' : false }, async (t) => {
  // its own folder: the tmpfs is unmounted before the folder goes
  const dir = mkdtempSync(join(tmpdir(), 'cairn-upgrade-space-'));
  const root = nodeRoot(dir);
  const src = await payload(dir);
  const sys = join(root, 'cairn/system');
  const copy = snapshotTree(sys);
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=24m', 'cairn-test-small', sys]);
  t.teardown(() => {
    execFileSync('umount', [sys]);
    rmSync(dir, { recursive: true, force: true });
  });
  for (const [p] of Object.entries(copy)) {
    if (p.endsWith('/')) mkdirSync(join(sys, p), { recursive: true });
    else writeFileSync(join(sys, p), `1.0 ${p.split('/').pop()}`);
  }
  const before = snapshotTree(root);
  await t.rejects(upgrade(opts(root, src)), /not enough space on CAIRN_STATE for 2\.0: it needs 67 MiB \(the payload and 64 MiB to spare\), 2\d MiB can be had/);
  t.same(snapshotTree(root), before, 'nothing changed');
  t.ok(statSync(sys).isDirectory());
});

t.test('after a rollback: the snapshot taken before the upgrade becomes the datastore again, the newer one kept aside', async (t) => {
  const { restoreUpgradeSnapshot, upgradeSnapshot } = await import('../../src/runtime/datastore.js');
  const dir = t.testdir({
    snaps: { 'state-20261201T100000Z-upgrade-2.0.db': 'before 2.0', 'state-20261201T110000Z-boot.db': 'a later boot', 'state-20261101T100000Z-upgrade-1.9.db': 'before 1.9' },
    db: { 'state.db': 'written by 2.0', 'state.db-wal': 'wal of 2.0' },
  });
  const db = join(dir, 'db/state.db');
  t.equal(upgradeSnapshot(join(dir, 'snaps'), '2.0'), join(dir, 'snaps/state-20261201T100000Z-upgrade-2.0.db'), "the one from before 2.0, not the newest");
  t.equal(upgradeSnapshot(join(dir, 'snaps'), '3.0'), undefined);
  t.equal(restoreUpgradeSnapshot(db, join(dir, 'snaps'), '3.0'), undefined, 'no snapshot from before 3.0: nothing done');
  t.equal(readFileSync(db, 'utf8'), 'written by 2.0', 'untouched');
  const done = restoreUpgradeSnapshot(db, join(dir, 'snaps'), '2.0');
  t.match(done, /^restored state-20261201T100000Z-upgrade-2\.0\.db, the snapshot taken before the upgrade to 2\.0; the database 2\.0 left is kept as state\.db\.from-2\.0-\d{8}T\d{6}Z$/);
  t.equal(readFileSync(db, 'utf8'), 'before 2.0');
  t.equal(statSync(db).mode & 0o777, 0o600, 'state.db 0600');
  const aside = readdirSync(join(dir, 'db')).filter((f) => f.startsWith('state.db.from-2.0-')).sort();
  t.equal(aside.length, 2, 'the newer database and its -wal kept aside');
  t.notOk(existsSync(`${db}-wal`), 'no -wal of the newer database left beside the restored one');
});
