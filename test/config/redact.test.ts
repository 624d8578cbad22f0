import t from 'tap';
import { redact, REDACTED, redactK3sArgs } from '../../src/config/redact.js';
import { redactUrlCredentials } from '../../src/config/secrets.js';

t.test('redactK3sArgs hides token values in every spelling k3s accepts', async (t) => {
  t.same(
    redactK3sArgs([
      'agent',
      '--token',
      'K10secret1',
      '--token=K10secret2',
      '-t',
      'secret3',
      '-t=secret4',
      '--agent-token',
      'secret5',
      '--agent-token=secret6',
      '--token secret7',
      '--etcd-s3-secret-key=secret8',
      '--vpn-auth=name=tailscale,joinKey=secret9',
      '--datastore-endpoint=postgres://k3s:secret10@db.example.net:5432/k3s',
      '--datastore-endpoint',
      'mysql://k3s:sec@ret11@tcp(db:3306)/k3s',
      '--token-file=/etc/k3s-token',
      '--node-label=token=visible',
      '--server=https://server:6443',
      '--token',
    ]),
    [
      'agent',
      '--token',
      REDACTED,
      `--token=${REDACTED}`,
      '-t',
      REDACTED,
      `-t=${REDACTED}`,
      '--agent-token',
      REDACTED,
      `--agent-token=${REDACTED}`,
      `--token ${REDACTED}`,
      `--etcd-s3-secret-key=${REDACTED}`,
      `--vpn-auth=${REDACTED}`,
      `--datastore-endpoint=postgres://k3s:${REDACTED}@db.example.net:5432/k3s`,
      '--datastore-endpoint',
      `mysql://k3s:${REDACTED}@tcp(db:3306)/k3s`,
      '--token-file=/etc/k3s-token',
      '--node-label=token=visible',
      '--server=https://server:6443',
      '--token',
    ],
  );
});

t.test('redactK3sArgs hides token values behind one dash or two, as Go flags are written', async (t) => {
  t.same(
    redactK3sArgs(['-token', 'secret1', '-token=secret2', '-agent-token', 'secret3', '-agent-token=secret4', '-token secret5', '--t', 'secret6', '--t=secret7', '-vpn-auth=secret8', '-etcd-s3-secret-key', 'secret9']),
    ['-token', REDACTED, `-token=${REDACTED}`, '-agent-token', REDACTED, `-agent-token=${REDACTED}`, `-token ${REDACTED}`, '--t', REDACTED, `--t=${REDACTED}`, `-vpn-auth=${REDACTED}`, '-etcd-s3-secret-key', REDACTED],
  );
  t.same(
    redactK3sArgs(['-token-file', '/etc/k3s-token', '---token', 'shown', '-tokens=shown', '-', 'shown', '-node-label=token=visible']),
    ['-token-file', '/etc/k3s-token', '---token', 'shown', '-tokens=shown', '-', 'shown', '-node-label=token=visible'],
    'other flags and their values are kept',
  );
  t.same(redact({ cairn: { k3s_args: ['-token', 'tok', '-agent-token=atok'] } }), { cairn: { k3s_args: ['-token', REDACTED, `-agent-token=${REDACTED}`] } }, 'redact uses the same rule');
});

t.test('redactK3sArgs does not change its input', async (t) => {
  const args = ['--token', 'x'];
  redactK3sArgs(args);
  t.same(args, ['--token', 'x']);
});

t.test('URL passwords are hidden, users, hosts and paths kept', async (t) => {
  t.equal(redactUrlCredentials('http://proxy-user:p%40ss@proxy:3128'), `http://proxy-user:${REDACTED}@proxy:3128`);
  t.equal(redactUrlCredentials('https://server:6443/path@x'), 'https://server:6443/path@x', 'a port is not a password');
  t.equal(redactUrlCredentials('https://user@host/x'), 'https://user@host/x', 'no password, nothing hidden');
});

t.test('redact hides passwords, tokens, Wi-Fi passphrases, secret environment entries, k3s tokens and URL passwords only', async (t) => {
  const shown = redact({
    hostname: 'h',
    cairn: {
      password: 'p',
      token: 't',
      wifi: [{ name: 'n', passphrase: 'secret12' }],
      labels: { password: 'not-a-secret' },
      k3s_args: ['server', '--token', 'tok', '--datastore-endpoint=postgres://u:dbpass@db/k3s', '--disable=traefik'],
      environment: {
        K3S_TOKEN: 'a',
        db_password: 'b',
        AWS_SECRET_ACCESS_KEY: 'c',
        api_key: 'd',
        HTTPS_PROXY: 'http://u:proxypass@proxy:3128',
        no_proxy: '10.0.0.0/8',
      },
      data_sources: ['https://u:dspass@config.example.net/node.yaml'],
    },
  });
  t.same(shown, {
    hostname: 'h',
    cairn: {
      password: REDACTED,
      token: REDACTED,
      wifi: [{ name: 'n', passphrase: REDACTED }],
      labels: { password: 'not-a-secret' },
      k3s_args: ['server', '--token', REDACTED, `--datastore-endpoint=postgres://u:${REDACTED}@db/k3s`, '--disable=traefik'],
      environment: {
        K3S_TOKEN: REDACTED,
        db_password: REDACTED,
        AWS_SECRET_ACCESS_KEY: REDACTED,
        api_key: REDACTED,
        HTTPS_PROXY: `http://u:${REDACTED}@proxy:3128`,
        no_proxy: '10.0.0.0/8',
      },
      data_sources: [`https://u:${REDACTED}@config.example.net/node.yaml`],
    },
  });
});

t.test('redact also knows the k3os: namespace as written', async (t) => {
  t.same(redact({ k3os: { token: 't', k3sArgs: ['-t', 'x'] } }), { k3os: { token: REDACTED, k3sArgs: ['-t', REDACTED] } });
});
