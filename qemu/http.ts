/**
 * A small read-only HTTP server for a folder, on 127.0.0.1: what a PXE boot
 * fetches from the host (the guest reaches it at 10.0.2.2:<port> through
 * QEMU's user network). GET and HEAD, with byte ranges; nothing outside the
 * folder is served. Every request is recorded (tests check what was fetched).
 */
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';

export interface FolderServer {
  port: number;
  /** Requests so far: method, path and status. */
  requests: { method: string; path: string; status: number }[];
  close(): Promise<void>;
  closeSync(): void;
}

export async function serveFolder(root: string): Promise<FolderServer> {
  const requests: FolderServer['requests'] = [];
  const server = http.createServer((req, res) => {
    const done = (status: number): void => {
      requests.push({ method: req.method ?? '', path: req.url ?? '', status });
    };
    void (async () => {
      const url = new URL(req.url ?? '/', 'http://host');
      const rel = decodeURIComponent(url.pathname);
      const file = path.resolve(root, `.${rel}`);
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        res.writeHead(405).end();
        return done(405);
      }
      if (file !== root && !file.startsWith(root + path.sep)) {
        res.writeHead(403).end();
        return done(403);
      }
      let size: number;
      try {
        const st = await stat(file);
        if (!st.isFile()) throw new Error('not a file');
        size = st.size;
      } catch {
        res.writeHead(404).end();
        return done(404);
      }
      let start = 0;
      let end = size - 1;
      let status = 200;
      const range = /^bytes=(\d*)-(\d*)$/.exec(req.headers.range ?? '');
      if (range && (range[1] || range[2])) {
        if (range[1]) {
          start = Number(range[1]);
          if (range[2]) end = Math.min(Number(range[2]), size - 1);
        } else {
          start = Math.max(0, size - Number(range[2]));
        }
        if (start > end || start >= size) {
          res.writeHead(416, { 'content-range': `bytes */${size}` }).end();
          return done(416);
        }
        status = 206;
      }
      const headers: http.OutgoingHttpHeaders = { 'content-length': size === 0 ? 0 : end - start + 1, 'content-type': 'application/octet-stream', 'accept-ranges': 'bytes' };
      if (status === 206) headers['content-range'] = `bytes ${start}-${end}/${size}`;
      res.writeHead(status, headers);
      done(status);
      if (req.method === 'HEAD' || size === 0) return void res.end();
      createReadStream(file, { start, end }).on('error', () => res.destroy()).pipe(res);
    })().catch(() => {
      res.destroy();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const addr = server.address();
  if (!addr || typeof addr !== 'object') throw new Error('HTTP server has no address');
  let closed = false;
  const closeSync = (): void => {
    if (closed) return;
    closed = true;
    server.closeAllConnections();
    server.close();
  };
  return {
    port: addr.port,
    requests,
    closeSync,
    close: async () => {
      if (closed) return;
      closed = true;
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
