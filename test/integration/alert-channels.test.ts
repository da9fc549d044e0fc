import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join, resolve } from 'node:path';
import { SMTPServer } from 'smtp-server';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { commandFailedAlert } from '../../core/alert/failure';
import { sendAlerts } from '../../core/alert/notify';
import { parseConfig } from '../../core/config';
import { type CliRun, runPgvault } from '../helpers/cli';
import { tempDir } from '../helpers/vault';

/**
 * The local alert channels as the built CLI uses them (issue 11): a real SMTP server (smtp-server,
 * with AUTH), an HTTP receiver for ALERT_WEBHOOK_URL and a shell script for ALERT_COMMAND, all
 * started here on free ports. A failed backup (PostgreSQL down) must reach each of them with the
 * cluster, what failed and the next command, and no secret; a channel that fails only adds a line.
 */
const ENCRYPTION_KEY = 'encryption-key-that-must-stay-home';
const PGPASSWORD = 'pg-password-that-must-stay-home';
const SMTP_PASSWORD = 'smtp-password-that-must-stay-home';
const HOOK_TOKEN = 'hook-token-that-must-stay-home';
const SECRETS = [ENCRYPTION_KEY, PGPASSWORD, SMTP_PASSWORD, HOOK_TOKEN];

let work: Awaited<ReturnType<typeof tempDir>>;
let smtp: SMTPServer;
let smtpPort: number;
let hook: Server;
let hookPort: number;
let closedPort: number;
let hookStatus = 200;
const mails: { from: string; to: string[]; raw: string; user?: string }[] = [];
const hooks: { path: string; body: string; type?: string }[] = [];

function pgvault(args: string[], env: Record<string, string> = {}): Promise<CliRun> {
  return runPgvault(
    args,
    { PATH: process.env.PATH ?? '', HOME: work.path, PGPASSWORD, ENCRYPTION_KEY, ...env },
    work.path,
  );
}

function configFile(name: string, lines: string[]): string {
  const path = join(work.path, `${name}.env`);
  writeFileSync(
    path,
    [
      `BACKUP_DIR=${join(work.path, name)}`,
      'CLUSTER_NAME=main',
      'PGHOST=127.0.0.1',
      `PGPORT=${closedPort}`,
      'ENCRYPTION=true',
      ...lines,
    ].join('\n'),
  );
  return path;
}

/** The alert channels of a config: SMTP with AUTH, the webhook with a token in its path, a script. */
function channelLines(name: string): string[] {
  const script = join(work.path, `${name}-alert.sh`);
  writeFileSync(
    script,
    `#!/bin/sh\ncat > "${work.path}/${name}-stdin.txt"\nenv > "${work.path}/${name}-env.txt"\necho "$0 $*" > "${work.path}/${name}-argv.txt"\n`,
    { mode: 0o755 },
  );
  return [
    'EMAIL_NOTIFICATIONS=true',
    'EMAIL_TO=admin@example.com,dba@example.com',
    `SMTP_URL=smtp://alerts:${SMTP_PASSWORD}@127.0.0.1:${smtpPort}`,
    'EMAIL_FROM=pgvault@db1.example.com',
    `ALERT_WEBHOOK_URL=http://127.0.0.1:${hookPort}/hooks/${HOOK_TOKEN}`,
    `ALERT_COMMAND=${script}`,
  ];
}

