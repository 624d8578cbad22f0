// Pure parts of the builder: arch and format lists, host checks, k3s release
// names and checksum files, module selection, dpkg status, globs.
import t from 'tap';
import { checkFormatArches, parseArches, parseFormats } from '../../src/builder/formats.js';
import { checkHost, requiredTools } from '../../src/builder/hostcheck.js';
import { checksumFor, k3sUrls } from '../../src/builder/stages/k3s.js';
import { modulesToKeep, parseModulesDep } from '../../src/builder/stages/prune.js';
import { globToRegExp, matcher, moduleProfile } from '../../src/builder/profiles.js';
import { parseDpkgStatus } from '../../src/builder/record.js';
import { mksquashfsArgs, squashfsInputs } from '../../src/builder/stages/squashfs.js';
import { helmChartManifest } from '../../src/builder/stages/runtime.js';
import { hashValue } from '../../src/builder/hash.js';

t.test('arches: names and aliases; unknown ones listed', async (t) => {
  t.same(parseArches('amd64,aarch64,armhf'), ['amd64', 'arm64', 'armv7']);
  t.throws(() => parseArches('amd64,riscv64,mips'), { name: 'UserError', message: 'unknown arch "riscv64", "mips"' });
  t.throws(() => parseArches(''), { message: /no arch given/ });
});

t.test('formats: unknown ones listed; impossible pairs named', async (t) => {
  t.same(parseFormats('iso,pxe,iso'), ['iso', 'pxe']);
  t.throws(() => parseFormats('iso,floppy'), { name: 'UserError', message: 'unknown format "floppy"' });
  t.throws(() => checkFormatArches(['armv7'], ['iso', 'pxe']), { message: 'cannot build iso for armv7' });
  t.doesNotThrow(() => checkFormatArches(['arm64'], ['iso', 'pxe', 'raw', 'qcow2', 'oci']));
});

t.test('host check lists every missing tool and one apt-get line', async (t) => {
  const missing = new Set(['mmdebstrap', 'xorriso', 'qemu-img', '/usr/lib/grub/i386-pc/modinfo.sh']);
  const err = (() => {
    try {
      checkHost(['amd64'], ['iso', 'qcow2'], { isFound: (n) => !missing.has(n), uid: 0 });
    } catch (e) {
      return e as Error & { hint?: string };
    }
    return undefined;
  })();
  t.ok(err);
  t.match(err!.message, /mmdebstrap \(mmdebstrap, for root filesystem\)/);
  t.match(err!.message, /xorriso \(xorriso, for iso\)/);
  t.match(err!.message, /qemu-img \(qemu-utils, for qcow2\)/);
  t.equal(err!.hint, 'install them with: apt-get install -y grub-pc-bin mmdebstrap qemu-utils xorriso');
  t.doesNotThrow(() => checkHost(['amd64'], ['pxe'], { isFound: () => true, uid: 0 }));
  t.throws(() => checkHost(['amd64'], ['pxe'], { isFound: () => true, uid: 1000 }), { message: /runs as root/ });
  t.ok(requiredTools(['arm64'], ['pxe']).some((x) => x.pkg === 'qemu-user-static'), 'foreign arch needs qemu-user-static');
});

t.test('k3s release names follow upstream', async (t) => {
  const a = k3sUrls('v1.33.5+k3s1', 'amd64', 'https://r');
  t.equal(a.binary, 'https://r/v1.33.5%2Bk3s1/k3s');
  t.equal(a.checksums, 'https://r/v1.33.5%2Bk3s1/sha256sum-amd64.txt');
  t.equal(k3sUrls('v1.33.5+k3s1', 'arm64', 'https://r').binary, 'https://r/v1.33.5%2Bk3s1/k3s-arm64');
  const v7 = k3sUrls('v1.33.5+k3s1', 'armv7', 'https://r');
  t.equal(v7.binary, 'https://r/v1.33.5%2Bk3s1/k3s-armhf');
  t.equal(v7.checksums, 'https://r/v1.33.5%2Bk3s1/sha256sum-arm.txt');
  t.equal(v7.airgap, 'https://r/v1.33.5%2Bk3s1/k3s-airgap-images-arm.tar.zst');
  const sums = `${'a'.repeat(64)}  k3s\n${'b'.repeat(64)}  k3s-airgap-images-amd64.tar\n`;
  t.equal(checksumFor(sums, 'k3s'), 'a'.repeat(64));
  t.equal(checksumFor(sums, 'k3s-arm64'), undefined);
});

