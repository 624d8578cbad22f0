/** Decoding of write_files content: every encoding k3OS and cloud-init accept. */
import { zlib } from '../init/lazy.js';
import type { Encoding } from './types.js';

const BASE64 = /^[A-Za-z0-9+/\s]*={0,2}\s*$/;

function fromBase64(content: string): Buffer {
  if (!BASE64.test(content)) throw new Error('content is not valid base64');
  return Buffer.from(content, 'base64');
}

function gunzip(data: Buffer): Buffer {
  try {
    return zlib().gunzipSync(data);
  } catch {
    throw new Error('content is not valid gzip data');
  }
}

/** The bytes a write_files entry writes; throws with a plain message when content does not match its encoding. */
export function decodeContent(content: string, encoding: Encoding | undefined): Buffer {
  switch (encoding ?? '') {
    case '':
    case 'text/plain':
      return Buffer.from(content, 'utf8');
    case 'b64':
    case 'base64':
      return fromBase64(content);
    case 'gz':
    case 'gzip':
      // A gzip stream in YAML text only survives as latin1 bytes.
      return gunzip(Buffer.from(content, 'latin1'));
    default:
      return gunzip(fromBase64(content));
  }
}
