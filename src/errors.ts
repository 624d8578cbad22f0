/**
 * Errors that cairn reports to its user.
 *
 * A UserError is something the user can fix (bad input, missing file, missing
 * host tool): the CLI prints its message and hint without a stack trace and
 * exits 1. Anything else is an internal error: exit 2 with the stack.
 */
export class UserError extends Error {
  /** What to do next, printed after the message. */
  readonly hint?: string;
  constructor(message: string, hint?: string) {
    super(message);
    this.name = 'UserError';
    this.hint = hint;
  }
}

export const EXIT_OK = 0;
export const EXIT_USER = 1;
export const EXIT_INTERNAL = 2;

/** Turns any thrown value into a message for the console. */
export function describeError(err: unknown): string {
  if (err instanceof UserError) return err.hint ? `${err.message}\n${err.hint}` : err.message;
  if (err instanceof Error) return err.stack ?? err.message;
  return String(err);
}
