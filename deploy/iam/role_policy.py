#!/usr/bin/env python3
"""The IAM policy of an identity defined in the CloudFormation templates, resolved against a deployed stack.

The templates are the one source of truth for what each binary may do. This prints the policy document a role in
`ecs.yaml` carries once CloudFormation has resolved it (`Fn::ImportValue` of the messaging stack's exports, `Fn::Sub`,
`Ref` of pseudo parameters and parameters), so the Elastic Beanstalk instance profiles get exactly the statements of
the ECS task roles (docs/deploy.md, "IAM for EB"), and the deployed-stack lane (deploy/tests/test_deployed_stack.py)
runs the binaries with exactly them.

Usage:
  aws cloudformation list-exports --output json > /tmp/exports.json
  python3 deploy/iam/role_policy.py --exports /tmp/exports.json --account 123456789012 --region eu-west-1 \
      ApiTaskRole [MoreRoles...] > /tmp/pedidos-api-policy.json

Several roles are merged into one document (their statements concatenated). Needs python3 with PyYAML.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

TEMPLATES = Path(__file__).resolve().parents[1] / "cloudformation"
ECS_TEMPLATE = TEMPLATES / "ecs.yaml"
MESSAGING_TEMPLATE = TEMPLATES / "messaging.yaml"


class CfnLoader(yaml.SafeLoader):
    """SafeLoader that keeps short-form intrinsics: `!Ref X` becomes {"Ref": "X"}, `!Sub s` {"Fn::Sub": s}."""


def _intrinsic(loader: yaml.SafeLoader, tag_suffix: str, node: yaml.Node) -> Any:
    name = "Ref" if tag_suffix == "Ref" else f"Fn::{tag_suffix}"
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if tag_suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {name: value}


CfnLoader.add_multi_constructor("!", _intrinsic)


def load_cfn(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as fh:
        return yaml.load(fh, Loader=CfnLoader)  # noqa: S506 - SafeLoader subclass


class Unresolvable(ValueError):
    """An intrinsic this resolver does not know, or a name it was not given: never guessed."""


class Resolver:
    """Resolves intrinsics the way CloudFormation would, from explicit inputs only.

    `refs` maps parameter names and resource logical ids to their values; `exports` maps export names to values;
    `conditions` maps condition names to booleans.
    """

    def __init__(
        self,
        *,
        account: str,
        region: str,
        partition: str = "aws",
        refs: dict[str, str] | None = None,
        exports: dict[str, str] | None = None,
        conditions: dict[str, bool] | None = None,
    ) -> None:
        self.refs = {"AWS::AccountId": account, "AWS::Region": region, "AWS::Partition": partition,
                     "AWS::URLSuffix": "amazonaws.com", **(refs or {})}  # fmt: skip
        self.exports = exports or {}
        self.conditions = conditions or {}

    def __call__(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self(v) for v in value]
        if not isinstance(value, dict):
            return value
        if len(value) != 1 or not next(iter(value)).startswith(("Ref", "Fn::")):
            return {k: self(v) for k, v in value.items()}
        (name, arg), = value.items()
        if name == "Ref":
            if arg not in self.refs:
                raise Unresolvable(f"Ref {arg}: not given")
            return self.refs[arg]
        if name == "Fn::Sub":
            template, variables = (arg, {}) if isinstance(arg, str) else (arg[0], {k: self(v) for k, v in arg[1].items()})
            return re.sub(r"\$\{([^}!]+)\}", lambda m: variables.get(m[1]) or self({"Ref": m[1]}), template)
        if name == "Fn::ImportValue":
            export = self(arg)
            if export not in self.exports:
                raise Unresolvable(f"Fn::ImportValue {export}: no such export")
            return self.exports[export]
        if name == "Fn::If":
            condition, when_true, when_false = arg
            if condition not in self.conditions:
                raise Unresolvable(f"Fn::If {condition}: condition not given")
            return self(when_true if self.conditions[condition] else when_false)
        raise Unresolvable(f"{name} is not supported here")


def role_statements(template: dict[str, Any], role: str) -> list[dict[str, Any]]:
    """The inline policy statements of `role` (an AWS::IAM::Role) or the document of an AWS::IAM::ManagedPolicy."""
    resource = template["Resources"].get(role)
    if resource is None:
        raise Unresolvable(f"no resource {role}")
    props = resource["Properties"]
    if resource["Type"] == "AWS::IAM::ManagedPolicy":
        return list(props["PolicyDocument"]["Statement"])
    if resource["Type"] != "AWS::IAM::Role":
        raise Unresolvable(f"{role} is a {resource['Type']}, not a role or managed policy")
    return [st for policy in props.get("Policies", []) for st in policy["PolicyDocument"]["Statement"]]


def policy_document(template: dict[str, Any], roles: list[str], resolve: Resolver) -> dict[str, Any]:
    statements = [resolve(st) for role in roles for st in role_statements(template, role)]
    return {"Version": "2012-10-17", "Statement": statements}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("roles", nargs="+", help="logical ids, e.g. ApiTaskRole WorkerProcessTaskRole")
    parser.add_argument("--template", type=Path, default=ECS_TEMPLATE)
    parser.add_argument("--exports", type=Path, required=True, help="`aws cloudformation list-exports` JSON")
    parser.add_argument("--account", required=True)
    parser.add_argument("--region", required=True)
    parser.add_argument("--partition", default="aws")
    parser.add_argument("--messaging-stack", default="ecomexpress-messaging", help="ecs.yaml's MessagingStackName")
    args = parser.parse_args()
    try:
        listed = json.loads(args.exports.read_text(encoding="utf-8"))
        exports = {e["Name"]: e["Value"] for e in listed.get("Exports", [])}
        resolve = Resolver(account=args.account, region=args.region, partition=args.partition,
                           refs={"MessagingStackName": args.messaging_stack}, exports=exports)  # fmt: skip
        document = policy_document(load_cfn(args.template), args.roles, resolve)
    except (OSError, ValueError, KeyError) as error:
        print(f"role_policy: {error}", file=sys.stderr)
        return 1
    json.dump(document, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
