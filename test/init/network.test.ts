import t from 'tap';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { applyNetwork, globalAddresses, planNetwork, renderWpaConf, wifiProblem, wpaPsk, WPA_CONF, type Link } from '../../src/init/apply/network.js';
import { nodeRoot, testContext } from './support.js';

const wired = (name: string): Link => ({ name, wireless: false, physical: true });

t.test('DHCP on every wired interface by default', async (t) => {
  const plan = planNetwork({}, [wired('eth0'), wired('eth1'), { name: 'cni0', wireless: false, physical: false }], []);
  t.same(plan.dhcp, ['eth0', 'eth1']);
  t.same(plan.services.map((s) => s.name), ['dhcp-eth0', 'dhcp-eth1']);
  t.same(plan.commands, [['ip', 'link', 'set', 'lo', 'up'], ['ip', 'link', 'set', 'dev', 'eth0', 'up'], ['ip', 'link', 'set', 'dev', 'eth1', 'up']]);
});

t.test('static addresses, gateway, routes, MTU and a VLAN', async (t) => {
  const plan = planNetwork(
    {
      eth0: { addresses: ['192.168.1.10/24'], gateway: '192.168.1.1', mtu: 9000, routes: [{ to: '10.0.0.0/8', via: '192.168.1.254', metric: 100 }] },
      'eth0.20': { vlan: { id: 20, link: 'eth0' } },
    },
    [wired('eth0'), wired('eth1')],
    [],
    'node1',
  );
  t.same(plan.commands, [
    ['ip', 'link', 'set', 'lo', 'up'],
    ['ip', 'link', 'add', 'link', 'eth0', 'name', 'eth0.20', 'type', 'vlan', 'id', '20'],
    ['ip', 'link', 'set', 'dev', 'eth0', 'mtu', '9000'],
    ['ip', 'link', 'set', 'dev', 'eth0', 'up'],
    ['ip', 'addr', 'add', '192.168.1.10/24', 'dev', 'eth0'],
    ['ip', 'route', 'replace', 'default', 'via', '192.168.1.1', 'dev', 'eth0'],
    ['ip', 'route', 'replace', '10.0.0.0/8', 'via', '192.168.1.254', 'dev', 'eth0', 'metric', '100'],
    ['ip', 'link', 'set', 'dev', 'eth0.20', 'up'],
    ['ip', 'link', 'set', 'dev', 'eth1', 'up'],
  ]);
  t.same(plan.dhcp, ['eth0.20', 'eth1'], 'static eth0 takes no lease; the VLAN and the unlisted eth1 do');
  t.same(plan.services.find((s) => s.name === 'dhcp-eth1')?.args.slice(-2), ['-x', 'hostname:node1']);
});

t.test('interfaces that are not there are noted, not fatal', async (t) => {
  const plan = planNetwork({ eth9: { addresses: ['10.0.0.2/24'] } }, [wired('eth0')], [{ name: 'home', passphrase: 'secret123' }]);
  t.same(plan.notes, ['eth9 is configured but not present', 'wifi is configured but this node has no Wi-Fi interface']);
  t.same(plan.dhcp, ['eth0']);
});

