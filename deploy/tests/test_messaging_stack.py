"""deploy/cloudformation/messaging.yaml deployed to a private moto server, then read back.

moto answers CREATE_COMPLETE even for resource types it skips, so nothing here trusts the stack status
alone: every assertion reads what actually exists (queues and their attributes, the topic, its
subscriptions and their filter policies, the DynamoDB tables), a published message must come out of
the queues its filter policy selects and no other. The resource types and properties moto does not
build are listed in MOTO_GAPS, probed in test_moto_gaps_are_documented, checked statically from the
template instead, and documented in docs/deploy.md ("What moto does not exercise").

AWS::SNS::Subscription is one of them: the `deployed` fixture subscribes the queues itself with the
template's exact properties (what CloudFormation does in AWS), so the filter policies and redrive policies
written in the template are what the subscriptions below carry.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

import pytest
from botocore.exceptions import ClientError

from conftest import ROOT, TEMPLATES, load_cfn
from stacks import create_messaging_stack

STACK_NAME = "ecomexpress-messaging"
TEMPLATE = TEMPLATES / "messaging.yaml"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"

# What `pedidos-api topology` creates locally, documented in docs/deploy.md ("Topology constants").
TOPIC = "ecomexpress-sns-orders-events"
QUEUES = ("ecomexpress-sqs-orders-process", "ecomexpress-sqs-logistics")
VISIBILITY_TIMEOUT = 30
RETENTION = 345600  # 4 days
WAIT_TIME = 20
MAX_RECEIVE_COUNT = 5
DLQ_RETENTION = 1209600  # 14 days

# DynamoDB (docs/data-model.md).
ORDERS_TABLE = "ecomexpress-orders"
IDEMPOTENCY_TABLE = "ecomexpress-idempotency"
CUSTOMER_INDEX = "porCliente"
RECENT_INDEX = "recientes"
TTL_ATTRIBUTE = "expiresAt"

# SNS filter policies on the `eventType` message attribute, per queue.
FILTER_POLICIES = {
    "ecomexpress-sqs-orders-process": {"eventType": ["PedidoCreado", "PedidoActualizado"]},
    "ecomexpress-sqs-logistics": {"eventType": ["PedidoCreado"]},
}

# Resource types (and properties) in messaging.yaml that moto 5.2 does not build although the stack
# reports CREATE_COMPLETE. Only real AWS (or LocalStack, partly) exercises them.
MOTO_GAPS = {
    "AWS::SQS::QueuePolicy": "queue policies (SNS-only SendMessage, TLS-only access) are not attached",
    "AWS::SNS::TopicPolicy": "the topic keeps moto's default policy",
    "AWS::CloudWatch::Alarm": "no alarm is created",
    "RedriveAllowPolicy": "the DLQs' RedriveAllowPolicy property is dropped",
    "AWS::SNS::Subscription": "no subscription is created; the `deployed` fixture subscribes with the template's properties",
    "SSESpecification": "the tables' SSEEnabled is dropped (moto reads the API's `Enabled` key): no SSEDescription",
    "TimeToLiveSpecification": "TTL stays DISABLED on the idempotency table",
    "PointInTimeRecoverySpecification": "point-in-time recovery stays DISABLED on both tables",
    "KeyPolicy": "the topic key's KeyPolicy is kept as an object, not JSON text: DescribeKey on that key answers 500",
    "Subscription RedrivePolicy": "stored, never used: a failed delivery fails the Publish call, nothing reaches the DLQ",
}
BUILT_BY_MOTO = {
    "AWS::SQS::Queue", "AWS::SNS::Topic", "AWS::DynamoDB::Table", "AWS::KMS::Key", "AWS::KMS::Alias", "AWS::IAM::ManagedPolicy",
}  # fmt: skip
# Every action SNS accepts in a topic policy (SNS developer guide, "Valid Amazon SNS policy actions"): the
# TLS-only Deny must cover all of them.
TOPIC_POLICY_ACTIONS = {
    "sns:AddPermission", "sns:DeleteTopic", "sns:GetDataProtectionPolicy", "sns:GetTopicAttributes",
    "sns:ListSubscriptionsByTopic", "sns:ListTagsForResource", "sns:Publish", "sns:PutDataProtectionPolicy",
    "sns:RemovePermission", "sns:SetTopicAttributes", "sns:Subscribe",
}  # fmt: skip


def dlq(name: str) -> str:
    return f"{name}-dlq"


def subscription_dlq(name: str) -> str:
    """Where SNS puts what it could not deliver to the queue `name` (the subscription's RedrivePolicy)."""
    return f"{name}-subscription-dlq"


@dataclass
class Deployed:
    outputs: dict[str, str]
    # What CloudFormation itself subscribed to the topic, before the fixture stood in for it.
    subscriptions_from_cloudformation: list[dict[str, Any]]


@pytest.fixture(scope="module")
def deployed(aws: Callable[[str], Any]) -> Deployed:
    """Creates the stack from messaging.yaml with its default parameters, then stands in for the
    AWS::SNS::Subscription resources moto skips."""
    outputs, built = create_messaging_stack(aws, STACK_NAME)
    return Deployed(outputs, built)


@pytest.fixture(scope="module")
def stack(deployed: Deployed) -> dict[str, str]:
    """The stack's outputs."""
    return deployed.outputs


def queue_attributes(aws: Callable[[str], Any], name: str) -> dict[str, str]:
    sqs = aws("sqs")
    url = sqs.get_queue_url(QueueName=name)["QueueUrl"]  # raises if the queue does not exist
    return sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]