beforeAll(async () => {
  work = await tempDir('pgvault-alert-channels-');
  smtp = new SMTPServer({
    secure: false,
    disabledCommands: ['STARTTLS'],
    allowInsecureAuth: true,
    logger: false,
    onAuth(auth, _session, callback) {
      if (auth.username === 'alerts' && auth.password === SMTP_PASSWORD)
        return callback(null, { user: 'alerts' });
      return callback(new Error('Invalid username or password'));
    },
    onData(stream, session, callback) {
      let raw = '';
      stream.on('data', (c: Buffer) => {
        raw += c.toString();
      });
      stream.on('end', () => {
        mails.push({
          from: session.envelope.mailFrom ? session.envelope.mailFrom.address : '',
          to: session.envelope.rcptTo.map((r) => r.address),
          raw,
          user: session.user as string | undefined,
        });
        callback();
      });
    },
  });
  await new Promise<void>((r) => smtp.listen(0, '127.0.0.1', r));
  smtpPort = (smtp.server.address() as AddressInfo).port;
  hook = createServer((req, res) => {
    let body = '';
    req.on('data', (c: Buffer) => {
      body += c.toString();
    });
    req.on('end', () => {
      hooks.push({ path: req.url ?? '', body, type: req.headers['content-type'] });
      res.statusCode = hookStatus;
      res.end(hookStatus === 200 ? 'ok' : 'no');
    });
  });
  await new Promise<void>((r) => hook.listen(0, '127.0.0.1', r));
  hookPort = (hook.address() as AddressInfo).port;
  // A port nobody listens on: PostgreSQL that is down, and an SMTP server that is down.
  const probe = createServer();
  await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
  closedPort = (probe.address() as AddressInfo).port;
  await new Promise<void>((r) => probe.close(() => r()));
});

beforeEach(() => {
  mails.length = 0;
  hooks.length = 0;
  hookStatus = 200;
});

afterAll(async () => {
  await new Promise<void>((r) => (smtp ? smtp.close(() => r()) : r()));
  await new Promise<void>((r) => (hook ? hook.close(() => r()) : r()));
  await work?.remove();
});

