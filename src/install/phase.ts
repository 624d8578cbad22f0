/**
 * The boot's install phase: a live or network boot whose config names
 * `install.device` installs unattended when `install.silent` is set (as
 * k3OS' `k3os.install.silent`), then reboots into the installed system or
 * powers off (`install.power_off`). Without `silent` it only says how to
 * install. A target that already holds a cairn system is left alone, so
 * that a medium left in the drive does not install again on every boot.
 */
import type { Install } from '../config/types.js';
import type { NodeContext } from '../init/context.js';
import { install, listDevices, type InstallEnv, type InstallOptions } from './install.js';
import { flatten } from './plan.js';

/** InstallOptions from the config's `install:` keys. */
export function optionsFromConfig(inst: Install & { device: string }): InstallOptions {
  return {
    device: inst.device,
    ...(inst.config_url ? { configUrl: inst.config_url } : {}),
    ...(inst.iso_url ? { isoUrl: inst.iso_url } : {}),
    ...(inst.force ? { force: true } : {}),
    ...(inst.no_format ? { noFormat: true } : {}),
    ...(inst.tty ? { tty: inst.tty } : {}),
    ...(inst.debug ? { debug: true } : {}),
  };
}

export function installEnv(ctx: NodeContext): InstallEnv {
  return { root: ctx.root, exec: ctx.exec, log: (l) => ctx.log.info(l), fetchText: (url) => ctx.fetch(url, { timeoutMs: 30_000 }) };
}

/** How long the phase waits for the machine to go down once it asked for it. */
export const GOING_DOWN_MS = 120_000;

export async function installPhase(ctx: NodeContext): Promise<string> {
  const inst = ctx.config.cairn?.install;
  if (!inst?.device) return 'no install.device';
  if (ctx.boot.mode === 'state') return `install.device ${inst.device} is set, but this system already runs from a disk: nothing to do`;
  if (!inst.silent) {
    ctx.log.info(`install: install.device is ${inst.device}; install.silent is not set, so nothing is installed until you run: sudo cairn install --device ${inst.device}`);
    return 'waiting for sudo cairn install (install.silent is not set)';
  }
  const disk = (await listDevices(ctx.exec).catch(() => [])).find((d) => d.path === inst.device);
  if (disk && flatten(disk).some((p) => p.label === 'CAIRN_STATE')) {
    return `${inst.device} already holds a cairn system (CAIRN_STATE): not installed again; boot from that disk, or run sudo cairn install --device ${inst.device} --force to install over it`;
  }
  const done = await install(optionsFromConfig({ ...inst, device: inst.device }), installEnv(ctx));
  const action = inst.power_off ? 'poweroff' : 'reboot';
  ctx.log.info(`install: ${done.version} is on ${done.device} (in ${Math.round(done.ms / 1000)} s); ${action === 'reboot' ? 'rebooting into it' : 'powering off'}`);
  if (action === 'reboot') ctx.reboot?.();
  else ctx.poweroff?.();
  // the shutdown runs beside the boot: hold the next phases until the machine is down
  if (ctx.root === '/' && (ctx.reboot || ctx.poweroff)) await new Promise((resolve) => setTimeout(resolve, GOING_DOWN_MS));
  return `installed ${done.version} on ${done.device}`;
}
