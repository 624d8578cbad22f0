import t from 'tap';
import { readFileSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
import { readConfig, LIMITS } from '../../src/config/read.js';
import { formatDiagnostic, type Diagnostic } from '../../src/config/diagnostics.js';
import { decodeContent } from '../../src/config/write-files.js';

import { K3OS_SAMPLE as SAMPLE } from '../support/shared.js';

const errors = (ds: Diagnostic[]) => ds.filter((d) => d.severity === 'error');
const warnings = (ds: Diagnostic[]) => ds.filter((d) => d.severity === 'warning');

t.test("k3OS' README sample config is accepted unchanged", async (t) => {
  const r = readConfig(readFileSync(SAMPLE), 'sample.yaml');
  t.same(r.diagnostics, [], 'no errors and no warnings');
  t.equal(r.config.hostname, 'myhost');
  t.same(r.config.ssh_authorized_keys, ['ssh-rsa AAAAB3NzaC1yc2EAAAADAQAB...', 'github:ibuildthecloud']);
  t.equal(r.config.write_files?.[0]?.permissions, '0755');
  t.same(r.config.cairn?.sysctls, { 'kernel.printk': '4 4 1 7', 'kernel.kptr_restrict': '1' }, 'sysctl (singular) read as sysctls');
  t.same(r.config.cairn?.wifi, [{ name: 'home', passphrase: 'mypassword' }, { name: 'nothome', passphrase: 'somethingelse' }]);
  t.same(r.config.cairn?.k3s_args, ['server', '--cluster-init']);
  t.same(r.config.cairn?.taints, ['key1=value1:NoSchedule', 'key1=value1:NoExecute']);
  t.equal(r.config.cairn?.server_url, 'https://someserver:6443');
  t.notOk('k3os' in r.config, 'k3os: is folded into cairn:');
});

t.test('lenient spellings name the same key', async (t) => {
  const r = readConfig(
    'sshAuthorizedKeys: github:me\nWriteFiles: {path: /a, content: x}\nrunCmd: echo hi\nk3os:\n  datasource: nocloud\n  dnsNameservers: 9.9.9.9\n  K3S_ARGS: [--debug]\n  NTPServers: pool.ntp.org\n  serverURL: https://s:6443\n  install: {forceEfi: "true", powerOff: "no", SILENT: yes}\n',
    'x.yaml',
  );
  t.same(errors(r.diagnostics), []);
  t.same(r.config.ssh_authorized_keys, ['github:me'], 'scalar becomes a one-item list');
  t.same(r.config.write_files, [{ path: '/a', content: 'x' }], 'a single map becomes a one-item list');
  t.same(r.config.run_cmd, ['echo hi']);
  t.same(r.config.cairn?.data_sources, ['nocloud']);
  t.same(r.config.cairn?.dns_nameservers, ['9.9.9.9']);
  t.same(r.config.cairn?.k3s_args, ['--debug']);
  t.same(r.config.cairn?.ntp_servers, ['pool.ntp.org']);
  t.equal(r.config.cairn?.server_url, 'https://s:6443');
  t.same(r.config.cairn?.install, { force_efi: true, power_off: false, silent: true }, '"true"/"no"/yes become booleans');
});

t.test('scalars keep what was written where a string is expected', async (t) => {
  const r = readConfig('write_files:\n- path: /x\n  permissions: 0600\ncairn:\n  labels: {rack: 12, ok: true}\n  sysctls: {vm.swappiness: 10}\n', 'x.yaml');
  t.same(errors(r.diagnostics), []);
  t.equal(r.config.write_files?.[0]?.permissions, '0600');
  t.same(r.config.cairn?.labels, { rack: '12', ok: 'true' });
  t.same(r.config.cairn?.sysctls, { 'vm.swappiness': '10' });
});

t.test('cairn: wins over k3os: in the same file; maps merge', async (t) => {
  const r = readConfig('k3os:\n  password: a\n  labels: {x: "1", y: "1"}\ncairn:\n  password: b\n  labels: {y: "2"}\n', 'x.yaml');
  t.equal(r.config.cairn?.password, 'b');
  t.same(r.config.cairn?.labels, { x: '1', y: '2' });
});

t.test('static network configuration and NoCloud user-data', async (t) => {
  const r = readConfig(
    '#cloud-config\ncairn:\n  network:\n    interfaces:\n      eth0:\n        addresses: [192.168.1.10/24, "fd00::10/64"]\n        gateway: 192.168.1.1\n        dns_nameservers: [192.168.1.1]\n        mtu: 9000\n        routes: [{to: 10.0.0.0/8, via: 192.168.1.254, metric: 100}]\n      eth0.20:\n        vlan: {id: 20, link: eth0}\n        dhcp: true\n',
    'user-data',
  );
  t.same(r.diagnostics, []);
  t.equal(r.config.cairn?.network?.interfaces?.['eth0']?.mtu, 9000);
  t.same(r.config.cairn?.network?.interfaces?.['eth0.20']?.vlan, { id: 20, link: 'eth0' });
});

t.test('user-data starting with #! is a script', async (t) => {
  const r = readConfig('#!/bin/sh\necho hi\n', 'user-data');
  t.equal(r.script, '#!/bin/sh\necho hi\n');
  t.same(r.diagnostics, []);
});

t.test('unknown keys are warnings with a suggestion, and the rest is kept', async (t) => {
  const r = readConfig('hostnme: x\nk3os:\n  modules: [kvm]\n  sysctlz: {a: b}\n  zzzzzzzzzz: 1\n', 'x.yaml');
  t.same(errors(r.diagnostics), []);
  const w = warnings(r.diagnostics).map(formatDiagnostic);
  t.match(w[0], /^x\.yaml:1:1: warning: hostnme: unknown key "hostnme", ignored; did you mean "hostname"\?/);
  t.match(w[1], /^x\.yaml:4:3: warning: k3os\.sysctlz: .*did you mean "sysctls"/);
  t.match(w[2], /^x\.yaml:5:3: warning: k3os\.zzzzzzzzzz: unknown key "zzzzzzzzzz" in k3os, ignored$/);
  t.same(r.config.cairn?.modules, ['kvm']);
});

interface BadCase {
  name: string;
  input: string | Buffer;
  line: number;
  col: number;
  path?: string;
  message: RegExp;
}

const deep = `a:${'\n'}${Array.from({ length: 40 }, (_, i) => `${'  '.repeat(i + 1)}k${i}:`).join('\n')} x\n`;
const laughs = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]'];
for (let i = 1; i < 9; i++) laughs.push(`${String.fromCharCode(97 + i)}: &${String.fromCharCode(97 + i)} [${Array(9).fill(`*${String.fromCharCode(96 + i)}`).join(',')}]`);
laughs.push('write_files: *i');

