/**
 * Signing keys of upgrade payloads: ed25519, PEM files (PKCS8 private key,
 * SPKI public key) as `cairn keys generate` writes them.
 *
 * The builder signs a payload's record (payload.json) with a private key
 * (`cairn build --sign KEY`) and bakes the matching public key into the
 * image at /usr/lib/cairn/keys/<fingerprint>.pub. A node whose running image
 * has keys there takes only payloads one of them signed; a node whose image
 * has none takes any payload, signed or not.
 *
 * A private key's content never appears in an error, a log line or argv:
 * errors name its file and what is wrong with it.
 */
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, sign, verify, type KeyObject } from 'node:crypto';
import { chmodSync, closeSync, existsSync, mkdirSync, openSync, readFileSync, readdirSync, statSync, writeSync } from 'node:fs';
import path from 'node:path';
import { UserError } from '../errors.js';

/** Where a running image keeps the public keys it trusts. */
export const TRUSTED_KEYS_DIR = '/usr/lib/cairn/keys';
/** The same folder, relative to an image root (for the builder). */
export const TRUSTED_KEYS_IN_ROOT = 'usr/lib/cairn/keys';

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/** A public key's short name: sha256 of its raw 32 bytes, the first 16 hex digits. */
export function fingerprint(publicKey: KeyObject): string {
  const jwk = publicKey.export({ format: 'jwk' });
  if (jwk.kty !== 'OKP' || jwk.crv !== 'Ed25519' || typeof jwk.x !== 'string') throw new Error('fingerprint: not an ed25519 public key');
  return createHash('sha256').update(Buffer.from(jwk.x, 'base64url')).digest('hex').slice(0, 16);
}

export interface PublicKeyInfo {
  /** SPKI PEM, as written to NAME.pub and to the image's keys folder. */
  pem: string;
  fingerprint: string;
}

function publicInfo(key: KeyObject): PublicKeyInfo {
  const pub = key.type === 'private' ? createPublicKey(key) : key;
  return { pem: pub.export({ format: 'pem', type: 'spki' }).toString(), fingerprint: fingerprint(pub) };
}

export interface GeneratedKeys {
  privateKey: string;
  publicKey: string;
  fingerprint: string;
}

/**
 * Writes a new key pair: DIR/NAME.key (PKCS8 PEM, 0600) and DIR/NAME.pub
 * (SPKI PEM, 0644). Refuses when either file exists; creates DIR (0700)
 * when it does not.
 */
export function generateKeys(dir: string, name = 'cairn'): GeneratedKeys {
  if (!NAME_RE.test(name)) {
    throw new UserError(`the key name "${name}" cannot be a file name`, 'use letters, digits, ".", "_" and "-", starting with a letter or digit (e.g. --name site-a)');
  }
  const privateKey = path.join(dir, `${name}.key`);
  const publicKey = path.join(dir, `${name}.pub`);
  const dirStat = statSync(dir, { throwIfNoEntry: false });
  if (dirStat && !dirStat.isDirectory()) throw new UserError(`${dir} is not a folder`, 'give --out a folder for the key files');
  for (const f of [privateKey, publicKey]) {
    if (existsSync(f)) throw new UserError(`${f} exists already; cairn keys generate never overwrites a key`, 'choose another --name or --out, or move the old key away first');
  }
  if (!dirStat) mkdirSync(dir, { recursive: true, mode: 0o700 });
  const pair = generateKeyPairSync('ed25519');
  const info = publicInfo(pair.publicKey);
  writeNew(privateKey, pair.privateKey.export({ format: 'pem', type: 'pkcs8' }).toString(), 0o600);
  writeNew(publicKey, info.pem, 0o644);
  return { privateKey, publicKey, fingerprint: info.fingerprint };
}

/** Creates a file that must not exist yet, with exactly `mode` (whatever the umask). */
function writeNew(file: string, content: string, mode: number): void {
  let fd: number;
  try {
    fd = openSync(file, 'wx', 0o600);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') throw new UserError(`${file} exists already; cairn keys generate never overwrites a key`, 'choose another --name or --out');
    if (code === 'EACCES') throw new UserError(`cannot write ${file}: permission denied`, 'choose an --out folder you can write to');
    throw err;
  }
  try {
    writeSync(fd, content);
  } finally {
    closeSync(fd);
  }
  chmodSync(file, mode);
}

/**
 * Reads an ed25519 private key for signing. Errors name the file and say
 * what is wrong (missing, unreadable, readable by others, not PEM, not a
 * private key, not ed25519), never what is in it.
 */
