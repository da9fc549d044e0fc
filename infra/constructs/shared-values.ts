import { Stack } from 'aws-cdk-lib';
import * as ssm from 'aws-cdk-lib/aws-ssm';
import { Construct, type IConstruct } from 'constructs';

/** Id of the SharedValues construct in the shared stack. */
const ID = 'SharedValues';

/**
 * How the fleet stacks read the shared stack's values (bucket and key ARNs, topic, functions, ECS
 * cluster, ...): SSM parameters, not CloudFormation exports. The shared stack writes each value once
 * under `/<stackName>/shared/<key>`; a fleet stack reads it as a template parameter of type
 * `AWS::SSM::Parameter::Value<String>`, which CloudFormation resolves at every deployment of that stack.
 *
 * Why not exports (CDK's default for a value used in another stack): CloudFormation refuses to change or
 * delete an export while a stack imports it, so a deploy that replaces an exported resource (a new key, a
 * renamed topic) fails in the shared stack, before any fleet stack could let go of the old value. With
 * parameters the shared stack deploys, then each fleet stack picks up the new value on its own deploy
 * (`cdk deploy --all` deploys them right after; the CLI never skips a stack with SSM parameters, as it
 * cannot know whether their values changed). Between the two a fleet stack still names the old resource.
 *
 * The shared stack refuses synth when something exported a value to a fleet stack anyway (a reference
 * made without SharedValues): `checkNoExports`.
 */
export class SharedValues extends Construct {
  /** The SharedValues of `producer`'s stack (created on first use). */
  static of(producer: IConstruct): SharedValues {
    const stack = Stack.of(producer);
    return (stack.node.tryFindChild(ID) as SharedValues | undefined) ?? new SharedValues(stack, ID);
  }

  /** Published values: key → the value's resolved form, and that form → its key. */
  private readonly byKey = new Map<string, string>();
  private readonly byValue = new Map<string, string>();

  private constructor(scope: Construct, id: string) {
    super(scope, id);
  }

  /** SSM parameter name of a shared value: under the stack's name, so two deployments never share one. */
  parameterName(key: string): string {
    return `/${Stack.of(this).stackName}/shared/${key}`;
  }

  /**
   * `value` (a value of this stack) as `consumer`'s stack reads it: the value itself in this stack, an SSM
   * parameter in any other, written here on first use under `key` (a value already published under
   * another key is read from that parameter: one parameter per value).
   */
  valueFor(consumer: IConstruct, key: string, value: string): string {
    const stack = Stack.of(this);
    if (Stack.of(consumer) === stack) return value;
    const resolved = JSON.stringify(stack.resolve(value));
    let published = this.byValue.get(resolved);
    if (published === undefined) {
      if (!/^[A-Za-z0-9_.-]+$/.test(key))
        throw new Error(`shared value key ${key}: letters, digits, _ . - only`);
      if (this.byKey.has(key))
        throw new Error(`shared value ${key} of ${stack.stackName} is already published with another value`);
      new ssm.StringParameter(this, key, {
        parameterName: this.parameterName(key),
        stringValue: value,
        description: `pgvault: ${key} of ${stack.stackName}, read by its fleet stacks (written by the stack, do not edit)`,
      });
      this.byKey.set(key, resolved);
      this.byValue.set(resolved, key);
      published = key;
    }
    return ssm.StringParameter.valueForStringParameter(consumer, this.parameterName(published));
  }
}

/**
 * Synth fails with one line when `stack` exports a value (an Fn::ImportValue in some other stack): a
 * construct referenced a shared resource across stacks without SharedValues. `allowed`: ids of outputs
 * exported on purpose (the exports of earlier builds, kept for one upgrade).
 */
export function checkNoExports(stack: Stack, allowed: readonly string[] = []): void {
  stack.node.addValidation({
    validate: () => {
      const exports = stack.node.tryFindChild('Exports');
      const ids = (exports?.node.children ?? []).map((c) => c.node.id).filter((id) => !allowed.includes(id));
      if (ids.length === 0) return [];
      return [
        `pgvault: stack ${stack.stackName} exports ${ids.length} value(s) to other stacks (${ids.slice(0, 3).join(', ')}); ` +
          'pass shared values to fleet stacks through SharedValues (infra/constructs/shared-values.ts), never CloudFormation exports',
      ];
    },
  });
}
