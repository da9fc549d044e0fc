import type { Template } from 'aws-cdk-lib/assertions';
import { type CfnJson, synthTemplate, testConfig } from '../infra/synth';
import { roleS3Statements, type S3Statement } from './s3-policy';

/** What a task runs with, as the synthesized template gives it. */
export interface TaskRole {
  /** The S3 statements of its task role (for startPolicyProxy). */
  readonly statements: S3Statement[];
  /** The task's environment as the template sets it (CLOUD_PREFIX, CLUSTER_NAME, PGHOST, ...). */
  readonly env: Record<string, string>;
}

/**
 * The S3 statements and environment of a cluster's backup, restore or WAL receiver task in the
 * deployment synthesized from the example configuration; backup and restore found by family. `bucket`
 * stands for the vault bucket in the statements' resources.
 */
export function taskRole(
  kind: 'backup' | 'restore' | 'wal-receive',
  clusterName: string,
  bucket: string,
): TaskRole {
  const synth = synthTemplate(testConfig());
  const templates: Template[] = [synth.template, ...synth.fleets.map((f) => f.template)];
  for (const template of templates) {
    for (const def of Object.values(template.findResources('AWS::ECS::TaskDefinition')) as CfnJson[]) {
      const family = def.Properties.Family;
      const container = def.Properties.ContainerDefinitions[0];
      const isWanted =
        kind === 'wal-receive'
          ? container.Command?.join(' ') === 'wal receive' &&
            container.Environment?.some((e: CfnJson) => e.Name === 'CLUSTER_NAME' && e.Value === clusterName)
          : typeof family === 'string' && family.endsWith(`-${kind}-${clusterName}`);
      if (!isWanted) continue;
      const roleId = def.Properties.TaskRoleArn['Fn::GetAtt'][0] as string;
      const env: Record<string, string> = {};
      for (const e of container.Environment ?? []) {
        if (typeof e.Value === 'string') env[e.Name] = e.Value;
      }
      return { statements: roleS3Statements(template, roleId, bucket), env };
    }
  }
  throw new Error(`no ${kind} task for cluster ${clusterName} in the synthesized templates`);
}