def receive_matching(aws: Callable[[str], Any], queue: str, marker: str, timeout: float = 15) -> list[dict]:
    """Long-polls `queue` until a message whose body contains `marker` arrives; deletes what it returns."""
    sqs = aws("sqs")
    url = sqs.get_queue_url(QueueName=queue)["QueueUrl"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1, MessageAttributeNames=["All"]
        ).get("Messages", [])
        mine = [m for m in got if marker in m["Body"]]
        for m in mine:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
        if mine:
            return mine
    return []


# ---------------------------------------------------------------- what the stack actually built
def test_outputs_and_exports(stack: dict[str, str], aws: Callable[[str], Any]) -> None:
    expected = {
        "TopicArn", "TopicName", "TopicKeyArn",
        "ProcessSubscriptionDeadLetterQueueUrl", "ProcessSubscriptionDeadLetterQueueArn",
        "LogisticsSubscriptionDeadLetterQueueUrl", "LogisticsSubscriptionDeadLetterQueueArn",
        "ProcessQueueUrl", "ProcessQueueArn", "ProcessQueueName",
        "ProcessDeadLetterQueueUrl", "ProcessDeadLetterQueueArn",
        "LogisticsQueueUrl", "LogisticsQueueArn", "LogisticsQueueName",
        "LogisticsDeadLetterQueueUrl", "LogisticsDeadLetterQueueArn",
        "OrdersTableName", "OrdersTableArn", "IdempotencyTableName", "IdempotencyTableArn",
    }  # fmt: skip
    assert expected <= stack.keys()
    assert stack["TopicName"] == TOPIC
    assert (stack["OrdersTableName"], stack["IdempotencyTableName"]) == (ORDERS_TABLE, IDEMPOTENCY_TABLE)
    assert stack["OrdersTableArn"].endswith(f":table/{ORDERS_TABLE}")
    assert stack["IdempotencyTableArn"].endswith(f":table/{IDEMPOTENCY_TABLE}")
    assert stack["TopicArn"].endswith(f":{TOPIC}")
    assert (stack["ProcessQueueName"], stack["LogisticsQueueName"]) == QUEUES
    exports = {e["Name"] for e in aws("cloudformation").list_exports()["Exports"]}
    # ecs.yaml imports these by name.
    assert {f"{STACK_NAME}-{key}" for key in expected} <= exports


@pytest.mark.parametrize("queue", QUEUES)
def test_main_queue_settings(stack: dict[str, str], aws: Callable[[str], Any], queue: str) -> None:
    attrs = queue_attributes(aws, queue)
    assert int(attrs["VisibilityTimeout"]) == VISIBILITY_TIMEOUT
    assert int(attrs["MessageRetentionPeriod"]) == RETENTION
    assert int(attrs["ReceiveMessageWaitTimeSeconds"]) == WAIT_TIME
    assert int(attrs["DelaySeconds"]) == 0
    assert attrs["SqsManagedSseEnabled"] == "true"
    redrive = json.loads(attrs["RedrivePolicy"])
    assert int(redrive["maxReceiveCount"]) == MAX_RECEIVE_COUNT
    assert redrive["deadLetterTargetArn"] == queue_attributes(aws, dlq(queue))["QueueArn"]


@pytest.mark.parametrize("queue", QUEUES)
def test_dead_letter_queue_settings(stack: dict[str, str], aws: Callable[[str], Any], queue: str) -> None:
    attrs = queue_attributes(aws, dlq(queue))
    assert int(attrs["MessageRetentionPeriod"]) == DLQ_RETENTION
    assert attrs["SqsManagedSseEnabled"] == "true"
    assert "RedrivePolicy" not in attrs  # a DLQ has no DLQ of its own


@pytest.mark.parametrize("queue", QUEUES)
def test_subscription_dead_letter_queue_settings(stack: dict[str, str], aws: Callable[[str], Any], queue: str) -> None:
    """Each subscription's DLQ exists, keeps messages 14 days, is encrypted with SSE-SQS (which SNS can write to
    without any key policy) and is nobody's SQS redrive target."""
    attrs = queue_attributes(aws, subscription_dlq(queue))
    kind = "Process" if "orders-process" in queue else "Logistics"
    assert attrs["QueueArn"] == stack[f"{kind}SubscriptionDeadLetterQueueArn"]
    assert int(attrs["MessageRetentionPeriod"]) == DLQ_RETENTION
    assert attrs["SqsManagedSseEnabled"] == "true"
    assert "RedrivePolicy" not in attrs
    # The main queue's own redrive target stays the worker DLQ: the two DLQs hold different failures.
    main_redrive = json.loads(queue_attributes(aws, queue)["RedrivePolicy"])
    assert main_redrive["deadLetterTargetArn"] != attrs["QueueArn"]


