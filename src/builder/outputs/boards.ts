/** rpi4 and jetson: board images, made by their own writers once the board profiles land. */
import { UserError } from '../../errors.js';
import type { OutputWriter } from '../types.js';

function notYet(board: string): OutputWriter {
  return async (system) => {
    throw new UserError(
      `the ${board} board format is not available yet (asked for ${system.name} ${system.version}, ${system.arch})`,
      'build raw (a GPT disk image for UEFI machines) or pxe instead for now',
    );
  };
}

export const rpi4 = notYet('rpi4');
export const jetson = notYet('jetson');
