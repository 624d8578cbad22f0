/**
 * Fleets: one cloud-config per site from a template and a table of sites.
 *
 *   cairn config render --template site.yaml --sites sites.csv -o DIR [--seeds]
 *
 * The template is a cloud-config whose quoted strings may hold
 * placeholders, `"{{column}}"`, filled from the CSV row of each site (the
 * first line names the columns; `hostname` is required and names the
 * file, DIR/<hostname>.yaml). A placeholder is filled inside its string
 * scalar, so no cell can change the YAML around it (a quote, a colon or a
 * `#` in a token stays in the token). Every site's config is then checked
 * as a node would read it (src/config/read.ts).
 *
 * Every problem is located, and nothing is written unless every site is
 * good: a CSV that does not parse (its line), a column the template uses
 * that the CSV lacks (the template's line and column), an empty cell the
 * template uses, a duplicate hostname (both lines), a placeholder outside
 * quotes, and a site's config that does not validate (the template's
 * line, the site and its CSV line). Cell values are never shown in
 * messages: they may be tokens.
 */
import { parse as parseCsv } from 'csv-parse/sync';
import { LineCounter, parseDocument, visit } from 'yaml';
import type { Diagnostic } from './diagnostics.js';
import { hasErrors } from './diagnostics.js';
import { readConfig } from './read.js';

export interface Site {
  hostname: string;
  /** The site's line in the CSV (1-based). */
  line: number;
  /** The rendered cloud-config. */
  text: string;
}

export interface FleetResult {
  sites: Site[];
  diagnostics: Diagnostic[];
}