const bad: BadCase[] = [
  { name: 'invalid YAML', input: 'hostname: [unclosed\nrun_cmd: x\n', line: 2, col: 1, message: /invalid YAML/ },
  { name: 'tab indentation', input: 'k3os:\n\tmodules: [a]\n', line: 2, col: 1, message: /invalid YAML/ },
  { name: 'binary garbage', input: Buffer.from([0x68, 0x6f, 0x0a, 0x00, 0xff, 0x13]), line: 2, col: 1, message: /binary data/ },
  { name: 'non-UTF-8 text', input: Buffer.from('hostname: caf\xe9\n', 'latin1'), line: 1, col: 14, message: /not UTF-8 text \(byte 0xe9\)/ },
  { name: 'a file over the size limit', input: `# ${'x'.repeat(LIMITS.maxBytes)}\n`, line: 1, col: 1, message: /at most 1048576 bytes/ },
  { name: 'wrong type: a list where a string is expected', input: 'hostname: [a, b]\n', line: 1, col: 11, path: 'hostname', message: /expected a hostname.*, found a list/ },
  { name: 'wrong type: a map where a list of strings is expected', input: 'k3os:\n  modules: {a: b}\n', line: 2, col: 12, path: 'k3os.modules[0]', message: /expected a kernel module name, found a map/ },
  { name: 'wrong type: a string where a map is expected', input: 'k3os:\n  labels: region=eu\n', line: 2, col: 11, path: 'k3os.labels', message: /expected a map, found the string "region=eu"/ },
  { name: 'wrong type: not a boolean', input: 'k3os:\n  install:\n    silent: perhaps\n', line: 3, col: 13, path: 'k3os.install.silent', message: /expected a boolean, found the string "perhaps"/ },
  { name: 'wrong type: not an integer', input: 'cairn:\n  network:\n    interfaces:\n      eth0: {mtu: big}\n', line: 4, col: 19, path: 'cairn.network.interfaces.eth0.mtu', message: /expected an integer/ },
  { name: 'a top level that is not a map', input: '- a\n- b\n', line: 1, col: 1, message: /expected a map of keys .* found a list/ },
  { name: 'deep nesting', input: deep, line: 34, col: 67, message: /deeper than 32 levels/ },
  { name: 'duplicate keys', input: 'hostname: a\nhostname: b\n', line: 2, col: 1, message: /a key appears twice/ },
  { name: 'an alias bomb (billion laughs)', input: laughs.join('\n') + '\n', line: 1, col: 14, message: /more than 100000 values/ },
  { name: 'an undefined alias', input: 'hostname: *nothere\n', line: 1, col: 19, message: /invalid YAML|no anchor/ },
  { name: 'a bad enum value', input: 'write_files:\n- path: /a\n  encoding: rot13\n', line: 3, col: 13, path: 'write_files[0].encoding', message: /expected one of "", "text\/plain", "b64"/ },
  { name: 'a missing required key', input: 'write_files:\n- content: x\n', line: 2, col: 3, path: 'write_files[0]', message: /the required key "path" is missing/ },
  { name: 'content that does not match its encoding', input: 'write_files:\n- path: /a\n  encoding: gz+b64\n  content: aGVsbG8=\n', line: 4, col: 12, path: 'write_files[0].content', message: /not valid gzip data/ },
  { name: 'a bad IP address', input: 'k3os:\n  dns_nameservers: [8.8.8.8, 8.8.8]\n', line: 2, col: 30, path: 'k3os.dns_nameservers[1]', message: /expected an IP address, found the string "8.8.8"/ },
  { name: 'more than one document', input: 'hostname: a\n---\nhostname: b\n', line: 3, col: 1, message: /more than one YAML document/ },
];

