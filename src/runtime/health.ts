/**
 * Is k3s up? A server is up when its API server answers /readyz with 200
 * (authenticating with the client certificate of the kubeconfig it wrote);
 * an agent when its process has kept running for a while.
 */
import { readFileSync } from 'node:fs';
import { https } from '../init/lazy.js';
import jsyaml from 'js-yaml';

interface KubeconfigCreds {
  server: string;
  cert?: Buffer;
  key?: Buffer;
}

export function readKubeconfig(path: string): KubeconfigCreds | undefined {
  try {
    const doc = jsyaml.load(readFileSync(path, 'utf8')) as {
      clusters?: { cluster?: { server?: string } }[];
      users?: { user?: { 'client-certificate-data'?: string; 'client-key-data'?: string } }[];
    };
    const server = doc.clusters?.[0]?.cluster?.server;
    if (!server) return undefined;
    const user = doc.users?.[0]?.user ?? {};
    const b64 = (s?: string) => (s ? Buffer.from(s, 'base64') : undefined);
    return { server, cert: b64(user['client-certificate-data']), key: b64(user['client-key-data']) };
  } catch {
    return undefined;
  }
}

/** GET <server>/readyz; resolves to the HTTP status, or 0 when nothing answers. */
export function readyz(creds: KubeconfigCreds, timeoutMs = 5000): Promise<number> {
  return new Promise((resolve) => {
    const url = new URL('/readyz', creds.server);
    // The API server's own CA signed its certificate; on the node itself, reaching 127.0.0.1 is what counts.
    const req = https().request(url, { method: 'GET', cert: creds.cert, key: creds.key, rejectUnauthorized: false, timeout: timeoutMs }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(0));
    req.end();
  });
}

/** Waits until the server answers /readyz with 200; false when the time is up. */
export async function waitServerReady(kubeconfig: string, timeoutMs: number, intervalMs = 1000): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    const creds = readKubeconfig(kubeconfig);
    if (creds && (await readyz(creds)) === 200) return true;
    await new Promise((r) => setTimeout(r, intervalMs));
  }
  return false;
}
