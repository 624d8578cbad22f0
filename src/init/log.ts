/**
 * The init's log: one line per event on the console (what an operator at the
 * site sees) and the same lines in /var/log/cairn/boot.log once /var is there
 * (the folder 0750, the file 0640).
 */
import { appendFileSync, closeSync, constants, openSync, readFileSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';
import { LOG_FILE_MODE, secureLogDir, secureLogFile } from './rotating-log.js';

export interface Logger {
  /** A line for the console and the boot log. */
  info(line: string): void;
  /** Only with cairn.debug on the kernel command line. */
  debug(line: string): void;
  /** Start copying lines into a file (called once /var is mounted). */
  toFile(path: string): void;
}

export function createLogger(opts: { debug: boolean; write?: (s: string) => void }): Logger {
  const write = opts.write ?? ((s: string) => process.stdout.write(s));
  let file: string | undefined;
  const pending: string[] = [];
  const emit = (line: string) => {
    const text = `cairn: ${line}\n`;
    write(text);
    const stamped = `${new Date().toISOString()} ${line}\n`;
    if (!file) {
      pending.push(stamped);
      return;
    }
    try {
      appendFileSync(file, stamped, { mode: LOG_FILE_MODE });
    } catch {
      // The console still has it; a full or read-only /var must not stop the boot.
    }
  };
  return {
    info: emit,
    debug: (line) => {
      if (opts.debug) emit(`debug: ${line}`);
    },
    toFile(path) {
      try {
        secureLogDir(dirname(path));
        secureLogFile(path);
        appendFileSync(path, pending.join(''), { mode: LOG_FILE_MODE });
        pending.length = 0;
        file = path;
      } catch {
        // keep logging to the console only
      }
    },
  };
}

/** How the console writer reaches a device: fs by default, replaceable in tests. */
export interface ConsoleIo {
  open(path: string): number;
  write(fd: number, s: string): void;
  close(fd: number): void;
}

const fsIo: ConsoleIo = {
  // O_NOCTTY: a console opened by the init never becomes its controlling terminal.
  open: (path) => openSync(path, constants.O_WRONLY | constants.O_NOCTTY),
  write: (fd, s) => {
    writeSync(fd, s);
  },
  close: (fd) => closeSync(fd),
};

/**
 * A writer for every console the kernel writes to (/sys/class/tty/console/active,
 * e.g. "ttyAMA0 tty1"): /dev/console is only the last of them, and an operator
 * may be on any. Falls back to stdout when none can be opened.
 *
 * A getty that starts on a console hangs it up (vhangup), and every file
 * descriptor opened on it before then fails from that moment (EIO): a write
 * that fails opens the device again and is tried once more, so the boot's
 * lines keep reaching a console that has a login prompt on it.
 */
export function consoleWriter(root = '/', io: ConsoleIo = fsIo): (s: string) => void {
  const consoles: { path: string; fd?: number }[] = [];
  try {
    const names = readFileSync(`${root}/sys/class/tty/console/active`, 'utf8').trim().split(/\s+/).filter(Boolean);
    // tty0 is whichever VT is in front: the same screen as a ttyN beside it.
    const screens = names.filter((n) => /^tty\d+$/.test(n) && n !== 'tty0');
    for (const name of new Set(names.filter((n) => !(n === 'tty0' && screens.length)))) {
      const path = `${root}/dev/${name}`;
      try {
        consoles.push({ path, fd: io.open(path) });
      } catch {
        // a console that cannot be opened (no such device here)
      }
    }
  } catch {
    // no sysfs: not on a node
  }
  if (consoles.length === 0) return (s) => process.stdout.write(s);
  const reopen = (c: { path: string; fd?: number }): void => {
    if (c.fd !== undefined) {
      try {
        io.close(c.fd);
      } catch {
        // already gone
      }
    }
    c.fd = undefined;
    c.fd = io.open(c.path);
  };
  return (s) => {
    for (const c of consoles) {
      try {
        if (c.fd === undefined) reopen(c);
        io.write(c.fd!, s);
      } catch {
        try {
          reopen(c);
          io.write(c.fd!, s);
        } catch {
          // a console that went away must not stop the others
        }
      }
    }
  };
}