t.test('modules: profile globs plus dependencies', async (t) => {
  const deps = parseModulesDep('kernel/a/x.ko.xz: kernel/b/y.ko.xz\nkernel/b/y.ko.xz: kernel/c/z.ko.xz\nkernel/c/z.ko.xz:\nkernel/d/w.ko.xz:\n');
  const keep = modulesToKeep([...deps.keys()], deps, matcher(['a/**']));
  t.same([...keep].sort(), ['kernel/a/x.ko.xz', 'kernel/b/y.ko.xz', 'kernel/c/z.ko.xz']);
  const prof = matcher(moduleProfile('default', 'amd64').modules);
  for (const m of ['fs/squashfs/squashfs.ko.xz', 'fs/overlayfs/overlay.ko.xz', 'net/netfilter/xt_conntrack.ko.xz', 'drivers/net/vxlan/vxlan.ko.xz', 'net/bridge/br_netfilter.ko.xz', 'drivers/usb/storage/usb-storage.ko.xz', 'drivers/mmc/core/mmc_core.ko.xz', 'drivers/net/wireless/intel/iwlwifi/iwlwifi.ko.xz', 'drivers/net/ethernet/intel/e1000e/e1000e.ko.xz', 'drivers/block/virtio_blk.ko.xz']) {
    t.ok(prof(m), `default profile keeps ${m}`);
  }
  for (const m of ['drivers/gpu/drm/amd/amdgpu/amdgpu.ko.xz', 'sound/core/snd.ko.xz', 'drivers/infiniband/core/ib_core.ko.xz', 'drivers/clk/clk-foo.ko.xz']) {
    t.notOk(prof(m), `default amd64 profile drops ${m}`);
  }
  t.ok(matcher(moduleProfile('default', 'arm64').modules)('drivers/clk/bcm/clk-raspberrypi.ko.xz'), 'arm64 keeps SoC clocks');
});

t.test('globs', async (t) => {
  t.ok(globToRegExp('a/**').test('a/b/c'));
  t.ok(globToRegExp('a/**/c.ko').test('a/c.ko'));
  t.notOk(globToRegExp('a/*.ko').test('a/b/c.ko'));
  t.ok(globToRegExp('fs/{ext4,fat}/**').test('fs/fat/vfat.ko'));
  t.ok(globToRegExp('fs/nls/nls_utf8.*').test('fs/nls/nls_utf8.ko.xz'));
  t.notOk(globToRegExp('fs/nls/nls_utf8.*').test('fs/nls/nls_utf8Xko'));
});

t.test('dpkg status: installed packages only', async (t) => {
  t.same(parseDpkgStatus('Package: b\nStatus: install ok installed\nVersion: 2\n\nPackage: a\nStatus: install ok installed\nVersion: 1:1.0-1\n\nPackage: c\nStatus: deinstall ok config-files\nVersion: 3\n'), { a: '1:1.0-1', b: '2' });
});

t.test('mksquashfs is called for reproducible output', async (t) => {
  const args = mksquashfsArgs('/src', '/dst', squashfsInputs('k', 'zstd', 15, 1234), 2);
  for (const a of ['-no-xattrs', '-noappend']) t.ok(args.includes(a), a);
  t.equal(args[args.indexOf('-mkfs-time') + 1], '1234');
  t.equal(args[args.indexOf('-all-time') + 1], '1234');
  t.equal(args[args.indexOf('-Xcompression-level') + 1], '15');
  t.ok(mksquashfsArgs('/s', '/d', squashfsInputs('k', 'xz', 9, 1), 1).includes('xz'));
});

t.test('HelmChart resources', async (t) => {
  const y = helmChartManifest({ name: 'traefik', chart: 'traefik', repo: 'https://traefik.github.io/charts', version: '30.0.0', values: { ports: { web: 80 } } });
  t.match(y, /apiVersion: helm\.cattle\.io\/v1\nkind: HelmChart/);
  t.match(y, /namespace: kube-system/);
  t.match(y, /valuesContent: \|/);
});

t.test('value hashes ignore key order', async (t) => {
  t.equal(hashValue({ a: 1, b: [1, { c: 2, d: 3 }] }), hashValue({ b: [1, { d: 3, c: 2 }], a: 1 }));
  t.not(hashValue({ a: 1 }), hashValue({ a: 2 }));
});
