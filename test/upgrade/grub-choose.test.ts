// GRUB's boot decision (src/boot/grub.ts), booted for real: a GRUB EFI image
// under OVMF runs cairn_choose on every case of the shared table (each in its
// own folder of an ext4 disk, as on CAIRN_STATE), prints what it would boot
// and saves the try count with save_env; the test reads the blocks back.
import t from 'tap';
import { copyFileSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { execa } from 'execa';
import { grubChooseFunctions, grubLoadState } from '../../src/boot/grub.js';
import { renderGrubEnv } from '../../src/boot/grubenv.js';
import { parseState } from '../../src/boot/state.js';
import { grubMkimage } from '../../src/builder/outputs/grub.js';
import { BOOT_CASES, caseFiles } from './boot-cases.js';

const OVMF_CODE = '/usr/share/OVMF/OVMF_CODE_4M.fd';
const OVMF_VARS = '/usr/share/OVMF/OVMF_VARS_4M.fd';
const MODULES = '/usr/lib/grub/x86_64-efi';
const missing = ['/usr/bin/qemu-system-x86_64', OVMF_CODE, `${MODULES}/kernel.img`].filter((f) => !existsSync(f));

t.test('GRUB: every case of the table, booted under OVMF', async (t) => {
  // scripts/setup.sh installs them (qemu-system-x86, ovmf, grub-efi-amd64-bin): missing is a failure, not a skip
  if (!t.same(missing, [], 'QEMU, OVMF and GRUB for x86_64-efi are installed')) return;
  const work = await mkdtemp(join(tmpdir(), 'cairn-grub-choose-'));
  t.teardown(() => rm(work, { recursive: true, force: true }));
  // the data disk: /c<i>/system/<version>/... and /c<i>/grubenv
  const tree = join(work, 'tree');
  const script: string[] = [grubChooseFunctions()];
  BOOT_CASES.forEach((c, i) => {
    const base = join(tree, `c${i}`);
    mkdirSync(join(base, 'system'), { recursive: true });
    for (const f of caseFiles(c)) {
      mkdirSync(dirname(join(base, 'system', f)), { recursive: true });
      writeFileSync(join(base, 'system', f), 'x');
    }
    writeFileSync(join(base, 'grubenv'), renderGrubEnv(c.env));
    script.push(`set cairn_sys=/c${i}/system`, `set cairn_env=/c${i}/grubenv`, grubLoadState(), 'cairn_choose', `echo "case ${i}: boot=[$boot_version] kind=[$boot_kind]"`);
  });
  script.push('echo "cases done"', 'halt');
  writeFileSync(join(tree, 'test.cfg'), script.join('\n') + '\n');
  const disk = join(work, 'data.img');
  await execa('mke2fs', ['-q', '-F', '-t', 'ext4', '-L', 'CAIRN_TEST', '-d', tree, disk, '16M']);
  // the ESP: GRUB with an embedded config that finds the data disk and runs the cases
  const esp = join(work, 'esp');
  mkdirSync(join(esp, 'EFI/BOOT'), { recursive: true });
  await grubMkimage({
    platform: 'x86_64-efi',
    moduleDir: MODULES,
    out: join(esp, 'EFI/BOOT/BOOTX64.EFI'),
    embeddedConfig: 'search --no-floppy --label CAIRN_TEST --set=root\nconfigfile ($root)/test.cfg\n',
    prefix: '/',
    workDir: work,
  });
  const vars = join(work, 'vars.fd');
  copyFileSync(OVMF_VARS, vars);
  const r = await execa(
    'qemu-system-x86_64',
    ['-M', 'q35', '-m', '256', '-nographic', '-no-reboot', '-drive', `if=pflash,format=raw,readonly=on,file=${OVMF_CODE}`, '-drive', `if=pflash,format=raw,file=${vars}`,
      '-drive', `file=fat:${esp},format=raw,if=virtio,readonly=on`, '-drive', `file=${disk},format=raw,if=virtio`, '-net', 'none'],
    { timeout: 240_000, reject: false, stdin: 'ignore' },
  );
  // the firmware's and GRUB's terminal codes out of the way
  const out = r.stdout.replace(new RegExp(`${String.fromCharCode(27)}\\[[0-9;?]*[A-Za-z]`, 'g'), '');
  if (!t.match(out, /cases done/, 'GRUB ran every case')) t.comment(out.slice(-3000));
  BOOT_CASES.forEach((c, i) => {
    t.match(out, new RegExp(`case ${i}: boot=\\[${(c.want.version ?? '').replace(/\./g, '\\.')}\\] kind=\\[${c.want.kind ?? ''}\\]`), `GRUB: ${c.name}: boots ${c.want.version ?? 'nothing'}`);
  });
  for (const [i, c] of BOOT_CASES.entries()) {
    const saved = (await execa('debugfs', ['-R', `cat /c${i}/grubenv`, disk])).stdout;
    t.same(parseState(saved), c.after, `GRUB: ${c.name}: the state saved`);
  }
  t.equal((await execa('e2fsck', ['-fn', disk], { reject: false })).exitCode, 0, 'save_env left the file system clean');
});
