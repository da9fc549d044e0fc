import { App, ContextProvider, Stack, Validations } from 'aws-cdk-lib';
import { Annotations, Match, type Template } from 'aws-cdk-lib/assertions';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import { AwsSolutionsChecks } from 'cdk-nag';
import { beforeAll, describe, expect, it } from 'vitest';
import { type DeployConfigInput, parseDeployConfig } from '../../infra/config';
import {
  ENDPOINTS_MISSING_WARNING,
  ENDPOINTS_UNCHECKED_WARNING,
  endpointLookup,
  INTERFACE_ENDPOINTS,
} from '../../infra/constructs/network';
import { createDeployment, type PgvaultStack } from '../../infra/stack';
import { buildStack, type CfnJson, resourcesOf, synthTemplate, testConfig } from './synth';

// Issue 12, "Network and cost": the task security group's egress is the stack's, VPC endpoints are
// created or checked (a missing S3 endpoint sends every dump and WAL byte through NAT).

const ENV = { account: '123456789012', region: 'eu-west-1' };
const VPC = 'vpc-0123456789abcdef0';
const ROUTE_TABLES = ['rtb-0123456789abcdef0', 'rtb-0fedcba9876543210'];

const network = (extra: Partial<NonNullable<DeployConfigInput['network']>>) => {
  const example = testConfig().network;
  return { ...JSON.parse(JSON.stringify(example)), ...extra };
};
const logicalId = (c: { node: { defaultChild?: unknown } }) => {
  const child = c.node.defaultChild as Parameters<PgvaultStack['getLogicalId']>[0];
  return Stack.of(child).getLogicalId(child);
};
const groupId = (c: { node: { defaultChild?: unknown } }) => ({ 'Fn::GetAtt': [logicalId(c), 'GroupId'] });
/** The context key `network.endpoints: check` looks up (what the CDK CLI writes to cdk.context.json). */
const lookupKey = () =>
  ContextProvider.getKey(new Stack(new App(), 'K', { env: ENV }), endpointLookup(VPC)).key;
const warnings = (stack: Stack, id: string) =>
  Annotations.fromStack(stack)
    .findWarning('*', Match.stringLikeRegexp(`\\[ack: ${id}\\]`))
    .map((m) => String(m.entry.data));

