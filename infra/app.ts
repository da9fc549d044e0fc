#!/usr/bin/env node
import { App, Validations } from 'aws-cdk-lib';
import { AwsSolutionsChecks } from 'cdk-nag';
import { DeployConfigError, deployConfigPath, deploymentEnv, loadDeployConfig } from './config';
import { createDeployment } from './stack';

/**
 * `npx cdk synth|deploy`: the configuration comes from `-c config=PATH`, PGVAULT_DEPLOY_CONFIG, or the
 * example in infra/pgvault.example.json. cdk-nag's AwsSolutions checks run on every synth, on every stack.
 */
function main(): void {
  const app = new App();
  const path = deployConfigPath(app.node.tryGetContext('config'));
  try {
    const config = loadDeployConfig(path);
    // One shared stack and as many fleet stacks as the clusters need: `npx cdk deploy --all`.
    createDeployment(app, {
      config,
      description:
        'pgvault: PostgreSQL backups and disaster recovery (vault bucket, Fargate tasks, Lambdas, schedules)',
      env: deploymentEnv(config, path),
    });
    Validations.of(app).addPlugins(new AwsSolutionsChecks(app, { writeSuppressionsToCloudFormation: true }));
    app.synth();
  } catch (err) {
    if (err instanceof DeployConfigError) {
      process.stderr.write(`${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }
}

main();
