import t from 'tap';
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { loadConfig } from '../../src/config/loader.js';

function put(root: string, path: string, content: string | Buffer) {
  const full = join(root, path);
  mkdirSync(dirname(full), { recursive: true });
  writeFileSync(full, content);
}

t.test("every source at once, in k3OS' order, later overriding earlier; maps merge, lists replace", async (t) => {
  const root = t.testdir();
  // Each source sets the labels from its own letter on; the label of a letter shows which source won it.
  put(root, 'usr/lib/cairn/config.yaml', 'hostname: from-image\nrun_cmd: [image]\nk3os:\n  labels: {a: image, b: image, c: image, d: image, e: image}\n  ntp_servers: [image.ntp]\n');
  put(root, 'cairn/system/config.yaml', 'hostname: from-node\nk3os:\n  labels: {b: node, c: node, d: node, e: node}\n  ntp_servers: [node.ntp]\n  modules: [node-module]\n');
  put(root, 'proc/cmdline', 'console=ttyS0 cairn.labels[c]=cmdline cairn.labels[d]=cmdline cairn.labels[e]=cmdline cairn.modules=cmdline-module\n');
  put(root, 'var/lib/cairn/userdata/user-data', '#cloud-config\nhostname: from-userdata\ncairn:\n  labels: {d: userdata, e: userdata}\n');
  put(root, 'var/lib/cairn/config.d/10-site.yaml', 'cairn:\n  labels: {e: config.d-10}\n  ntp_servers: [site.ntp]\n');
  put(root, 'var/lib/cairn/config.d/20-last.yaml', 'hostname: from-config.d\nrun_cmd: [last]\n');
  const r = await loadConfig({ root });
  t.same(r.diagnostics, []);
  t.equal(r.config.hostname, 'from-config.d');
  t.same(r.config.cairn?.labels, { a: 'image', b: 'node', c: 'cmdline', d: 'userdata', e: 'config.d-10' });
  t.same(r.config.cairn?.modules, ['cmdline-module'], 'a key set in the node file and at the boot prompt takes the boot prompt value');
  t.same(r.config.cairn?.ntp_servers, ['site.ntp'], 'lists replace');
  t.same(r.config.run_cmd, ['last']);
  t.same(
    r.sources.map((s) => `${s.kind}:${s.file}:${s.status}`),
    [
      'image:/usr/lib/cairn/config.yaml:read',
      'node:/cairn/system/config.yaml:read',
      'cmdline:cmdline:read',
      'userdata:/var/lib/cairn/userdata/user-data:read',
      'config.d:/var/lib/cairn/config.d/10-site.yaml:read',
      'config.d:/var/lib/cairn/config.d/20-last.yaml:read',
    ],
  );
});

t.test('an explicit command line replaces <root>/proc/cmdline', async (t) => {
  const root = t.testdir();
  put(root, 'proc/cmdline', 'cairn.hostname=file');
  const r = await loadConfig({ root, cmdline: 'cairn.hostname=given' });
  t.equal(r.config.hostname, 'given');
});

t.test('no sources: an empty config', async (t) => {
  const r = await loadConfig({ root: t.testdir(), cmdline: '' });
  t.same(r.config, {});
  t.same(r.diagnostics, []);
  t.ok(r.sources.filter((s) => s.kind !== 'cmdline').every((s) => s.status === 'missing'));
});

t.test('a broken source contributes its valid keys and its problems', async (t) => {
  const root = t.testdir();
  put(root, 'cairn/system/config.yaml', 'hostname: good\nk3os:\n  password: pw\n  modules: {x: 1}\n');
  put(root, 'var/lib/cairn/config.d/bad.yaml', Buffer.from([0, 1, 2, 3]));
  put(root, 'var/lib/cairn/config.d/dir.yaml/x', 'hostname: x');
  const r = await loadConfig({ root, cmdline: '' });
  t.equal(r.config.hostname, 'good');
  t.equal(r.config.cairn?.password, 'pw');
  t.notOk(r.config.cairn?.modules);
  t.same(
    r.diagnostics.map((d) => `${d.file}:${d.line}: ${d.message}`),
    [
      '/cairn/system/config.yaml:4: expected a kernel module name, found a map',
      '/var/lib/cairn/config.d/bad.yaml:1: the file holds binary data (a NUL byte), not YAML text; is this the right file?',
      '/var/lib/cairn/config.d/dir.yaml:1: the config file is a folder; expected a YAML file',
    ],
  );
  t.same(
    r.sources.map((s) => `${s.kind}:${s.status}`),
    ['image:missing', 'node:invalid', 'cmdline:read', 'config.d:invalid', 'config.d:invalid'],
  );
});

t.test('#! user-data runs as the last run_cmd', async (t) => {
  const root = t.testdir();
  put(root, 'cairn/system/config.yaml', 'run_cmd: [first]\n');
  put(root, 'var/lib/cairn/userdata/user-data', '#!/bin/sh\necho from user-data\n');
  const r = await loadConfig({ root, cmdline: '' });
  t.same(r.scripts, ['/var/lib/cairn/userdata/user-data']);
  t.same(r.config.run_cmd, ['first', '/var/lib/cairn/userdata/user-data']);
});