describe('a failed backup reaches every local channel', () => {
  it('mails EMAIL_TO over SMTP, posts the webhook, runs ALERT_COMMAND; the exit code and error line stay', async () => {
    // Prepare
    const plain = configFile('plain', []);
    const alerting = configFile('alerting', channelLines('ok'));

    // Act
    const without = await pgvault(['--config', plain, 'backup', 'full', 'daily']);
    const withChannels = await pgvault(['--config', alerting, 'backup', 'full', 'daily']);

    // Assess: the same line and code as without channels.
    const line = `pgvault: cannot connect to PostgreSQL at 127.0.0.1:${closedPort} (ECONNREFUSED); check PGHOST/PGPORT and that the server is running\n`;
    expect(without).toMatchObject({ code: 1, stderr: line });
    expect(withChannels).toMatchObject({ code: 1, stderr: line });
    const what = `pgvault backup full failed: ${line.slice('pgvault: '.length, -1)}`;
    const next = `pgvault --config ${alerting} backup full daily`;
    const subject = 'pgvault ALERT [main]: backup failed (pgvault backup full)';

    // SMTP: one mail, authenticated, to both addresses, from EMAIL_FROM.
    expect(mails).toHaveLength(1);
    const mail = mails[0]!;
    expect(mail).toMatchObject({
      from: 'pgvault@db1.example.com',
      to: ['admin@example.com', 'dba@example.com'],
      user: 'alerts',
    });
    const unfolded = mail.raw.replace(/\r\n/g, '\n').replace(/=\n/g, '');
    expect(unfolded).toContain(`Subject: ${subject}`);
    expect(unfolded).toContain('pgvault alert for cluster main');
    expect(unfolded).toContain(`What failed: ${what}`);
    expect(unfolded).toContain(`Next step: ${next}`);

    // Webhook: one JSON POST with Slack's `text` and the fields.
    expect(hooks).toHaveLength(1);
    expect(hooks[0]!.path).toBe(`/hooks/${HOOK_TOKEN}`);
    expect(hooks[0]!.type).toBe('application/json');
    const payload = JSON.parse(hooks[0]!.body) as Record<string, string>;
    expect(payload).toMatchObject({
      source: 'pgvault',
      subject,
      cluster: 'main',
      kind: 'command-failed',
      severity: 'critical',
      what,
      nextStep: next,
    });
    expect(payload.text).toContain(`${subject}\npgvault alert for cluster main`);

    // ALERT_COMMAND: the body on stdin, the fields in PGVAULT_ALERT_*, nothing in argv.
    const stdin = readFileSync(join(work.path, 'ok-stdin.txt'), 'utf8');
    const env = readFileSync(join(work.path, 'ok-env.txt'), 'utf8');
    const argv = readFileSync(join(work.path, 'ok-argv.txt'), 'utf8');
    expect(stdin).toContain(`What failed: ${what}\n`);
    expect(stdin).toContain(`Next step: ${next}\n`);
    expect(env).toContain(`PGVAULT_ALERT_SUBJECT=${subject}\n`);
    expect(env).toContain('PGVAULT_ALERT_CLUSTER=main\n');
    expect(env).toContain(`PGVAULT_ALERT_NEXT_STEP=${next}\n`);
    expect(argv.trim()).toBe(join(work.path, 'ok-alert.sh'));

    // No secret anywhere it went: not the key, not the database or SMTP password, not the hook's token.
    for (const text of [mail.raw, hooks[0]!.body, stdin, env, argv, withChannels.stderr]) {
      for (const secret of SECRETS) expect(text).not.toContain(secret);
    }
  });

  it('a channel that fails prints one line each, and the exit code is the failed command’s', async () => {
    // Prepare: SMTP down, the webhook answers 500, the command exits 7.
    hookStatus = 500;
    const failing = configFile('failing', [
      'EMAIL_TO=admin@example.com',
      `SMTP_URL=smtp://alerts:${SMTP_PASSWORD}@127.0.0.1:${closedPort}`,
      `ALERT_WEBHOOK_URL=http://127.0.0.1:${hookPort}/hooks/${HOOK_TOKEN}`,
      'ALERT_COMMAND=echo "no route to pager" >&2; exit 7',
    ]);

    // Act
    const r = await pgvault(['--config', failing, 'backup', 'full', 'daily']);

    // Assess
    const subject = 'pgvault ALERT [main]: backup failed (pgvault backup full)';
    const lines = r.stderr.trimEnd().split('\n');
    expect(r.code).toBe(1);
    expect(lines[0]).toMatch(/^pgvault: cannot connect to PostgreSQL at /);
    expect(lines.slice(1).sort()).toEqual(
      [
        `pgvault: warning: alert "${subject}" not sent to SMTP 127.0.0.1:${closedPort}: connect ECONNREFUSED 127.0.0.1:${closedPort}`,
        `pgvault: warning: alert "${subject}" not sent to webhook http://127.0.0.1:${hookPort}: HTTP 500 Internal Server Error`,
        `pgvault: warning: alert "${subject}" not sent to ALERT_COMMAND: it exited with code 7: no route to pager`,
      ].sort(),
    );
    expect(hooks).toHaveLength(1);
    for (const secret of SECRETS) expect(r.stderr).not.toContain(secret);
  });

  it('refuses EMAIL_NOTIFICATIONS=true with no way to send, in one line, exit 2', async () => {
    // Prepare
    const nowhere = configFile('nowhere', ['EMAIL_NOTIFICATIONS=true', 'EMAIL_TO=admin@example.com']);

    // Act
    const r = await pgvault(['--config', nowhere, 'backup', 'full', 'daily']);

    // Assess
    expect(r.code).toBe(2);
    expect(r.stderr).toBe(
      'pgvault: EMAIL_NOTIFICATIONS=true but there is no way to send mail; set SMTP_URL (smtp://user:password@host:587) or SNS_TOPIC_ARN, or set EMAIL_NOTIFICATIONS=false\n',
    );
  });

  it('archive_command and restore_command failures send nothing (PostgreSQL retries them)', async () => {
    // Prepare
    const alerting = configFile('wal', channelLines('wal'));

    // Act
    const push = await pgvault(['--config', alerting, 'backup', 'wal', 'pg_wal/000000010000000000000001']);
    const fetch = await pgvault(['--config', alerting, 'restore', 'wal', '000000010000000000000001', 'x']);

    // Assess
    expect(push.code).not.toBe(0);
    expect(fetch.code).not.toBe(0);
    expect(push.stderr.trimEnd().split('\n')).toHaveLength(1);
    expect(mails).toEqual([]);
    expect(hooks).toEqual([]);
  });
});