def test_topic_subscriptions_and_filter_policies(stack: dict[str, str], aws: Callable[[str], Any]) -> None:
    sns = aws("sns")
    topic_arn = stack["TopicArn"]
    assert topic_arn in {t["TopicArn"] for t in sns.list_topics()["Topics"]}
    subs = sns.list_subscriptions_by_topic(TopicArn=topic_arn)["Subscriptions"]
    queue_of = {queue_attributes(aws, q)["QueueArn"]: q for q in QUEUES}
    assert sorted((s["Protocol"], s["Endpoint"]) for s in subs) == sorted(("sqs", arn) for arn in queue_of)
    for sub in subs:
        attrs = sns.get_subscription_attributes(SubscriptionArn=sub["SubscriptionArn"])["Attributes"]
        # The workers parse the SNS envelope, so raw delivery must stay off.
        assert attrs.get("RawMessageDelivery", "false") == "false"
        queue = queue_of[sub["Endpoint"]]
        assert json.loads(attrs["FilterPolicy"]) == FILTER_POLICIES[queue], queue
        assert attrs["FilterPolicyScope"] == "MessageAttributes", queue
        # What SNS cannot deliver to the queue goes to that subscription's own DLQ, not to another queue's.
        redrive = json.loads(attrs["RedrivePolicy"])
        assert redrive == {"deadLetterTargetArn": queue_attributes(aws, subscription_dlq(queue))["QueueArn"]}, queue


def test_topic_is_encrypted_with_its_own_key(stack: dict[str, str], aws: Callable[[str], Any]) -> None:
    """SSE-KMS on the topic with the stack's customer managed key (rotation on, alias by topic name); moto stores
    the setting but encrypts nothing (docs/deploy.md)."""
    kms = aws("kms")
    attrs = aws("sns").get_topic_attributes(TopicArn=stack["TopicArn"])["Attributes"]
    assert attrs["KmsMasterKeyId"] == stack["TopicKeyArn"]
    assert stack["TopicKeyArn"] in {k["KeyArn"] for k in kms.list_keys()["Keys"]}
    assert kms.get_key_rotation_status(KeyId=stack["TopicKeyArn"])["KeyRotationEnabled"] is True
    aliases = {a["AliasName"]: a.get("TargetKeyId") for a in kms.list_aliases()["Aliases"]}
    assert aliases[f"alias/{TOPIC}"] == stack["TopicKeyArn"].rsplit("/", 1)[-1]
    # Not the AWS managed alias/aws/sns (see the template's comment and docs/deploy.md, "Encryption").
    assert "alias/aws/" not in attrs["KmsMasterKeyId"]
    policy = kms.get_key_policy(KeyId=stack["TopicKeyArn"], PolicyName="default")["Policy"]
    policy = json.loads(policy) if isinstance(policy, str) else policy  # moto returns the object (MOTO_GAPS)
    assert_topic_key_policy(policy["Statement"], account=stack["TopicArn"].split(":")[4], topic_arn=stack["TopicArn"])


def assert_topic_key_policy(statements: list[dict[str, Any]], account: Any, topic_arn: Any) -> None:
    """The account administers the key (so IAM policies can grant its use) and SNS may use it for this topic only."""
    by_sid = {s["Sid"]: s for s in statements}
    assert set(by_sid) == {"AccountAdministersKeyAndDelegatesToIam", "AllowSnsForTheOrdersTopic"}
    sns = by_sid["AllowSnsForTheOrdersTopic"]
    assert sns["Effect"] == "Allow" and sns["Principal"] == {"Service": "sns.amazonaws.com"}
    assert sorted(sns["Action"]) == ["kms:Decrypt", "kms:GenerateDataKey*"]
    assert sns["Condition"]["StringEquals"] == {"aws:SourceAccount": account}
    assert sns["Condition"]["ArnLike"] == {"aws:SourceArn": topic_arn}
    admin = by_sid["AccountAdministersKeyAndDelegatesToIam"]
    principal = admin["Principal"]["AWS"]  # the account itself (a string on moto, a Fn::Sub in the template)
    assert (principal.get("Fn::Sub") if isinstance(principal, dict) else principal).endswith(":root")
    # No statement opens the key to everyone.
    assert all(s["Principal"] not in ("*", {"AWS": "*"}) for s in statements)


def test_publish_fans_out_to_both_queues(stack: dict[str, str], aws: Callable[[str], Any]) -> None:
    marker = f"pedido-{uuid.uuid4()}"
    pedido = {"type": "PedidoCreado", "version": 1, "pedidoId": marker, "total": "59.98"}
    aws("sns").publish(
        TopicArn=stack["TopicArn"],
        Subject="Nuevo Pedido",
        Message=json.dumps(pedido),
        MessageAttributes={"eventType": {"DataType": "String", "StringValue": "PedidoCreado"}},
    )
    for queue in QUEUES:
        messages = receive_matching(aws, queue, marker)
        assert len(messages) == 1, f"{queue}: expected the published pedido once, got {messages}"
        envelope = json.loads(messages[0]["Body"])
        assert envelope["Type"] == "Notification"
        assert envelope["TopicArn"] == stack["TopicArn"]
        assert envelope["Subject"] == "Nuevo Pedido"
        assert json.loads(envelope["Message"]) == pedido
        assert envelope["MessageAttributes"]["eventType"]["Value"] == "PedidoCreado"


