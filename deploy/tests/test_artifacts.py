"""Consistency checks across the deployment artifacts that no linter sees as a whole:
Dockerfiles <-> docker-compose.yml <-> ecs.yaml <-> Elastic Beanstalk bundles.
Nothing here needs Docker or AWS.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, TEMPLATES, load_cfn, load_yaml

BINARIES = {"api": ("pedidos-api", 8080), "worker": ("pedidos-worker", 8081)}
WORKER_SHUTDOWN_GRACE_SECONDS = 25


def _rust_default(path: str, pattern: str) -> int:
    """A default read from the Rust source, so the deployment artifacts are checked against the real numbers."""
    match = re.search(pattern, (ROOT / path).read_text(encoding="utf-8"))
    assert match, f"{pattern!r} not found in {path}"
    return int(match.group(1))


# The worker's shutdown, each step bounded even while SQS or DynamoDB is down: a long poll in flight is awaited for
# WAIT_TIME_SECONDS plus a slack, handlers get SHUTDOWN_GRACE_SECONDS, pending deletes and releases a final flush, the
# last stats report its own budget. The API's: in-flight requests get DRAIN_TIMEOUT.
WORKER_WAIT_TIME_DEFAULT = _rust_default("crates/worker/src/config.rs", r'"WAIT_TIME_SECONDS", (\d+),')
WORKER_GRACE_DEFAULT = _rust_default("crates/worker/src/config.rs", r'"SHUTDOWN_GRACE_SECONDS", (\d+),')
WORKER_STOP_EXTRA = (
    _rust_default("crates/worker/src/consumer.rs", r"SHUTDOWN_RECEIVE_SLACK: Duration = Duration::from_secs\((\d+)\)")
    + _rust_default("crates/worker/src/batcher.rs", r"FINAL_FLUSH: Duration = Duration::from_secs\((\d+)\)")
    + _rust_default("crates/worker/src/stats.rs", r"FINAL_REPORT_BUDGET: Duration = Duration::from_secs\((\d+)\)")
    # With traces on, the spans still queued get this long to leave after the consumer has stopped.
    + _rust_default("crates/platform/src/otel.rs", r"FLUSH_BUDGET: Duration = Duration::from_secs\((\d+)\)")
)
API_DRAIN_SECONDS = _rust_default("crates/api/src/lib.rs", r"DRAIN_TIMEOUT: Duration = Duration::from_secs\((\d+)\)")
# The messaging stack's default table names (docs/data-model.md).
ORDERS_TABLE = "ecomexpress-orders"
IDEMPOTENCY_TABLE = "ecomexpress-idempotency"
APP_SERVICES = ("topology", "api", "worker-process", "worker-logistics")
# The API's credentials: only ever references to secrets in a deployment artifact, never values.
SECRET_VARS = ("ADMIN_TOKEN", "API_KEYS")
ADMIN_PORT = 9090
ADMIN_TOKEN_ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:ecomexpress/admin-token-AbCd12"
API_KEYS_ARN = "arn:aws:ssm:eu-west-1:123456789012:parameter/ecomexpress/api-keys"
SECRET_ENV = {"ADMIN_TOKEN_SECRET_ARN": ADMIN_TOKEN_ARN, "API_KEYS_SECRET_ARN": API_KEYS_ARN}

# DynamoDB actions that change data or tables. The API's role may have none of them.
DYNAMODB_WRITE_ACTIONS = {
    "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem", "dynamodb:BatchWriteItem",
    "dynamodb:TransactWriteItems", "dynamodb:ConditionCheckItem", "dynamodb:PartiQLInsert",
    "dynamodb:PartiQLUpdate", "dynamodb:PartiQLDelete", "dynamodb:CreateTable", "dynamodb:DeleteTable",
    "dynamodb:UpdateTable", "dynamodb:UpdateTimeToLive", "dynamodb:UpdateContinuousBackups",
    "dynamodb:RestoreTableFromBackup", "dynamodb:RestoreTableToPointInTime", "dynamodb:ImportTable",
    "dynamodb:DeleteBackup", "dynamodb:CreateBackup",
}  # fmt: skip


def dockerfile(kind: str) -> str:
    return (ROOT / f"Dockerfile.{kind}").read_text(encoding="utf-8")


def instructions(text: str, keyword: str) -> list[str]:
    joined = re.sub(r"\\\n\s*", " ", text)  # line continuations
    return [line.split(None, 1)[1] for line in joined.splitlines() if line.upper().startswith(keyword + " ")]


def duration_seconds(value: str) -> int:
    match = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", value)
    assert match and value, f"unsupported duration {value!r}"
    return int(match.group(1) or 0) * 60 + int(match.group(2) or 0)


# ---------------------------------------------------------------- Dockerfiles
@pytest.mark.parametrize("kind", sorted(BINARIES))
def test_dockerfile_contract(kind: str) -> None:
    binary, port = BINARIES[kind]
    text = dockerfile(kind)
    froms = instructions(text, "FROM")
    assert froms[-1].startswith("gcr.io/distroless/cc-debian13:nonroot")
    rust_images = {f.split()[0] for f in froms if f.startswith("rust:")}
    assert len(rust_images) == 1, "one Rust toolchain image for every build stage"
    assert not any(":latest" in f or f.split()[0].count(":") == 0 and "/" in f for f in froms)
    assert f"--locked --bin {binary}" in text.replace("\\\n", " ")
    assert instructions(text, "EXPOSE") == [str(port)]
    assert instructions(text, "USER") == ["65532:65532"]
    assert instructions(text, "ENTRYPOINT") == [f'["/usr/local/bin/{binary}"]']
    healthcheck = instructions(text, "HEALTHCHECK")
    assert len(healthcheck) == 1 and healthcheck[0].endswith(f'CMD ["/usr/local/bin/{binary}", "healthcheck"]')


def _context(dockerfile: Path) -> list[str]:
    """The files BuildKit would send for `dockerfile` with the repository root as context (git-tracked files only, so
    the answer does not depend on what a checkout has built or installed)."""
    sys.path.insert(0, str(ROOT / "scripts" / "lib"))
    import compose_model  # noqa: PLC0415 - scripts/lib is not a package

    ignore = compose_model.DockerIgnore.read(compose_model.dockerignore_for(dockerfile, ROOT))
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout  # noqa: S607
    return sorted(path for path in tracked.splitlines() if not ignore.excluded(path))


def test_dockerignore_keeps_the_context_to_the_workspace() -> None:
    """The binaries' context is the Cargo workspace's manifests and library/binary sources, nothing else: a README or
    docs edit, bench/ (node_modules included), scripts or the test files must not rerun the final compile."""
    context = _context(ROOT / "Dockerfile.api")
    assert context == _context(ROOT / "Dockerfile.worker")
    members = re.search(r"^members = \[(.*?)\]", (ROOT / "Cargo.toml").read_text(encoding="utf-8"), re.M | re.S)
    assert members
    for member in re.findall(r'"([^"]+)"', members.group(1)):
        assert f"{member}/Cargo.toml" in context, member
        assert any(path.startswith(f"{member}/src/") for path in context), member
    assert {"Cargo.toml", "Cargo.lock"} <= set(context)
    allowed = re.compile(r"^(Cargo\.(toml|lock)|crates/[^/]+/Cargo\.toml|crates/[^/]+/src/.+|tests/Cargo\.toml|tests/src/.+)$")
    assert [path for path in context if not allowed.match(path)] == []
    for outside in ("README.md", "docker-compose.yml", ".env", "bench/node-worker-ddb/node_modules/x/index.js",
                    "docs/deploy.md", "crates/api/tests/router.rs", "tests/tests/api_e2e.rs", "target/debug/x"):
        sys.path.insert(0, str(ROOT / "scripts" / "lib"))
        import compose_model  # noqa: PLC0415

        assert compose_model.DockerIgnore.read(ROOT / ".dockerignore").excluded(outside), outside


def test_moto_image_context_is_its_two_files() -> None:
    assert _context(ROOT / "deploy" / "moto" / "Dockerfile") == ["deploy/moto/requirements.txt",
                                                                 "scripts/lib/moto_server.py"]  # fmt: skip


def test_moto_image_runs_the_serialised_moto_at_the_tests_version() -> None:
    """compose's moto profile, the tests and run-local run one emulator configuration: scripts/lib/moto_server.py
    (DynamoDB's per-item lock) with the moto version requirements-dev.txt pins, on a pinned base image."""
    text = (ROOT / "deploy" / "moto" / "Dockerfile").read_text(encoding="utf-8")
    froms = instructions(text, "FROM")
    assert len(froms) == 1 and re.fullmatch(r"python:3\.\d+\.\d+-slim-trixie(@sha256:[0-9a-f]{64})?", froms[0]), froms
    assert instructions(text, "COPY") == ["deploy/moto/requirements.txt /opt/moto/requirements.txt",
                                          "scripts/lib/moto_server.py /opt/moto/moto_server.py"]  # fmt: skip
    assert instructions(text, "ENTRYPOINT") == ['["python", "/opt/moto/moto_server.py"]']
    assert instructions(text, "CMD") == ['["-H", "0.0.0.0", "-p", "4566"]']
    dev = re.search(r"^moto\[[^\]]*\]==(\S+)", (ROOT / "requirements-dev.txt").read_text(encoding="utf-8"), re.M)
    image = re.search(r"^moto\[[^\]]*\]==(\S+)", (ROOT / "deploy/moto/requirements.txt").read_text(encoding="utf-8"), re.M)
    assert dev and image and dev.group(1) == image.group(1) == "5.2.1"
    pins = [line for line in (ROOT / "deploy/moto/requirements.txt").read_text(encoding="utf-8").splitlines()
            if line and not line.startswith("#")]  # fmt: skip
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-\[\],]+==\S+", pin) for pin in pins), "every package at an exact version"