describe('redaction before any channel', () => {
  it('an alert whose text holds every secret reaches SMTP, the webhook and the command without them', async () => {
    // Prepare: an error line that happens to contain the secrets (a URL with a password, a key echoed).
    const config = parseConfig({
      BACKUP_DIR: join(work.path, 'redact'),
      CLUSTER_NAME: 'main',
      ENCRYPTION: 'true',
      ENCRYPTION_KEY,
      PGPASSWORD,
      ...Object.fromEntries(
        channelLines('redact').map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
      ),
    });
    const alert = commandFailedAlert({
      cluster: 'main',
      commandPath: 'backup full',
      argv: ['backup', 'full'],
      error: new Error(
        `failed with key ${ENCRYPTION_KEY}, password ${PGPASSWORD}, smtp ${SMTP_PASSWORD}, hook /hooks/${HOOK_TOKEN}`,
      ),
      startedAt: new Date(),
    });

    // Act
    const result = await sendAlerts(config, [alert], { write: () => {} });

    // Assess
    expect(result).toMatchObject({ published: 3, failures: [] });
    const stdin = readFileSync(join(work.path, 'redact-stdin.txt'), 'utf8');
    const env = readFileSync(join(work.path, 'redact-env.txt'), 'utf8');
    for (const text of [mails[0]!.raw, hooks[0]!.body, stdin, env, ...result.lines]) {
      expect(text).toContain('failed with key ***, password ***, smtp ***, hook ***');
      for (const secret of SECRETS) expect(text).not.toContain(secret);
    }
  });
});

describe('what the CLI loads', () => {
  it('loads nodemailer only when a mail is sent', () => {
    // Act: the notifier and its channels, as `verify report` loads them, but nothing sent.
    const r = spawnSync(
      process.execPath,
      [
        '-e',
        `require(${JSON.stringify(resolve(__dirname, '../../dist/core/alert/notify.js'))});
         process.stdout.write(String(Object.keys(require.cache).some((k) => k.includes('/nodemailer/'))));`,
      ],
      { encoding: 'utf8' },
    );

    // Assess
    expect(r.stdout).toBe('false');
  });
});

describe('warnings on every command', () => {
  it('DEPLOYMENT_MODE=citus and the placeholder key: one stderr line each, --json stays clean', async () => {
    // Prepare
    const guide = configFile('guide', [
      'DEPLOYMENT_MODE=citus',
      `WAL_ARCHIVE_DIR=${join(work.path, 'guide', 'wal')}`,
    ]);

    // Act
    const r = await pgvault(['--config', guide, '--json', 'restore', 'list'], {
      ENCRYPTION_KEY: 'your-secret-key-here',
    });
    const wal = await pgvault(['--config', guide, 'restore', 'wal', '000000010000000000000001', 'x'], {
      ENCRYPTION_KEY: 'your-secret-key-here',
    });

    // Assess
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toBeDefined();
    expect(r.stderr.trimEnd().split('\n')).toEqual([
      expect.stringMatching(
        /^pgvault: warning: ENCRYPTION_KEY is the guide's placeholder, which anyone can read; /,
      ),
      'pgvault: warning: DEPLOYMENT_MODE=citus is not built yet; pgvault acts as single-node on PGHOST (127.0.0.1)',
    ]);
    expect(r.stderr).not.toContain('your-secret-key-here');
    // Per WAL segment the server would log it each time: restore_command does not say it.
    expect(wal.stderr).not.toContain('warning');
  });

  it('refuses a WAL_ARCHIVE_DIR that is not where WAL goes, and a relative BACKUP_DIR', async () => {
    // Prepare
    const elsewhere = configFile('elsewhere', ['WAL_ARCHIVE_DIR=/mnt/wal']);
    const relative = join(work.path, 'relative.env');
    writeFileSync(relative, 'BACKUP_DIR=backups\n');

    // Act
    const a = await pgvault(['--config', elsewhere, 'backup', 'wal', 'pg_wal/000000010000000000000001']);
    const b = await pgvault(['--config', relative, 'backup', 'init']);

    // Assess
    expect(a).toMatchObject({
      code: 2,
      stderr: `pgvault: WAL_ARCHIVE_DIR=/mnt/wal is not supported; WAL is archived into the backup targets under BACKUP_DIR/CLUSTER_NAME/wal (${join(work.path, 'elsewhere', 'main', 'wal')}): remove WAL_ARCHIVE_DIR\n`,
    });
    expect(b).toMatchObject({
      code: 2,
      stderr:
        'pgvault: BACKUP_DIR=backups is a relative path; use an absolute path (archive_command runs in the data directory, where backups names another place)\n',
    });
  });
});
