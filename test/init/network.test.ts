import t from 'tap';
import { planNetwork, renderWpaConf, type Link } from '../../src/init/apply/network.js';

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
  t.match(conf, /network=\{\n {2}ssid="home"\n {2}psk="my\\"password"\n {2}priority=2\n\}/);
  t.match(conf, /ssid="open"\n {2}key_mgmt=NONE/);
});