describe('the task security group (example configuration: no securityGroupIds, databaseCidrs)', () => {
  let template: Template;
  let stack: PgvaultStack;
  let fleetTemplate: Template;
  beforeAll(() => {
    const r = synthTemplate(testConfig());
    ({ template, stack } = r);
    fleetTemplate = r.fleets[0]!.template;
  }, 120_000);

  it('is the stack’s, with egress 443 anywhere and only the database ports to the database network', () => {
    const sg = stack.network.taskSecurityGroup!;
    expect(sg).toBeDefined();
    const props = template.toJSON().Resources[logicalId(sg)].Properties as CfnJson;
    expect(props.VpcId).toBe(VPC);
    const egress = (props.SecurityGroupEgress as CfnJson[]).map((r) => ({
      cidr: r.CidrIp,
      from: r.FromPort,
      to: r.ToPort,
      proto: r.IpProtocol,
    }));
    // main: 5432; orders: 5432 and Patroni's REST API on 8008. No "all traffic" rule.
    expect(egress).toEqual([
      { cidr: '0.0.0.0/0', from: 443, to: 443, proto: 'tcp' },
      { cidr: '10.0.0.0/16', from: 5432, to: 5432, proto: 'tcp' },
      { cidr: '10.0.0.0/16', from: 8008, to: 8008, proto: 'tcp' },
    ]);
    expect(props.SecurityGroupIngress).toBeUndefined();
    expect(warnings(stack, 'pgvault:network-database-egress-open')).toEqual([]);
    expect(warnings(stack, 'pgvault:network-security-groups-imported')).toEqual([]);
  });

  it('reaches the WAL staging file system on 2049: egress from the task group, ingress on the EFS group', () => {
    const efsSg = stack.tasks.walFileSystem!.connections.securityGroups[0]!;
    template.hasResourceProperties('AWS::EC2::SecurityGroupEgress', {
      GroupId: groupId(stack.network.taskSecurityGroup!),
      DestinationSecurityGroupId: groupId(efsSg),
      IpProtocol: 'tcp',
      FromPort: 2049,
      ToPort: 2049,
    });
    template.hasResourceProperties('AWS::EC2::SecurityGroupIngress', {
      GroupId: groupId(efsSg),
      SourceSecurityGroupId: groupId(stack.network.taskSecurityGroup!),
      FromPort: 2049,
      ToPort: 2049,
    });
  });

  it('is the group RunTask (the functions’ SECURITY_GROUP_IDS) and the wal receive service use', () => {
    const id = groupId(stack.network.taskSecurityGroup!);
    for (const [, fn] of resourcesOf(template, 'AWS::Lambda::Function')) {
      const env = fn.Properties.Environment?.Variables;
      if (env?.SECURITY_GROUP_IDS !== undefined) expect(env.SECURITY_GROUP_IDS).toEqual(id);
    }
    const [[, service]] = resourcesOf(fleetTemplate, 'AWS::ECS::Service') as [
      [string, { Properties: CfnJson }],
    ];
    const groups = service.Properties.NetworkConfiguration.AwsvpcConfiguration.SecurityGroups as CfnJson[];
    expect(groups).toHaveLength(1);
    // The shared stack's group (however the fleet stack refers to it), never a configured id.
    expect(JSON.stringify(groups[0])).toContain(logicalId(stack.network.taskSecurityGroup!));
  });

  it('check (the default) creates no endpoint and asks the CDK CLI to look up the VPC’s endpoints', () => {
    expect(resourcesOf(template, 'AWS::EC2::VPCEndpoint')).toEqual([]);
    const missing =
      stack.node.root.node.findAll().length > 0
        ? (stack as unknown as { _missingContext: CfnJson[] })._missingContext
        : [];
    expect(missing.map((m) => m.key)).toContain(lookupKey());
    const query = missing.find((m) => m.key === lookupKey())!;
    expect(query.provider).toBe('cc-api-provider');
    expect(query.props).toMatchObject({ typeName: 'AWS::EC2::VPCEndpoint', propertyMatch: { VpcId: VPC } });
    // Before the lookup answered, nothing is claimed missing.
    expect(warnings(stack, ENDPOINTS_MISSING_WARNING)).toEqual([]);
  });
});

