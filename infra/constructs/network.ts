import { Annotations, ContextProvider, Stack, Token } from 'aws-cdk-lib';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as cxschema from 'aws-cdk-lib/cloud-assembly-schema';
import { Construct } from 'constructs';
import { type ClusterConfig, type DeployConfig, patroniUrls } from '../config';

/**
 * The interface endpoints a Fargate task (platform 1.4) of pgvault needs in private subnets without
 * NAT: pulling the image (ECR api for the manifest and token, ECR dkr for the layers, whose blobs come
 * from S3 through the gateway), the awslogs driver (Logs), the ECS secrets (Secrets Manager, fetched by
 * the Fargate agent with the execution role), and what the CLI itself calls besides S3 (SNS alerts,
 * EventBridge lifecycle events). Not needed: ECS (Fargate's agent talks to ECS itself), STS (task
 * credentials come from the container credentials endpoint), KMS (S3 and Secrets Manager decrypt on
 * their side). The functions run outside the VPC.
 */
export const INTERFACE_ENDPOINTS = ['ecr.api', 'ecr.dkr', 'logs', 'secretsmanager', 'sns', 'events'] as const;
/** The gateway endpoint: every dump, base backup and WAL segment goes to S3. */
export const GATEWAY_ENDPOINT = 's3';
/** What NAT charges per GB processed (us-east-1 and most regions): the cost of a missing S3 endpoint. */
export const NAT_COST_PER_GB = '$0.045';

/** Warning ids (cdk synth prints them; `Annotations` in the tests). */
export const ENDPOINTS_MISSING_WARNING = 'pgvault:network-endpoints-missing';
export const ENDPOINTS_UNCHECKED_WARNING = 'pgvault:network-endpoints-unchecked';
export const SECURITY_GROUPS_IMPORTED_WARNING = 'pgvault:network-security-groups-imported';
export const DATABASE_EGRESS_OPEN_WARNING = 'pgvault:network-database-egress-open';

/** The lookup's dummy value: the CDK CLI has not looked up yet (it will, then synthesize again). */
const PENDING_LOOKUP = 'pgvault:pending-lookup';

/** `com.amazonaws.<region>.<service>` (a token when the stack is environment-agnostic). */
export function endpointServiceName(region: string, service: string): string {
  return `com.amazonaws.${region}.${service}`;
}

/** The lookup `check` makes (Cloud Control API, through the CDK CLI): the VPC's endpoints and their services. */
export function endpointLookup(vpcId: string): { provider: string; props: Record<string, unknown> } {
  return {
    provider: cxschema.ContextProvider.CC_API_PROVIDER,
    props: {
      typeName: 'AWS::EC2::VPCEndpoint',
      propertyMatch: { VpcId: vpcId },
      propertiesToReturn: ['ServiceName'],
    },
  };
}

/**
 * The TCP ports the tasks open to the database hosts: each cluster's port, its Patroni REST port, and
 * network.databasePorts.
 */
export function databasePorts(clusters: readonly ClusterConfig[], extra: readonly number[] = []): number[] {
  const ports = new Set<number>(extra);
  for (const c of clusters) {
    ports.add(c.port);
    // Every node's REST API (a comma-separated list): the ports of all of them.
    for (const url of c.patroniUrl ? patroniUrls(c.patroniUrl) : [])
      ports.add(url.port ? Number(url.port) : url.protocol === 'https:' ? 443 : 80);
  }
  return [...ports].sort((a, b) => a - b);
}

export interface NetworkProps {
  readonly network: DeployConfig['network'];
  readonly clusters: readonly ClusterConfig[];
}

/**
 * The deployment's network (shared stack): the imported VPC and subnets, the task security group with
 * the egress the tasks need (or the configured groups, as they are), and the VPC endpoints
 * (`network.endpoints`): created, or looked up and warned about.
 */
export class Network extends Construct {
  public readonly vpc: ec2.IVpc;
  /** The groups every task and the wal receive services run with. */
  public readonly taskSecurityGroups: ec2.ISecurityGroup[];
  /** The group the stack made (absent when network.securityGroupIds is given). */
  public readonly taskSecurityGroup?: ec2.SecurityGroup;
  /** Accepts 443 from the tasks (only with interface endpoints). */
  public readonly endpointSecurityGroup?: ec2.SecurityGroup;
  /** Services of the endpoints created (`s3`, `ecr.api`, …). */
  public readonly createdEndpoints: string[] = [];

