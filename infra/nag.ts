import { Stack } from 'aws-cdk-lib';
import type { IConstruct } from 'constructs';

/**
 * How cdk-nag names a resource in an `AwsSolutions-IAM5[Resource::...]` finding: the value as the
 * template of `scope`'s stack holds it, flattened (Ref → `<Id>`, GetAtt → `<Id.Attr>`, ImportValue →
 * its export name, Join → the parts joined). Same rules as cdk-nag's flattenCfnReference, so an
 * acknowledgement names exactly the finding it answers, in this stack or in a fleet stack that imports
 * the value. Cross-stack values must already be imports (Stack.exportValue) when this is called.
 */
export function nagResource(scope: IConstruct, value: string): string {
  return flatten(Stack.of(scope).resolve(value));
}

function flatten(node: unknown): string {
  if (node === undefined) return '';
  if (typeof node === 'string') return node.replace(/\$\{/g, '<').replace(/\}/g, '>');
  const n = node as Record<string, unknown>;
  if (Array.isArray(n['Fn::Join'])) {
    const [delimiter, items] = n['Fn::Join'] as [string, unknown[]];
    return items.map(flatten).join(delimiter);
  }
  if (n['Fn::Sub'] !== undefined) return flatten(n['Fn::Sub']);
  if (Array.isArray(n['Fn::GetAtt'])) {
    const [resource, attribute] = n['Fn::GetAtt'] as [unknown, unknown];
    return `<${flatten(resource)}.${flatten(attribute)}>`;
  }
  if (n['Fn::ImportValue'] !== undefined) return flatten(n['Fn::ImportValue']);
  if (n.Ref !== undefined) return `<${flatten(n.Ref)}>`;
  return JSON.stringify(node);
}