for (const c of bad) {
  t.test(`bad input: ${c.name}`, async (t) => {
    const r = readConfig(c.input, 'bad.yaml');
    const e = errors(r.diagnostics);
    t.ok(e.length > 0, 'is an error');
    const first = e[0]!;
    t.match(first.message, c.message, formatDiagnostic(first));
    t.same([first.line, first.col], [c.line, c.col], 'located');
    if (c.path !== undefined) t.equal(first.path, c.path);
    t.equal(first.file, 'bad.yaml');
  });
}

t.test('an empty file is a warning, not an error', async (t) => {
  for (const input of ['', '   \n', '# only a comment\n']) {
    const r = readConfig(input, 'empty.yaml');
    t.same(errors(r.diagnostics), []);
    t.match(r.diagnostics[0]?.message, /empty/);
    t.same(r.config, {});
  }
});

t.test('invalid keys are left out; the rest of the file is kept', async (t) => {
  const r = readConfig('hostname: node1\nk3os:\n  password: ok-password\n  taints: [bad, a=b:NoSchedule]\n  install: {silent: maybe, device: /dev/sda}\n', 'x.yaml');
  t.equal(errors(r.diagnostics).length, 2);
  t.equal(r.config.hostname, 'node1');
  t.same(r.config.cairn?.taints, ['a=b:NoSchedule']);
  t.same(r.config.cairn?.install, { device: '/dev/sda' });
});

