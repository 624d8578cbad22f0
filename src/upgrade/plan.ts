/**
 * The system-upgrade-controller Plan that upgrades cairn nodes, as YAML text:
 * the one a build ships (usr/lib/cairn/manifests/cairn-upgrade-plan.yaml, see
 * src/builder/stages/runtime.ts) and the one `cairn plan` prints for a fleet.
 * Pure: no files, no network.
 *
 * It follows k3OS' Plan: nodes opt in with a label (cairn.io/upgrade, any
 * value but "disabled" or "false"); only nodes the cairn init labelled as
 * booted from the state partition (cairn.io/mode) are selected, never a live
 * or network boot, which have nowhere to write a new version; one node at a
 * time; the prepare step pulls the upgrade image and checks its payload
 * before the node is cordoned and drained; the upgrade step runs
 * `cairn upgrade` from the image with the host's root at /host.
 *
 * The image is an OCI repository without a tag: system-upgrade-controller
 * runs IMAGE:VERSION, VERSION being the Plan's `version` (the tag the build
 * gives the upgrade image: the system version) or what its `channel`
 * resolves to.
 */
import { Document, isMap, isScalar, isSeq, visit } from 'yaml';
import { UserError } from '../errors.js';

export const PLAN_API_VERSION = 'upgrade.cattle.io/v1';
export const PLAN_NAME = 'cairn';
/** The namespace, and the service account, of images/manifests/system-upgrade-controller.yaml. */
export const PLAN_NAMESPACE = 'system-upgrade';
export const PLAN_SERVICE_ACCOUNT = 'system-upgrade';
/** The opt-in label: any value but these selects the node. */
export const UPGRADE_LABEL = 'cairn.io/upgrade';
export const UPGRADE_LABEL_OFF = ['disabled', 'false'] as const;
/** Set by the init on every node: live, state, net (unknown when it cannot tell). */
export const MODE_LABEL = 'cairn.io/mode';
/** Boots that have no state partition to write a new version to. */
export const MODES_NOT_UPGRADED = ['live', 'net', 'unknown'] as const;
/** cairn in the upgrade image. */
export const CAIRN_IN_IMAGE = '/usr/bin/cairn';
/** Longest a drain may take; the controller's job deadline (SYSTEM_UPGRADE_JOB_ACTIVE_DEADLINE_SECONDS, 900 s) covers drain and upgrade. */
export const DRAIN_TIMEOUT = '5m';

export interface PlanWindow {
  /** Day names (mon, tuesday, su ...) or numbers 0-6 (0 is Sunday), and ranges such as mon-fri. */
  days: string[];
  /** HH:MM, 24-hour clock. */
  start: string;
  /** HH:MM, after start: the controller's window does not cross midnight. */
  end: string;
  /** An IANA time zone such as Europe/Berlin; UTC when absent. */
  timeZone?: string;
}

export interface PlanOptions {
  /** The OCI repository of the upgrade image, without a tag or digest. */
  image: string;
  /** The tag to upgrade to (a build's system version). Either this or `channel`. */
  version?: string;
  /** An https URL whose redirect names the tag to upgrade to. Either this or `version`. */
  channel?: string;
  /** Nodes upgraded at once; default 1. */
  concurrency?: number;
  /** When the controller may start upgrades; any time when absent. */
  window?: PlanWindow;
  /** The Plan's name; default "cairn". */
  name?: string;
}

export type SelectorOperator = 'In' | 'NotIn' | 'Exists' | 'DoesNotExist';

export interface SelectorRequirement {
  key: string;
  operator: SelectorOperator;
  values?: string[];
}

export interface LabelSelector {
  matchLabels?: Record<string, string>;
  matchExpressions?: SelectorRequirement[];
}

export interface ContainerSpec {
  image: string;
  command?: string[];
  args?: string[];
}

/** The fields of a Plan that cairn writes (upgrade.cattle.io/v1). */
export interface Plan {
  apiVersion: typeof PLAN_API_VERSION;
  kind: 'Plan';
  metadata: { name: string; namespace: string };
  spec: {
    concurrency: number;
    version?: string;
    channel?: string;
    window?: { days: string[]; startTime: string; endTime: string; timeZone?: string };
    nodeSelector: LabelSelector;
    serviceAccountName: string;
    tolerations: { operator: 'Exists' }[];
    prepare: ContainerSpec;
    cordon: boolean;
    drain: { force: boolean; skipWaitForDeleteTimeout: number; timeout: string };
    upgrade: ContainerSpec;
  };
}

const EXAMPLE_IMAGE = 'registry.example/cairn';

