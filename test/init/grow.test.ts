// Growing CAIRN_STATE: the plan read from /sys (a fake one here; the QEMU
// raw-disk boot in test/boot/boot.test.ts grows a real one).
import t from 'tap';
import { mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { GROW_MIN_SECTORS, growPlan } from '../../src/init/grow.js';

function fakeSys(root: string, disk: string, diskSectors: number, parts: { name: string; number: number; start: number; size: number }[]): void {
  const dev = join(root, 'sys/devices/virtual', disk);
  mkdirSync(dev, { recursive: true });
  mkdirSync(join(root, 'sys/class/block'), { recursive: true });
  writeFileSync(join(dev, 'size'), `${diskSectors}\n`);
  symlinkSync(dev, join(root, 'sys/class/block', disk));
  for (const p of parts) {
    mkdirSync(join(dev, p.name));
    writeFileSync(join(dev, p.name, 'partition'), `${p.number}\n`);
    writeFileSync(join(dev, p.name, 'start'), `${p.start}\n`);
    writeFileSync(join(dev, p.name, 'size'), `${p.size}\n`);
    symlinkSync(join(dev, p.name), join(root, 'sys/class/block', p.name));
  }
}

const layout = [
  { name: 'vda1', number: 1, start: 2048, size: 2048 },
  { name: 'vda2', number: 2, start: 4096, size: 131072 },
  { name: 'vda3', number: 3, start: 135168, size: 1_200_000 },
];

t.test('the last partition of a larger disk grows', async (t) => {
  const root = t.testdir();
  fakeSys(root, 'vda', 8_388_608, layout);
  t.same(growPlan(root, '/dev/vda3'), { disk: 'vda', partition: 'vda3', number: 3, start: 135168, size: 1_200_000, diskSectors: 8_388_608 });
});

t.test('nothing to grow: the image\'s own size, a partition that is not last, a whole disk', async (t) => {
  const full = t.testdir();
  fakeSys(full, 'vda', 135168 + 1_200_000 + GROW_MIN_SECTORS - 1, layout);
  t.equal(growPlan(full, '/dev/vda3'), undefined, 'less than 64 MiB after it');
  const notLast = t.testdir();
  fakeSys(notLast, 'vda', 8_388_608, [...layout, { name: 'vda4', number: 4, start: 2_000_000, size: 2048 }]);
  t.equal(growPlan(notLast, '/dev/vda3'), undefined, 'a partition after it would be overwritten');
  const mmc = t.testdir();
  fakeSys(mmc, 'mmcblk0', 62_333_952, [{ name: 'mmcblk0p1', number: 1, start: 2048, size: 1_048_576 }, { name: 'mmcblk0p2', number: 2, start: 1_050_624, size: 1_300_000 }]);
  t.same(growPlan(mmc, '/dev/mmcblk0p2')?.disk, 'mmcblk0', 'an SD card: its disk is found by its sysfs parent');
  t.equal(growPlan(mmc, '/dev/mmcblk0'), undefined, 'a whole disk is not a partition');
});
