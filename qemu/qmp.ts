/**
 * A minimal QMP client: one connection per command over QEMU's unix socket
 * (greeting, qmp_capabilities, the command, its return; events are skipped).
 */
import net from 'node:net';

export class QmpError extends Error {}

export async function qmp(socket: string, execute: string, args?: Record<string, unknown>, timeoutMs = 5_000): Promise<unknown> {
  return await new Promise((resolve, reject) => {
    const conn = net.createConnection(socket);
    let buf = '';
    let stage: 'greeting' | 'capabilities' | 'command' = 'greeting';
    const timer = setTimeout(() => finish(new QmpError(`QMP ${execute}: no answer in ${timeoutMs} ms`)), timeoutMs);
    const finish = (err: Error | undefined, value?: unknown): void => {
      clearTimeout(timer);
      conn.destroy();
      if (err) reject(err);
      else resolve(value);
    };
    const send = (cmd: string, a?: Record<string, unknown>): void => {
      conn.write(`${JSON.stringify(a ? { execute: cmd, arguments: a } : { execute: cmd })}\n`);
    };
    conn.on('error', (e) => finish(new QmpError(`QMP ${execute}: ${e.message}`)));
    conn.on('close', () => finish(new QmpError(`QMP ${execute}: connection closed`)));
    conn.on('data', (d) => {
      buf += d.toString('utf8');
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl).trim();
        buf = buf.slice(nl + 1);
        if (!line) continue;
        let msg: { QMP?: unknown; return?: unknown; error?: { desc?: string }; event?: string };
        try {
          msg = JSON.parse(line) as typeof msg;
        } catch {
          continue;
        }
        if (msg.event) continue;
        if (stage === 'greeting' && msg.QMP) {
          stage = 'capabilities';
          send('qmp_capabilities');
        } else if (msg.error) {
          finish(new QmpError(`QMP ${stage === 'command' ? execute : 'qmp_capabilities'}: ${msg.error.desc ?? 'error'}`));
        } else if (stage === 'capabilities' && 'return' in msg) {
          stage = 'command';
          send(execute, args);
        } else if (stage === 'command' && 'return' in msg) {
          finish(undefined, msg.return);
        }
      }
    });
  });
}