describe('network.endpoints', () => {
  const service = (s: string) => `com.amazonaws.eu-west-1.${s}`;

  it('check: warns naming the endpoints the VPC lacks, and the NAT cost when S3 is one of them', () => {
    const none = buildStack(testConfig(), { context: { [lookupKey()]: [] } }).stack;
    const [all] = warnings(none, ENDPOINTS_MISSING_WARNING);
    expect(all).toContain(`VPC ${VPC} has no endpoint for s3, ${INTERFACE_ENDPOINTS.join(', ')}`);
    expect(all).toContain('$0.045/GB');

    const some = buildStack(testConfig(), {
      context: { [lookupKey()]: [{ ServiceName: service('s3') }, { ServiceName: service('ecr.api') }] },
    }).stack;
    const [partial] = warnings(some, ENDPOINTS_MISSING_WARNING);
    expect(partial).toContain('has no endpoint for ecr.dkr, logs, secretsmanager, sns, events.');
    expect(partial).not.toContain('$0.045');

    const complete = buildStack(testConfig(), {
      context: {
        [lookupKey()]: ['s3', ...INTERFACE_ENDPOINTS].map((s) => ({ ServiceName: service(s) })),
      },
    }).stack;
    expect(warnings(complete, ENDPOINTS_MISSING_WARNING)).toEqual([]);
  }, 120_000);

  it('check without account and region: a warning that nothing was checked (synth needs no credentials)', () => {
    const app = new App({
      builtinCloudFormationValidation: false,
      context: { 'aws:cdk:bundling-stacks': [] },
    });
    const { shared } = createDeployment(app, {
      config: testConfig(),
      image: ecs.ContainerImage.fromRegistry('public.ecr.aws/pgvault/test:latest'),
    });
    const [line] = warnings(shared, ENDPOINTS_UNCHECKED_WARNING);
    expect(line).toContain('not checked');
    expect(line).toContain('$0.045/GB');
  }, 120_000);

  it('create: the S3 gateway on the route tables and six interface endpoints, 443 from the task group only', () => {
    const { template, stack } = synthTemplate(
      testConfig({ network: network({ endpoints: 'create', routeTableIds: ROUTE_TABLES }) }),
    );
    const endpoints = resourcesOf(template, 'AWS::EC2::VPCEndpoint').map(([, e]) => e.Properties);
    expect(endpoints).toHaveLength(7);
    const gateway = endpoints.filter((e) => e.VpcEndpointType === 'Gateway');
    expect(gateway).toEqual([
      { VpcId: VPC, VpcEndpointType: 'Gateway', ServiceName: service('s3'), RouteTableIds: ROUTE_TABLES },
    ]);
    const endpointSg = stack.network.endpointSecurityGroup!;
    const interfaces = endpoints.filter((e) => e.VpcEndpointType === 'Interface');
    expect(interfaces.map((e) => e.ServiceName).sort()).toEqual(
      ['ecr.api', 'ecr.dkr', 'events', 'logs', 'secretsmanager', 'sns'].map(service),
    );
    for (const e of interfaces) {
      expect(e).toMatchObject({
        VpcId: VPC,
        SubnetIds: ['subnet-0123456789abcdef0', 'subnet-0fedcba9876543210'],
        SecurityGroupIds: [groupId(endpointSg)],
        PrivateDnsEnabled: true,
      });
    }
    template.hasResourceProperties('AWS::EC2::SecurityGroupIngress', {
      GroupId: groupId(endpointSg),
      SourceSecurityGroupId: groupId(stack.network.taskSecurityGroup!),
      IpProtocol: 'tcp',
      FromPort: 443,
      ToPort: 443,
    });
    const endpointProps = template.toJSON().Resources[logicalId(endpointSg)].Properties;
    expect(endpointProps.SecurityGroupIngress).toBeUndefined();
    // Nothing to look up, nothing to warn about.
    expect((stack as unknown as { _missingContext: unknown[] })._missingContext).toEqual([]);
    expect(warnings(stack, ENDPOINTS_MISSING_WARNING)).toEqual([]);
  }, 120_000);

  it('s3: only the (free) gateway, and the interface endpoints are checked', () => {
    const { template, stack } = synthTemplate(
      testConfig({ network: network({ endpoints: 's3', routeTableIds: ROUTE_TABLES }) }),
      { context: { [lookupKey()]: [] } },
    );
    const endpoints = resourcesOf(template, 'AWS::EC2::VPCEndpoint');
    expect(endpoints.map(([, e]) => e.Properties.ServiceName)).toEqual([service('s3')]);
    const [line] = warnings(stack, ENDPOINTS_MISSING_WARNING);
    expect(line).toContain(`has no endpoint for ${INTERFACE_ENDPOINTS.join(', ')}.`);
    expect(line).not.toContain('$0.045');
  }, 120_000);

  it('none: no endpoint, no lookup, no warning', () => {
    const { template, stack } = synthTemplate(testConfig({ network: network({ endpoints: 'none' }) }));
    expect(resourcesOf(template, 'AWS::EC2::VPCEndpoint')).toEqual([]);
    expect((stack as unknown as { _missingContext: unknown[] })._missingContext).toEqual([]);
    expect(Annotations.fromStack(stack).findWarning('*', Match.stringLikeRegexp('endpoint'))).toEqual([]);
  }, 120_000);

  it('create or s3 without routeTableIds: one line naming the key and why', () => {
    for (const endpoints of ['create', 's3'] as const) {
      const input = { ...JSON.parse(JSON.stringify(testConfig())), network: network({ endpoints }) };
      expect(() => parseDeployConfig(input, 'my.json')).toThrow(
        new RegExp(
          `^pgvault deploy config my\\.json: network\\.routeTableIds: required when network\\.endpoints is ${endpoints}: .*S3 gateway endpoint`,
        ),
      );
    }
  });

  it('create stays clean under cdk-nag', () => {
    const { app } = buildStack(
      testConfig({ network: network({ endpoints: 'create', routeTableIds: ROUTE_TABLES }) }),
    );
    Validations.of(app).addPlugins(new AwsSolutionsChecks(app));
    expect(() => app.synth()).not.toThrow();
  }, 120_000);
});