t.test('write_files content decodes in every encoding', async (t) => {
  const text = 'hello\nworld\n';
  const gz = gzipSync(text);
  const cases: [string, string][] = [
    ['', text],
    ['text/plain', text],
    ['b64', Buffer.from(text).toString('base64')],
    ['base64', Buffer.from(text).toString('base64')],
    ['gz', gz.toString('latin1')],
    ['gzip', gz.toString('latin1')],
    ['gz+b64', gz.toString('base64')],
    ['gz+base64', gz.toString('base64')],
    ['gzip+b64', gz.toString('base64')],
    ['gzip+base64', gz.toString('base64')],
  ];
  for (const [enc, content] of cases) {
    t.equal(decodeContent(content, enc as never).toString(), text, enc || '(empty)');
  }
  t.throws(() => decodeContent('%%%', 'b64'), /not valid base64/);
});

t.test('__proto__, constructor and prototype keys in YAML are refused, located, and pollute nothing', async (t) => {
  const proto = Object.prototype as Record<string, unknown>;
  t.teardown(() => {
    delete proto.polluted;
  });
  const r = readConfig('__proto__:\n  polluted: yes\nhostname: h\ncairn:\n  labels:\n    __proto__: {polluted: yes}\n    constructor: y\n    ok: z\n  prototype: x\n', 'x.yaml');
  t.notOk(Object.hasOwn(Object.prototype, 'polluted'));
  t.equal(({} as Record<string, unknown>).polluted, undefined);
  t.same(r.config, { hostname: 'h', cairn: { labels: { ok: 'z' } } });
  t.same(
    errors(r.diagnostics).map((d) => `${d.line}:${d.col} ${d.path}`),
    ['1:1 __proto__', '6:5 cairn.labels.__proto__', '7:5 cairn.labels.constructor', '9:3 cairn.prototype'],
  );
  t.match(errors(r.diagnostics)[0]!.message, /"__proto__" cannot be used as a key/);
});

