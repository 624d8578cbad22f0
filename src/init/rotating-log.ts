/**
 * An append-only log file with size-based rotation: <name>.log, then
 * <name>.log.1 ... <name>.log.<keep> (oldest dropped).
 */
import { appendFileSync, mkdirSync, renameSync, rmSync, statSync } from 'node:fs';
import { dirname } from 'node:path';

export class RotatingLog {
  private size: number;

  constructor(
    readonly path: string,
    private readonly maxBytes = 5 * 1024 * 1024,
    private readonly keep = 3,
  ) {
    mkdirSync(dirname(path), { recursive: true });
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
      appendFileSync(this.path, chunk);
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