def publish(aws: Callable[[str], Any], topic_arn: str, event_type: str | None, marker: str) -> None:
    attributes = {} if event_type is None else {"eventType": {"DataType": "String", "StringValue": event_type}}
    body = {"type": event_type or "PedidoCreado", "version": 2 if event_type == "PedidoActualizado" else 1,
            "pedidoId": marker, "total": "10.00"}  # fmt: skip
    aws("sns").publish(TopicArn=topic_arn, Message=json.dumps(body), MessageAttributes=attributes)


def test_filter_policies_route_by_event_type(stack: dict[str, str], aws: Callable[[str], Any]) -> None:
    """PedidoActualizado reaches worker-process only; PedidoCreado (above) reaches both."""
    process, logistics = QUEUES
    marker = f"actualizado-{uuid.uuid4()}"
    publish(aws, stack["TopicArn"], "PedidoActualizado", marker)
    assert len(receive_matching(aws, process, marker)) == 1, "PedidoActualizado must reach the process queue"
    # moto delivers during Publish, so a short poll is enough to prove the absence.
    assert receive_matching(aws, logistics, marker, timeout=3) == [], "PedidoActualizado must not reach logistics"


@pytest.mark.parametrize("event_type", [None, "PedidoCancelado"])
def test_messages_outside_the_filter_reach_no_queue(
    stack: dict[str, str], aws: Callable[[str], Any], event_type: str | None
) -> None:
    """A publish without the eventType attribute (the seed's legacy payloads) or with an unknown
    event type is dropped by both subscriptions: producers must set the attribute."""
    marker = f"filtered-{event_type}-{uuid.uuid4()}"
    publish(aws, stack["TopicArn"], event_type, marker)
    for queue in QUEUES:
        assert receive_matching(aws, queue, marker, timeout=2) == [], f"{queue} received a filtered message"


# ---------------------------------------------------------------- DynamoDB tables
def describe_table(aws: Callable[[str], Any], name: str) -> dict[str, Any]:
    return aws("dynamodb").describe_table(TableName=name)["Table"]


def test_orders_table(stack: dict[str, str], aws: Callable[[str], Any]) -> None:
    table = describe_table(aws, ORDERS_TABLE)
    assert table["TableArn"] == stack["OrdersTableArn"]
    assert table["TableStatus"] == "ACTIVE"
    assert table["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"}]  # no sort key
    assert sorted((a["AttributeName"], a["AttributeType"]) for a in table["AttributeDefinitions"]) == [
        ("actualizadoOrden", "S"), ("clienteId", "S"), ("dia", "S"), ("fechaOrden", "S"), ("pk", "S"),
    ]  # fmt: skip
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    assert table["DeletionProtectionEnabled"] is True
    indexes = {i["IndexName"]: i for i in table["GlobalSecondaryIndexes"]}
    assert sorted(indexes) == [CUSTOMER_INDEX, RECENT_INDEX]
    assert indexes[CUSTOMER_INDEX]["KeySchema"] == [
        {"AttributeName": "clienteId", "KeyType": "HASH"},
        {"AttributeName": "fechaOrden", "KeyType": "RANGE"},
    ]
    assert indexes[RECENT_INDEX]["KeySchema"] == [
        {"AttributeName": "dia", "KeyType": "HASH"},
        {"AttributeName": "actualizadoOrden", "KeyType": "RANGE"},
    ]
    assert all(i["Projection"]["ProjectionType"] == "ALL" for i in indexes.values())
    assert not table.get("LocalSecondaryIndexes")


def test_idempotency_table(stack: dict[str, str], aws: Callable[[str], Any]) -> None:
    table = describe_table(aws, IDEMPOTENCY_TABLE)
    assert table["TableArn"] == stack["IdempotencyTableArn"]
    assert table["TableStatus"] == "ACTIVE"
    assert table["KeySchema"] == [{"AttributeName": "id", "KeyType": "HASH"}]
    assert table["AttributeDefinitions"] == [{"AttributeName": "id", "AttributeType": "S"}]
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    assert table["DeletionProtectionEnabled"] is True
    assert not table.get("GlobalSecondaryIndexes") and not table.get("LocalSecondaryIndexes")


