/**
 * Diagnostics: what is wrong with a config, where, and what was expected.
 * Every problem cairn finds in a config is one of these, with a location.
 */
export type Severity = 'error' | 'warning';

export interface Diagnostic {
  severity: Severity;
  /** The file (or "cmdline") the problem is in. */
  file: string;
  /** 1-based line and column. */
  line: number;
  col: number;
  /** The key's path, such as `k3os.wifi[0].passphrase`; empty for the whole document. */
  path: string;
  message: string;
}

/** `file:line:col: error: path: message`, one line per diagnostic. */
export function formatDiagnostic(d: Diagnostic): string {
  const where = `${d.file}:${d.line}:${d.col}`;
  const what = d.path ? `${d.path}: ${d.message}` : d.message;
  return `${where}: ${d.severity}: ${what}`;
}

/** Turns a JSON pointer (`/k3os/wifi/0/name`) into a key path (`k3os.wifi[0].name`). */
export function pointerToPath(pointer: string): string {
  if (pointer === '') return '';
  let out = '';
  for (const raw of pointer.split('/').slice(1)) {
    const seg = raw.replace(/~1/g, '/').replace(/~0/g, '~');
    if (/^\d+$/.test(seg)) out += `[${seg}]`;
    else if (/^[A-Za-z0-9_-]+$/.test(seg)) out += out ? `.${seg}` : seg;
    else out += `[${JSON.stringify(seg)}]`;
  }
  return out;
}

export function hasErrors(ds: readonly Diagnostic[]): boolean {
  return ds.some((d) => d.severity === 'error');
}