# ---------------------------------------------------------------- docker-compose.yml
@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(ROOT / "docker-compose.yml")


def test_compose_emulators_are_pinned_and_exclusive(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["localstack"]["image"] == "localstack/localstack:${LOCALSTACK_VERSION:-4.14.0}"
    assert services["moto"]["image"] == "ecomexpress/moto-serialised:5.2.1"
    assert services["moto"]["build"] == {"context": ".", "dockerfile": "deploy/moto/Dockerfile"}
    assert services["localstack"]["profiles"] == ["localstack"]
    assert services["moto"]["profiles"] == ["moto"]
    env = services["localstack"]["environment"]
    assert env["LOCALSTACK_AUTH_TOKEN"] == "${LOCALSTACK_AUTH_TOKEN:-}"
    assert env["LOCALSTACK_HOST"] == "emulator:4566"
    for name in ("localstack", "moto"):
        assert services[name]["networks"]["default"]["aliases"] == ["emulator"]
        assert "healthcheck" in services[name]
    # No curl in the moto image: its healthcheck is Python's, in exec form.
    assert services["moto"]["healthcheck"]["test"][:3] == ["CMD", "python", "-c"]
    # Without a --profile flag, .env selects LocalStack.
    dotenv = (ROOT / ".env").read_text(encoding="utf-8")
    assert re.search(r"^COMPOSE_PROFILES=localstack$", dotenv, re.M)


def test_compose_startup_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    topo = services["topology"]
    assert topo["command"] == ["topology"]
    assert topo["depends_on"] == {
        "localstack": {"condition": "service_healthy", "required": False},
        "moto": {"condition": "service_healthy", "required": False},
    }
    for name in ("api", "worker-process", "worker-logistics"):
        assert services[name]["depends_on"] == {"topology": {"condition": "service_completed_successfully"}}
        assert services[name]["environment"]["AWS_ENDPOINT_URL"] == "http://emulator:4566"
        assert services[name]["environment"]["AWS_ACCESS_KEY_ID"] == "test"


def test_compose_dynamodb(compose: dict[str, Any]) -> None:
    """Both emulators serve DynamoDB, and every app service gets the messaging stack's table names."""
    services = compose["services"]
    localstack = services["localstack"]
    assert "dynamodb" in localstack["environment"]["SERVICES"].split(",")
    health = localstack["healthcheck"]["test"]
    # Healthy only when every service compose needs is started ("running"): "available" means merely enabled, and
    # LocalStack would start DynamoDB Local on the first request (holding it). Eager loading starts them all first.
    assert localstack["environment"]["EAGER_SERVICE_LOADING"] == "1"
    assert health[0] == "CMD-SHELL" and "available" not in health[1]
    for service in localstack["environment"]["SERVICES"].split(","):
        assert f'grep -Eq \'"{service}": *"running"\'' in health[1], f"the healthcheck must wait for {service} running"
    # moto serves every service from one process: no SERVICES list to extend.
    assert "SERVICES" not in services["moto"].get("environment", {})
    template = load_cfn(TEMPLATES / "messaging.yaml")
    prefix = template["Parameters"]["NamePrefix"]["Default"]
    names = {k: r["Properties"]["TableName"]["Fn::Sub"].replace("${NamePrefix}", prefix)
             for k, r in template["Resources"].items() if r["Type"] == "AWS::DynamoDB::Table"}  # fmt: skip
    assert names == {"OrdersTable": ORDERS_TABLE, "IdempotencyTable": IDEMPOTENCY_TABLE}
    for name in APP_SERVICES:
        env = services[name]["environment"]
        assert env["ORDERS_TABLE"] == ORDERS_TABLE, name
        assert env["IDEMPOTENCY_TABLE"] == IDEMPOTENCY_TABLE, name


def test_compose_app_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    api = services["api"]
    assert api["ports"] == ["127.0.0.1:8080:8080"]
    assert api["environment"]["SNS_TOPIC_ARN"] == "ecomexpress-sns-orders-events"
    assert api["healthcheck"]["test"] == ["CMD", "/usr/local/bin/pedidos-api", "healthcheck"]
    for service in services.values():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"port {port} must be published on loopback only"

    proc, logi = services["worker-process"], services["worker-logistics"]
    assert proc["environment"].pop("SQS_QUEUE_URL") == "ecomexpress-sqs-orders-process"
    assert logi["environment"].pop("SQS_QUEUE_URL") == "ecomexpress-sqs-logistics"
    assert proc == logi, "the two workers may differ only in SQS_QUEUE_URL"
    assert proc["healthcheck"]["test"] == ["CMD", "/usr/local/bin/pedidos-worker", "healthcheck"]
    assert int(proc["environment"]["SHUTDOWN_GRACE_SECONDS"]) == WORKER_SHUTDOWN_GRACE_SECONDS


def test_compose_stop_grace_outlasts_the_drain(compose: dict[str, Any]) -> None:
    """Docker sends SIGKILL when stop_grace_period ends: it must outlast the worker's longest stop (a long poll in flight,
    the drain grace, the final flush and stats report, each bounded), and the request drain (API) with a margin, or
    Docker kills them mid-drain."""
    services = compose["services"]
    assert (WORKER_WAIT_TIME_DEFAULT, WORKER_GRACE_DEFAULT) == (20, WORKER_SHUTDOWN_GRACE_SECONDS)
    for name in ("worker-process", "worker-logistics"):
        env = services[name]["environment"]
        wait = int(env.get("WAIT_TIME_SECONDS", WORKER_WAIT_TIME_DEFAULT))
        grace = int(env.get("SHUTDOWN_GRACE_SECONDS", WORKER_GRACE_DEFAULT))
        assert duration_seconds(services[name]["stop_grace_period"]) >= wait + grace + WORKER_STOP_EXTRA, name
    assert duration_seconds(services["api"]["stop_grace_period"]) >= API_DRAIN_SECONDS + 5


def test_readme_states_compose_drain_time_and_readiness(compose: dict[str, Any]) -> None:
    """The README's compose section says what the file does: the workers' grace and when LocalStack is healthy."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("<!-- compose:begin -->"):readme.index("<!-- compose:end -->")]
    grace = duration_seconds(compose["services"]["worker-process"]["stop_grace_period"])
    assert f"The workers get {grace} s (`stop_grace_period`)" in section
    assert "healthy once all three answer" not in section.lower()
    assert "`running`" in section and "EAGER_SERVICE_LOADING" in section


# ---------------------------------------------------------------- ecs.yaml
@pytest.fixture(scope="module")
def ecs() -> dict[str, Any]:
    return load_cfn(TEMPLATES / "ecs.yaml")["Resources"]


def _statements(role: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for p in role["Properties"]["Policies"] for s in p["PolicyDocument"]["Statement"]]


def test_ecs_task_definitions(ecs: dict[str, Any]) -> None:
    tasks = {k: v["Properties"] for k, v in ecs.items() if v["Type"] == "AWS::ECS::TaskDefinition"}
    assert set(tasks) == {"ApiTaskDefinition", "WorkerProcessTaskDefinition", "WorkerLogisticsTaskDefinition"}
    for name, task in tasks.items():
        kind = "api" if name.startswith("Api") else "worker"
        binary, port = BINARIES[kind]
        assert task["RequiresCompatibilities"] == ["FARGATE"] and task["NetworkMode"] == "awsvpc"
        assert task["ExecutionRoleArn"] != task["TaskRoleArn"]
        container = app_container(task)
        assert container["ReadonlyRootFilesystem"] is True
        assert container["HealthCheck"]["Command"] == ["CMD", f"/usr/local/bin/{binary}", "healthcheck"]
        assert container["PortMappings"][0]["ContainerPort"] == port
        assert container["LogConfiguration"]["LogDriver"] == "awslogs"
        env = plain_env(container)
        assert env["ORDERS_TABLE"] == imported("OrdersTableName")
        if kind == "worker":
            assert 30 <= container["StopTimeout"] <= 120
            # The longest stop of a worker, during an outage included (docs/RELIABILITY.md G6).
            longest_stop = int(env["SHUTDOWN_GRACE_SECONDS"]) + int(env["WAIT_TIME_SECONDS"]) + WORKER_STOP_EXTRA
            assert container["StopTimeout"] >= longest_stop
            assert "SQS_QUEUE_URL" in env
            assert env["IDEMPOTENCY_TABLE"] == imported("IdempotencyTableName")
        else:
            assert "SNS_TOPIC_ARN" in env
            assert "IDEMPOTENCY_TABLE" not in env  # the API never touches it


def app_container(task: dict[str, Any]) -> dict[str, Any]:
    """A task's application container; the only other entry allowed is the optional ADOT collector sidecar."""
    app, *others = task["ContainerDefinitions"]
    assert len(others) <= 1, "one application container, and at most the collector sidecar"
    for other in others:
        condition, collector, otherwise = other["Fn::If"]
        assert (condition, collector["Name"], otherwise) == ("TraceToXRay", "aws-otel-collector", {"Ref": "AWS::NoValue"})
    return app


def plain_env(container: dict[str, Any]) -> dict[str, Any]:
    """A container's environment without the entries that exist only under a condition (the traces' OTEL_*)."""
    return {e["Name"]: e["Value"] for e in container["Environment"] if "Name" in e}


def conditional_env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The environment entries that exist only under a condition: name -> (condition, value)."""
    out = {}
    for entry in container["Environment"]:
        if "Fn::If" in entry:
            condition, value, otherwise = entry["Fn::If"]
            assert otherwise == {"Ref": "AWS::NoValue"}, entry
            out[value["Name"]] = (condition, value["Value"])
    return out


def imported(export: str) -> dict[str, Any]:
    """How ecs.yaml imports one of the messaging stack's exports."""
    return {"Fn::ImportValue": {"Fn::Sub": f"${{MessagingStackName}}-{export}"}}


ORDERS_ARN = imported("OrdersTableArn")
ORDERS_INDEXES = {"Fn::Sub": ["${OrdersTableArn}/index/*", {"OrdersTableArn": ORDERS_ARN}]}
IDEMPOTENCY_ARN = imported("IdempotencyTableArn")


def _actions(statement: dict[str, Any]) -> list[str]:
    action = statement["Action"]
    return [action] if isinstance(action, str) else list(action)


def _resources(statement: dict[str, Any]) -> list[Any]:
    resource = statement["Resource"]
    return list(resource) if isinstance(resource, list) else [resource]


def _dynamodb(statements: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [s for s in statements if any(a.startswith("dynamodb:") for a in _actions(s))]


def test_ecs_least_privilege(ecs: dict[str, Any]) -> None:
    """SNS/SQS/KMS statements (the DynamoDB ones are checked below)."""
    api = [s for s in _statements(ecs["ApiTaskRole"]) if s not in _dynamodb(_statements(ecs["ApiTaskRole"]))]
    assert sorted(a for s in api if not _actions(s)[0].startswith("sqs:") for a in _actions(s)) == sorted(
        ["sns:Publish", "sns:GetTopicAttributes", "sns:Subscribe", "sns:ListSubscriptionsByTopic", "sns:ListTopics",
         "kms:GenerateDataKey", "kms:Decrypt"]
    )  # fmt: skip
    # Only email subscriptions: the one thing POST /api/suscripcion offers.
    (subscribe,) = [s for s in api if "sns:Subscribe" in _actions(s)]
    assert _actions(subscribe) == ["sns:Subscribe"]
    assert subscribe["Condition"] == {"StringEquals": {"sns:Protocol": "email"}}
    # The console: inspect all four queues, handle messages on the DLQs only, send (redrive) to the sources only.
    queues = [imported(f"{q}QueueArn") for q in ("Process", "Logistics")]
    dlqs = [imported(f"{q}DeadLetterQueueArn") for q in ("Process", "Logistics")]
    sqs = {s["Sid"]: (sorted(_actions(s)), s["Resource"]) for s in api if _actions(s)[0].startswith("sqs:")}
    assert sqs == {
        "InspectOrderQueues": (["sqs:GetQueueAttributes", "sqs:GetQueueUrl"], [queues[0], dlqs[0], queues[1], dlqs[1]]),
        "HandleDeadLetters": (["sqs:ChangeMessageVisibility", "sqs:DeleteMessage", "sqs:ReceiveMessage"], dlqs),
        "RedriveToSourceQueues": (["sqs:SendMessage"], queues),
    }
    wildcard = [s for s in _statements(ecs["ApiTaskRole"]) if s["Resource"] == "*"]
    assert [s["Action"] for s in wildcard] == ["sns:ListTopics"]
    for role, queue in (("WorkerProcessTaskRole", "Process"), ("WorkerLogisticsTaskRole", "Logistics")):
        statements = [s for s in _statements(ecs[role]) if s not in _dynamodb(_statements(ecs[role]))]
        by_resource = {json.dumps(s["Resource"]): s["Action"] for s in statements}
        own_queue = json.dumps({"Fn::ImportValue": {"Fn::Sub": f"${{MessagingStackName}}-{queue}QueueArn"}})
        own_dlq = json.dumps({"Fn::ImportValue": {"Fn::Sub": f"${{MessagingStackName}}-{queue}DeadLetterQueueArn"}})
        assert set(by_resource) == {own_queue, own_dlq}
        assert sorted(by_resource[own_queue]) == sorted([
            "sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility",
            "sqs:GetQueueAttributes", "sqs:GetQueueUrl",
        ])  # fmt: skip
        # GetQueueUrl: the worker resolves its DLQ's URL from the redrive policy's ARN at start-up.
        assert sorted(by_resource[own_dlq]) == ["sqs:GetQueueUrl", "sqs:SendMessage"]


def test_ecs_api_may_publish_to_the_encrypted_topic(ecs: dict[str, Any]) -> None:
    """The topic is SSE-KMS with the messaging stack's key: Publish needs kms:GenerateDataKey and kms:Decrypt on exactly
    that key, through SNS only. No other role gets any KMS permission (the queues are SSE-SQS: no key to use)."""
    (kms,) = [s for s in _statements(ecs["ApiTaskRole"]) if any(a.startswith("kms:") for a in _actions(s))]
    assert kms == {
        "Sid": "EncryptForOrdersTopic", "Effect": "Allow", "Action": ["kms:GenerateDataKey", "kms:Decrypt"],
        "Resource": imported("TopicKeyArn"),
        "Condition": {"StringEquals": {"kms:ViaService": {"Fn::Sub": "sns.${AWS::Region}.amazonaws.com"}}},
    }  # fmt: skip
    for name, role in ecs.items():
        if role["Type"] != "AWS::IAM::Role" or name == "ApiTaskRole" or "Policies" not in role["Properties"]:
            continue
        assert not any(a.startswith("kms:") for st in _statements(role) for a in _actions(st)), name


def test_ecs_dynamodb_no_wildcards(ecs: dict[str, Any]) -> None:
    """No role anywhere gets dynamodb:* (or *), or any DynamoDB action on Resource "*"."""
    roles = {k: v for k, v in ecs.items() if v["Type"] == "AWS::IAM::Role"}
    assert {"ApiTaskRole", "WorkerProcessTaskRole", "WorkerLogisticsTaskRole"} <= roles.keys()
    for name, role in roles.items():
        if "Policies" not in role["Properties"]:
            continue  # the execution role: managed policy only
        for statement in _statements(role):
            actions = _actions(statement)
            assert not {"*", "dynamodb:*"} & set(actions), f"{name}: {actions}"
            assert not any(a.startswith("dynamodb:") and "*" in a for a in actions), f"{name}: {actions}"
            if any(a.startswith("dynamodb:") for a in actions):
                assert statement["Effect"] == "Allow"
                for resource in _resources(statement):
                    assert resource != "*" and "*" not in json.dumps(resource).replace("/index/*", ""), (
                        f"{name}: DynamoDB actions on {resource}"
                    )


def test_ecs_api_reads_orders_only(ecs: dict[str, Any]) -> None:
    statements = _dynamodb(_statements(ecs["ApiTaskRole"]))
    granted = {(a, json.dumps(r)) for s in statements for a in _actions(s) for r in _resources(s)}
    assert not {a for a, _ in granted} & DYNAMODB_WRITE_ACTIONS, "pedidos-api must not write to any table"
    assert granted == {
        ("dynamodb:BatchGetItem", json.dumps(ORDERS_ARN)),
        ("dynamodb:Query", json.dumps(ORDERS_ARN)),
        ("dynamodb:DescribeTable", json.dumps(ORDERS_ARN)),
        ("dynamodb:Query", json.dumps(ORDERS_INDEXES)),
    }
    assert all("Condition" not in s for s in statements)


@pytest.mark.parametrize(
    ("role", "write", "prefix", "stats"),
    [
        ("WorkerProcessTaskRole", "dynamodb:UpdateItem", "PEDIDO#*", "STATS#process"),
        ("WorkerLogisticsTaskRole", "dynamodb:PutItem", "ENVIO#*", "STATS#logistics"),
    ],
)
def test_ecs_worker_writes_only_its_own_items(
    ecs: dict[str, Any], role: str, write: str, prefix: str, stats: str
) -> None:
    """Each worker writes the orders table only under its own partition-key prefix (dynamodb:LeadingKeys) and its
    role's stats item, and uses the idempotency table for the generic handlers' claims."""
    statements = _dynamodb(_statements(ecs[role]))
    on_orders = [s for s in statements if json.dumps(ORDERS_ARN) in map(json.dumps, _resources(s))]
    writes = [s for s in on_orders if set(_actions(s)) & DYNAMODB_WRITE_ACTIONS]
    assert len(writes) == 2, f"{role}: one conditioned write statement for its items, one for its stats item"
    by_condition = {json.dumps(s.get("Condition", {}), sort_keys=True): s for s in writes}
    effect = [s for s in writes if s.get("Condition", {}).get("ForAllValues:StringLike")]
    assert len(effect) == 1, f"{role}: {by_condition}"
    (statement,) = effect
    assert _actions(statement) == [write] and _resources(statement) == [ORDERS_ARN]
    condition = statement.get("Condition", {})
    assert condition.get("ForAllValues:StringLike") == {"dynamodb:LeadingKeys": [prefix]}, f"{role}: {condition}"
    assert condition.get("Null") == {"dynamodb:LeadingKeys": "false"}, f"{role}: {condition}"
    (stats_statement,) = [s for s in writes if s is not statement]
    assert _actions(stats_statement) == ["dynamodb:UpdateItem"] and _resources(stats_statement) == [ORDERS_ARN]
    assert stats_statement["Condition"].get("ForAllValues:StringEquals") == {"dynamodb:LeadingKeys": [stats]}
    assert stats_statement["Condition"].get("Null") == {"dynamodb:LeadingKeys": "false"}
    # Besides those writes nothing on the orders table: no reads (a worker's readiness is its own loop's state).
    others = {a for s in on_orders if s not in writes for a in _actions(s)}
    assert others == set()
    idempotency = {a for s in statements if json.dumps(IDEMPOTENCY_ARN) in map(json.dumps, _resources(s))
                   for a in _actions(s)}  # fmt: skip
    assert idempotency == {
        "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem",
    }  # fmt: skip
    # No index access, no other table.
    allowed = {json.dumps(ORDERS_ARN), json.dumps(IDEMPOTENCY_ARN)}
    assert {json.dumps(r) for s in statements for r in _resources(s)} <= allowed


def test_ecs_imports_exist_in_messaging_stack(ecs: dict[str, Any]) -> None:
    """Every `${MessagingStackName}-X` that ecs.yaml imports is exported by messaging.yaml as `${AWS::StackName}-X`."""
    text = (TEMPLATES / "ecs.yaml").read_text(encoding="utf-8")
    imports = set(re.findall(r"\$\{MessagingStackName\}-(\w+)", text))
    assert {"OrdersTableName", "OrdersTableArn", "IdempotencyTableName", "IdempotencyTableArn"} <= imports
    outputs = load_cfn(TEMPLATES / "messaging.yaml")["Outputs"]
    exported = {k for k, o in outputs.items() if o.get("Export", {}).get("Name") == {"Fn::Sub": f"${{AWS::StackName}}-{k}"}}
    assert imports <= exported, f"not exported by messaging.yaml: {imports - exported}"


def test_ecs_no_ssh_and_cluster_insights(ecs: dict[str, Any]) -> None:
    for res in ecs.values():
        if res["Type"] == "AWS::EC2::SecurityGroup":
            for rule in res["Properties"].get("SecurityGroupIngress", []):
                if isinstance(rule, dict) and "Fn::If" in rule:
                    rule = rule["Fn::If"][1]
                assert rule["FromPort"] != 22 and rule["ToPort"] != 22
    settings = ecs["Cluster"]["Properties"]["ClusterSettings"]
    assert {"Name": "containerInsights", "Value": "enabled"} in settings
    tg = ecs["ApiTargetGroup"]["Properties"]
    assert tg["HealthCheckPath"] == "/health" and tg["Port"] == 8080


@pytest.mark.parametrize("worker", ["WorkerProcess", "WorkerLogistics"])
def test_ecs_backlog_per_task_scaling(ecs: dict[str, Any], worker: str) -> None:
    policy = ecs[f"{worker}BacklogScaling"]["Properties"]
    assert policy["PolicyType"] == "TargetTrackingScaling"
    metrics = {m["Id"]: m for m in policy["TargetTrackingScalingPolicyConfiguration"]["CustomizedMetricSpecification"]["Metrics"]}
    assert metrics["m1"]["MetricStat"]["Metric"]["MetricName"] == "ApproximateNumberOfMessagesVisible"
    assert metrics["m1"]["MetricStat"]["Metric"]["Namespace"] == "AWS/SQS"
    assert metrics["m2"]["MetricStat"]["Metric"]["MetricName"] == "RunningTaskCount"
    assert metrics["m2"]["MetricStat"]["Metric"]["Namespace"] == "ECS/ContainerInsights"
    assert metrics["e1"]["Expression"] == "m1 / m2" and metrics["e1"]["ReturnData"] is True
    assert [m["ReturnData"] for m in (metrics["m1"], metrics["m2"])] == [False, False]


# ---------------------------------------------------------------- Elastic Beanstalk bundles
@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("eb")
    registry = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/ecomexpress"
    result = subprocess.run(  # noqa: S603
        ["bash", str(ROOT / "deploy/eb/build-bundles.sh"), f"{registry}/pedidos-api:1.2.3",
         f"{registry}/pedidos-worker:1.2.3", str(out)],
        env={"PATH": "/usr/bin:/bin", "AWS_REGION": "eu-west-1", **SECRET_ENV},
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return {"api": out / "pedidos-api-eb.zip", "worker": out / "pedidos-worker-eb.zip"}


@pytest.mark.parametrize("kind", sorted(BINARIES))
def test_eb_bundle(bundles: dict[str, Path], kind: str) -> None:
    binary, port = BINARIES[kind]
    with zipfile.ZipFile(bundles[kind]) as zf:
        names = set(zf.namelist())
        assert "Dockerrun.aws.json" in names, "Dockerrun must sit at the root of the zip"
        assert not names & {"Dockerfile", "docker-compose.yml", "compose.yaml"}
        run = json.loads(zf.read("Dockerrun.aws.json"))
        config = load_yaml_bytes(zf.read(f".ebextensions/01-{binary}.config"))
        nginx = {n: zf.read(n).decode() for n in names if n.startswith(".platform/nginx/")}
    assert run["AWSEBDockerrunVersion"] == "1"
    assert run["Image"]["Name"].endswith(f"/ecomexpress/{binary}:1.2.3")
    assert run["Ports"][0]["ContainerPort"] == port
    assert instructions(dockerfile(kind), "EXPOSE") == [str(port)]
    options = config["option_settings"]
    assert options["aws:elasticbeanstalk:application"]["Application Healthcheck URL"] == "/health"
    assert options["aws:elasticbeanstalk:environment:process:default"]["HealthCheckPath"] == "/health"
    assert options["aws:elasticbeanstalk:healthreporting:system"]["SystemType"] == "enhanced"
    env = options["aws:elasticbeanstalk:application:environment"]
    assert env["AWS_REGION"] == "eu-west-1"
    assert env["PORT"] == str(port)
    assert env["ORDERS_TABLE"] == ORDERS_TABLE
    if kind == "api":
        assert env["SNS_TOPIC_ARN"] == "ecomexpress-sns-orders-events"
        assert "IDEMPOTENCY_TABLE" not in env  # the API never touches it
        assert list(nginx) == [".platform/nginx/conf.d/elasticbeanstalk/10-deny-metrics.conf"]
    else:
        assert "SQS_QUEUE_URL" not in env  # set per environment: one bundle, two queues
        assert env["IDEMPOTENCY_TABLE"] == IDEMPOTENCY_TABLE
        # Health checks only: an internal load balancer, and nginx passes /health and nothing else.
        assert options["aws:ec2:vpc"]["ELBScheme"] == "internal"
        assert list(nginx) == [".platform/nginx/conf.d/elasticbeanstalk/10-health-only.conf"]
        (pattern,) = re.findall(r"location ~ (\S+) \{\s*return 404;", next(iter(nginx.values())))
        for path in ("/health", "/ready", "/metrics", "/", "/live", "/healthz", "/health/x"):
            assert (re.search(pattern, path) is None) == (path == "/health"), path


def test_eb_table_names_are_configurable(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "ORDERS_TABLE": "prod-orders", "IDEMPOTENCY_TABLE": "prod-idempotency", **SECRET_ENV}
    result = subprocess.run(  # noqa: S603
        ["bash", str(ROOT / "deploy/eb/build-bundles.sh"), "r/api:1", "r/worker:1", str(tmp_path)],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    with zipfile.ZipFile(tmp_path / "pedidos-worker-eb.zip") as zf:
        config = load_yaml_bytes(zf.read(".ebextensions/01-pedidos-worker.config"))
    worker_env = config["option_settings"]["aws:elasticbeanstalk:application:environment"]
    assert (worker_env["ORDERS_TABLE"], worker_env["IDEMPOTENCY_TABLE"]) == ("prod-orders", "prod-idempotency")
    result = subprocess.run(  # noqa: S603
        ["bash", str(ROOT / "deploy/eb/build-bundles.sh"), "r/api:1", "r/worker:1", str(tmp_path)],
        env={**env, "ORDERS_TABLE": "bad table"}, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode != 0 and "not a DynamoDB table name" in result.stderr


def test_eb_script_rejects_bad_input(tmp_path: Path) -> None:
    result = subprocess.run(  # noqa: S603
        ["bash", str(ROOT / "deploy/eb/build-bundles.sh"), "only-one-arg"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode != 0 and "usage" in result.stderr
    result = subprocess.run(  # noqa: S603
        ["bash", str(ROOT / "deploy/eb/build-bundles.sh"), 'bad"image', "ok/image:1", str(tmp_path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode != 0 and "not an image reference" in result.stderr


def load_yaml_bytes(data: bytes) -> Any:
    import yaml

    return yaml.safe_load(data)


def test_eb_script_works_without_zip(tmp_path: Path) -> None:
    """Machines without `zip` get the same bundles through Python's zipfile."""
    import shutil
    import sys

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("awk", "mktemp", "rm", "mkdir", "cat", "dirname"):
        found = shutil.which(tool)
        assert found, f"{tool} not found"
        (bin_dir / tool).symlink_to(found)
    (bin_dir / "python3").symlink_to(sys.executable)
    out = tmp_path / "out"
    result = subprocess.run(  # noqa: S603
        [shutil.which("bash") or "/bin/bash", str(ROOT / "deploy/eb/build-bundles.sh"), "r/api:1", "r/worker:1", str(out)],
        env={"PATH": str(bin_dir), **SECRET_ENV}, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    with zipfile.ZipFile(out / "pedidos-worker-eb.zip") as zf:
        assert zf.testzip() is None
        assert {"Dockerrun.aws.json", ".ebextensions/01-pedidos-worker.config"} <= set(zf.namelist())


EB_CERTIFICATE_ARN = "arn:aws:acm:eu-west-1:123456789012:certificate/0b1c2d3e-4f5a-6b7c-8d9e-0f1a2b3c4d5e"
EB_HTTPS_CONFIG = ".ebextensions/02-pedidos-api-https.config"


def _build_bundles(out: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603
        ["bash", str(ROOT / "deploy/eb/build-bundles.sh"), "r/api:1", "r/worker:1", str(out)],
        env={"PATH": "/usr/bin:/bin", **SECRET_ENV, **env}, capture_output=True, text=True, check=False,
    )  # fmt: skip


def test_eb_https_listener_with_a_certificate(tmp_path: Path) -> None:
    """EB_CERTIFICATE_ARN adds a 443 HTTPS listener with that certificate to the API environment's ALB and turns its
    port-80 listener into a 301 to https://; the worker bundle is unchanged."""
    result = _build_bundles(tmp_path, EB_CERTIFICATE_ARN=EB_CERTIFICATE_ARN)
    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stderr
    with zipfile.ZipFile(tmp_path / "pedidos-api-eb.zip") as zf:
        config = load_yaml_bytes(zf.read(EB_HTTPS_CONFIG))
    listener = config["option_settings"]["aws:elbv2:listener:443"]
    assert listener == {
        "ListenerEnabled": "true", "Protocol": "HTTPS", "SSLCertificateArns": EB_CERTIFICATE_ARN,
        "SSLPolicy": "ELBSecurityPolicy-TLS13-1-2-2021-06", "DefaultProcess": "default",
    }  # fmt: skip
    http = config["Resources"]["AWSEBV2LoadBalancerListener"]
    assert http["Type"] == "AWS::ElasticLoadBalancingV2::Listener"
    props = http["Properties"]
    assert (props["Port"], props["Protocol"], props["LoadBalancerArn"]) == (80, "HTTP", {"Ref": "AWSEBV2LoadBalancer"})
    (action,) = props["DefaultActions"]
    assert action["Type"] == "redirect"
    assert action["RedirectConfig"] == {
        "Protocol": "HTTPS", "Port": "443", "Host": "#{host}", "Path": "/#{path}", "Query": "#{query}",
        "StatusCode": "HTTP_301",
    }  # fmt: skip
    with zipfile.ZipFile(tmp_path / "pedidos-worker-eb.zip") as zf:
        assert not [n for n in zf.namelist() if "https" in n], "the workers' load balancers carry health checks only"


def test_eb_without_a_certificate_warns_and_serves_plain_http(bundles: dict[str, Path], tmp_path: Path) -> None:
    with zipfile.ZipFile(bundles["api"]) as zf:
        assert EB_HTTPS_CONFIG not in zf.namelist()
    result = _build_bundles(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "WARNING: no EB_CERTIFICATE_ARN" in result.stderr and "plain HTTP" in result.stderr


def test_eb_refuses_a_certificate_that_is_not_an_acm_arn(tmp_path: Path) -> None:
    result = _build_bundles(tmp_path, EB_CERTIFICATE_ARN="arn:aws:iam::123456789012:server-certificate/x y")
    assert result.returncode != 0 and "is not an ACM certificate ARN" in result.stderr, result.stderr


# ---------------------------------------------------------------- admin surface and API keys
def _api_container(ecs: dict[str, Any]) -> dict[str, Any]:
    return app_container(ecs["ApiTaskDefinition"]["Properties"])


API_KEYS_VALUE_FROM = {"Fn::If": ["CreateApiKeysSecret", {"Ref": "ApiKeysSecret"}, {"Ref": "ApiKeysSecretArn"}]}


def test_ecs_api_credentials_come_from_secrets_manager(ecs: dict[str, Any]) -> None:
    """ADMIN_TOKEN and API_KEYS reach the API only as ECS secrets (ValueFrom a Secrets Manager secret), never as
    environment values; the stack's secrets are generated, never given a SecretString."""
    container = _api_container(ecs)
    env = set(plain_env(container)) | set(conditional_env(container))
    assert not env & set(SECRET_VARS), f"plain credential in the environment: {env & set(SECRET_VARS)}"
    secrets = {s["Name"]: s["ValueFrom"] for s in container["Secrets"]}
    assert secrets == {"ADMIN_TOKEN": {"Ref": "AdminTokenSecret"}, "API_KEYS": API_KEYS_VALUE_FROM}
    for name in ("AdminTokenSecret", "ApiKeysSecret"):
        secret = ecs[name]
        assert secret["Type"] == "AWS::SecretsManager::Secret"
        assert "SecretString" not in secret["Properties"], f"{name} holds a value written in the template"
        assert secret["Properties"]["GenerateSecretString"]["PasswordLength"] >= 32
    assert ecs["ApiKeysSecret"]["Condition"] == "CreateApiKeysSecret"
    # An operator's own API keys secret is referenced by ARN, never pasted in.
    params = load_cfn(TEMPLATES / "ecs.yaml")["Parameters"]
    assert params["ApiKeysSecretArn"]["Default"] == ""
    assert params["ApiKeysSecretArn"]["AllowedPattern"].startswith("^(arn:aws")
    # The workers get neither.
    for name in ("WorkerProcessTaskDefinition", "WorkerLogisticsTaskDefinition"):
        worker = app_container(ecs[name]["Properties"])
        assert "Secrets" not in worker
        assert not (set(plain_env(worker)) | set(conditional_env(worker))) & set(SECRET_VARS)


def test_ecs_only_the_api_execution_role_reads_exactly_its_secrets(ecs: dict[str, Any]) -> None:
    api_task = ecs["ApiTaskDefinition"]["Properties"]
    assert api_task["ExecutionRoleArn"] == {"Fn::GetAtt": ["ApiExecutionRole", "Arn"]}
    statements = _statements(ecs["ApiExecutionRole"])
    assert statements == [{
        "Sid": "ReadApiSecrets", "Effect": "Allow", "Action": "secretsmanager:GetSecretValue",
        "Resource": [{"Ref": "AdminTokenSecret"}, API_KEYS_VALUE_FROM],
    }]  # fmt: skip
    # No other role (the workers' execution role, any task role) touches Secrets Manager.
    for name, role in ecs.items():
        if role["Type"] != "AWS::IAM::Role" or name == "ApiExecutionRole" or "Policies" not in role["Properties"]:
            continue
        assert not any(a.startswith("secretsmanager:") for st in _statements(role) for a in _actions(st)), name


def test_ecs_admin_port_is_not_behind_the_load_balancer(ecs: dict[str, Any]) -> None:
    """The API listens on ADMIN_PORT, which no target group, listener, port mapping or load-balancer rule uses, and
    which only the optional admin-access security group may reach."""
    container = _api_container(ecs)
    env = plain_env(container)
    assert env["ADMIN_PORT"] == str(ADMIN_PORT) and env["PORT"] != env["ADMIN_PORT"]
    assert [m["ContainerPort"] for m in container["PortMappings"]] == [8080]
    groups = [r["Properties"] for r in ecs.values() if r["Type"] == "AWS::ElasticLoadBalancingV2::TargetGroup"]
    assert [g["Port"] for g in groups] == [8080]
    service = ecs["ApiService"]["Properties"]
    assert [lb["ContainerPort"] for lb in service["LoadBalancers"]] == [8080]
    text = json.dumps({k: v for k, v in ecs.items() if v["Type"].startswith("AWS::ElasticLoadBalancingV2::")})
    assert str(ADMIN_PORT) not in text, "the admin port appears in the load balancer's configuration"

    def ingress(group: str) -> list[dict[str, Any]]:
        rules = ecs[group]["Properties"].get("SecurityGroupIngress", [])
        return [r["Fn::If"][1] if "Fn::If" in r else r for r in rules]

    assert all(ADMIN_PORT not in (r["FromPort"], r["ToPort"]) for r in ingress("LoadBalancerSecurityGroup"))
    admin_rules = [r for r in ingress("ApiSecurityGroup") if r["FromPort"] <= ADMIN_PORT <= r["ToPort"]]
    assert admin_rules == [{
        "Description": admin_rules[0]["Description"], "IpProtocol": "tcp", "FromPort": ADMIN_PORT, "ToPort": ADMIN_PORT,
        "SourceSecurityGroupId": {"Ref": "AdminAccessSecurityGroupId"},
    }]  # fmt: skip
    raw = ecs["ApiSecurityGroup"]["Properties"]["SecurityGroupIngress"]
    assert any(r.get("Fn::If", [None])[0] == "HasAdminAccess" for r in raw), "the admin rule must be conditional"


def _plain_values(node: Any, path: str = "") -> list[str]:
    """Every place in a parsed document that gives ADMIN_TOKEN or API_KEYS a value: a mapping key with a scalar
    value (environment maps, EB option settings) or a `{Name: X, Value: ...}` pair (ECS environment lists). An ARN
    (a reference to a secret) is not a value, nor a compose interpolation of the host's variable."""
    found = []
    if isinstance(node, dict):
        if node.get("Name") in SECRET_VARS and "Value" in node:
            found.append(f"{path}: Name {node['Name']} with a Value")
        for key, value in node.items():
            if key in SECRET_VARS and not isinstance(value, (dict, list)):
                text = str(value)
                if not (text.startswith("arn:aws") or re.fullmatch(r"\$\{\w+(:?-)?\}", text)):
                    found.append(f"{path}.{key} = {text[:8]}...")
            found += _plain_values(value, f"{path}.{key}")
    elif isinstance(node, list):
        for n, item in enumerate(node):
            found += _plain_values(item, f"{path}[{n}]")
    elif isinstance(node, str):
        # `NAME=value` strings: compose environment lists, shell snippets in user data.
        for var in SECRET_VARS:
            if re.search(rf"(^|\s){var}=(?!\$\{{|arn:aws)\S", node):
                found.append(f"{path}: {var}=...")
    return found


def test_no_plain_credentials_in_any_artifact(bundles: dict[str, Path]) -> None:
    """No template, compose file, Dockerfile, env file or EB bundle sets ADMIN_TOKEN or API_KEYS to a value."""
    documents: dict[str, Any] = {str(p.relative_to(ROOT)): load_cfn(p) for p in sorted(TEMPLATES.glob("*.yaml"))}
    documents["docker-compose.yml"] = load_yaml(ROOT / "docker-compose.yml")
    for kind, path in bundles.items():
        with zipfile.ZipFile(path) as zf:
            for member in zf.namelist():
                if member.endswith((".config", ".json")):
                    documents[f"{kind}:{member}"] = load_yaml_bytes(zf.read(member))
    for name, document in documents.items():
        assert not _plain_values(document), f"{name}: {_plain_values(document)}"
    for name in ("Dockerfile.api", "Dockerfile.worker", ".env"):
        text = (ROOT / name).read_text(encoding="utf-8")
        assert not re.search(rf"\b({'|'.join(SECRET_VARS)})\b\s*[= ]", text), name
    # The checker catches what it is meant to catch.
    assert _plain_values({"Environment": [{"Name": "API_KEYS", "Value": "k"}]})
    assert _plain_values({"aws:elasticbeanstalk:application:environment": {"ADMIN_TOKEN": "hunter2"}})
    assert _plain_values({"environment": ["ADMIN_TOKEN=hunter2"]})
    assert not _plain_values({"Secrets": [{"Name": "ADMIN_TOKEN", "ValueFrom": {"Ref": "S"}}], "API_KEYS": ADMIN_TOKEN_ARN})


def test_eb_api_credentials_are_secret_references(bundles: dict[str, Path]) -> None:
    with zipfile.ZipFile(bundles["api"]) as zf:
        options = load_yaml_bytes(zf.read(".ebextensions/01-pedidos-api.config"))["option_settings"]
    env = options["aws:elasticbeanstalk:application:environment"]
    assert not set(env) & set(SECRET_VARS)
    assert env["ADMIN_PORT"] == str(ADMIN_PORT) and env["PORT"] == "8080"
    assert options["aws:elasticbeanstalk:application:environmentsecrets"] == {
        "ADMIN_TOKEN": ADMIN_TOKEN_ARN, "API_KEYS": API_KEYS_ARN,
    }  # fmt: skip
    with zipfile.ZipFile(bundles["worker"]) as zf:
        worker = load_yaml_bytes(zf.read(".ebextensions/01-pedidos-worker.config"))["option_settings"]
    assert "aws:elasticbeanstalk:application:environmentsecrets" not in worker
    assert not set(worker["aws:elasticbeanstalk:application:environment"]) & {*SECRET_VARS, "ADMIN_PORT"}
    # EB's nginx forwards the first container port only: the admin port is not it.
    with zipfile.ZipFile(bundles["api"]) as zf:
        run = json.loads(zf.read("Dockerrun.aws.json"))
    assert [p["ContainerPort"] for p in run["Ports"]] == [8080]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"API_KEYS_SECRET_ARN": API_KEYS_ARN}, "ADMIN_TOKEN_SECRET_ARN is required"),
        ({"ADMIN_TOKEN_SECRET_ARN": ADMIN_TOKEN_ARN}, "API_KEYS_SECRET_ARN is required"),
        ({**SECRET_ENV, "ADMIN_TOKEN_SECRET_ARN": "s3cr3t-t0k3n-value"}, "ADMIN_TOKEN_SECRET_ARN is not a Secrets Manager"),
        ({**SECRET_ENV, "API_KEYS_SECRET_ARN": "arn:aws:s3:::bucket/keys"}, "API_KEYS_SECRET_ARN is not a Secrets Manager"),
    ],
)
def test_eb_script_requires_secret_arns(tmp_path: Path, env: dict[str, str], message: str) -> None:
    """A bundle without the secrets, or with a value where an ARN belongs, is refused."""
    result = subprocess.run(  # noqa: S603
        ["bash", str(ROOT / "deploy/eb/build-bundles.sh"), "r/api:1", "r/worker:1", str(tmp_path)],
        env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode != 0 and message in result.stderr, result.stderr
    assert "s3cr3t" not in result.stderr, "a value given where an ARN belongs is not echoed"



def test_services_keep_idle_connections_longer_than_the_proxy_in_front(ecs: dict[str, Any], bundles: dict[str, Path]) -> None:
    """hyper closes an idle keep-alive connection after HTTP_HEADER_READ_TIMEOUT_SECONDS (its header-read timeout
    covers the wait for the next request). The proxy in front must give up on idle connections first, or it may
    reuse one the API is closing and answer 502."""
    env = plain_env(_api_container(ecs))
    balancer = next(r for r in ecs.values() if r["Type"] == "AWS::ElasticLoadBalancingV2::LoadBalancer")
    attributes = {a["Key"]: a["Value"] for a in balancer["Properties"]["LoadBalancerAttributes"]}
    assert int(env["HTTP_HEADER_READ_TIMEOUT_SECONDS"]) > int(attributes["idle_timeout.timeout_seconds"])
    # EB's nginx keeps upstream connections for 60 s and its load balancer's idle timeout defaults to 60 s. The
    # worker's health port has the same idle timeout, and EB's health checks reach /health through that nginx too.
    for app in ("api", "worker"):
        with zipfile.ZipFile(bundles[app]) as zf:
            options = load_yaml_bytes(zf.read(f".ebextensions/01-pedidos-{app}.config"))["option_settings"]
        env = options["aws:elasticbeanstalk:application:environment"]
        assert int(env["HTTP_HEADER_READ_TIMEOUT_SECONDS"]) > 60, app


# ---------------------------------------------------------------- traces (optional ADOT sidecar to X-Ray)
TASKS = ("ApiTaskDefinition", "WorkerProcessTaskDefinition", "WorkerLogisticsTaskDefinition")
TASK_ROLES = ("ApiTaskRole", "WorkerProcessTaskRole", "WorkerLogisticsTaskRole")


def test_ecs_traces_to_x_ray_are_off_by_default_and_complete_when_on(ecs: dict[str, Any]) -> None:
    """TracesToXRay=false (the default) leaves every task as it was: one container, no OTEL_* variable, no X-Ray
    permission. With true, each task gets the ADOT collector sidecar receiving OTLP/HTTP on its loopback only and
    exporting to X-Ray, the application sends there with X-Ray ids, and exactly the three task roles get exactly
    xray:PutTraceSegments and xray:PutTelemetryRecords (the sidecar uses the task role; X-Ray has no resource-level
    scoping). The binaries themselves never call X-Ray, so the deployed-stack lane's identities are unchanged."""
    template = load_cfn(TEMPLATES / "ecs.yaml")
    assert template["Parameters"]["TracesToXRay"]["Default"] == "false"
    assert template["Conditions"]["TraceToXRay"] == {"Fn::Equals": [{"Ref": "TracesToXRay"}, "true"]}
    policy = ecs["XRayTraceWritePolicy"]
    assert policy["Type"] == "AWS::IAM::Policy" and policy["Condition"] == "TraceToXRay"
    assert policy["Properties"]["Roles"] == [{"Ref": role} for role in TASK_ROLES]
    (statement,) = policy["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Effect"] == "Allow" and sorted(_actions(statement)) == ["xray:PutTelemetryRecords", "xray:PutTraceSegments"]
    assert statement["Resource"] == "*"
    # No role carries an X-Ray action of its own, and nothing else attaches to the execution roles.
    for name, resource in ecs.items():
        if resource["Type"] == "AWS::IAM::Role" and "Policies" in resource["Properties"]:
            assert not any(a.startswith("xray:") for st in _statements(resource) for a in _actions(st)), name
        if resource["Type"] == "AWS::IAM::Policy":
            assert name == "XRayTraceWritePolicy", name
    for name in TASKS:
        task = ecs[name]["Properties"]
        app = app_container(task)
        assert not any(k.startswith("OTEL_") for k in plain_env(app)), f"{name}: traces on without the sidecar"
        traced = conditional_env(app)
        assert {k: v for k, v in traced.items()} == {
            "OTEL_EXPORTER_OTLP_ENDPOINT": ("TraceToXRay", "http://127.0.0.1:4318"),
            "OTEL_PROPAGATORS": ("TraceToXRay", "tracecontext,xray"),
            "OTEL_TRACES_SAMPLER": ("TraceToXRay", "parentbased_traceidratio"),
            "OTEL_TRACES_SAMPLER_ARG": ("TraceToXRay", {"Ref": "TraceSampleRatio"}),
        }, name
        (sidecar,) = [c["Fn::If"][1] for c in task["ContainerDefinitions"][1:]]
        assert sidecar["Image"] == {"Ref": "AdotCollectorImage"} and sidecar["Essential"] is False, name
        assert sidecar["ReadonlyRootFilesystem"] is True and "PortMappings" not in sidecar, name
        (config,) = [e["Value"]["Fn::Sub"] for e in sidecar["Environment"] if e["Name"] == "AOT_CONFIG_CONTENT"]
        collector = load_yaml_bytes(config.encode())
        assert collector["receivers"]["otlp"]["protocols"] == {"http": {"endpoint": "127.0.0.1:4318"}}, name
        assert collector["service"]["pipelines"]["traces"]["exporters"] == ["awsxray"], name
        assert "pedido_id" in collector["exporters"]["awsxray"]["indexed_attributes"], name
        assert sidecar["LogConfiguration"]["Options"]["awslogs-group"] == app["LogConfiguration"]["Options"]["awslogs-group"]


@pytest.mark.parametrize("kind", sorted(BINARIES))
def test_eb_traces_to_x_ray_only_when_asked(bundles: dict[str, Path], tmp_path: Path, kind: str) -> None:
    """The default bundles carry no collector and no OTEL_* variable (traces off). EB_TRACES_TO_XRAY=1 adds, to both,
    the ADOT collector (OTLP/HTTP in on 4318, X-Ray out) and the variables pointing the container at it."""
    binary, _ = BINARIES[kind]
    with zipfile.ZipFile(bundles[kind]) as zf:
        assert ".ebextensions/03-traces-to-xray.config" not in zf.namelist()
        text = "".join(zf.read(n).decode() for n in zf.namelist() if n.startswith(".ebextensions/"))
        assert "OTEL_" not in text
    result = _build_bundles(tmp_path, EB_TRACES_TO_XRAY="1", EB_TRACE_SAMPLE_RATIO="0.25")
    assert result.returncode == 0, result.stderr
    with zipfile.ZipFile(tmp_path / f"{binary}-eb.zip") as zf:
        config = load_yaml_bytes(zf.read(".ebextensions/03-traces-to-xray.config"))
    env = config["option_settings"]["aws:elasticbeanstalk:application:environment"]
    assert env == {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://172.17.0.1:4318", "OTEL_PROPAGATORS": "tracecontext,xray",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25",
    }  # fmt: skip
    collector = load_yaml_bytes(config["files"]["/opt/aws/aws-otel-collector/etc/pedidos-traces.yaml"]["content"].encode())
    assert collector["service"]["pipelines"]["traces"] == {"receivers": ["otlp"], "processors": ["batch"], "exporters": ["awsxray"]}
    assert collector["exporters"]["awsxray"]["region"] == "us-east-1"
    assert "aws-otel-collector.rpm" in config["commands"]["01-install-adot-collector"]["command"]
    for bad in ({"EB_TRACES_TO_XRAY": "yes"}, {"EB_TRACES_TO_XRAY": "1", "EB_TRACE_SAMPLE_RATIO": "2"}):
        result = _build_bundles(tmp_path, **bad)
        assert result.returncode != 0, bad
