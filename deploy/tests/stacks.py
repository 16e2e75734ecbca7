"""Creating deploy/cloudformation/messaging.yaml's stack in moto the way CloudFormation creates it in AWS.

Shared by the stack tests (test_messaging_stack.py), the deployed-stack lane and the drift test
(test_deployed_stack.py).
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable

from conftest import TEMPLATES, load_cfn

TEMPLATE = TEMPLATES / "messaging.yaml"

# Properties of AWS::SNS::Subscription that subscribe_like_cloudformation knows how to apply.
SUBSCRIPTION_PROPERTIES = {
    "TopicArn", "Protocol", "Endpoint", "RawMessageDelivery", "FilterPolicyScope", "FilterPolicy", "RedrivePolicy",
}  # fmt: skip


def _queue_url_of(aws: Callable[[str], Any], physical_id: str) -> str:
    # moto's physical id of a queue is a URL on sqs.<region>.amazonaws.com: look the queue up by name.
    return aws("sqs").get_queue_url(QueueName=physical_id.rstrip("/").rsplit("/", 1)[-1])["QueueUrl"]


def subscribe_like_cloudformation(aws: Callable[[str], Any], stack_name: str) -> None:
    """Does what CloudFormation does in AWS for each AWS::SNS::Subscription of the template.

    Refs and GetAtts are resolved against the resources moto built; a property this function does not
    know fails the test rather than being skipped silently.
    """
    cfn, sns = aws("cloudformation"), aws("sns")
    resources = load_cfn(TEMPLATE)["Resources"]
    # (moto lists the resources it skipped without a LogicalResourceId.)
    physical = {r["LogicalResourceId"]: r["PhysicalResourceId"]
                for r in cfn.describe_stack_resources(StackName=stack_name)["StackResources"]
                if "LogicalResourceId" in r}  # fmt: skip

    def resolve(value: Any) -> str:
        if isinstance(value, dict) and list(value) == ["Ref"]:
            return physical[value["Ref"]]
        if isinstance(value, dict) and list(value) == ["Fn::GetAtt"]:  # a queue's ARN
            logical, attribute = value["Fn::GetAtt"]
            assert resources[logical]["Type"] == "AWS::SQS::Queue" and attribute == "Arn", value
            url = _queue_url_of(aws, physical[logical])
            return aws("sqs").get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        raise AssertionError(f"subscribe_like_cloudformation cannot resolve {value!r}")

    for name, res in resources.items():
        if res["Type"] != "AWS::SNS::Subscription":
            continue
        props = res["Properties"]
        unknown = props.keys() - SUBSCRIPTION_PROPERTIES
        assert not unknown, f"{name}: teach subscribe_like_cloudformation the properties {unknown}"
        attributes = {"RawMessageDelivery": str(props.get("RawMessageDelivery", False)).lower()}
        if "FilterPolicy" in props:
            attributes["FilterPolicy"] = json.dumps(props["FilterPolicy"])
            attributes["FilterPolicyScope"] = props.get("FilterPolicyScope", "MessageAttributes")
        if "RedrivePolicy" in props:
            attributes["RedrivePolicy"] = json.dumps({k: resolve(v) for k, v in props["RedrivePolicy"].items()})
        sns.subscribe(
            TopicArn=resolve(props["TopicArn"]),
            Protocol=props["Protocol"],
            Endpoint=resolve(props["Endpoint"]),
            Attributes=attributes,
        )


def create_messaging_stack(
    aws: Callable[[str], Any], stack_name: str, parameters: dict[str, str] | None = None
) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """Creates the stack, waits for CREATE_COMPLETE and subscribes the queues when moto did not (its MOTO_GAPS
    entry). Returns the outputs and the subscriptions CloudFormation itself created (none on moto 5)."""
    cfn = aws("cloudformation")
    cfn.create_stack(
        StackName=stack_name,
        TemplateBody=TEMPLATE.read_text(encoding="utf-8"),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in (parameters or {}).items()],
    )
    deadline = time.monotonic() + 60
    while True:
        status = cfn.describe_stacks(StackName=stack_name)["Stacks"][0]["StackStatus"]
        if not status.endswith("_IN_PROGRESS"):
            break
        assert time.monotonic() < deadline, f"stack still {status} after 60 s"
        time.sleep(0.2)
    assert status == "CREATE_COMPLETE", status
    outputs = cfn.describe_stacks(StackName=stack_name)["Stacks"][0].get("Outputs", [])
    outputs = {o["OutputKey"]: o["OutputValue"] for o in outputs}
    built = aws("sns").list_subscriptions_by_topic(TopicArn=outputs["TopicArn"])["Subscriptions"]
    if not built:
        subscribe_like_cloudformation(aws, stack_name)
    return outputs, built