  constructor(scope: Construct, id: string, props: NetworkProps) {
    super(scope, id);
    const n = props.network;
    const stack = Stack.of(this);
    this.vpc = ec2.Vpc.fromVpcAttributes(this, 'Vpc', { vpcId: n.vpcId, availabilityZones: ['unused'] });

    if (n.securityGroupIds) {
      this.taskSecurityGroups = n.securityGroupIds.map((gid) =>
        ec2.SecurityGroup.fromSecurityGroupId(this, `Sg-${gid}`, gid, { mutable: false }),
      );
      Annotations.of(this).addWarningV2(
        SECURITY_GROUPS_IMPORTED_WARNING,
        `network.securityGroupIds (${n.securityGroupIds.join(', ')}) are used as they are: the stack cannot manage ` +
          `their rules. The tasks need egress 443 (AWS APIs), ${databasePorts(props.clusters, n.databasePorts).join(', ')} to the ` +
          'databases and 2049 to the WAL staging file system; leave securityGroupIds out to get a group with exactly that.',
      );
    } else {
      const sg = new ec2.SecurityGroup(this, 'TaskSecurityGroup', {
        vpc: this.vpc,
        description: 'pgvault tasks: HTTPS to AWS APIs, PostgreSQL to the databases, NFS to the WAL staging',
        allowAllOutbound: false,
      });
      // 0.0.0.0/0: the S3 gateway endpoint routes to S3's public addresses (its prefix list id is only known
      // by a lookup), and without endpoints the APIs are reached through NAT. Only 443.
      sg.addEgressRule(
        ec2.Peer.anyIpv4(),
        ec2.Port.tcp(443),
        'HTTPS to S3, ECR, Secrets Manager, SNS, EventBridge, CloudWatch Logs (endpoints or NAT)',
      );
      const ports = databasePorts(props.clusters, n.databasePorts);
      const peers: ec2.IPeer[] = [
        ...n.databaseCidrs.map((cidr) => ec2.Peer.ipv4(cidr)),
        ...n.databaseSecurityGroupIds.map((gid) => ec2.Peer.securityGroupId(gid)),
      ];
      if (peers.length === 0) {
        peers.push(ec2.Peer.anyIpv4());
        Annotations.of(this).addWarningV2(
          DATABASE_EGRESS_OPEN_WARNING,
          `the task security group opens ${ports.join(', ')} to 0.0.0.0/0 because neither network.databaseCidrs nor ` +
            'network.databaseSecurityGroupIds is set; set one to allow only your databases.',
        );
      }
      for (const peer of peers)
        for (const port of ports) sg.addEgressRule(peer, ec2.Port.tcp(port), `PostgreSQL / Patroni ${port}`);
      this.taskSecurityGroup = sg;
      this.taskSecurityGroups = [sg];
    }

    if (n.endpoints === 'create' || n.endpoints === 's3') {
      new ec2.CfnVPCEndpoint(this, 'S3Endpoint', {
        vpcId: n.vpcId,
        vpcEndpointType: 'Gateway',
        serviceName: endpointServiceName(stack.region, GATEWAY_ENDPOINT),
        routeTableIds: n.routeTableIds ?? [],
      });
      this.createdEndpoints.push(GATEWAY_ENDPOINT);
    }
    if (n.endpoints === 'create') {
      const endpointSg = new ec2.SecurityGroup(this, 'EndpointSecurityGroup', {
        vpc: this.vpc,
        description: 'pgvault VPC interface endpoints: HTTPS from the pgvault tasks',
        allowAllOutbound: false,
      });
      for (const sg of this.taskSecurityGroups)
        endpointSg.addIngressRule(sg, ec2.Port.tcp(443), 'HTTPS from pgvault tasks');
      this.endpointSecurityGroup = endpointSg;
      for (const service of INTERFACE_ENDPOINTS) {
        // L1: the subnets are imported by id (no availability zones known offline); one subnet per zone.
        new ec2.CfnVPCEndpoint(this, `Endpoint-${service}`, {
          vpcId: n.vpcId,
          vpcEndpointType: 'Interface',
          serviceName: endpointServiceName(stack.region, service),
          subnetIds: [...n.subnetIds],
          securityGroupIds: [endpointSg.securityGroupId],
          privateDnsEnabled: true,
        });
        this.createdEndpoints.push(service);
      }
    }
    if (n.endpoints === 'check' || n.endpoints === 's3') this.check(n, stack);
  }

  /** Looks the VPC's endpoints up (at synth, through the CDK CLI) and warns about the missing ones. */
  private check(n: DeployConfig['network'], stack: Stack): void {
    const wanted = [GATEWAY_ENDPOINT, ...INTERFACE_ENDPOINTS].filter(
      (s) => !this.createdEndpoints.includes(s),
    );
    if (Token.isUnresolved(stack.account) || Token.isUnresolved(stack.region)) {
      Annotations.of(this).addWarningV2(
        ENDPOINTS_UNCHECKED_WARNING,
        `network.endpoints is ${n.endpoints} but the stack has no account and region, so the VPC endpoints ` +
          `(${wanted.join(', ')}) are not checked: set account and region in the configuration, or use "create". ` +
          `Without an S3 endpoint every dump and WAL byte goes through NAT (about ${NAT_COST_PER_GB}/GB).`,
      );
      return;
    }
    const { value } = ContextProvider.getValue(this, {
      ...endpointLookup(n.vpcId),
      dummyValue: [{ ServiceName: PENDING_LOOKUP }],
    }) as { value: Array<{ ServiceName?: string }> };
    // The first synth runs on the dummy value; the CDK CLI then looks up and synthesizes again.
    if (Array.isArray(value) && value.some((e) => e.ServiceName === PENDING_LOOKUP)) return;
    const present = new Set((Array.isArray(value) ? value : []).map((e) => e.ServiceName));
    const missing = wanted.filter((s) => !present.has(endpointServiceName(stack.region, s)));
    if (missing.length === 0) return;
    const s3 = missing.includes(GATEWAY_ENDPOINT)
      ? `Without the S3 endpoint every dump and WAL byte goes through NAT (about ${NAT_COST_PER_GB}/GB); `
      : '';
    Annotations.of(this).addWarningV2(
      ENDPOINTS_MISSING_WARNING,
      `VPC ${n.vpcId} has no endpoint for ${missing.join(', ')}. ${s3}the others' calls go through NAT too, or ` +
        'fail without it. Set network.endpoints to "create" (or "s3" for the free gateway only), or create them yourself.',
    );
  }
}
