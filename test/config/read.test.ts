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
