import type { DeployConfig } from './config';
import type { CredentialsSecret } from './constructs/tasks';

/**
 * A second repository outside AWS (config `secondRepository`, issue 14): the tasks and the functions
 * that read backups get the repositories as numbered keys, REPO1 the stack's bucket and REPO2 the GCS
 * bucket or Azure container, instead of the single target's CLOUD_PROVIDER / CLOUD_BUCKET /
 * CLOUD_PREFIX / LOCAL_COPY. Only the secret's ARN is in the template (REPO2_SECRET_ARN): pgvault reads
 * its credentials when it starts (core/pg/startup-secrets.ts). The other settings (retention,
 * compression, S3_*) stay as they are.
 */
export type SecondRepository = NonNullable<DeployConfig['secondRepository']>;

/** The single target's keys that the numbered ones replace. */
const SINGLE_TARGET_KEYS = ['CLOUD_PROVIDER', 'CLOUD_BUCKET', 'CLOUD_PREFIX', 'LOCAL_COPY'];

export function repositoryEnvironment(
  env: Readonly<Record<string, string>>,
  bucketPrefix: string,
  second: SecondRepository,
): Record<string, string> {
  const rest = Object.fromEntries(Object.entries(env).filter(([k]) => !SINGLE_TARGET_KEYS.includes(k)));
  const prefix = second.prefix ?? bucketPrefix;
  return {
    REPO1_TYPE: 's3',
    REPO1_BUCKET: env.CLOUD_BUCKET!,
    ...(bucketPrefix ? { REPO1_PREFIX: bucketPrefix } : {}),
    REPO2_TYPE: second.type,
    REPO2_BUCKET: second.bucket,
    ...(prefix ? { REPO2_PREFIX: prefix } : {}),
    ...(second.holds ? { REPO2_HOLDS: second.holds.join(',') } : {}),
    REPO2_SECRET_ARN: second.credentialsSecretArn,
    ...rest,
  };
}

/** The second repository's secret, which the task roles and the reading functions may read. */
export function repositorySecret(c: DeployConfig): CredentialsSecret | undefined {
  const r = c.secondRepository;
  return r ? { secretArn: r.credentialsSecretArn, kmsKeyArn: r.credentialsKmsKeyArn } : undefined;
}
