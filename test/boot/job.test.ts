// The upgrade as system-upgrade-controller's job runs it: a node of an image
// with Debian's containerd and runc imports the OCI upgrade archive and runs
// its container the way rancher/system-upgrade-controller's pkg/upgrade/job
// does (privileged, the host's network, PID and IPC namespaces, the host's
// root at /host, the SYSTEM_UPGRADE_* variables). The node reboots into the
// new version; the job run again (as the controller retries it after the
// reboot) succeeds with nothing to do.
import t from 'tap';
import { copyFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { bootForTest, makeSshKey, type SshKey } from '../../qemu/harness.js';
import { REPO, buildVariant } from './image.js';
import { BOOT_TIMEOUT, Node } from './node.js';

let key: SshKey;
let raw = '';
const serve = join(REPO, '.tap', 'job-serve');
const RUNTIME = ['containerd', 'runc'];

t.before(async () => {
  key = await makeSshKey('cairn-job-test');
  raw = join(buildVariant('0.1.0', { tag: 'job-0.1.0', formats: 'raw', packages: RUNTIME }), 'default-0.1.0-amd64.raw');
  mkdirSync(serve, { recursive: true });
  copyFileSync(join(buildVariant('0.2.0', { tag: 'job-0.2.0', formats: 'oci', packages: RUNTIME }), 'default-0.2.0-amd64.oci.tar'), join(serve, 'cairn-0.2.0.oci.tar'));
});
t.teardown(() => key?.remove());

/** The job's container, as the controller's job spec has it (hostNetwork, hostPID, hostIPC, privileged, / at /host). */
function runJob(id = 'cairn-upgrade-job'): string {
  return [
    '/usr/bin/ctr -n k8s.io run --rm --privileged --net-host',
    '--with-ns pid:/proc/1/ns/pid --with-ns ipc:/proc/1/ns/ipc',
    '--mount type=bind,src=/,dst=/host,options=rbind:rw',
    '--env SYSTEM_UPGRADE_NODE_NAME=job-node --env SYSTEM_UPGRADE_PLAN_NAME=cairn',
    '--env SYSTEM_UPGRADE_PLAN_LATEST_VERSION=0.2.0 --env SYSTEM_UPGRADE_PLAN_LATEST_HASH=5b1f0e9c2d',
    `registry.example/cairn:0.2.0 ${id} /usr/bin/cairn upgrade`,
  ].join(' ');
}

// Debian's, by path: k3s puts its own ctr (a link to k3s) first in PATH
const CTR = '/usr/bin/ctr';
const START_CONTAINERD = `(/usr/bin/containerd >/var/log/cairn/containerd.log 2>&1 &); for i in $(seq 60); do ${CTR} version >/dev/null 2>&1 && break; sleep 1; done; ${CTR} version >/dev/null`;

t.test("the controller's job in containerd upgrades the node, and its retry after the reboot succeeds", async (tt) => {
  const config = `hostname: job-node\nssh_authorized_keys: ["${key.publicKey.trim()}"]\n`;
  // One CPU: under TCG with two, runc's start met a kernel oops (int3 in kmem_cache_free, live code patching across vCPUs)
  const vm = await bootForTest(tt, { artifact: { kind: 'raw', path: raw }, configText: config, sshPort: 'auto', memMb: 2048, name: 'job', timeoutMs: BOOT_TIMEOUT, serveDir: serve, cpus: 1 });
  const node = new Node(vm, key);
  await vm.waitFor(/cairn: boot complete 0\.1\.0$/m, BOOT_TIMEOUT);
  await node.waitSsh();
  await node.sh(`sudo sh -c '${START_CONTAINERD}'`);
  // the image as the controller's node pulls it: imported by containerd, named by its tag
  // (the archive in RAM: the node's disk holds containerd's copy, the versions and the new one)
  await node.sh(`sudo sh -c 'mkdir -p /run/job && busybox wget -q -O /run/job/cairn.oci.tar ${vm.http!.guestUrl}/cairn-0.2.0.oci.tar'`);
  const imported = await node.sh(`sudo ${CTR} -n k8s.io images import --base-name registry.example/cairn /run/job/cairn.oci.tar && sudo ${CTR} -n k8s.io images ls -q && sudo rm /run/job/cairn.oci.tar`);
  tt.match(imported, /^registry\.example\/cairn:0\.2\.0$/m, 'containerd took the archive and names it by its version');
  // the prepare step: the payload checked, nothing changed
  const prepare = await node.sh(`sudo ${runJob('cairn-prepare')} --check 2>&1`);
  tt.match(prepare, /^payload default 0\.2\.0 \(amd64, \d+ MiB\) verified, signed by \S+$/m, 'prepare: verified');
  // the upgrade step: staged, then the node reboots (the job's pod dies with it)
  const job = await node.sh(`sudo ${runJob()} 2>&1`, { ok: false });
  tt.match(job, /^version 0\.2\.0 is installed and on trial \(3 tries, healthy within 900 s\); the fallback is 0\.1\.0$/m, 'the job staged 0.2.0 from the container');
  tt.notMatch(job, /upgrade-payload/, "read from the container's root, no copy on the node's disk");
  await vm.waitFor(/^cairn-initramfs: system 0\.2\.0 on \/dev\/vda3 \(trial boot, 2 tries left\)$/m, BOOT_TIMEOUT);
  await vm.waitFor(/cairn: mark-good ok \(\d+ ms\): version 0\.2\.0 is now the active one/m, BOOT_TIMEOUT);
  await vm.waitFor(/cairn: boot complete 0\.2\.0$/m, BOOT_TIMEOUT);
  await node.waitSsh();
  // the controller retries the job after the reboot (a new pod: a new container): the image is still there, the node is on 0.2.0
  await node.sh(`sudo sh -c '${START_CONTAINERD}'`);
  const retry = await node.sh(`sudo ${runJob('cairn-upgrade-job-retry')} 2>&1; echo "exit=$?"`);
  tt.match(retry, /^already on 0\.2\.0$/m, 'the retried job has nothing to do');
  tt.match(retry, /^exit=0$/m, 'and succeeds, so the controller uncordons the node');
  const st = JSON.parse(await node.sh('cairn status --json')) as { version: string; boot?: { state?: unknown } };
  tt.same([st.version, st.boot?.state], ['0.2.0', { active: '0.2.0', fallback: '0.1.0' }]);
});
