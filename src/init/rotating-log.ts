/**
 * An append-only log file with size-based rotation: <name>.log, then
 * <name>.log.1 ... <name>.log.<keep> (oldest dropped). Service logs can hold
 * what a service prints about its peers and its cluster: the folder is 0750
 * and every file 0640 (root's group may read, nobody else), also the ones a
 * rotation starts and ones an older version left more open.
 */
import { appendFileSync, chmodSync, mkdirSync, renameSync, rmSync, statSync } from 'node:fs';
import { dirname } from 'node:path';

export const LOG_DIR_MODE = 0o750;
export const LOG_FILE_MODE = 0o640;

/** Creates the log folder (0750) or tightens it. */
export function secureLogDir(dir: string): void {
  mkdirSync(dir, { recursive: true, mode: LOG_DIR_MODE });
  try {
    chmodSync(dir, LOG_DIR_MODE);
  } catch {
    // a read-only /var: nothing is written there either
  }
}

/** Tightens an existing log file to 0640 (a file that is not there is fine). */
export function secureLogFile(path: string): void {
  try {
    if ((statSync(path).mode & 0o777 & ~LOG_FILE_MODE) !== 0) chmodSync(path, LOG_FILE_MODE);
  } catch {
    // not there yet
  }
}

export class RotatingLog {
  private size: number;

  constructor(
    readonly path: string,
    private readonly maxBytes = 5 * 1024 * 1024,
    private readonly keep = 3,
  ) {
    secureLogDir(dirname(path));
    for (let i = 0; i <= keep; i++) secureLogFile(i ? `${path}.${i}` : path);
    try {
      this.size = statSync(path).size;
    } catch {
      this.size = 0;
    }
  }

  write(chunk: string | Buffer): void {
    const len = typeof chunk === 'string' ? Buffer.byteLength(chunk) : chunk.length;
    if (this.size > 0 && this.size + len > this.maxBytes) this.rotate();
    try {
      appendFileSync(this.path, chunk, { mode: LOG_FILE_MODE });
      this.size += len;
    } catch {
      // A full /var must not take the service down with it.
    }
  }

  private rotate(): void {
    try {
      rmSync(`${this.path}.${this.keep}`, { force: true });
      for (let i = this.keep - 1; i >= 1; i--) {
        try {
          renameSync(`${this.path}.${i}`, `${this.path}.${i + 1}`);
        } catch {
          // that generation does not exist yet
        }
      }
      renameSync(this.path, `${this.path}.1`);
    } catch {
      // rotation is best effort; keep appending
    }
    this.size = 0;
  }
}
