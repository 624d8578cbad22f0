// One guest connection of a QEMU guestfwd (cmd:), relayed to a TCP port on
// the host: QEMU runs this once per connection with the connection on
// stdin and stdout. Usage: node tcp-relay.mjs PORT
import { connect } from 'node:net';

const port = Number(process.argv[2]);
const sock = connect(port, '127.0.0.1');
process.stdin.pipe(sock);
sock.pipe(process.stdout);
sock.on('close', () => process.exit(0));
sock.on('error', () => process.exit(1));
process.stdin.on('end', () => sock.end());