describe('configured security groups and database destinations', () => {
  it('securityGroupIds given: used as they are (no group made), with a warning naming what they must allow', () => {
    const { template, stack } = synthTemplate(
      testConfig({ network: network({ securityGroupIds: ['sg-0aaaaaaaaaaaaaaaa'] }) }),
    );
    expect(stack.network.taskSecurityGroup).toBeUndefined();
    const groups = resourcesOf(template, 'AWS::EC2::SecurityGroup').map(([id]) => id);
    expect(groups).toEqual([logicalId(stack.tasks.walFileSystem!.connections.securityGroups[0]!)]);
    template.hasResourceProperties('AWS::EC2::SecurityGroupIngress', {
      SourceSecurityGroupId: 'sg-0aaaaaaaaaaaaaaaa',
      FromPort: 2049,
    });
    const dispatch = template.toJSON().Resources[logicalId(stack.functions.functions.dispatch)];
    expect(dispatch.Properties.Environment.Variables.SECURITY_GROUP_IDS).toBe('sg-0aaaaaaaaaaaaaaaa');
    const [line] = warnings(stack, 'pgvault:network-security-groups-imported');
    expect(line).toContain('sg-0aaaaaaaaaaaaaaaa');
    expect(line).toContain('443');
    expect(line).toContain('5432, 8008');
    expect(line).toContain('2049');
  }, 120_000);

  it('databaseSecurityGroupIds: egress to those groups; neither set: the ports (with databasePorts) open to 0.0.0.0/0, with a warning', () => {
    const bySg = synthTemplate(
      testConfig({
        network: network({ databaseCidrs: [], databaseSecurityGroupIds: ['sg-0bbbbbbbbbbbbbbbb'] }),
      }),
    );
    const sg = bySg.stack.network.taskSecurityGroup!;
    const egress = bySg.template.toJSON().Resources[logicalId(sg)].Properties
      .SecurityGroupEgress as CfnJson[];
    expect(egress.filter((r) => r.FromPort !== 443)).toEqual([
      expect.objectContaining({ DestinationSecurityGroupId: 'sg-0bbbbbbbbbbbbbbbb', FromPort: 5432 }),
      expect.objectContaining({ DestinationSecurityGroupId: 'sg-0bbbbbbbbbbbbbbbb', FromPort: 8008 }),
    ]);

    const open = synthTemplate(
      testConfig({ network: network({ databaseCidrs: [], databasePorts: [6432] }) }),
    );
    const openEgress = open.template.toJSON().Resources[logicalId(open.stack.network.taskSecurityGroup!)]
      .Properties.SecurityGroupEgress as CfnJson[];
    expect(openEgress.map((r) => [r.CidrIp, r.FromPort])).toEqual([
      ['0.0.0.0/0', 443],
      ['0.0.0.0/0', 5432],
      ['0.0.0.0/0', 6432],
      ['0.0.0.0/0', 8008],
    ]);
    const [line] = warnings(open.stack, 'pgvault:network-database-egress-open');
    expect(line).toContain('5432, 6432, 8008');
    expect(line).toContain('network.databaseCidrs');
  }, 120_000);
});
