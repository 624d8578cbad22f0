/**
 * cairn build --delta-from PREVIOUS: the previous build that delta payloads
 * are made against (see src/upgrade/delta.ts). PREVIOUS is that build's full
 * upgrade payload (`<stem>.oci.tar`) or its output folder (build.json and the
 * archives beside it). Checked before any stage runs: a payload of the same
 * image, for every arch this build makes, a full one (not a delta itself),
 * of another version; and zstd on this host to make the patch.
 */
import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { UserError } from '../errors.js';
import { openPayload, type PayloadRecord } from '../upgrade/payload.js';
import { artifactStem, run } from './outputs/common.js';
import type { BuildRecord } from './record.js';
import type { Arch } from './types.js';

export interface PreviousPayload {
  /** The previous build's full OCI archive for one arch. */
  archive: string;
  version: string;
}

export interface ThisBuild {
  name: string;
  version: string;
  arches: readonly Arch[];
}

const HINT = "give the previous build's <name>-<version>-<arch>.oci.tar, or its output folder (with build.json)";

async function readPayloadRecord(file: string, workDir: string): Promise<PayloadRecord> {
  const p = await openPayload(file, { workDir });
  try {
    return p.record;
  } finally {
    await p.close();
  }
}

function checkRecord(record: PayloadRecord, where: string, build: ThisBuild): void {
  if (record.name !== build.name) throw new UserError(`--delta-from ${where} is a payload of the image "${record.name}"; this build makes "${build.name}"`, `a delta is made against a previous build of the same image: ${HINT}`);
  if (record.delta) {
    throw new UserError(
      `--delta-from ${where} is itself a delta payload (against ${record.delta.base.version}); a delta is made against a full one`,
      `give ${record.name}-${record.version}-${record.arch}.oci.tar from the same build`,
    );
  }
  if (record.version === build.version) {
    throw new UserError(`--delta-from ${where} is version ${record.version}, the version this build makes: a delta goes from a previous version to this one`, 'raise the version in the image spec, or build without --delta-from');
  }
}

/** The previous full payload of each arch this build makes; a UserError saying what is wrong otherwise. */
export async function previousPayloads(previous: string, build: ThisBuild, workDir: string): Promise<Map<Arch, PreviousPayload>> {
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(previous)) throw new UserError(`--delta-from ${previous}: a delta is made against a local file`, `download it first; ${HINT}`);
  const st = await stat(previous).catch(() => undefined);
  if (!st) throw new UserError(`--delta-from ${previous} does not exist`, HINT);
  const out = new Map<Arch, PreviousPayload>();
  if (st.isDirectory()) {
    const recordFile = path.join(previous, 'build.json');
    const text = await readFile(recordFile, 'utf8').catch(() => undefined);
    if (text === undefined) throw new UserError(`--delta-from ${previous} is a folder without build.json: not the output folder of a build`, HINT);
    let rec: BuildRecord;
    try {
      rec = JSON.parse(text) as BuildRecord;
    } catch (err) {
      throw new UserError(`--delta-from ${recordFile} is not valid JSON (${(err as Error).message})`, HINT);
    }
    if (rec.name !== build.name) throw new UserError(`--delta-from ${previous} is a build of the image "${rec.name}"; this build makes "${build.name}"`, `a delta is made against a previous build of the same image: ${HINT}`);
    const artifacts = Array.isArray(rec.artifacts) ? rec.artifacts : [];
    for (const arch of build.arches) {
      const file = `${artifactStem({ name: rec.name, version: rec.version, arch })}.oci.tar`;
      const listed = artifacts.some((a) => a.file === file && a.format === 'oci' && a.arch === arch);
      const present = listed && (await stat(path.join(previous, file)).catch(() => undefined))?.isFile();
      if (!present) {
        const has = [...new Set(artifacts.filter((a) => a.format === 'oci' && /\.oci\.tar$/.test(a.file) && !a.file.includes('.delta-from-')).map((a) => a.arch))];
        throw new UserError(
          `--delta-from ${previous} has no full ${arch} upgrade payload (${file})${has.length ? `; it has ${has.join(', ')}` : listed ? ': build.json lists it, the file is gone' : ': its build made no oci output'}`,
          `a delta needs the previous payload of the same arch: build ${build.arches.length > 1 ? 'this one for the arches it has' : 'without --delta-from'}, or give a previous build with ${arch}`,
        );
      }
      const archive = path.join(previous, file);
      const record = await readPayloadRecord(archive, workDir);
      checkRecord(record, archive, build);
      if (record.arch !== arch) throw new UserError(`--delta-from ${archive} holds a payload for ${record.arch}, not ${arch}`, HINT);
      out.set(arch, { archive, version: record.version });
    }
  } else {
    const record = await readPayloadRecord(previous, workDir);
    checkRecord(record, previous, build);
    const other = build.arches.filter((a) => a !== record.arch);
    if (other.length) {
      throw new UserError(
        `--delta-from ${previous} is a payload for ${record.arch}; this build makes ${other.join(', ')}`,
        build.arches.length > 1 ? "give the previous build's output folder (it holds every arch's payload)" : `give the previous ${other[0]} payload (${record.name}-${record.version}-${other[0]}.oci.tar)`,
      );
    }
    out.set(record.arch, { archive: path.resolve(previous), version: record.version });
  }
  await run('zstd', ['--version']);
  return out;
}