// The grammar of an image name (the distribution project's reference
// grammar): an optional registry host with a port, then lowercase path
// components separated by '/'.
const DOMAIN_PART = '(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])';
const DOMAIN = new RegExp(`^(?:${DOMAIN_PART}(?:\\.${DOMAIN_PART})*|\\[[0-9a-fA-F:]+\\])(?::[0-9]+)?$`);
const PATH_PART = /^[a-z0-9]+(?:(?:__|[._]|-+)[a-z0-9]+)*$/;
const NAME_MAX = 255;

/** What is wrong with an image repository reference (no tag, no digest), or undefined when nothing is. */
export function imageRepositoryProblem(ref: string): string | undefined {
  if (ref.trim() === '') return 'it is empty';
  if (/\s/.test(ref)) return 'it contains white space';
  if (ref.includes('://')) return 'it is a URL; an image reference has no scheme';
  const at = ref.indexOf('@');
  if (at >= 0) return `it names a digest (${ref.slice(at)}); the Plan's version is the tag, so give the repository alone`;
  const slash = ref.lastIndexOf('/');
  const colon = ref.indexOf(':', slash + 1);
  if (colon >= 0) {
    return `it has a tag (${ref.slice(colon)}); give the repository alone: system-upgrade-controller runs IMAGE:VERSION with the Plan's version as the tag`;
  }
  if (ref.length > NAME_MAX) return `it is longer than ${NAME_MAX} characters`;
  const parts = ref.split('/');
  const first = parts[0]!;
  const hasDomain = parts.length > 1 && (first.includes('.') || first.includes(':') || first === 'localhost' || first.toLowerCase() !== first);
  if (hasDomain && !DOMAIN.test(first)) return `"${first}" is not a registry host[:port]`;
  const path = hasDomain ? parts.slice(1) : parts;
  for (const p of path) {
    if (p === '') return 'it has an empty path component';
    if (p.toLowerCase() !== p && PATH_PART.test(p.toLowerCase())) return `"${p}": repository names are lowercase`;
    if (!PATH_PART.test(p)) return `"${p}" is not a repository name component (lowercase letters and digits, joined by '.', '_', '__' or '-')`;
  }
  return undefined;
}

/** Throws a UserError unless `ref` is an image repository reference without a tag or digest. */
export function checkImageRepository(ref: string, what = 'the upgrade image'): string {
  const problem = imageRepositoryProblem(ref);
  if (problem) {
    throw new UserError(
      `${what} "${ref}" is not an OCI repository without a tag: ${problem}`,
      `give REGISTRY[:PORT]/PATH such as ${EXAMPLE_IMAGE} (where \`skopeo copy oci-archive:NAME-VERSION-ARCH.oci.tar docker://${EXAMPLE_IMAGE}:VERSION\` pushed the build's upgrade image)`,
    );
  }
  return ref;
}

// An image tag that is also a Kubernetes label value (the controller labels its jobs with it).
const VERSION_TAG = /^[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$/;

/** What keeps `version` from being the upgrade image's tag, or undefined. */
export function versionTagProblem(version: string): string | undefined {
  if (VERSION_TAG.test(version)) return undefined;
  if (version.includes('+')) return `"${version}" has a "+", which an image tag cannot have (system-upgrade-controller would look for the tag "${version.replaceAll('+', '-')}")`;
  return `"${version}" is not an image tag: letters, digits, '.', '_' and '-', at most 63, starting and ending with a letter or digit`;
}

export function checkPlanVersion(version: string): string {
  const problem = versionTagProblem(version);
  if (problem) throw new UserError(`the Plan's version ${problem}`, 'use the version the upgrade image was built and tagged with, such as 0.2.0');
  return version;
}

export function checkChannel(url: string): string {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new UserError(`channel "${url}" is not a URL`, 'give an https URL that redirects to a URL ending in the version, such as https://releases.example/cairn/latest');
  }
  if (u.protocol !== 'https:') {
    throw new UserError(
      `channel "${url}" is not an https URL`,
      'the controller follows the channel to learn which version every node runs next; serve it over https',
    );
  }
  if (u.username || u.password) throw new UserError(`channel "${u.host}${u.pathname}" has credentials in it`, 'the Plan is readable in the cluster; use a channel that needs none');
  return url;
}

export function checkConcurrency(n: number): number {
  if (!Number.isSafeInteger(n) || n < 1) throw new UserError(`concurrency must be a whole number of nodes, 1 or more, not ${JSON.stringify(n)}`, 'concurrency 1 upgrades one node at a time');
  return n;
}