def test_customer_index_is_sparse(stack: dict[str, str], aws: Callable[[str], Any]) -> None:
    """The key design works as docs/data-model.md says: one order and its shipment are two items, and
    only the order (it has clienteId) shows up in porCliente, newest first."""
    ddb = aws("dynamodb")
    cliente, pedido = str(uuid.uuid4()), str(uuid.uuid4())
    older = str(uuid.uuid4())
    items = [
        {"pk": {"S": f"PEDIDO#{pedido}"}, "tipo": {"S": "PEDIDO"}, "clienteId": {"S": cliente},
         "fechaOrden": {"S": f"2026-11-21T13:30:00.000Z#{pedido}"}, "version": {"N": "1"}},
        {"pk": {"S": f"PEDIDO#{older}"}, "tipo": {"S": "PEDIDO"}, "clienteId": {"S": cliente},
         "fechaOrden": {"S": f"2026-11-20T09:00:00.000Z#{older}"}, "version": {"N": "1"}},
        {"pk": {"S": f"ENVIO#{pedido}"}, "tipo": {"S": "ENVIO"}, "pedidoId": {"S": pedido}},
    ]  # fmt: skip
    for item in items:
        ddb.put_item(TableName=ORDERS_TABLE, Item=item, ConditionExpression="attribute_not_exists(pk)")
    got = ddb.query(
        TableName=ORDERS_TABLE,
        IndexName=CUSTOMER_INDEX,
        KeyConditionExpression="clienteId = :c",
        ExpressionAttributeValues={":c": {"S": cliente}},
        ScanIndexForward=False,
    )["Items"]
    assert [i["pk"]["S"] for i in got] == [f"PEDIDO#{pedido}", f"PEDIDO#{older}"]
    both = ddb.batch_get_item(
        RequestItems={ORDERS_TABLE: {"Keys": [{"pk": {"S": f"PEDIDO#{pedido}"}}, {"pk": {"S": f"ENVIO#{pedido}"}}],
                                     "ConsistentRead": True}}
    )["Responses"][ORDERS_TABLE]  # fmt: skip
    assert sorted(i["tipo"]["S"] for i in both) == ["ENVIO", "PEDIDO"]


def test_table_protection_in_template() -> None:
    """Static check of what moto drops (SSE, PITR, TTL: see MOTO_GAPS) and of the delete/replace policies."""
    resources = load_cfn(TEMPLATE)["Resources"]
    tables = {name: res for name, res in resources.items() if res["Type"] == "AWS::DynamoDB::Table"}
    assert set(tables) == {"OrdersTable", "IdempotencyTable"}
    for name, res in tables.items():
        props = res["Properties"]
        assert res["DeletionPolicy"] == "Retain" and res["UpdateReplacePolicy"] == "Retain", name
        assert props["DeletionProtectionEnabled"] is True, name
        assert props["BillingMode"] == "PAY_PER_REQUEST", name
        assert props["SSESpecification"] == {"SSEEnabled": True}, name
        assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}, name
    assert tables["IdempotencyTable"]["Properties"]["TimeToLiveSpecification"] == {
        "AttributeName": TTL_ATTRIBUTE, "Enabled": True,
    }  # fmt: skip
    assert "TimeToLiveSpecification" not in tables["OrdersTable"]["Properties"]


def test_redrive_moves_poison_message_to_dlq(stack: dict[str, str], aws: Callable[[str], Any]) -> None:
    """After maxReceiveCount receives without a delete, the message lands in the queue's own DLQ."""
    sqs = aws("sqs")
    queue = QUEUES[1]
    url = sqs.get_queue_url(QueueName=queue)["QueueUrl"]
    marker = f"poison-{uuid.uuid4()}"
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"poison": marker}))
    receives = 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1, VisibilityTimeout=0)
        mine = [m for m in got.get("Messages", []) if marker in m["Body"]]
        if not mine and receives >= MAX_RECEIVE_COUNT:
            break  # moved away on this receive
        receives += len(mine)
    assert receives == MAX_RECEIVE_COUNT, f"received {receives} times before the redrive"
    assert receive_matching(aws, dlq(queue), marker), "the poison message is not in the DLQ"


# ---------------------------------------------------------------- what moto does not build
def test_moto_gaps_are_documented(deployed: Deployed, aws: Callable[[str], Any]) -> None:
    """Every resource type is either verified above or a listed gap, and each gap is still a gap."""
    template = load_cfn(TEMPLATE)
    types = {r["Type"] for r in template["Resources"].values()}
    unclassified = types - BUILT_BY_MOTO - MOTO_GAPS.keys()
    assert not unclassified, f"classify these new resource types in MOTO_GAPS or BUILT_BY_MOTO: {unclassified}"

    doc = DEPLOY_DOC.read_text(encoding="utf-8")
    for gap in MOTO_GAPS:
        assert gap in doc, f"docs/deploy.md must list the moto gap {gap}"

    # If moto starts building one of these, move it out of MOTO_GAPS and assert it properly above.
    stack = deployed.outputs
    ddb = aws("dynamodb")
    tables = (ORDERS_TABLE, IDEMPOTENCY_TABLE)

    def pitr_status(table: str) -> str:
        backups = ddb.describe_continuous_backups(TableName=table)["ContinuousBackupsDescription"]
        return backups["PointInTimeRecoveryDescription"]["PointInTimeRecoveryStatus"]

    still_missing = {
        "AWS::SNS::Subscription": deployed.subscriptions_from_cloudformation == [],
        "SSESpecification": all("SSEDescription" not in describe_table(aws, t) for t in tables),
        "TimeToLiveSpecification": ddb.describe_time_to_live(TableName=IDEMPOTENCY_TABLE)["TimeToLiveDescription"][
            "TimeToLiveStatus"
        ]
        == "DISABLED",
        "PointInTimeRecoverySpecification": all(pitr_status(t) == "DISABLED" for t in tables),
        "AWS::SQS::QueuePolicy": all("Policy" not in queue_attributes(aws, q) for q in QUEUES),
        "AWS::SNS::TopicPolicy": "DenyInsecureTransport"
        not in aws("sns").get_topic_attributes(TopicArn=stack["TopicArn"])["Attributes"].get("Policy", ""),
        "AWS::CloudWatch::Alarm": not aws("cloudwatch").describe_alarms()["MetricAlarms"],
        "RedriveAllowPolicy": all("RedriveAllowPolicy" not in queue_attributes(aws, d)
                                  for q in QUEUES for d in (dlq(q), subscription_dlq(q))),
        "KeyPolicy": _describe_key_fails(aws, stack["TopicKeyArn"]),
        "Subscription RedrivePolicy": _failed_delivery_is_not_redriven(aws),
    }
    now_supported = [gap for gap, missing in still_missing.items() if not missing]
    assert not now_supported, f"moto now builds {now_supported}: update MOTO_GAPS and docs/deploy.md"