// Every string that is written into a config file or handed to a program, with a value holding a control character.
const oneLine: [string, string, string][] = [
  ['ssh key', 'ssh_authorized_keys: ["ssh-ed25519 AAAA a\\nssh-rsa BBBB evil"]\n', 'ssh_authorized_keys[0]'],
  ['file path', 'write_files: [{path: "/etc/a\\nb", content: x}]\n', 'write_files[0].path'],
  ['hostname', 'hostname: "node\\n1"\n', 'hostname'],
  ['NTP server', 'cairn:\n  ntp_servers: ["pool.ntp.org\\nserver evil.example iburst"]\n', 'cairn.ntp_servers[0]'],
  ['DNS server', 'cairn:\n  dns_nameservers: ["1.1.1.1\\nnameserver 6.6.6.6"]\n', 'cairn.dns_nameservers[0]'],
  ['password', 'cairn:\n  password: "pw\\nroot:x"\n', 'cairn.password'],
  ['Wi-Fi name', 'cairn:\n  wifi: [{name: "shop\\u0000", passphrase: "12345678"}]\n', 'cairn.wifi[0].name'],
  ['Wi-Fi passphrase', 'cairn:\n  wifi: [{name: shop, passphrase: "1234\\n5678"}]\n', 'cairn.wifi[0].passphrase'],
  ['label value', 'cairn:\n  labels: {a: "b\\nc"}\n', 'cairn.labels.a'],
  ['taint', 'cairn:\n  taints: ["a=b:NoSchedule\\n"]\n', 'cairn.taints[0]'],
  ['environment value', 'cairn:\n  environment: {HTTP_PROXY: "http://p\\rx"}\n', 'cairn.environment.HTTP_PROXY'],
  ['server URL', 'cairn:\n  server_url: "https://s:6443\\n--evil"\n', 'cairn.server_url'],
  ['token', 'cairn:\n  token: "K10\\u007f"\n', 'cairn.token'],
  ['k3s argument', 'cairn:\n  k3s_args: ["--node-name=a\\tb"]\n', 'cairn.k3s_args[0]'],
  ['module', 'cairn:\n  modules: ["kvm\\n"]\n', 'cairn.modules[0]'],
  ['sysctl value', 'cairn:\n  sysctls: {vm.swappiness: "10\\nkernel.x=1"}\n', 'cairn.sysctls["vm.swappiness"]'],
  ['data source', 'cairn:\n  data_sources: ["https://x/\\u001b"]\n', 'cairn.data_sources[0]'],
  ['interface gateway', 'cairn:\n  network: {interfaces: {eth0: {gateway: "10.0.0.1\\n"}}}\n', 'cairn.network.interfaces.eth0.gateway'],
  ['VLAN link', 'cairn:\n  network: {interfaces: {eth0.7: {vlan: {id: 7, link: "eth\\n0"}}}}\n', 'cairn.network.interfaces["eth0.7"].vlan.link'],
  ['install device', 'cairn:\n  install: {device: "/dev/sda\\n"}\n', 'cairn.install.device'],
  ['install tty', 'cairn:\n  install: {tty: "ttyS0\\n"}\n', 'cairn.install.tty'],
];
for (const [name, input, path] of oneLine) {
  t.test(`a control character in the ${name} is refused, located at the key path`, async (t) => {
    const r = readConfig(input, 'x.yaml');
    const e = errors(r.diagnostics);
    t.equal(e.length, 1, 'one error for one problem');
    t.equal(e[0]?.path, path);
    t.match(e[0]?.message, /contains (a newline|a tab|a carriage return|the control character U\+00(00|7F|1B)) \(character \d+ of \d+\).*cannot hold control characters/);
    t.ok(e[0]!.line > 1 || e[0]!.col > 1 || !input.startsWith(path.split(/[.[]/)[0]!), 'located at the value');
    t.notMatch(JSON.stringify(r.config), /\\[nrt]|\\u00(00|7f|1b)/, 'the value is not applied');
  });
}

t.test('bad map keys are refused: sysctl names, label keys, environment names, interface names', async (t) => {
  const r = readConfig(
    'cairn:\n  sysctls: {"vm.a\\nb": "1", vm.ok: "1"}\n  labels: {"Bad Key": x, good: y}\n  environment: {"A\\nB": x, OK: y}\n  network: {interfaces: {"eth0\\n": {dhcp: true}, eth1: {dhcp: true}}}\n',
    'x.yaml',
  );
  t.same(
    errors(r.diagnostics).map((d) => `${d.line}:${d.col} ${d.path}`),
    ['2:13 cairn.sysctls["vm.a\\nb"]', '3:12 cairn.labels["Bad Key"]', '4:17 cairn.environment["A\\nB"]', '5:26 cairn.network.interfaces["eth0\\n"]'],
  );
  for (const d of errors(r.diagnostics)) t.notOk(d.message.includes('\n'), 'a message is one line');
  t.same(r.config.cairn?.sysctls, { 'vm.ok': '1' }, 'only the bad key is left out');
  t.same(r.config.cairn?.labels, { good: 'y' });
  t.same(r.config.cairn?.environment, { OK: 'y' });
  t.same(Object.keys(r.config.cairn?.network?.interfaces ?? {}), ['eth1']);
});

t.test('multi-line text stays allowed where a key holds it', async (t) => {
  const r = readConfig('write_files:\n- path: /a\n  content: |\n    line 1\n    line\t2\nrun_cmd:\n- |\n  set -e\n  echo a\ninit_cmd: ["a\\nb"]\nboot_cmd: ["a\\nb"]\n', 'x.yaml');
  t.same(r.diagnostics, []);
  t.equal(r.config.write_files?.[0]?.content, 'line 1\nline\t2\n');
  t.same(r.config.run_cmd, ['set -e\necho a\n']);
});

t.test('a final newline from a "|" block is refused with how to fix it', async (t) => {
  const r = readConfig('cairn:\n  token: |\n    K10abc\n', 'x.yaml');
  t.match(errors(r.diagnostics)[0]?.message, /contains a newline \(character 7 of 7\).*use "\|-" instead of "\|"/);
});

t.test('errors on secret keys never show the value', async (t) => {
  const secrets = ['short', 'pw\nwith-newline', 'K10tok\tab', 'sec-in-list', 'sec-in-map', 'envsecret\n', 'argsecret\n', 'urlpass'];
  const r = readConfig(
    [
      'cairn:',
      `  wifi: [{name: a, passphrase: ${secrets[0]}}, {name: b, passphrase: ${JSON.stringify(secrets[1])}}, {name: c, passphrase: [${secrets[3]}]}]`,
      `  token: ${JSON.stringify(secrets[2])}`,
      `  password: {x: ${secrets[4]}}`,
      `  environment: {K3S_TOKEN: ${JSON.stringify(secrets[5])}, DB_PASSWORD: [${secrets[4]}]}`,
      `  k3s_args: [--token, ${JSON.stringify(secrets[6])}, "--datastore-endpoint=postgres://u:${secrets[7]}@db/k3s\\n"]`,
      `  data_sources: ["ftp://u:${secrets[7]}@host/x"]`,
      '',
    ].join('\n'),
    'x.yaml',
  );
  const e = errors(r.diagnostics);
  t.same(
    e.map((d) => d.path),
    [
      'cairn.wifi[0].passphrase',
      'cairn.wifi[1].passphrase',
      'cairn.wifi[2].passphrase',
      'cairn.token',
      'cairn.password',
      'cairn.environment.K3S_TOKEN',
      'cairn.environment.DB_PASSWORD',
      'cairn.k3s_args[1]',
      'cairn.k3s_args[2]',
      'cairn.data_sources[0]',
    ],
  );
  t.equal(e[0]!.message, 'expected a WPA passphrase of 8 to 63 characters, or a PSK of 64 hex digits, found a secret of 5 characters (not shown)');
  for (const d of e) for (const s of secrets) t.notOk(d.message.includes(s.trim()), `${d.path}: no secret in "${d.message}"`);
});

t.test('a Wi-Fi passphrase is 8 to 63 characters or a PSK of 64 hex digits; a bad one is not shown', async (t) => {
  const psk = '0123456789abcdefABCDEF0123456789abcdef0123456789abcdef0123456789';
  const notHex = `${'g'.repeat(63)}h`;
  const seven = 'seven77';
  const long63 = 'é'.repeat(63);
  const r = readConfig(
    `cairn:\n  wifi:\n  - {name: a, passphrase: ${psk}}\n  - {name: b, passphrase: ${long63}}\n  - {name: c, passphrase: ${notHex}}\n  - {name: d, passphrase: ${seven}}\n  - {name: e, passphrase: ${psk}0}\n`,
    'x.yaml',
  );
  t.equal(psk.length, 64);
  t.equal(notHex.length, 64);
  t.same(r.config.cairn?.wifi, [{ name: 'a', passphrase: psk }, { name: 'b', passphrase: long63 }, { name: 'c' }, { name: 'd' }, { name: 'e' }], 'the PSK and 63 characters validate; the others are left out');
  const e = errors(r.diagnostics);
  t.same(
    e.map((d) => `${d.line}:${d.col} ${d.path}`),
    ['5:27 cairn.wifi[2].passphrase', '6:27 cairn.wifi[3].passphrase', '7:27 cairn.wifi[4].passphrase'],
  );
  t.same(
    e.map((d) => d.message),
    [64, 7, 65].map((n) => `expected a WPA passphrase of 8 to 63 characters, or a PSK of 64 hex digits, found a secret of ${n} characters (not shown)`),
  );
  for (const d of e) for (const s of [notHex, seven, psk]) t.notOk(d.message.includes(s), `${d.path}: the value is not in the message`);
});

t.test('labels and taints follow Kubernetes rules', async (t) => {
  const long = 'a'.repeat(64);
  const prefix = 'p'.repeat(254);
  const r = readConfig(
    [
      'cairn:',
      '  labels:',
      '    example.com/rack: r12',
      '    topology.kubernetes.io/zone: eu-west-1a',
      '    empty: ""',
      '    Upper.Case_name-1: V.1_x-2',
      '    Example.com/x: a',
      `    ${long}: a`,
      '    a/b/c: a',
      `    ${prefix}/name: a`,
      '    ok1: -starts-with-dash',
      `    ok2: ${long}`,
      '    ok3: "has space"',
      '  taints:',
      '  - dedicated=edge:NoSchedule',
      '  - example.com/gpu:NoExecute',
      '  - only-key=:PreferNoSchedule',
      '  - key=value:NoSchedul',
      '  - key=bad value:NoSchedule',
      `  - ${long}=x:NoSchedule`,
      `  - ${prefix}/k=v:NoSchedule`,
      '',
    ].join('\n'),
    'x.yaml',
  );
  t.same(r.config.cairn?.labels, { 'example.com/rack': 'r12', 'topology.kubernetes.io/zone': 'eu-west-1a', empty: '', 'Upper.Case_name-1': 'V.1_x-2' });
  t.same(r.config.cairn?.taints, ['dedicated=edge:NoSchedule', 'example.com/gpu:NoExecute', 'only-key=:PreferNoSchedule']);
  t.same(
    errors(r.diagnostics).map((d) => `${d.line}:${d.col} ${d.path}`),
    [
      '7:5 cairn.labels["Example.com/x"]',
      `8:5 cairn.labels.${long}`,
      '9:5 cairn.labels["a/b/c"]',
      `10:5 cairn.labels["${prefix}/name"]`,
      '11:10 cairn.labels.ok1',
      '12:10 cairn.labels.ok2',
      '13:10 cairn.labels.ok3',
      '18:5 cairn.taints[3]',
      '19:5 cairn.taints[4]',
      '20:5 cairn.taints[5]',
      '21:5 cairn.taints[6]',
    ],
  );
  const byPath = new Map(errors(r.diagnostics).map((d) => [d.path, d.message]));
  t.match(byPath.get(`cairn.labels["${prefix}/name"]`), /prefix .* 254 characters; .* at most 253/);
  t.match(byPath.get('cairn.labels.ok1'), /expected a label value: .* found the string "-starts-with-dash"/);
  t.match(byPath.get('cairn.taints[3]'), /Effect NoSchedule, PreferNoSchedule or NoExecute/);
  t.match(byPath.get('cairn.taints[6]'), /the taint's key is not valid: the prefix/);
});

t.test('columns of byte-level problems count characters, not bytes', async (t) => {
  const r = readConfig(Buffer.concat([Buffer.from('hostname: ééé'), Buffer.from([0xff]), Buffer.from('\n')]), 'x.yaml');
  t.same([r.diagnostics[0]?.line, r.diagnostics[0]?.col], [1, 14]);
});

t.test('keys and values in lists of maps are located exactly: empty items, comments, anchors, keys without a value', async (t) => {
  const r = readConfig(
    [
      'cairn:',
      '  wifi:',
      '  - name: home',
      '    passphrase: long-enough',
      '  -   name: shop',
      '      passphrase:   # 5 characters',
      '        "short"',
      '  - {name: cafe, hidden, passphrase: tiny}',
      'write_files:',
      '- path: /a',
      '  content: x',
      '-',
      '- path: /b',
      '  encoding: &e rot13',
      '  contnet: y',
      '',
    ].join('\n'),
    'x.yaml',
  );
  t.same(
    r.diagnostics.map((d) => `${d.line}:${d.col} ${d.severity}`),
    ['7:9 error', '8:18 warning', '8:38 error', '14:16 error', '15:3 warning'],
  );
  t.match(r.diagnostics[0]!.message, /found a secret of 5 characters/, 'the value on the line after its key and a comment');
  t.match(r.diagnostics[1]!.message, /unknown key "hidden"/, 'a key written without a value');
  t.match(r.diagnostics[2]!.message, /found a secret of 4 characters/, 'the key after a key without a value');
  t.match(r.diagnostics[3]!.message, /expected one of/, 'the value after its anchor, in the item after an empty "-"');
  t.match(r.diagnostics[4]!.message, /unknown key "contnet"/);
});
