/**
 * The serial console as text: what QEMU printed, with terminal control
 * sequences (colours, cursor moves from firmware and GRUB) and carriage
 * returns taken out, so that markers match however they were drawn.
 * Incremental: a sequence split across two chunks is held until it ends.
 */

// CSI (ESC [ ... final), OSC (ESC ] ... BEL or ESC \), and two-byte ESC sequences.
// eslint-disable-next-line no-control-regex
const SEQUENCE = /\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[()][0-9A-Za-z]|\x1b[@-Z\\^_=>78c]/g;
// An escape sequence that has started but not ended at the end of a chunk.
// eslint-disable-next-line no-control-regex
const UNFINISHED = /\x1b(?:\[[0-?]*[ -/]*|\][^\x07\x1b]*\x1b?|[()])?$/;
// Other control characters, except tab and newline.
// eslint-disable-next-line no-control-regex
const CONTROL = /[\x00-\x08\x0b-\x1f\x7f]/g;

export class ConsoleText {
  private pending = '';
  private plain = '';

  /** Adds raw console output; returns the plain text it added. */
  push(raw: string): string {
    let s = this.pending + raw;
    this.pending = '';
    const unfinished = UNFINISHED.exec(s);
    if (unfinished && unfinished[0].length < 256) {
      this.pending = unfinished[0];
      s = s.slice(0, unfinished.index);
    }
    const added = s.replace(SEQUENCE, '').replace(/\r\n/g, '\n').replace(CONTROL, '');
    this.plain += added;
    return added;
  }

  get text(): string {
    return this.plain;
  }
}

/** The last `n` lines of a text. */
export function tailLines(text: string, n: number): string {
  const lines = text.split('\n');
  if (lines.length && lines[lines.length - 1] === '') lines.pop();
  return lines.slice(-n).join('\n');
}
