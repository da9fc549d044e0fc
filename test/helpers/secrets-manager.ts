import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

/**
 * A stand-in for Secrets Manager's GetSecretValue (its JSON protocol over http), for tests that run
 * the CLI as a separate process, where the SDK cannot be mocked: point it there with
 * AWS_ENDPOINT_URL_SECRETS_MANAGER=endpoint. It holds the given secrets and refuses every other ARN as
 * IAM would (AccessDeniedException). Requests are recorded (target and SecretId).
 */
export interface StandInSecretsManager {
  readonly endpoint: string;
  readonly requests: { target: string; secretId: string }[];
  /** The environment the CLI needs to reach it (region, endpoint, dummy credentials). */
  readonly env: NodeJS.ProcessEnv;
  close(): Promise<void>;
}

function body(req: IncomingMessage): Promise<string> {
  return new Promise((ok) => {
    let text = '';
    req.on('data', (c: Buffer) => {
      text += c.toString();
    });
    req.on('end', () => ok(text));
  });
}

export async function startSecretsManager(
  secrets: Readonly<Record<string, string>>,
): Promise<StandInSecretsManager> {
  const requests: { target: string; secretId: string }[] = [];
  const server: Server = createServer((req, res) => {
    void body(req).then((text) => {
      const { SecretId } = JSON.parse(text) as { SecretId: string };
      requests.push({ target: String(req.headers['x-amz-target']), secretId: SecretId });
      res.setHeader('content-type', 'application/x-amz-json-1.1');
      const value = secrets[SecretId];
      if (value === undefined) {
        res.statusCode = 400;
        res.end(
          JSON.stringify({
            __type: 'AccessDeniedException',
            Message: `User is not authorized to perform: secretsmanager:GetSecretValue on resource: ${SecretId}`,
          }),
        );
        return;
      }
      res.end(
        JSON.stringify({ ARN: SecretId, Name: SecretId.split(':')[6], VersionId: 'v1', SecretString: value }),
      );
    });
  });
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', () => ok()));
  const endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    endpoint,
    requests,
    env: {
      AWS_REGION: 'eu-west-1',
      AWS_ACCESS_KEY_ID: 'AKIDSTANDIN',
      AWS_SECRET_ACCESS_KEY: 'stand-in-secret-access-key',
      AWS_ENDPOINT_URL_SECRETS_MANAGER: endpoint,
      AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
    },
    close: () => new Promise<void>((ok) => server.close(() => ok())),
  };
}
