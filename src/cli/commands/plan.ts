/**
 * `cairn plan --version V --image REF`: a system-upgrade-controller Plan for
 * a running fleet, printed on stdout for `kubectl apply -f -` (see
 * src/upgrade/plan.ts for what it selects and runs).
 */
import type { Command } from 'commander';
import { UserError } from '../../errors.js';
import { checkImageRepository, renderPlan, type PlanOptions } from '../../upgrade/plan.js';

export interface PlanFlags {
  version?: string;
  channel?: string;
  image?: string;
  concurrency?: string;
  windowDays?: string;
  windowStart?: string;
  windowEnd?: string;
  windowTz?: string;
  name?: string;
}

function concurrency(text: string): number {
  if (!/^[0-9]+$/.test(text.trim()) || Number(text) < 1) {
    throw new UserError(`--concurrency must be a whole number of nodes, 1 or more, not "${text}"`, '--concurrency 1 (the default) upgrades one node at a time');
  }
  return Number(text);
}

/** The command's options as the Plan's (strings parsed, combinations checked). */
export function planOptionsFromFlags(flags: PlanFlags): PlanOptions {
  if (flags.image === undefined) {
    throw new UserError('cairn plan needs --image REF', 'the OCI repository the upgrade image was pushed to, without a tag, such as registry.example/cairn');
  }
  if (flags.version === undefined && flags.channel === undefined) {
    throw new UserError('cairn plan needs --version V or --channel URL', '--version is the tag of the upgrade image (the built system version, such as 0.2.0)');
  }
  if (flags.version !== undefined && flags.channel !== undefined) {
    throw new UserError('--version and --channel are alternatives', 'with --version the Plan names the tag; with --channel the controller asks the channel for it');
  }
  const windowFlags = { '--window-days': flags.windowDays, '--window-start': flags.windowStart, '--window-end': flags.windowEnd };
  const given = Object.entries(windowFlags).filter(([, v]) => v !== undefined);
  if ((given.length > 0 || flags.windowTz !== undefined) && given.length < 3) {
    const missing = Object.entries(windowFlags).filter(([, v]) => v === undefined).map(([k]) => k);
    throw new UserError(`a window needs ${missing.join(' and ')} too`, 'for example --window-days mon-fri --window-start 01:00 --window-end 05:00 [--window-tz Europe/Berlin]');
  }
  return {
    image: checkImageRepository(flags.image, '--image'),
    ...(flags.version !== undefined ? { version: flags.version } : { channel: flags.channel! }),
    ...(flags.concurrency !== undefined ? { concurrency: concurrency(flags.concurrency) } : {}),
    ...(given.length === 3 ? { window: { days: [flags.windowDays!], start: flags.windowStart!, end: flags.windowEnd!, ...(flags.windowTz !== undefined ? { timeZone: flags.windowTz } : {}) } } : {}),
    ...(flags.name !== undefined ? { name: flags.name } : {}),
  };
}

export function registerPlan(program: Command): void {
  program
    .command('plan')
    .description('print a system-upgrade-controller Plan that upgrades a fleet\'s labelled cairn nodes (kubectl apply -f -)')
    .option('--version <version>', 'the version to upgrade to: the upgrade image\'s tag (a build tags it with the system version, e.g. 0.2.0)')
    .option('--channel <url>', 'instead of --version: an https URL whose redirect ends in the version to upgrade to')
    .option('--image <ref>', 'the OCI repository of the upgrade image, without a tag, e.g. registry.example/cairn')
    .option('--concurrency <n>', 'nodes upgraded at once', '1')
    .option('--window-days <days>', 'days upgrades may start on: mon,tue,... or a range such as mon-fri')
    .option('--window-start <HH:MM>', 'start of the daily window (24-hour clock)')
    .option('--window-end <HH:MM>', 'end of the daily window, later the same day')
    .option('--window-tz <zone>', 'time zone of the window, e.g. Europe/Berlin (default UTC)')
    .option('--name <name>', 'the Plan\'s name (one Plan per name; the build ships "cairn")', 'cairn')
    .addHelpText(
      'after',
      '\nThe Plan selects nodes labelled cairn.io/upgrade (any value but disabled or false) that booted from\n' +
        'their state partition, and runs /usr/bin/cairn upgrade from IMAGE:VERSION on each.\n\n' +
        'Example:\n  cairn plan --version 0.2.0 --image registry.example/cairn --window-days sat,sun --window-start 02:00 --window-end 06:00 | kubectl apply -f -\n',
    )
    .action((flags: PlanFlags) => {
      process.stdout.write(renderPlan(planOptionsFromFlags(flags)));
    });
}
