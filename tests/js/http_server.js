// An HTTP server on Node.js (libuv, one thread), unchanged from what a user would write: for
// GET /SIZE/TAG it answers SIZE bytes, TAG repeated (tests/py/check_clients.py checks them).
// `node http_server.js PORT`; prints `ready` once listening.
'use strict';
const http = require('http');
const port = Number(process.argv[2]);
const server = http.createServer((req, res) => {
  const [, size, tag] = req.url.split('/');
  const n = Number(size);
  if (!Number.isInteger(n) || n < 0 || !tag) {
    res.writeHead(400);
    res.end('bad request\n');
    return;
  }
  const body = Buffer.alloc(n, tag);
  res.writeHead(200, { 'Content-Type': 'application/octet-stream', 'Content-Length': n });
  res.end(body);
});
server.keepAliveTimeout = 30000;
server.listen(port, '0.0.0.0', () => console.log('ready'));
process.on('SIGTERM', () => server.close(() => process.exit(0)));
