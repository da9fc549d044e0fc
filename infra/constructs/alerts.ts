import { Duration, RemovalPolicy, Stack } from 'aws-cdk-lib';
import * as events from 'aws-cdk-lib/aws-events';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as sns from 'aws-cdk-lib/aws-sns';
import * as subscriptions from 'aws-cdk-lib/aws-sns-subscriptions';
import { Construct } from 'constructs';

export interface AlertsProps {
  /** Addresses subscribed to the topic (each confirms by e-mail). @default [] */
  readonly emails: readonly string[];
  /** Name of the lifecycle event bus. */
  readonly eventBusName: string;
}

/**
 * Where pgvault talks to people and automation: the alert topic (KMS-encrypted, TLS only, e-mail
 * subscriptions) and the lifecycle event bus (backup / restore / verification / drill results).
 */
export class Alerts extends Construct {
  /** Encrypts the topic; CloudWatch alarms and EventBridge may use it to publish. */
  public readonly key: kms.Key;
  public readonly topic: sns.Topic;
  public readonly eventBus: events.EventBus;

  constructor(scope: Construct, id: string, props: AlertsProps) {
    super(scope, id);
    this.key = new kms.Key(this, 'Key', {
      description: 'pgvault: encrypts the alert topic',
      enableKeyRotation: true,
      removalPolicy: RemovalPolicy.DESTROY,
    });
    // Alarms and EventBridge rules publish to an encrypted topic only with the key's permission. This
    // key protects the alert messages only; '*' in a key policy means this key.
    this.key.addToResourcePolicy(
      new iam.PolicyStatement({
        principals: [
          new iam.ServicePrincipal('cloudwatch.amazonaws.com'),
          new iam.ServicePrincipal('events.amazonaws.com'),
        ],
        actions: ['kms:Decrypt', 'kms:GenerateDataKey*'],
        resources: ['*'],
      }),
    );
    this.topic = new sns.Topic(this, 'Topic', {
      displayName: 'pgvault alerts',
      masterKey: this.key,
      enforceSSL: true,
    });
    // The topic policy CDK writes (TLS only, EventBridge) replaces SNS's default one: let this account's
    // CloudWatch alarms publish explicitly.
    this.topic.addToResourcePolicy(
      new iam.PolicyStatement({
        principals: [new iam.ServicePrincipal('cloudwatch.amazonaws.com')],
        actions: ['sns:Publish'],
        resources: [this.topic.topicArn],
        conditions: { StringEquals: { 'aws:SourceAccount': Stack.of(this).account } },
      }),
    );
    for (const email of props.emails) this.topic.addSubscription(new subscriptions.EmailSubscription(email));

    this.eventBus = new events.EventBus(this, 'EventBus', { eventBusName: props.eventBusName });
    // Keep a week of lifecycle events so automation added later can replay them.
    this.eventBus.archive('Archive', {
      description: 'pgvault lifecycle events',
      eventPattern: { account: [Stack.of(this).account] },
      retention: Duration.days(7),
    });
  }
}
