// Runs s3rver for the tests in its own process. Started by test/helpers/s3-server.ts with
// NODE_OPTIONS=--openssl-legacy-provider: s3rver encrypts ListObjectsV2 continuation tokens with DES,
// which Node's OpenSSL 3 refuses without the legacy provider, so truncated listings fail in-process.
// Usage: node s3rver-child.js <directory> <bucket>; prints {"port": N} on stdout once listening,
// and exits when its stdin closes, so a crashed test run leaves no server behind.
'use strict';

const S3rver = require('s3rver');

async function main() {
  const [directory, bucket] = process.argv.slice(2);
  if (!directory || !bucket) {
    process.stderr.write('usage: s3rver-child.js <directory> <bucket>\n');
    process.exit(2);
  }
  const server = new S3rver({
    address: '127.0.0.1',
    port: 0,
    silent: true,
    directory,
    configureBuckets: [{ name: bucket }],
  });
  const { port } = await server.run();
  process.stdout.write(`${JSON.stringify({ port })}\n`);
  const stop = () => {
    server.close(() => process.exit(0));
    // close() waits for keep-alive connections; do not let them hold the process.
    setTimeout(() => process.exit(0), 1000).unref();
  };
  process.stdin.on('end', stop);
  process.stdin.on('error', stop);
  process.stdin.resume();
  process.on('SIGTERM', stop);
}

main().catch((err) => {
  process.stderr.write(`s3rver failed to start: ${err?.stack ?? err}\n`);
  process.exit(1);
});