export function loadPrivateKey(file: string): KeyObject {
  const st = statSync(file, { throwIfNoEntry: false });
  if (!st) throw new UserError(`the signing key ${file} does not exist`, 'make a key pair with: cairn keys generate --out DIR');
  if (!st.isFile()) throw new UserError(`the signing key ${file} is not a file`, 'give the private key file (NAME.key from cairn keys generate)');
  if (st.mode & 0o077) {
    throw new UserError(
      `the signing key ${file} can be read by others (mode ${(st.mode & 0o777).toString(8).padStart(4, '0')}): a private key must be its owner's alone`,
      `chmod 600 ${file}`,
    );
  }
  let data: Buffer;
  try {
    data = readFileSync(file);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new UserError(`cannot read the signing key ${file}${code === 'EACCES' ? ': permission denied' : ` (${code ?? 'read error'})`}`, 'run as the key file\'s owner, or give a key you can read');
  }
  const text = data.toString('latin1');
  if (!/-----BEGIN [A-Z0-9 ]+-----/.test(text)) throw new UserError(`the signing key ${file} is not a PEM file`, 'give the private key file that cairn keys generate wrote (NAME.key)');
  if (/-----BEGIN PUBLIC KEY-----/.test(text) && !/PRIVATE KEY-----/.test(text)) {
    throw new UserError(`${file} is a public key; signing needs the private key`, `give the matching NAME.key instead of ${path.basename(file)}`);
  }
  if (/-----BEGIN ENCRYPTED PRIVATE KEY-----/.test(text)) {
    throw new UserError(`the signing key ${file} is encrypted with a passphrase, which cairn does not ask for`, 'keep the key unencrypted with mode 0600 on the build machine');
  }
  let key: KeyObject;
  try {
    key = createPrivateKey({ key: data, format: 'pem' });
  } catch {
    throw new UserError(`the signing key ${file} is not a private key cairn can read`, 'give the private key file that cairn keys generate wrote (NAME.key)');
  }
  if (key.asymmetricKeyType !== 'ed25519') {
    throw new UserError(`the signing key ${file} is an ${key.asymmetricKeyType ?? 'unknown'} key; cairn signs with ed25519 keys`, 'make one with: cairn keys generate --out DIR');
  }
  return key;
}

/** The public half of a private key file: its PEM and fingerprint (what the image trusts). */
export function publicKeyOf(privateKeyPath: string): PublicKeyInfo {
  return publicInfo(loadPrivateKey(privateKeyPath));
}

/** Signs a payload record (the exact bytes of payload.json): a raw 64-byte ed25519 signature. */
export function signRecord(bytes: Buffer, privateKeyPath: string): Buffer {
  return sign(null, bytes, loadPrivateKey(privateKeyPath));
}

export interface TrustedKey {
  file: string;
  fingerprint: string;
  key: KeyObject;
}

/** Every `*.pub` in a folder, sorted by file name; no folder is no keys. A file that is not an ed25519 public key is an error naming it. */
export function trustedKeys(dir: string): TrustedKey[] {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return [];
    if (code === 'ENOTDIR') throw new UserError(`the trusted keys folder ${dir} is not a folder`);
    throw new UserError(`cannot read the trusted keys folder ${dir} (${code ?? 'read error'})`);
  }
  const keys: TrustedKey[] = [];
  for (const name of names.filter((n) => n.endsWith('.pub')).sort()) {
    const file = path.join(dir, name);
    let key: KeyObject;
    try {
      key = createPublicKey({ key: readFileSync(file), format: 'pem' });
    } catch {
      throw new UserError(`the trusted key ${file} is not a PEM public key`, 'the image was built with a broken key file: rebuild it with cairn build --sign KEY');
    }
    if (key.asymmetricKeyType !== 'ed25519') throw new UserError(`the trusted key ${file} is an ${key.asymmetricKeyType ?? 'unknown'} key; cairn verifies ed25519 signatures`);
    keys.push({ file, fingerprint: fingerprint(key), key });
  }
  return keys;
}

export type VerifyResult = { signed: boolean; trusted: false } | { signed: true; trusted: true; key: string };

/**
 * Checks a payload record against the keys the running image trusts (every
 * `*.pub` in trustedKeysDir, on a node /usr/lib/cairn/keys).
 *
 * No keys: any payload is taken, signed or not ({ trusted: false }). Keys:
 * the record must carry a signature that one of them verifies; anything else
 * is a UserError naming the trusted fingerprints.
 */
export function verifyRecord(recordBytes: Buffer, signature: Buffer | undefined, trustedKeysDir: string): VerifyResult {
  const keys = trustedKeys(trustedKeysDir);
  if (keys.length === 0) return { signed: signature !== undefined, trusted: false };
  const names = keys.map((k) => k.fingerprint).join(', ');
  if (signature === undefined) {
    throw new UserError(
      `the payload is not signed, and this node only takes signed payloads: its image trusts keys ${names}`,
      'sign the build with cairn build --sign KEY (the private key of one of those fingerprints)',
    );
  }
  for (const k of keys) {
    if (signature.length === 64 && verify(null, recordBytes, k.key, signature)) return { signed: true, trusted: true, key: k.fingerprint };
  }
  throw new UserError(
    `the payload's signature is not from a key this node trusts, or payload.json was changed after signing: its image trusts keys ${names}`,
    'use a payload built with cairn build --sign KEY, KEY being the private key of one of those fingerprints',
  );
}