const PLAN_NAME_RE = /^[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?$/;

export function checkPlanName(name: string): string {
  if (!PLAN_NAME_RE.test(name)) {
    throw new UserError(
      `Plan name "${name}" is not a Kubernetes name that can be a label (lowercase letters, digits and '-', at most 63, starting and ending with a letter or digit)`,
      'the controller labels nodes plan.upgrade.cattle.io/NAME; use a name such as cairn or cairn-site-a',
    );
  }
  return name;
}

const WEEK = ['sun', 'mon', 'tue', 'wed', 'thu', 'fri', 'sat'] as const;
const DAY_NAMES: Record<string, number> = {};
for (const [i, d] of WEEK.entries()) {
  const long = ['sunday', 'monday', 'tuesday', 'wednesday', 'thursday', 'friday', 'saturday'][i]!;
  for (const n of [d, d.slice(0, 2), long, String(i)]) DAY_NAMES[n] = i;
}

function dayNumber(text: string): number {
  const n = DAY_NAMES[text.trim().toLowerCase()];
  if (n === undefined) {
    throw new UserError(`"${text}" is not a day of the week`, 'use mon, tue, wed, thu, fri, sat, sun (or the full names, or 0-6 with 0 for Sunday); a range such as mon-fri');
  }
  return n;
}

/** Day names, numbers and ranges ("mon-fri", "sat,sun") → the controller's three-letter names, in the order given, once each. */
export function parseDays(items: string[]): string[] {
  const out: string[] = [];
  const add = (n: number) => {
    if (!out.includes(WEEK[n]!)) out.push(WEEK[n]!);
  };
  for (const item of items.flatMap((i) => i.split(','))) {
    if (item.trim() === '') throw new UserError('an empty day in the window\'s days', 'list days separated by commas, such as mon,tue or mon-fri');
    const range = /^([^-]+)-([^-]+)$/.exec(item.trim());
    if (range) {
      const from = dayNumber(range[1]!);
      const to = dayNumber(range[2]!);
      for (let d = from; ; d = (d + 1) % 7) {
        add(d);
        if (d === to) break;
      }
    } else {
      add(dayNumber(item));
    }
  }
  if (out.length === 0) throw new UserError('the window has no days', 'list the days upgrades may start on, such as mon-fri');
  return out;
}

/** "1:00" or "01:00" → minutes since midnight. */
function minutes(text: string, what: string): number {
  const m = /^([0-9]{1,2}):([0-9]{2})$/.exec(text.trim());
  const h = m ? Number(m[1]) : NaN;
  const min = m ? Number(m[2]) : NaN;
  if (!m || h > 23 || min > 59) throw new UserError(`the window's ${what} "${text}" is not a time of day`, 'write it as HH:MM on a 24-hour clock, such as 01:00 or 23:30');
  return h * 60 + min;
}

const hhmm = (n: number) => `${String(Math.floor(n / 60)).padStart(2, '0')}:${String(n % 60).padStart(2, '0')}`;

function checkTimeZone(tz: string): string {
  try {
    new Intl.DateTimeFormat('en', { timeZone: tz });
  } catch {
    throw new UserError(`"${tz}" is not a time zone`, 'use an IANA name such as UTC, Europe/Berlin or America/Chicago');
  }
  return tz;
}

/** The Plan's window from cairn's: days normalized, times as HH:MM, checked. */
export function planWindow(w: PlanWindow): NonNullable<Plan['spec']['window']> {
  const days = parseDays(w.days);
  const start = minutes(w.start, 'start');
  const end = minutes(w.end, 'end');
  if (end <= start) {
    throw new UserError(
      `the window ends (${hhmm(end)}) before or when it starts (${hhmm(start)})`,
      'system-upgrade-controller compares both times on the same day, so a window cannot cross midnight: end it at 23:59, or start it at 00:00 on the next days',
    );
  }
  const tz = w.timeZone === undefined || w.timeZone === '' ? undefined : checkTimeZone(w.timeZone);
  return { days, startTime: hhmm(start), endTime: hhmm(end), ...(tz ? { timeZone: tz } : {}) };
}

/** The Plan as data, every option checked (UserError when one is wrong). */
export function planFor(opts: PlanOptions): Plan {
  const image = checkImageRepository(opts.image);
  if (opts.version !== undefined && opts.channel !== undefined) {
    throw new UserError('a Plan takes a version or a channel, not both', 'the version pins the tag; a channel lets the controller find it');
  }
  if (opts.version === undefined && opts.channel === undefined) {
    throw new UserError('a Plan needs a version or a channel', 'give the version the upgrade image was tagged with, such as 0.2.0');
  }
  const target = opts.version !== undefined ? { version: checkPlanVersion(opts.version) } : { channel: checkChannel(opts.channel!) };
  const step = (args?: string[]): ContainerSpec => ({ image, command: [CAIRN_IN_IMAGE, 'upgrade'], ...(args ? { args } : {}) });
  return {
    apiVersion: PLAN_API_VERSION,
    kind: 'Plan',
    metadata: { name: checkPlanName(opts.name ?? PLAN_NAME), namespace: PLAN_NAMESPACE },
    spec: {
      concurrency: checkConcurrency(opts.concurrency ?? 1),
      ...target,
      ...(opts.window ? { window: planWindow(opts.window) } : {}),
      nodeSelector: {
        matchExpressions: [
          { key: UPGRADE_LABEL, operator: 'Exists' },
          { key: UPGRADE_LABEL, operator: 'NotIn', values: [...UPGRADE_LABEL_OFF] },
          { key: MODE_LABEL, operator: 'Exists' },
          { key: MODE_LABEL, operator: 'NotIn', values: [...MODES_NOT_UPGRADED] },
        ],
      },
      serviceAccountName: PLAN_SERVICE_ACCOUNT,
      tolerations: [{ operator: 'Exists' }],
      prepare: step(['--check']),
      cordon: true,
      drain: { force: true, skipWaitForDeleteTimeout: 60, timeout: DRAIN_TIMEOUT },
      upgrade: step(),
    },
  };
}

function header(plan: Plan): string {
  const s = plan.spec;
  const lines = [
    ` cairn's upgrade Plan for system-upgrade-controller: upgrades cairn nodes`,
    ` to ${s.version ?? 'the version its channel redirects to'}, ${s.concurrency === 1 ? 'one at a time' : `${s.concurrency} at a time`},`,
    ` from the image ${s.upgrade.image}:${s.version ?? 'VERSION'}${s.window ? ',' : '.'}`,
    ...(s.window ? [` starting jobs only on ${s.window.days.join(', ')} from ${s.window.startTime} to ${s.window.endTime} ${s.window.timeZone ?? 'UTC'}.`] : []),
    ` Each job checks the image's payload (cairn upgrade --check), drains the node,`,
    ` runs cairn upgrade with the host's root at /host and reboots it into the new`,
    ` version, which falls back on its own when it does not come up.`,
    ` A node takes part once labelled (live and network boots never do):`,
    `   kubectl label node NODE ${UPGRADE_LABEL}=true`,
    `   kubectl label node NODE ${UPGRADE_LABEL}=disabled --overwrite   # keep it out`,
  ];
  return lines.join('\n');
}

/** The Plan as YAML text, with a comment saying what it does. Throws a UserError on a bad option. */
export function renderPlan(opts: PlanOptions): string {
  const plan = planFor(opts);
  // YAML 1.1 quoting: Kubernetes' YAML reader takes an unquoted 01:00, yes or
  // false for a number or a boolean.
  const doc = new Document(plan, { version: '1.1' });
  doc.commentBefore = header(plan);
  // Short lists and the selector's terms on one line each, as hand-written Plans have them.
  visit(doc, {
    Seq(_, node) {
      if (node.items.every((i) => isScalar(i))) node.flow = true;
      else for (const i of node.items) if (isMap(i) && i.items.every((p) => isScalar(p.value) || (isSeq(p.value) && p.value.items.every((v) => isScalar(v))))) i.flow = true;
    },
  });
  return doc.toString({ lineWidth: 0, flowCollectionPadding: false });
}

/** Kubernetes' label selector semantics: does a node with these labels match? (An absent selector matches nothing, as the controller reads it.) */
export function selectorMatches(selector: LabelSelector | undefined, labels: Record<string, string>): boolean {
  if (!selector) return false;
  for (const [k, v] of Object.entries(selector.matchLabels ?? {})) if (labels[k] !== v) return false;
  for (const r of selector.matchExpressions ?? []) {
    const has = Object.hasOwn(labels, r.key);
    const values = r.values ?? [];
    switch (r.operator) {
      case 'In':
        if (!has || !values.includes(labels[r.key]!)) return false;
        break;
      case 'NotIn':
        if (has && values.includes(labels[r.key]!)) return false;
        break;
      case 'Exists':
        if (!has) return false;
        break;
      case 'DoesNotExist':
        if (has) return false;
        break;
      default:
        throw new Error(`unknown selector operator ${String(r.operator)}`);
    }
  }
  return true;
}