t.test('Wi-Fi: wpa_supplicant on the wireless interface, then DHCP on it', async (t) => {
  const plan = planNetwork({}, [wired('eth0'), { name: 'wlan0', wireless: true, physical: true }], [{ name: 'home', passphrase: 'mypassword' }, { name: 'open' }]);
  t.same(plan.services.map((s) => s.name), ['wifi-wlan0', 'dhcp-eth0', 'dhcp-wlan0']);
  const conf = renderWpaConf([{ name: 'home', passphrase: 'my"password' }, { name: 'open' }]);
  t.match(conf, /network=\{\n {2}ssid=686f6d65\n {2}psk=[0-9a-f]{64}\n {2}priority=2\n\}/);
  t.match(conf, /ssid=6f70656e\n {2}key_mgmt=NONE/);
  t.notMatch(conf, /my"password/, 'the passphrase itself is not in the file');
});

t.test('Wi-Fi: the PSK is derived as wpa_passphrase derives it', async (t) => {
  // IEEE 802.11i, annex H.4 test vectors
  t.equal(wpaPsk('IEEE', 'password'), 'f42c6fc52df0ebef9ebb4b90b38a5f902e83fe1b135a70e23aed762e9710a12e');
  t.equal(wpaPsk('ThisIsASSID', 'ThisIsAPassword'), '0dc0d6eb90555ed6419756b9a15ec3e3209b63df707dd508d14581f8982721af');
  const raw = 'F42C6FC52DF0EBEF9EBB4B90B38A5F902E83FE1B135A70E23AED762E9710A12E';
  t.equal(wpaPsk('anything', raw), raw.toLowerCase(), 'a 64-hex PSK is taken as given');
  t.match(renderWpaConf([{ name: 'x', passphrase: raw }]), /psk=f42c6fc5/);
});

t.test('Wi-Fi: bad entries are named without their passphrase', async (t) => {
  t.equal(wifiProblem({ name: 'ok', passphrase: '12345678' }), undefined);
  t.match(wifiProblem({ name: 'short', passphrase: 'seven77' }), /wifi "short": a WPA passphrase is 8 to 63 characters .* this one is 7 bytes; fix cairn\.wifi\[\]\.passphrase/);
  t.match(wifiProblem({ name: 'long', passphrase: 'x'.repeat(64) }), /this one is 64 bytes/);
  t.match(wifiProblem({ name: 'é'.repeat(17) }), /an SSID is 1 to 32 bytes, this one is 34/);
  let message = '';
  try {
    renderWpaConf([{ name: 'short', passphrase: 'seven77' }]);
  } catch (e) {
    message = (e as Error).message;
  }
  t.match(message, /wifi "short": a WPA passphrase/, 'rendering refuses it');
  t.notMatch(message, /seven77/, 'without the passphrase');
});

// Names and passphrases that break a quoted wpa_supplicant.conf value.
const tricky = [
  { name: 'caf\u00e9 "corner" \\ #1', passphrase: 'pa"ss\\word # not a comment' },
  { name: '#hash', passphrase: '  spaces around  ' },
  { name: 'line\nbreak', passphrase: 'emoji \u{1f510} key' },
  { name: 'open "guest"' },
];

// wpa_passphrase's output for some of these, to cross-check the derivation where the tool is installed.
t.test('Wi-Fi: the same PSK as the wpa_passphrase tool', async (t) => {
  const tool = spawnSync('wpa_passphrase', ['IEEE'], { input: 'password\n', encoding: 'utf8' });
  if ((tool.error as NodeJS.ErrnoException | undefined)?.code === 'ENOENT' && process.getuid?.() !== 0) {
    t.pass('wpa_passphrase', { skip: 'wpa_passphrase is not installed (scripts/setup.sh installs wpasupplicant)' });
    return;
  }
  t.equal(tool.status, 0, `wpa_passphrase runs: ${tool.error?.message ?? tool.stderr}`);
  for (const n of [{ name: 'IEEE', passphrase: 'password' }, ...tricky.filter((n) => n.passphrase && !n.name.includes('\n'))]) {
    const r = spawnSync('wpa_passphrase', [n.name], { input: `${n.passphrase}\n`, encoding: 'utf8' });
    const psk = /^\s*psk=([0-9a-f]{64})$/m.exec(r.stdout)?.[1];
    t.equal(wpaPsk(n.name, n.passphrase!), psk, `PSK of ${JSON.stringify(n.name)}`);
  }
});

/** Runs Debian's wpa_supplicant on a config file: its exit code and what it read (SSIDs and PSKs as hex). */
function wpaSupplicantReads(dir: string, conf: string): { code: number | null; out: string; ssids: string[]; psks: string[] } {
  const file = join(dir, 'wpa.conf');
  const pidFile = join(dir, 'wpa.pid');
  writeFileSync(file, conf, { mode: 0o600 });
  // -B: it reads the config and forks into the background only when that worked; the parent exits 0, or 255 on a parse error.
  const r = spawnSync('wpa_supplicant', ['-B', '-dd', '-K', '-P', pidFile, '-c', file, '-i', 'lo', '-D', 'none'], { encoding: 'utf8', timeout: 15_000 });
  if (r.error) throw r.error;
  if (existsSync(pidFile)) {
    const pid = Number(readFileSync(pidFile, 'utf8').trim());
    if (pid > 1) process.kill(pid, 'SIGTERM');
  }
  const out = `${r.stdout}${r.stderr}`;
  const lines = out.split('\n');
  const ssids: string[] = [];
  for (const [i, l] of lines.entries()) {
    const m = /^ssid - hexdump_ascii\(len=(\d+)\):/.exec(l);
    if (!m) continue;
    let hex = '';
    for (let j = i + 1; hex.length < Number(m[1]) * 2 && j < lines.length; j++) hex += (/^ {5}((?:[0-9a-f]{2} ?)+)/.exec(lines[j]!)?.[1] ?? '').replace(/ /g, '');
    ssids.push(hex);
  }
  const psks = [...out.matchAll(/^PSK - hexdump\(len=32\): ((?:[0-9a-f]{2} ?)+)$/gm)].map((m) => m[1]!.replace(/ /g, ''));
  return { code: r.status, out, ssids, psks };
}

t.test("Wi-Fi: Debian's wpa_supplicant reads the rendered file, tricky names and passphrases byte for byte", async (t) => {
  const probe = spawnSync('wpa_supplicant', ['-v'], { encoding: 'utf8' });
  if (probe.error) {
    if (process.getuid?.() === 0 || (probe.error as NodeJS.ErrnoException).code !== 'ENOENT') t.fail(`wpa_supplicant cannot run (${probe.error.message}): run scripts/setup.sh (it installs wpasupplicant)`);
    else t.pass('wpa_supplicant', { skip: 'wpa_supplicant is not installed (scripts/setup.sh installs wpasupplicant as root)' });
    return;
  }
  const dir = t.testdir();
  // A short folder for the control socket (a socket path is at most 107 bytes).
  const ctrl = mkdtempSync('/tmp/cairn-wpa-');
  t.teardown(() => rmSync(ctrl, { recursive: true, force: true }));
  const conf = renderWpaConf(tricky, { ctrlInterface: ctrl });
  const read = wpaSupplicantReads(dir, conf);
  t.equal(read.code, 0, `wpa_supplicant parses the file:\n${read.out.split('\n').filter((l) => /Line|Failed|invalid/i.test(l)).join('\n')}`);
  t.same(read.ssids, tricky.map((n) => Buffer.from(n.name).toString('hex')), 'every SSID as configured, byte for byte');
  t.same(read.psks, tricky.filter((n) => n.passphrase).map((n) => wpaPsk(n.name, n.passphrase!)), 'the derived PSKs');
  // The check itself can fail: the quoting the file used before does not survive these names.
  const quoted = (s: string) => `"${s.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`;
  const broken = `ctrl_interface=${ctrl}\nnetwork={\n  ssid=${quoted('line\nbreak')}\n  psk=${quoted('emoji key 1')}\n}\n`;
  const bad = wpaSupplicantReads(dir, broken);
  t.not(bad.code, 0, 'a file wpa_supplicant cannot parse fails the check');
  t.match(bad.out, /Failed to read or parse configuration/);
});

t.test('Wi-Fi: the file is written 0600 and a bad network is left out with a note', async (t) => {
  const root = nodeRoot(t.testdir());
  mkdirSync(join(root, 'sys/class/net/wlan0/wireless'), { recursive: true });
  mkdirSync(join(root, 'sys/class/net/wlan0/device'), { recursive: true });
  mkdirSync(join(root, 'proc/net'), { recursive: true });
  writeFileSync(join(root, 'proc/net/fib_trie'), FIB_TRIE);
  const { ctx, lines } = testContext(root, { cairn: { wifi: [{ name: 'short', passphrase: 'seven77' }, { name: 'home', passphrase: 'correct horse' }] } });
  try {
    await applyNetwork(ctx, 1000);
  } finally {
    await ctx.services.stopAll();
  }
  const file = join(root, WPA_CONF);
  t.equal(statSync(file).mode & 0o777, 0o600);
  const conf = readFileSync(file, 'utf8');
  t.match(conf, /ssid=686f6d65\n {2}psk=[0-9a-f]{64}/);
  t.notMatch(conf, /ssid=73686f7274/, 'the network with the bad passphrase is left out');
  t.notMatch(conf, /correct horse/);
  t.ok(lines.some((l) => /wifi "short": a WPA passphrase is 8 to 63/.test(l)));
  t.notOk(lines.some((l) => l.includes('seven77') || l.includes('correct horse')), 'no passphrase in the log');
});

const FIB_TRIE = `Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.1
              /32 host LOCAL
     +-- 10.0.2.0/24 2 0 2
           |-- 10.0.2.0
              /24 link UNICAST
           |-- 10.0.2.15
              /32 host LOCAL
        |-- 10.0.2.255
           /32 link BROADCAST
Local:
  +-- 0.0.0.0/0 3 0 5
           |-- 10.0.2.15
              /32 host LOCAL
`;

t.test('global addresses from /proc: local IPv4 leaves but loopback, IPv6 of global scope but lo', async (t) => {
  const root = t.testdir({ proc: { net: {} } });
  t.same(globalAddresses({ root }), [], 'no /proc files: none');
  writeFileSync(join(root, 'proc/net/fib_trie'), FIB_TRIE.replace(/10\.0\.2\.15/g, '127.0.0.2'));
  t.same(globalAddresses({ root }), [], 'only loopback: none');
  writeFileSync(join(root, 'proc/net/fib_trie'), FIB_TRIE);
  writeFileSync(
    join(root, 'proc/net/if_inet6'),
    'fe8000000000000000fc00fffe000001 04 40 20 80     eth0\n00000000000000000000000000000001 01 80 10 80       lo\nfd000000000000000000000000000002 04 40 00 82     eth0\n',
  );
  t.same(globalAddresses({ root }), ['10.0.2.15', 'fd00:0000:0000:0000:0000:0000:0000:0002'], 'the DHCP address once, the ULA; not the link-local or lo');
});
