// Saved user-data: `#!` scripts run, and a saved copy belongs to its source.
import t from 'tap';
import { existsSync, mkdirSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fetchDataSources, planUserdata, sourceKey, userdataName } from '../../src/init/apply/datasources.js';
import { runCommands } from '../../src/init/apply/commands.js';
import { configPhase, loadNodeConfig } from '../../src/init/phases.js';
import { nodeRoot, put, testContext } from './support.js';

const USERDATA = 'var/lib/cairn/userdata';

t.test('a #! user-data script is saved 0700 and runs as a program, as the last run_cmd', async (t) => {
  const root = nodeRoot(t.testdir());
  const marker = join(root, 'script-ran');
  const script = `#!/bin/sh\necho "ran as $0" > '${marker}'\n`;
  put(root, 'usr/lib/cairn/config.yaml', 'run_cmd: ["true"]\nk3os:\n  data_sources: [https://cfg.example/boot.sh]\n');
  const { ctx, calls } = testContext(root, { cairn: { data_sources: ['https://cfg.example/boot.sh'] } }, { realExec: true, fetch: () => script });
  t.same(await fetchDataSources(ctx), ['https://cfg.example/boot.sh']);
  const name = userdataName(0, 'https://cfg.example/boot.sh');
  const saved = join(root, USERDATA, name);
  t.equal(statSync(saved).mode & 0o777, 0o700, 'executable, by root only');
  await loadNodeConfig(ctx);
  t.same(ctx.config.run_cmd, ['true', `/${USERDATA}/${name}`], 'the script ends run_cmd');
  t.equal(await runCommands(ctx, 'run_cmd'), '2 ran');
  t.equal(readFileSync(marker, 'utf8'), `ran as ${saved}\n`, 'the script ran, through its own interpreter');
  t.same(calls.at(-1), { file: saved, args: [], input: undefined }, 'run as a program, not through /bin/sh -c');
});

t.test('a #! script saved 0600 by an earlier version still runs', async (t) => {
  const root = nodeRoot(t.testdir());
  const marker = join(root, 'old-script-ran');
  put(root, `${USERDATA}/00-nocloud`, `#!/bin/sh\ntouch '${marker}'\n`);
  const { ctx } = testContext(root, { cairn: { data_sources: ['nocloud'] } }, { realExec: true });
  await loadNodeConfig(ctx);
  await runCommands(ctx, 'run_cmd');
  t.ok(existsSync(marker));
  t.equal(statSync(join(root, USERDATA, '00-nocloud')).mode & 0o777, 0o700);
});

t.test('which saved copies belong to which source (pure)', async (t) => {
  const url = 'https://cfg.example/node.yaml?token=s3cret';
  t.match(sourceKey(url), /^url-[0-9a-f]{16}$/);
  t.notMatch(sourceKey(url), /s3cret|cfg/, 'a URL (and any token in it) is not in the file name');
  t.equal(userdataName(3, 'aws'), '03-aws');
  t.same(planUserdata(['00-aws', '01-nocloud', `02-${sourceKey(url)}`], ['nocloud', url]), {
    rename: [['01-nocloud', '00-nocloud'], [`02-${sourceKey(url)}`, `01-${sourceKey(url)}`]],
    remove: ['00-aws'],
  });
  t.same(planUserdata(['01-url-1', '02-url-2'], ['aws', url]), { rename: [['01-url-1', `01-${sourceKey(url)}`]], remove: ['02-url-2'] }, 'copies named by index belong to the URL at that index');
  t.same(planUserdata([`00-${sourceKey('https://a.example/x')}`], ['https://b.example/x']), { rename: [], remove: [`00-${sourceKey('https://a.example/x')}`] }, 'another URL in the same place is another source');
  t.same(planUserdata(['notes.txt'], []), { rename: [], remove: ['notes.txt'] });
  t.same(planUserdata(['00-aws', '00-aws.user-data', '01-gcp.user-data'], ['nocloud', 'aws']), {
    rename: [['00-aws', '01-aws'], ['00-aws.user-data', '01-aws.user-data']],
    remove: ['01-gcp.user-data'],
  }, "a metadata source's two files move together and go together");
});

/** A node whose saved user-data came from a seed and from AWS; the seed is taken out. */
function seededNode(root: string, nodeConfig: string) {
  nodeRoot(root);
  mkdirSync(join(root, 'run/cairn'), { recursive: true });
  put(root, 'usr/lib/cairn/config.yaml', 'hostname: image\n');
  put(root, 'cairn/system/config.yaml', nodeConfig);
  put(root, `${USERDATA}/00-aws`, '#cloud-config\nhostname: from-aws\nrun_cmd: [echo aws]\n');
  put(root, `${USERDATA}/01-nocloud`, '#cloud-config\nntp_servers: [ntp.seed]\nk3os:\n  labels: {seeded: "yes"}\n');
  return testContext(root, {}, { exec: (file) => (file === 'blkid' ? { code: 2 } : undefined) });
}

t.test('a source that leaves data_sources: its saved user-data stops applying', async (t) => {
  const { ctx, lines } = seededNode(t.testdir(), 'k3os:\n  data_sources: [nocloud]\n');
  await configPhase(ctx);
  t.equal(ctx.config.hostname, 'image', "AWS' hostname no longer applies");
  t.equal(ctx.config.run_cmd, undefined);
  t.same(readdirSync(join(ctx.root, USERDATA)), ['00-nocloud'], 'its copy is gone; the seed copy moved to its new place');
  t.ok(lines.some((l) => /the user-data saved as 00-aws no longer applies: its source is not in data_sources/.test(l)));
});

t.test('a seed taken out: what it applied stays (its saved copy keeps applying)', async (t) => {
  const { ctx, calls } = seededNode(t.testdir(), 'k3os:\n  data_sources: [aws, nocloud]\n');
  await configPhase(ctx);
  t.ok(calls.some((c) => c.file === 'blkid'), 'the seed was looked for');
  t.same(ctx.config.cairn?.labels, { seeded: 'yes' }, 'the seed no longer there, its config still applies');
  t.equal(ctx.config.hostname, 'from-aws');
  t.same(readdirSync(join(ctx.root, USERDATA)).sort(), ['00-aws', '01-nocloud']);
});

t.test('an error in the config that lists data_sources drops nothing', async (t) => {
  const { ctx, lines } = seededNode(t.testdir(), 'k3os:\n  data_sources: {not: a list}\n');
  await configPhase(ctx).catch(() => undefined);
  t.same(readdirSync(join(ctx.root, USERDATA)).sort(), ['00-aws', '01-nocloud']);
  t.equal(ctx.config.hostname, 'from-aws');
  t.ok(lines.some((l) => /saved user-data kept as it is: the config that lists data_sources has errors/.test(l)));
  writeFileSync(join(ctx.root, 'cairn/system/config.yaml'), 'k3os: [broken\n');
  await configPhase(ctx).catch(() => undefined);
  t.same(readdirSync(join(ctx.root, USERDATA)).sort(), ['00-aws', '01-nocloud'], 'nor does a node config that does not read');
});
