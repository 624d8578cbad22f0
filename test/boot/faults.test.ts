// Power cuts (a hard reset of the VM: the guest loses its RAM, the disk keeps
// what reached it) at random moments during `cairn upgrade` and during the
// first boot of the new version. After every cut the node must boot one
// complete version, old or new: the boot completes, and every version the
// boot state names passes its own SHA256SUMS. The node flips between 0.1.0
// and 0.2.0, so each round is an upgrade.
//   CAIRN_FAULT_CUTS   number of cuts (default 3; npm run test:faults runs 30)
//   CAIRN_FAULT_SEED   the random moments' seed (printed, to replay a run)
import t from 'tap';
import { copyFileSync, mkdirSync } from 'node:fs';
import { basename, join } from 'node:path';
import { bootForTest, makeSshKey, type SshKey } from '../../qemu/harness.js';
import { REPO, buildTestImage, buildUpgradeVersion } from './image.js';
import { BOOT_TIMEOUT, Node } from './node.js';

const CUTS = Number(process.env.CAIRN_FAULT_CUTS ?? 3);
const SEED = Number(process.env.CAIRN_FAULT_SEED ?? Date.now() % 100_000);

/** A small deterministic generator (mulberry32), so a seed replays the same moments. */
function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = Math.imul(a ^ (a >>> 15), 1 | a);
    x ^= x + Math.imul(x ^ (x >>> 7), 61 | x);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

let key: SshKey;
let raw = '';
const serve = join(REPO, '.tap', 'faults-serve');
const payloads: Record<string, string> = {};

t.before(async () => {
  key = await makeSshKey('cairn-faults-test');
  raw = buildTestImage().raw;
  mkdirSync(serve, { recursive: true });
  for (const v of ['0.1.0', '0.2.0']) {
    payloads[v] = buildUpgradeVersion(v);
    copyFileSync(payloads[v]!, join(serve, basename(payloads[v]!)));
  }
});
t.teardown(() => key?.remove());

interface Status {
  version: string;
  boot?: { state?: { active: string; fallback?: string; trial?: string } };
}

t.test(`power cuts: ${CUTS} at random moments of an upgrade, each followed by a complete boot of one version`, async (tt) => {
  tt.comment(`seed ${SEED} (CAIRN_FAULT_SEED=${SEED} replays these moments)`);
  const rnd = random(SEED);
  const config = `hostname: faults-node\nssh_authorized_keys: ["${key.publicKey.trim()}"]\n`;
  const vm = await bootForTest(tt, { artifact: { kind: 'raw', path: raw }, configText: config, sshPort: 'auto', memMb: 2048, cpus: 2, name: 'faults', timeoutMs: BOOT_TIMEOUT, serveDir: serve });
  const node = new Node(vm, key);
  const complete = /cairn: boot complete (0\.1\.0|0\.2\.0)( \(failed phases: [^)]*\))?$/m;
  let running = (await vm.waitFor(complete, BOOT_TIMEOUT)).groups[0]!;
  const tally: string[] = [];
  let recovered = 0;
  for (let cut = 1; cut <= CUTS; cut++) {
    await node.waitSsh();
    const target = running === '0.1.0' ? '0.2.0' : '0.1.0';
    const url = `${vm.http!.guestUrl}/${basename(payloads[target]!)}`;
    const during = rnd() < 0.5 ? 'upgrade' : 'first boot';
    await node.sh(`sudo sh -c 'cairn upgrade --source ${url} --force --reboot >/var/log/cairn/upgrade-test.log 2>&1 &'`);
    let delayMs: number;
    if (during === 'upgrade') {
      // the download, the writes, the switch and the start of the reboot
      delayMs = Math.round(rnd() * 30_000);
    } else {
      await vm.waitFor(new RegExp(`^cairn-initramfs: system ${target.replace(/\./g, '\\.')} on \\S+ \\(trial boot`, 'm'), BOOT_TIMEOUT);
      delayMs = Math.round(rnd() * 25_000);
    }
    await new Promise((r) => setTimeout(r, delayMs));
    const cutAt = vm.output.length;
    // only a boot after the cut counts (the trial may have completed before it)
    const after = vm.waitFor(complete, BOOT_TIMEOUT, { from: 'end' }).catch((e: Error) => e);
    await vm.reset();
    const r = await after;
    if (r instanceof Error) {
      tally.push(`cut ${cut}: during the ${during}, ${(delayMs / 1000).toFixed(1)} s in → no complete boot`);
      tt.fail(`cut ${cut}: no complete boot after the cut`);
      break;
    }
    // the first complete boot after the cut (later reboots of a trial count too, as long as one completes)
    running = r.groups[0]!;
    const failed = r.groups[1] ? ` with${r.groups[1]}` : '';
    await node.waitSsh();
    const st = JSON.parse(await node.sh('cairn status --json')) as Status;
    const state = st.boot?.state;
    const named = [state?.active, state?.fallback, state?.trial].filter((v): v is string => !!v);
    // as root, as the first stage checks them; a broken version says which file
    const sums = await node.sh(`sudo sh -c 'cd /cairn/system && for v in ${named.join(' ')}; do (cd "$v" && if sha256sum -c --quiet SHA256SUMS >/dev/null 2>&1; then echo "$v ok"; else echo "$v BROKEN: $(sha256sum -c SHA256SUMS 2>&1 | grep -v ": OK$" | tr "\\n" " ")"; fi); done'`);
    const whole = !/BROKEN/.test(sums) && st.version === running && named.includes(running);
    tally.push(`cut ${cut}: during the ${during}, ${(delayMs / 1000).toFixed(1)} s in → boots ${running}${failed}; versions ${sums.trim().split('\n').join(', ')}`);
    tt.ok(whole, `cut ${cut}: ${running} booted whole, and every version the boot state names is whole (${sums.trim().replace(/\n/g, ', ')})`);
    tt.ok(vm.output.indexOf('cairn-initramfs: starting', cutAt) > 0, `cut ${cut}: the machine really restarted`);
    if (whole) recovered++;
  }
  tt.comment(['power cuts:', ...tally, `${recovered} of ${CUTS} cuts recovered`].join('\n'));
  tt.equal(recovered, CUTS, `${recovered} of ${CUTS} cuts recovered`);
});
