// First boot without a clock or a key: the clock before TLS fetches, the
// login from what got installed, files owned by cairn, a console before init_cmd.
import t, { type Test } from 'tap';
import { chmodSync, existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { consoleAutologin, installedLogin, isSshPublicKey, KEY_CACHE, parseKeyList, resolveKeys } from '../../src/init/apply/users.js';
import { syncTime, tlsFetches } from '../../src/init/apply/time.js';
import { fetchDataSources } from '../../src/init/apply/datasources.js';
import { applyEarlyKeys, boot, usersPhase } from '../../src/init/phases.js';
import { runPhases } from '../../src/init/phase.js';
import { AUTOLOGIN_FLAG, startGettys } from '../../src/init/services.js';
import type { NodeContext } from '../../src/init/context.js';
import { chpasswdWrites, nodeRoot, put, sshKey, testContext } from './support.js';

const PORTAL = '<!DOCTYPE html>\n<html><head><title>Hotel Wi-Fi: sign in</title></head>\n<body>Accept the terms</body></html>\n';

/** The named phases of the boot, in the boot's own order. */
function phasesNamed(...names: string[]) {
  for (const n of names) if (!boot.some((b) => b.name === n)) throw new Error(`no phase ${n}`);
  return boot.filter((b) => names.includes(b.name));
}

t.test('SSH public keys are told from other answers', async (t) => {
  const key = sshKey('a');
  t.ok(isSshPublicKey(key));
  t.ok(isSshPublicKey(key.split(' ').slice(0, 2).join(' ')), 'without a comment');
  t.notOk(isSshPublicKey(key.replace('ssh-ed25519 ', 'ssh-rsa ')), 'the blob names another type');
  t.notOk(isSshPublicKey(`ssh-ed25519 ${key.split(' ')[1]!.slice(0, 12)}`), 'a cut blob');
  t.notOk(isSshPublicKey('ssh-ed25519 not/base64!'));
  t.notOk(isSshPublicKey('<html>'));
  t.same(parseKeyList(`# keys\n${key}\n\n${sshKey('b')}\n`), { keys: [key, sshKey('b')] });
  t.same(parseKeyList('\n'), { problem: 'the answer has no keys' });
  t.match(parseKeyList(PORTAL), { problem: /not a list of SSH public keys \(line 1 starts "<!DOCTYPE html>.*captive portal/ });
  t.match(parseKeyList(`${key}\nNot Found\n`), { problem: /line 2 starts "Not Found"/ });
});

t.test("a captive portal's page or an empty answer never replaces cached keys", async (t) => {
  const root = nodeRoot(t.testdir());
  const good = sshKey('good');
  const cache = join(root, KEY_CACHE, 'github-octo.keys');
  put(root, `${KEY_CACHE}/github-octo.keys`, `${good}\n`);
  for (const [what, answer] of [['portal', PORTAL], ['empty', ''], ['blank', '\n\n']] as const) {
    const { ctx, lines } = testContext(root, {}, { fetch: () => answer });
    const r = await resolveKeys(ctx, ['github:octo']);
    t.same(r.keys, [good], `${what}: the cached key is used`);
    t.equal(readFileSync(cache, 'utf8'), `${good}\n`, `${what}: the cache is unchanged`);
    t.match(r.notes, [/github:octo: using 1 cached key/]);
    t.same(lines, []);
  }
  const fresh = sshKey('fresh');
  const { ctx } = testContext(root, {}, { fetch: () => `${fresh}\n` });
  t.same((await resolveKeys(ctx, ['github:octo'])).keys, [fresh]);
  t.equal(readFileSync(cache, 'utf8'), `${fresh}\n`, 'a good answer replaces the cache');
});

t.test('a portal page with nothing cached: no key installed, nothing cached, and the console stays a way in', async (t) => {
  const root = nodeRoot(t.testdir());
  const { ctx, lines } = testContext(root, { ssh_authorized_keys: ['github:octo'] }, { fetch: () => PORTAL });
  t.match(await usersPhase(ctx), /no password and no SSH keys: log in on the console/);
  t.equal(readFileSync(join(root, 'home/cairn/.ssh/authorized_keys'), 'utf8'), '');
  t.notOk(existsSync(join(root, KEY_CACHE, 'github-octo.keys')), 'the page is not cached');
  t.ok(lines.some((l) => /github:octo: no keys \(the answer is not a list of SSH public keys/.test(l)));
  t.ok(consoleAutologin(root));
  t.equal(readFileSync(join(root, AUTOLOGIN_FLAG), 'utf8'), 'cairn\n', 'the console logs in by itself');
});

t.test('the login follows what got installed, not what is configured', async (t) => {
  const root = nodeRoot(t.testdir());
  const failed = testContext(root, { ssh_authorized_keys: ['github:octo', 'https://keys.example/k?token=t0ken'], cairn: { data_sources: ['https://cfg.example/u?token=t0ken'] } }, {
    fetch: (url) => {
      throw new Error(`${url}: HTTP 503`);
    },
  });
  await fetchDataSources(failed.ctx);
  await usersPhase(failed.ctx);
  t.ok(existsSync(join(root, AUTOLOGIN_FLAG)), 'every key fetch failed: the console logs in by itself');
  t.notOk(failed.lines.some((l) => l.includes('t0ken')), 'a token in a URL is not logged');
  t.ok(failed.lines.some((l) => l.includes('https://keys.example/k?...: no keys (https://keys.example/k?...: HTTP 503')), failed.lines.join('\n'));
  const fetched = testContext(root, { ssh_authorized_keys: ['github:octo'] }, { fetch: () => `${sshKey('k')}\n` });
  await usersPhase(fetched.ctx);
  t.notOk(existsSync(join(root, AUTOLOGIN_FLAG)), 'a key is installed: a login is asked for');
  const offline = testContext(root, { ssh_authorized_keys: ['github:octo'] });
  await usersPhase(offline.ctx);
  t.notOk(existsSync(join(root, AUTOLOGIN_FLAG)), 'offline, the cached key is installed');
  const pw = testContext(nodeRoot(t.testdir()), { cairn: { password: 'rancher' } });
  const pwRoot = pw.ctx.root;
  const withPassword = testContext(pwRoot, { cairn: { password: 'rancher' } }, { exec: chpasswdWrites(pwRoot) });
  await usersPhase(withPassword.ctx);
  t.notOk(existsSync(join(pwRoot, AUTOLOGIN_FLAG)), 'a password is set: a login is asked for');
  const refused = testContext(nodeRoot(t.testdir()), { cairn: { password: 'rancher' } }, { exec: (f) => (f === 'chpasswd' ? { code: 1, stderr: 'chpasswd: failed' } : undefined) });
  await t.rejects(usersPhase(refused.ctx), /cannot set the password of cairn/);
  t.ok(existsSync(join(refused.ctx.root, AUTOLOGIN_FLAG)), 'the password was not set: the console stays a way in');
});

t.test('which fetches need a set clock', async (t) => {
  t.same(tlsFetches({}), []);
  t.same(tlsFetches({ ssh_authorized_keys: [sshKey('x'), 'github:a', 'gitlab:b', 'http://plain.example/k'] }), ['https://github.com/a.keys', 'https://gitlab.com/b.keys']);
  t.same(tlsFetches({ cairn: { data_sources: ['aws', 'nocloud', 'packet', 'https://cfg.example/x'] } }), ['https://metadata.platformequinix.com/metadata', 'https://cfg.example/x']);
});

/** A context whose exec and fetch write one list of events, chrony synchronised on its `syncAfter`th answer. */
function eventContext(t: Test, root: string, config: NodeContext['config'], syncAfter: number) {
  const events: string[] = [];
  let asked = 0;
  const tc = testContext(root, config, {
    exec: (file, args) => {
      events.push([file, ...args].join(' '));
      if (file === 'chronyc') return ++asked >= syncAfter ? { code: 0 } : { code: 1, stderr: '' };
      return undefined;
    },
    fetch: (url) => {
      events.push(`fetch ${url}`);
      if (url.endsWith('.keys')) return `${sshKey('gh')}\n`;
      return '#cloud-config\nhostname: fetched\n';
    },
  });
  t.teardown(() => tc.ctx.services.stopAll());
  return { ...tc, events };
}

t.test('on a first boot the clock is set before any TLS fetch (data sources, then keys)', async (t) => {
  const names = boot.map((p) => p.name);
  t.ok(names.indexOf('network') < names.indexOf('time'), 'time after the network');
  t.ok(names.indexOf('time') < names.indexOf('data-sources'), 'time before the data sources');
  t.ok(names.indexOf('time') < names.indexOf('users'), 'time before the keys');
  const root = nodeRoot(t.testdir());
  const { ctx, events } = eventContext(t, root, { ssh_authorized_keys: ['github:octo'], cairn: { data_sources: ['https://cfg.example/node.yaml'] } }, 2);
  put(root, 'usr/lib/cairn/config.yaml', 'ssh_authorized_keys: [github:octo]\nk3os:\n  data_sources: [https://cfg.example/node.yaml]\n');
  const results = await runPhases(phasesNamed('users', 'data-sources', 'time'), ctx, ctx.log);
  t.same(results.map((r) => [r.name, r.ok]), [['time', true], ['data-sources', true], ['users', true]], JSON.stringify(results));
  const synced = events.lastIndexOf('chronyc -n waitsync 1');
  t.equal(events.filter((e) => e.startsWith('chronyc')).length, 2, 'asked until chrony said synchronised');
  t.ok(synced >= 0 && synced < events.indexOf('fetch https://cfg.example/node.yaml'), `synchronised before the data source: ${events.join(', ')}`);
  t.ok(synced < events.indexOf('fetch https://github.com/octo.keys'), 'and before the keys');
  t.equal(ctx.services.get('chronyd')?.name, 'chronyd', 'chronyd is started by the time phase');
  t.match(readFileSync(join(root, 'etc/chrony/chrony.conf'), 'utf8'), /makestep 1 -1/);
});

t.test('the wait for the clock is bounded, asked once, and only when something is fetched over TLS', async (t) => {
  const root = nodeRoot(t.testdir());
  const never = eventContext(t, root, { ssh_authorized_keys: ['github:octo'] }, Infinity);
  const start = Date.now();
  await t.rejects(syncTime(never.ctx, 1500), /the clock is not synchronised after 2 s \(check ntp_servers and the network\)/);
  t.ok(Date.now() - start < 4000, 'gives up after its bound');
  const asked = never.events.filter((e) => e.startsWith('chronyc')).length;
  t.ok(asked >= 1 && asked <= 3, `${asked} tries`);
  await usersPhase(never.ctx);
  t.equal(never.events.filter((e) => e.startsWith('chronyc')).length, asked, 'the users phase does not wait a second time');
  t.ok(never.events.includes('fetch https://github.com/octo.keys'), 'and fetches anyway');
  const local = eventContext(t, nodeRoot(t.testdir()), { ssh_authorized_keys: [sshKey('x')], cairn: { data_sources: ['aws'] } }, 1);
  t.equal(await syncTime(local.ctx), 'chronyd started');
  t.same(local.events.filter((e) => e.startsWith('chronyc')), [], 'nothing over TLS: no wait');
});

t.test("write_files owned by cairn work on the very first boot", async (t) => {
  const root = nodeRoot(t.testdir());
  t.notMatch(readFileSync(join(root, 'etc/passwd'), 'utf8'), /^cairn:/m, 'a first boot: no cairn user yet');
  const { ctx } = testContext(root, {
    write_files: [
      { path: '/home/cairn/.config/app.env', content: 'A=1\n', owner: 'cairn:cairn', permissions: '0600' },
      { path: '/etc/app/owned-by-uid', content: 'x\n', owner: 'cairn' },
    ],
  });
  await applyEarlyKeys(ctx);
  const file = join(root, 'home/cairn/.config/app.env');
  t.equal(readFileSync(file, 'utf8'), 'A=1\n');
  const st = statSync(file);
  t.equal(st.mode & 0o777, 0o600);
  if (process.getuid?.() === 0) {
    t.same([st.uid, st.gid], [1000, 1000], 'owned by cairn');
    t.same([statSync(join(root, 'etc/app/owned-by-uid')).uid], [1000]);
  } else {
    t.pass('not root: owners are not set, the files are written', { skip: 'run as root to check the owner' });
  }
  t.match(readFileSync(join(root, 'etc/passwd'), 'utf8'), /^cairn:x:1000:1000:/m);
});

t.test('a login on the console comes before init_cmd and boot_cmd, which may hang', async (t) => {
  const names = boot.map((p) => p.name);
  t.ok(names.indexOf('initrd-keys') < names.indexOf('console'), 'after the user exists');
  t.ok(names.indexOf('console') < names.indexOf('init-cmd'), 'before init_cmd');
  t.ok(names.indexOf('console') < names.indexOf('boot-cmd'), 'before boot_cmd');
  const root = nodeRoot(t.testdir());
  put(root, 'sys/class/tty/console/active', 'tty0 ttyS0\n');
  // A stand-in agetty under the node's root: it notes its arguments and waits, as agetty does.
  const log = join(root, 'agetty.log');
  put(root, 'sbin/agetty', `#!/bin/sh\necho "$*" >> '${log}'\nexec sleep 60\n`);
  chmodSync(join(root, 'sbin/agetty'), 0o755);
  let gettyWhenInitCmd = '';
  const tc = testContext(root, { init_cmd: ['sleep 600'], ssh_authorized_keys: ['github:octo'] }, {
    exec: (file, args) => {
      if (file === '/bin/sh' && args[1] === 'sleep 600') gettyWhenInitCmd = tc.ctx.services.get('getty-ttyS0')?.state ?? 'none';
      return undefined;
    },
    fetch: () => {
      throw new Error('getaddrinfo EAI_AGAIN github.com');
    },
  });
  t.teardown(() => tc.ctx.services.stopAll());
  const results = await runPhases(phasesNamed('init-cmd', 'console', 'initrd-keys'), tc.ctx, tc.ctx.log);
  t.equal(results.find((r) => r.name === 'console')?.detail, 'getty-tty1, getty-ttyS0', 'the gettys started');
  t.equal(gettyWhenInitCmd, 'running', 'the getty runs while init_cmd runs');
  const until = async (re: RegExp) => {
    for (let i = 0; i < 100 && !re.test(existsSync(log) ? readFileSync(log, 'utf8') : ''); i++) await sleep(50);
    return existsSync(log) ? readFileSync(log, 'utf8') : '';
  };
  t.match(await until(/-L ttyS0/), /^--noclear -L ttyS0 115200,57600,38400,9600 vt100$/m, 'keys are configured: a login is asked for, even before they are installed');
  t.notMatch(readFileSync(log, 'utf8'), /--autologin/, 'no console logged in by itself');
  // The key fetch fails in the users phase: nothing got installed, so the console becomes the way in.
  await usersPhase(tc.ctx);
  const after = await until(/^--autologin cairn --noclear -L ttyS0 /m);
  t.match(after, /^--autologin cairn --noclear -L ttyS0 115200,57600,38400,9600 vt100$/m, 'no key could be installed: the console logs in by itself from then on');
  // The init starts the gettys once more after the boot (should the console phase have failed): the decision stands.
  const pid = tc.ctx.services.get('getty-ttyS0')?.pid;
  startGettys(tc.ctx);
  t.ok(existsSync(join(root, AUTOLOGIN_FLAG)), 'still logs in by itself after the boot');
  t.equal(tc.ctx.services.get('getty-ttyS0')?.pid, pid, 'the logged-in console was not hung up');
});

t.test('a config that asks for no login: the console logs in by itself from the start', async (t) => {
  const root = nodeRoot(t.testdir());
  put(root, 'sys/class/tty/console/active', 'ttyS0\n');
  put(root, 'sbin/agetty', '#!/bin/sh\nexec sleep 60\n');
  chmodSync(join(root, 'sbin/agetty'), 0o755);
  const tc = testContext(root, {});
  t.teardown(() => tc.ctx.services.stopAll());
  const results = await runPhases(phasesNamed('console', 'initrd-keys'), tc.ctx, tc.ctx.log);
  t.equal(results.find((r) => r.name === 'console')?.detail, 'getty-ttyS0 (logs in as cairn by itself until a key or a password is installed)');
  t.equal(readFileSync(join(root, AUTOLOGIN_FLAG), 'utf8'), 'cairn\n');
});

t.test('a configured password is set with the early keys, before the console and init_cmd', async (t) => {
  const root = nodeRoot(t.testdir());
  const tc = testContext(root, { cairn: { password: 'rancher' } }, { exec: chpasswdWrites(root) });
  t.notOk(installedLogin(root).password, 'no password before');
  await applyEarlyKeys(tc.ctx);
  t.ok(installedLogin(root).password, 'the password is set by initrd-keys');
});