def _describe_key_fails(aws: Callable[[str], Any], key_arn: str) -> bool:
    try:
        aws("kms").describe_key(KeyId=key_arn)
    except ClientError:
        return True
    return False


def _failed_delivery_is_not_redriven(aws: Callable[[str], Any]) -> bool:
    """On a scratch topic: subscribe a queue with a redrive policy, delete the queue, publish. Real SNS accepts the
    publish and moves the message to the DLQ; moto fails the Publish call and the DLQ stays empty."""
    sns, sqs = aws("sns"), aws("sqs")
    suffix = uuid.uuid4().hex[:8]
    target = sqs.create_queue(QueueName=f"gap-probe-{suffix}")["QueueUrl"]
    dead = sqs.create_queue(QueueName=f"gap-probe-{suffix}-dlq")["QueueUrl"]
    arn = {u: sqs.get_queue_attributes(QueueUrl=u, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
           for u in (target, dead)}  # fmt: skip
    topic = sns.create_topic(Name=f"gap-probe-{suffix}")["TopicArn"]
    try:
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn[target],
                      Attributes={"RedrivePolicy": json.dumps({"deadLetterTargetArn": arn[dead]})})  # fmt: skip
        sqs.delete_queue(QueueUrl=target)
        try:
            sns.publish(TopicArn=topic, Message="undeliverable")
        except ClientError:
            pass
        return not sqs.receive_message(QueueUrl=dead, WaitTimeSeconds=1).get("Messages")
    finally:
        sns.delete_topic(TopicArn=topic)
        sqs.delete_queue(QueueUrl=dead)


# ---------------------------------------------------------------- template == local topology
def test_template_matches_topology_constants() -> None:
    """messaging.yaml and `pedidos-api topology` must create the same queues (constants in docs/deploy.md)."""
    resources = load_cfn(TEMPLATE)["Resources"]
    params = load_cfn(TEMPLATE)["Parameters"]
    prefix = params["NamePrefix"]["Default"]

    def name_of(props: dict[str, Any], key: str) -> str:
        return props[key]["Fn::Sub"].replace("${NamePrefix}", prefix)

    queues = {name_of(r["Properties"], "QueueName"): r["Properties"]
              for r in resources.values() if r["Type"] == "AWS::SQS::Queue"}  # fmt: skip
    # The subscription DLQs are the AWS side's only: the emulators never fail a delivery (docs/deploy.md).
    assert set(queues) == set(QUEUES) | {dlq(q) for q in QUEUES} | {subscription_dlq(q) for q in QUEUES}
    for q in QUEUES:
        props = queues[q]
        assert props["VisibilityTimeout"] == VISIBILITY_TIMEOUT
        assert props["MessageRetentionPeriod"] == RETENTION
        assert props["ReceiveMessageWaitTimeSeconds"] == WAIT_TIME
        assert props["RedrivePolicy"]["maxReceiveCount"] == MAX_RECEIVE_COUNT
        assert props["SqsManagedSseEnabled"] is True
        assert queues[dlq(q)]["MessageRetentionPeriod"] == DLQ_RETENTION
        assert queues[dlq(q)]["SqsManagedSseEnabled"] is True
    topics = [r["Properties"] for r in resources.values() if r["Type"] == "AWS::SNS::Topic"]
    assert [name_of(t, "TopicName") for t in topics] == [TOPIC]
    # Subscriptions: one per main queue, with that queue's filter policy; no inline ones on the topic.
    assert all("Subscription" not in t for t in topics)
    subscriptions = {}
    for r in resources.values():
        if r["Type"] == "AWS::SNS::Subscription":
            props = r["Properties"]
            queue = name_of(resources[props["Endpoint"]["Fn::GetAtt"][0]]["Properties"], "QueueName")
            assert props["TopicArn"] == {"Ref": "OrdersTopic"} and props["Protocol"] == "sqs"
            assert props["RawMessageDelivery"] is False and props["FilterPolicyScope"] == "MessageAttributes"
            subscriptions[queue] = props["FilterPolicy"]
            dead_letter = resources[props["RedrivePolicy"]["deadLetterTargetArn"]["Fn::GetAtt"][0]]["Properties"]
            assert name_of(dead_letter, "QueueName") == subscription_dlq(queue)
            assert dead_letter["MessageRetentionPeriod"] == DLQ_RETENTION and dead_letter["SqsManagedSseEnabled"] is True
            assert dead_letter["RedriveAllowPolicy"] == {"redrivePermission": "denyAll"}
    assert subscriptions == FILTER_POLICIES

    tables = {name_of(r["Properties"], "TableName"): r["Properties"]
              for r in resources.values() if r["Type"] == "AWS::DynamoDB::Table"}  # fmt: skip
    assert set(tables) == {ORDERS_TABLE, IDEMPOTENCY_TABLE}
    assert [i["IndexName"] for i in tables[ORDERS_TABLE]["GlobalSecondaryIndexes"]] == [CUSTOMER_INDEX, RECENT_INDEX]
    assert tables[IDEMPOTENCY_TABLE]["TimeToLiveSpecification"]["AttributeName"] == TTL_ATTRIBUTE

    # The same values are what docs/deploy.md promises `pedidos-api topology` creates.
    doc = DEPLOY_DOC.read_text(encoding="utf-8")
    section = doc.split("## Topology constants", 1)[1].split("\n## ", 1)[0]
    for value in (TOPIC, *QUEUES, "-dlq", VISIBILITY_TIMEOUT, RETENTION, WAIT_TIME, MAX_RECEIVE_COUNT, DLQ_RETENTION,
                  ORDERS_TABLE, IDEMPOTENCY_TABLE, CUSTOMER_INDEX, RECENT_INDEX, TTL_ATTRIBUTE,
                  *(json.dumps(policy, separators=(",", ":")) for policy in FILTER_POLICIES.values())):  # fmt: skip
        assert f"`{value}`" in section, f"docs/deploy.md 'Topology constants' lacks `{value}`"


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


