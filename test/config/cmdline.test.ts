import t from 'tap';
import { bootParams, readCmdline, tokenize } from '../../src/config/cmdline.js';
import { formatDiagnostic } from '../../src/config/diagnostics.js';

t.test('tokenize: whitespace outside double quotes, quotes removed', async (t) => {
  t.same(tokenize('a=1  b="x y" "c=d e" f'), [
    { key: 'a', value: '1', offset: 0 },
    { key: 'b', value: 'x y', offset: 5 },
    { key: 'c', value: 'd e', offset: 13 },
    { key: 'f', offset: 21 },
  ]);
});

t.test('cairn.* and k3os.* keys become config', async (t) => {
  const r = readCmdline(
    'BOOT_IMAGE=/vmlinuz console=ttyS0 cairn.hostname=n1 k3os.ssh_authorized_keys=github:a cairn.ssh_authorized_keys=github:b ' +
      'cairn.sysctl[kernel.printk]="4 4 1 7" cairn.install.silent k3os.install.device=/dev/sda cairn.debug cairn.root_url=http://x/r ' +
      'cairn.labels[region]=eu cairn.k3s_args=--disable=traefik k3os.password=secret',
  );
  t.same(r.diagnostics, []);
  t.same(r.config, {
    hostname: 'n1',
    ssh_authorized_keys: ['github:a', 'github:b'],
    cairn: {
      sysctls: { 'kernel.printk': '4 4 1 7' },
      install: { silent: true, device: '/dev/sda' },
      labels: { region: 'eu' },
      k3s_args: ['--disable=traefik'],
      password: 'secret',
    },
  });
});

t.test('bad values on the command line are located by column', async (t) => {
  const line = 'quiet cairn.install.power_off=maybe cairn.bogus=1';
  const r = readCmdline(line);
  const shown = r.diagnostics.map(formatDiagnostic);
  t.same(shown, [
    'cmdline:1:7: error: cairn.install.power_off: expected a boolean, found the string "maybe"',
    'cmdline:1:37: warning: cairn.bogus: unknown key "bogus" in cairn, ignored',
  ]);
  t.same(r.config, {});
});

t.test('boot parameters are not config', async (t) => {
  t.same(bootParams('cairn.debug cairn.rescue k3os.root_url=http://h/r.squashfs cairn.hostname=x'), { debug: true, rescue: true, root_url: 'http://h/r.squashfs' });
  t.same(readCmdline('cairn.debug cairn.rescue').diagnostics, []);
});