const PLACEHOLDER = /\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}/g;
const ANY_BRACES = /\{\{/g;
const COLUMN = /^[A-Za-z_][A-Za-z0-9_]*$/;

interface Slot {
  /** Offset range of the scalar in the template. */
  range: [number, number];
  /** The scalar's own value (its escapes read). */
  value: string;
  columns: { name: string; offset: number }[];
}

function err(file: string, line: number, col: number, message: string, path = ''): Diagnostic {
  return { severity: 'error', file, line, col, path, message };
}

/** Renders one config per CSV row; diagnostics say what is wrong and where. */
export function renderFleet(templateText: string, templateFile: string, csvText: string, csvFile: string): FleetResult {
  const ds: Diagnostic[] = [];
  const lc = new LineCounter();
  const doc = parseDocument(templateText, { lineCounter: lc, prettyErrors: false });
  const at = (offset: number) => lc.linePos(offset);
  for (const e of doc.errors) {
    const p = at(e.pos[0]);
    ds.push(err(templateFile, p.line, p.col, `the template is not YAML: ${e.message.split('\n')[0]}`));
  }
  if (ds.length) return { sites: [], diagnostics: ds };

  // the placeholders, each in the string scalar that holds it
  const slots: Slot[] = [];
  visit(doc, {
    Scalar(_key, node) {
      if (typeof node.value !== 'string' || !node.range || !node.value.includes('{{')) return;
      const src = templateText.slice(node.range[0], node.range[1]);
      const columns = [...src.matchAll(PLACEHOLDER)].map((m) => ({ name: m[1]!, offset: node.range![0] + m.index }));
      if (columns.length) slots.push({ range: [node.range[0], node.range[1]], value: node.value, columns });
    },
  });
  const inSlot = (offset: number) => slots.some((s) => offset >= s.range[0] && offset < s.range[1]);
  for (const m of templateText.matchAll(ANY_BRACES)) {
    if (inSlot(m.index)) continue;
    const lineStart = templateText.lastIndexOf('\n', m.index) + 1;
    if (templateText.slice(lineStart, m.index).includes('#')) continue; // a comment
    const p = at(m.index);
    ds.push(err(templateFile, p.line, p.col, 'a placeholder must be inside a quoted string ("{{column}}"): unquoted, YAML reads {{ as a map'));
  }

  // the sites
  let rows: { record: Record<string, string>; info: { lines: number } }[];
  let header: string[] = [];
  try {
    rows = parseCsv(csvText, {
      bom: true,
      trim: true,
      skip_empty_lines: true,
      info: true,
      columns: (h: string[]) => {
        header = h.map((c) => c.trim());
        return header;
      },
    }) as typeof rows;
  } catch (e) {
    const ce = e as Error & { lines?: number };
    ds.push(err(csvFile, ce.lines ?? 1, 1, `not a CSV table: ${ce.message.replace(/^Invalid Record Length: /, '').split('\n')[0]}`));
    return { sites: [], diagnostics: ds };
  }
  if (header.length === 0) {
    ds.push(err(csvFile, 1, 1, 'the table is empty: its first line names the columns (hostname, then what the template uses)'));
    return { sites: [], diagnostics: ds };
  }
  header.forEach((c, i) => {
    if (!COLUMN.test(c)) ds.push(err(csvFile, 1, 1, `column ${i + 1} is named ${JSON.stringify(c)}: a column name is letters, digits and _, not starting with a digit`));
  });
  const dup = header.find((c, i) => header.indexOf(c) !== i);
  if (dup) ds.push(err(csvFile, 1, 1, `two columns are named ${dup}`));
  if (!header.includes('hostname')) ds.push(err(csvFile, 1, 1, `the table has no hostname column (it has ${header.join(', ')}): each site needs one, it names the site's file`));
  for (const s of slots) {
    for (const c of s.columns) {
      if (header.includes(c.name)) continue;
      const p = at(c.offset);
      ds.push(err(templateFile, p.line, p.col, `{{${c.name}}}: ${csvFile} has no column ${c.name} (it has ${header.join(', ')})`));
    }
  }
  const used = new Set(slots.flatMap((s) => s.columns.map((c) => c.name)));
  for (const c of header) {
    if (c !== 'hostname' && !used.has(c)) ds.push({ severity: 'warning', file: csvFile, line: 1, col: 1, path: '', message: `column ${c} is not used by ${templateFile}` });
  }
  if (rows.length === 0) ds.push(err(csvFile, 1, 1, 'the table names its columns but has no sites'));
  if (hasErrors(ds)) return { sites: [], diagnostics: ds };

  const sites: Site[] = [];
  const seen = new Map<string, number>();
  for (const { record, info } of rows) {
    const line = info.lines;
    const hostname = record.hostname ?? '';
    const label = hostname ? `site ${hostname}` : `the site on line ${line}`;
    let bad = false;
    if (!hostname) {
      ds.push(err(csvFile, line, 1, 'the hostname cell is empty'));
      bad = true;
    } else {
      const first = seen.get(hostname.toLowerCase());
      if (first !== undefined) {
        ds.push(err(csvFile, line, 1, `hostname ${hostname} is on line ${first} too: each site needs its own`));
        bad = true;
      } else seen.set(hostname.toLowerCase(), line);
    }
    for (const s of slots) {
      for (const c of s.columns) {
        const v = record[c.name] ?? '';
        const p = at(c.offset);
        if (v === '') {
          ds.push(err(csvFile, line, 1, `${label}: the ${c.name} cell is empty, and ${templateFile}:${p.line}:${p.col} uses it`));
          bad = true;
        } else if ([...v].some((ch) => ch.charCodeAt(0) < 0x20 || ch.charCodeAt(0) === 0x7f)) {
          ds.push(err(csvFile, line, 1, `${label}: the ${c.name} cell holds a line break or another control character (a config value is one line)`));
          bad = true;
        }
      }
    }
    if (bad) continue;
    // fill each scalar in place, from the end so earlier offsets hold
    let text = templateText;
    for (const s of [...slots].sort((a, b) => b.range[0] - a.range[0])) {
      const value = s.value.replace(PLACEHOLDER, (_m, name: string) => record[name] ?? '');
      text = text.slice(0, s.range[0]) + JSON.stringify(value) + text.slice(s.range[1]);
    }
    const checked = readConfig(text, `${templateFile} for ${label}`);
    for (const d of checked.diagnostics) ds.push({ ...d, file: templateFile, message: `${label} (${csvFile}:${line}): ${d.message}` });
    if (!hasErrors(checked.diagnostics)) sites.push({ hostname, line, text });
  }
  return { sites: hasErrors(ds) ? [] : sites, diagnostics: ds };
}
