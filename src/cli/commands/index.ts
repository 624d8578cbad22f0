/** Every subcommand of the cairn CLI, one registration function each. */
import type { Command } from 'commander';
import { registerConfig } from './config.js';
import { registerBuild } from './build.js';
import { registerFlash } from './flash.js';
import { registerKeys } from './keys.js';
import { registerNode } from './node.js';
import { registerCache } from './cache.js';
import { registerPlan } from './plan.js';
import { registerRun } from './run.js';
import { registerSeed } from './seed.js';

export type Register = (program: Command) => void;

export const commands: Register[] = [registerConfig, registerBuild, registerCache, registerFlash, registerKeys, registerNode, registerPlan, registerRun, registerSeed];