TLS_ONLY = {"Bool": {"aws:SecureTransport": "false"}}


def test_queue_policy_allows_only_the_topic() -> None:
    """Static check of the policies moto cannot apply (see MOTO_GAPS)."""
    resources = load_cfn(TEMPLATE)["Resources"]
    policies = [r["Properties"]["PolicyDocument"]["Statement"] for r in resources.values()
                if r["Type"] in ("AWS::SQS::QueuePolicy", "AWS::SNS::TopicPolicy")]  # fmt: skip
    assert len(policies) == 4
    for statements in policies:
        assert any(s["Effect"] == "Deny" and s["Condition"] == TLS_ONLY for s in statements)
        for s in statements:
            if s["Effect"] == "Allow":
                assert s["Principal"] != "*" and s["Principal"] != {"AWS": "*"}
    # SNS may send to the main queues (deliveries) and to the subscription DLQs (failed deliveries), only from the
    # orders topic; nothing may send to the workers' DLQs but the workers (IAM) and SQS's own redrive.
    for policy, queues in (("MainQueuesPolicy", ["ProcessQueue", "LogisticsQueue"]),
                           ("SubscriptionDeadLetterQueuesPolicy",
                            ["ProcessSubscriptionDeadLetterQueue", "LogisticsSubscriptionDeadLetterQueue"])):  # fmt: skip
        statements = resources[policy]["Properties"]["PolicyDocument"]["Statement"]
        allow = [s for s in statements if s["Effect"] == "Allow"]
        assert allow == [
            {
                "Sid": "AllowOrdersTopicOnly",
                "Effect": "Allow",
                "Principal": {"Service": "sns.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": [{"Fn::GetAtt": [q, "Arn"]} for q in queues],
                "Condition": {"ArnEquals": {"aws:SourceArn": {"Ref": "OrdersTopic"}}},
            }
        ], policy
    dlqs = resources["DeadLetterQueuesPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert all(s["Effect"] == "Deny" for s in dlqs)


def test_tls_only_everywhere() -> None:
    """Every queue is in a queue policy whose Deny covers sqs:* on it without TLS, and the topic policy's Deny covers
    every action a topic policy can name (not only sns:Publish)."""
    resources = load_cfn(TEMPLATE)["Resources"]
    queues = {name for name, r in resources.items() if r["Type"] == "AWS::SQS::Queue"}
    denied: set[str] = set()
    for r in resources.values():
        if r["Type"] != "AWS::SQS::QueuePolicy":
            continue
        covered = {q["Ref"] for q in r["Properties"]["Queues"]}
        for s in r["Properties"]["PolicyDocument"]["Statement"]:
            if s["Effect"] == "Deny" and s["Condition"] == TLS_ONLY and s["Principal"] == "*":
                assert _as_list(s["Action"]) == ["sqs:*"]
                arns = {res["Fn::GetAtt"][0] for res in _as_list(s["Resource"])}
                assert arns == covered, "the Deny must name every queue the policy is attached to"
                denied |= covered
    assert denied == queues, f"queues without a TLS-only Deny: {queues - denied}"

    (topic_policy,) = [r["Properties"] for r in resources.values() if r["Type"] == "AWS::SNS::TopicPolicy"]
    assert topic_policy["Topics"] == [{"Ref": "OrdersTopic"}]
    (deny,) = [s for s in topic_policy["PolicyDocument"]["Statement"] if s["Effect"] == "Deny"]
    assert deny["Principal"] == "*" and deny["Condition"] == TLS_ONLY and deny["Resource"] == {"Ref": "OrdersTopic"}
    actions = set(_as_list(deny["Action"]))
    assert actions == TOPIC_POLICY_ACTIONS or actions == {"sns:*"}, actions ^ TOPIC_POLICY_ACTIONS
    # The Allow never grants an action the Deny does not cover.
    for s in topic_policy["PolicyDocument"]["Statement"]:
        if s["Effect"] == "Allow":
            assert set(_as_list(s["Action"])) <= TOPIC_POLICY_ACTIONS


def test_topic_encryption_in_template() -> None:
    """Static check of the key (moto keeps its policy but enforces nothing, see MOTO_GAPS)."""
    resources = load_cfn(TEMPLATE)["Resources"]
    topic = resources["OrdersTopic"]["Properties"]
    assert topic["KmsMasterKeyId"] == {"Fn::GetAtt": ["OrdersTopicKey", "Arn"]}
    key = resources["OrdersTopicKey"]
    assert key["Type"] == "AWS::KMS::Key"
    assert key["Properties"]["EnableKeyRotation"] is True
    assert key["Properties"]["KeySpec"] == "SYMMETRIC_DEFAULT"  # SNS supports symmetric keys only
    assert_topic_key_policy(
        key["Properties"]["KeyPolicy"]["Statement"],
        account={"Ref": "AWS::AccountId"},
        topic_arn={"Fn::Sub": "arn:${AWS::Partition}:sns:${AWS::Region}:${AWS::AccountId}:${NamePrefix}-sns-orders-events"},
    )
    # The key policy's topic ARN is the topic's: built from the same name.
    assert topic["TopicName"] == {"Fn::Sub": "${NamePrefix}-sns-orders-events"}
    assert resources["OrdersTopicKeyAlias"]["Properties"] == {
        "AliasName": {"Fn::Sub": "alias/${NamePrefix}-sns-orders-events"}, "TargetKeyId": {"Ref": "OrdersTopicKey"},
    }  # fmt: skip
    # Publishers find the key through the stack's exports (ecs.yaml imports it for the API's task role).
    outputs = load_cfn(TEMPLATE)["Outputs"]
    assert outputs["TopicKeyArn"]["Value"] == {"Fn::GetAtt": ["OrdersTopicKey", "Arn"]}


def _alarm_actions_follow_the_pattern(props: dict[str, Any]) -> bool:
    pattern = {"Fn::If": ["HasAlarmTopic", [{"Ref": "AlarmTopicArn"}], {"Ref": "AWS::NoValue"}]}
    return props["AlarmActions"] == pattern and props["OKActions"] == pattern


def test_every_dead_letter_queue_and_failed_delivery_alarms() -> None:
    """Static check of the alarms moto skips: each DLQ (workers' and subscriptions') alarms on any visible message,
    the topic on any failed delivery and on any failed redrive, all wired to AlarmTopicArn like the others."""
    resources = load_cfn(TEMPLATE)["Resources"]
    alarms = {name: r["Properties"] for name, r in resources.items() if r["Type"] == "AWS::CloudWatch::Alarm"}
    for name, props in alarms.items():
        assert _alarm_actions_follow_the_pattern(props), name
        assert props["TreatMissingData"] == "notBreaching", name

    def alarm_on(namespace: str, metric: str, dimension: str, value: Any) -> dict[str, Any]:
        found = [p for p in alarms.values() if p["Namespace"] == namespace and p["MetricName"] == metric
                 and p["Dimensions"] == [{"Name": dimension, "Value": value}]]  # fmt: skip
        assert len(found) == 1, f"one {metric} alarm on {value}, found {len(found)}"
        return found[0]

    dead_letter_queues = {name for name, r in resources.items() if r["Type"] == "AWS::SQS::Queue" and "RedrivePolicy"
                          not in r["Properties"]}  # fmt: skip
    assert dead_letter_queues == {"ProcessDeadLetterQueue", "LogisticsDeadLetterQueue",
                                  "ProcessSubscriptionDeadLetterQueue", "LogisticsSubscriptionDeadLetterQueue"}  # fmt: skip
    for queue in dead_letter_queues:
        props = alarm_on("AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", {"Fn::GetAtt": [queue, "QueueName"]})
        assert (props["ComparisonOperator"], props["Threshold"], props["Statistic"]) == ("GreaterThanThreshold", 0, "Maximum")
    topic_name = {"Fn::GetAtt": ["OrdersTopic", "TopicName"]}
    for metric in ("NumberOfNotificationsFailed", "NumberOfNotificationsFailedToRedriveToDlq"):
        props = alarm_on("AWS/SNS", metric, "TopicName", topic_name)
        assert (props["ComparisonOperator"], props["Threshold"], props["Statistic"]) == ("GreaterThanThreshold", 0, "Sum")
        assert props["Period"] == 60 and props["EvaluationPeriods"] == 1
    # docs/deploy.md lists every alarm the stack creates.
    doc = DEPLOY_DOC.read_text(encoding="utf-8")
    for props in alarms.values():
        suffix = props["AlarmName"]["Fn::Sub"].replace("${NamePrefix}", "<prefix>")
        assert suffix in doc or suffix.replace("orders-process", "*").replace("logistics", "*") in doc, suffix
