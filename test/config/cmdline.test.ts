import t from 'tap';
import { bootParams, CMDLINE_SECRET_WARNING, readCmdline, tokenize } from '../../src/config/cmdline.js';
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
  t.same(
    r.diagnostics.map((d) => `${d.severity} ${d.path}`),
    ['warning cairn.password'],
    'only the secret on the command line is worth a warning',
  );
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

t.test('__proto__, constructor and prototype are refused in every segment; the rest of the line applies', async (t) => {
  const proto = Object.prototype as Record<string, unknown>;
  t.teardown(() => {
    for (const k of ['polluted', 'x', 'z']) delete proto[k];
  });
  const line = 'quiet cairn.hostname=n1 cairn.__proto__.polluted=yes k3os.sysctl[__proto__]=x cairn.constructor.prototype.z=1 cairn.__proto__=x cairn.labels[prototype]=y cairn.ntp_servers=pool.ntp.org';
  const r = readCmdline(line);
  t.notOk(Object.hasOwn(Object.prototype, 'polluted'), 'Object.prototype is untouched');
  t.equal(({} as Record<string, unknown>).polluted, undefined);
  t.same(r.config, { hostname: 'n1', cairn: { ntp_servers: ['pool.ntp.org'] } }, 'the other keys of the line still apply');
  const at = (token: string) => line.indexOf(token) + 1;
  t.same(
    r.diagnostics.map((d) => [d.severity, d.file, d.line, d.col, d.path]),
    [
      ['error', 'cmdline', 1, at('cairn.__proto__.polluted'), 'cairn.__proto__.polluted'],
      ['error', 'cmdline', 1, at('k3os.sysctl'), 'k3os.sysctl[__proto__]'],
      ['error', 'cmdline', 1, at('cairn.constructor'), 'cairn.constructor.prototype.z'],
      ['error', 'cmdline', 1, at('cairn.__proto__=x'), 'cairn.__proto__'],
      ['error', 'cmdline', 1, at('cairn.labels[prototype]'), 'cairn.labels[prototype]'],
    ],
  );
  t.match(r.diagnostics[0]!.message, /"__proto__" cannot be used as a key.*ignored/);
  t.match(r.diagnostics[2]!.message, /"constructor" cannot be used as a key/);
});

t.test('a secret on the command line applies, with a located warning that never holds the value', async (t) => {
  const secrets = ['K10tokentoken', 'pass-word-1', 'wifi-pass-2', 'agenttoken3', 'envtoken4', 'dbpass5'];
  const line =
    `console=ttyS0 cairn.token=${secrets[0]} cairn.hostname=n1 k3os.password=${secrets[1]} cairn.wifi.name=shop cairn.wifi.passphrase=${secrets[2]} ` +
    `cairn.k3s_args=--agent-token cairn.k3s_args=${secrets[3]} cairn.environment[K3S_TOKEN]=${secrets[4]} ` +
    `cairn.k3s_args=--datastore-endpoint=postgres://k3s:${secrets[5]}@db/k3s cairn.labels[token]=not-a-secret`;
  const r = readCmdline(line);
  t.equal(r.config.cairn?.token, secrets[0], 'the value still applies');
  t.equal(r.config.cairn?.password, secrets[1]);
  t.same(r.config.cairn?.wifi, [{ name: 'shop', passphrase: secrets[2] }]);
  const at = (token: string) => line.indexOf(token) + 1;
  t.same(
    r.diagnostics.map((d) => [d.severity, d.file, d.line, d.col, d.path]),
    [
      ['warning', 'cmdline', 1, at('cairn.token='), 'cairn.token'],
      ['warning', 'cmdline', 1, at('k3os.password='), 'cairn.password'],
      ['warning', 'cmdline', 1, at('cairn.wifi.passphrase='), 'cairn.wifi.passphrase'],
      ['warning', 'cmdline', 1, at(`cairn.k3s_args=${secrets[3]}`), 'cairn.k3s_args[1]'],
      ['warning', 'cmdline', 1, at('cairn.environment[K3S_TOKEN]'), 'cairn.environment.K3S_TOKEN'],
      ['warning', 'cmdline', 1, at('cairn.k3s_args=--datastore-endpoint'), 'cairn.k3s_args[2]'],
    ],
  );
  for (const d of r.diagnostics) {
    t.equal(d.message, CMDLINE_SECRET_WARNING);
    for (const s of secrets) t.notOk(d.message.includes(s) || d.path.includes(s), `no secret in the warning at col ${d.col}`);
  }
  t.match(CMDLINE_SECRET_WARNING, /every process on the node.*\/proc\/cmdline.*data source.*NoCloud cidata.*config URL.*\/cairn\/system\/config\.yaml/);
});
