"""The deployed-stack lane: the real binaries on what the templates create, with exactly the permissions they grant.

messaging.yaml's stack is created in moto through CloudFormation (not `pedidos-api topology`). Each identity the
templates define gets an IAM user carrying that identity's statements as the stack resolves them
(deploy/iam/role_policy.py): the API task role, the two worker task roles (the EB instance profiles carry the same
statements: docs/deploy.md), and the operators' managed policy the stack created. Then moto's IAM enforcement is
switched on and pedidos-api, both pedidos-workers and pedidos-admin run every flow they have, signed with those
users' keys, through a recording proxy. A call refused by moto, or by the template's own statements evaluated with
the resources and condition keys moto does not check (iam_lane.py), fails the lane with the binary, the action and
the resource. The negative tests take one action away and show the lane (and the binary's log) naming it.

The lane needs the workspace binaries (`cargo build --workspace --bins`; ./scripts/test builds them first).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import boto3
import pytest

from conftest import REGION, ROOT, SUMMARY, TEMPLATES, load_cfn, start_moto
from iam_lane import Call, Recorder, RecordingProxy, evaluate, for_moto
from role_policy import Resolver, policy_document
from stacks import create_messaging_stack

STACK = "ecomexpress-messaging"
ADMIN_TOKEN = "lane-admin-token-0123456789abcdefghij"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
LOGS = ROOT / "target" / "deployed-stack"
PATIENCE = 60  # seconds any one condition may take on a busy 2-core machine

# identity -> the template and resources that define it. The EB instance profiles carry the same statements as the
# ECS task roles (docs/deploy.md, "IAM for EB"), so they are not separate identities here.
IDENTITIES = {
    "pedidos-api": ("ecs.yaml", ["ApiTaskRole"]),
    "pedidos-worker process": ("ecs.yaml", ["WorkerProcessTaskRole"]),
    "pedidos-worker logistics": ("ecs.yaml", ["WorkerLogisticsTaskRole"]),
    "pedidos-admin": ("messaging.yaml", ["OperatorPolicy"]),
}


def bin_dir() -> Path:
    if os.environ.get("PEDIDOS_BIN_DIR"):
        return Path(os.environ["PEDIDOS_BIN_DIR"])
    return Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http(method: str, url: str, body: Any = None, token: str | None = None, timeout: float = 30) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("content-type", "application/json")
    if token:
        request.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310 - 127.0.0.1 only
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    try:
        return status, json.loads(raw or b"null")
    except ValueError:
        return status, raw.decode(errors="replace")


# What the lane refused so far, appended to every failure: a flow that stalls usually stalls on a refused call.
FINDINGS: list[Callable[[], list[str]]] = []


def eventually(what: str, probe: Callable[[], Any], timeout: float = PATIENCE) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            refused = [line for findings in FINDINGS for line in findings()]
            pytest.fail(f"{what}: not within {timeout} s" + "".join(f"\n  refused: {r}" for r in refused))
        time.sleep(0.25)


class Process:
    """A workspace binary running in the background, its output in target/deployed-stack/<name>.log."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        self.name, self.log = name, LOGS / f"{name}.log"
        binary = bin_dir() / argv[0]
        if not binary.is_file():
            pytest.fail(f"{binary} not found: run `cargo build --workspace --bins` (./scripts/test does)")
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(  # noqa: S603 - our own binary
                [str(binary), *argv[1:]], env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode


class Lane:
    """The stack, its identities and the proxy; starts the binaries as those identities."""

    def __init__(self, moto: str, proxy: RecordingProxy, recorder: Recorder, outputs: dict[str, str]) -> None:
        self.moto, self.proxy, self.recorder, self.outputs = moto, proxy, recorder, outputs
        self.documents: dict[str, dict[str, Any]] = {}
        self.keys: dict[str, tuple[str, str]] = {}
        self.processes: list[Process] = []

    def client(self, service: str) -> Any:
        """The lane's own unrestricted identity, straight to moto (not recorded)."""
        key, secret = self.keys["lane"]
        return boto3.client(service, endpoint_url=self.moto, region_name=REGION,
                            aws_access_key_id=key, aws_secret_access_key=secret)  # fmt: skip

    def env(self, identity: str, **extra: str) -> dict[str, str]:
        key, secret = self.keys[identity]
        return {"PATH": "/usr/bin:/bin", "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret,
                "AWS_REGION": REGION, "AWS_ENDPOINT_URL": self.proxy.endpoint, "LOG_FORMAT": "json",
                "RUST_LOG": "info", "BIND_ADDR": "127.0.0.1", **extra}  # fmt: skip

    def set_policy(self, identity: str, document: dict[str, Any]) -> None:
        """What `identity` may do from now on (moto reads the user's policies on every request)."""
        self.documents[identity] = document
        self.client("iam").put_user_policy(
            UserName=identity.replace(" ", "-"), PolicyName="lane", PolicyDocument=json.dumps(for_moto(document))
        )

    def start_api(self) -> str:
        port = free_port()
        api = Process(f"api-{port}", ["pedidos-api"], self.env(
            "pedidos-api", SNS_TOPIC_ARN=self.outputs["TopicArn"], ORDERS_TABLE=self.outputs["OrdersTableName"],
            ADMIN_TOKEN=ADMIN_TOKEN, PORT=str(port)))  # fmt: skip
        self.processes.append(api)
        base = f"http://127.0.0.1:{port}"
        eventually("pedidos-api answers /health", lambda: self._answers(f"{base}/health"))
        return base

    def start_worker(self, role: str) -> tuple[Process, str]:
        port = free_port()
        queue = self.outputs["ProcessQueueUrl" if role == "process" else "LogisticsQueueUrl"]
        worker = Process(f"worker-{role}-{port}", ["pedidos-worker"], self.env(
            f"pedidos-worker {role}", SQS_QUEUE_URL=queue, ORDERS_TABLE=self.outputs["OrdersTableName"],
            IDEMPOTENCY_TABLE=self.outputs["IdempotencyTableName"], WAIT_TIME_SECONDS="1", PORT=str(port),
            RETRY_BASE_SECONDS="1"))  # fmt: skip
        self.processes.append(worker)
        base = f"http://127.0.0.1:{port}"
        eventually(f"pedidos-worker {role} answers /health", lambda: self._answers(f"{base}/health"))
        return worker, base

    def admin(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        binary = bin_dir() / "pedidos-admin"
        return subprocess.run(  # noqa: S603 - our own binary
            [str(binary), *args], env=self.env("pedidos-admin"), capture_output=True, text=True, timeout=timeout,
            check=False,
        )

    @staticmethod
    def _answers(url: str) -> bool:
        try:
            return http("GET", url, timeout=2)[0] == 200
        except OSError:
            return False

    @contextmanager
    def flow(self, name: str) -> Iterator[None]:
        self.recorder.flow = name
        yield

    def findings(self, since: int = 0) -> list[str]:
        """Every call after the `since`-th that moto refused or the template's statements do not allow."""
        found = []
        for call in self.recorder.calls[since:]:
            if call.identity not in self.documents:
                continue
            if call.status == 403:
                found.append(f"{call.identity}: AccessDenied from AWS for {call.action} on {', '.join(call.resources)}"
                             f" (flow {call.flow})")  # fmt: skip
            # Both, when both refuse: the lane's own evaluator must agree with moto where moto enforces.
            if (why := evaluate(self.documents[call.identity], call)) is not None:
                found.append(f"{call.identity}: the template does not allow {why} (flow {call.flow})")
        return sorted(set(found))

    def used(self) -> dict[tuple[str, str], set[str]]:
        """(identity, action) -> the flows that called it."""
        out: dict[tuple[str, str], set[str]] = {}
        for call in self.recorder.calls:
            if call.identity in self.documents and call.status < 400:
                out.setdefault((call.identity, call.action), set()).add(call.flow)
        return out


@pytest.fixture(scope="module")
def lane() -> Iterator[Lane]:
    LOGS.mkdir(parents=True, exist_ok=True)
    with start_moto(LOGS, serialised=True) as moto:

        def bootstrap(service: str) -> Any:  # before enforcement: moto takes any signature
            return boto3.client(service, endpoint_url=moto, region_name=REGION,
                                aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")  # fmt: skip

        outputs, _ = create_messaging_stack(bootstrap, STACK)
        account = outputs["TopicArn"].split(":")[4]
        exports = {e["Name"]: e["Value"] for e in bootstrap("cloudformation").list_exports()["Exports"]}
        resolve = Resolver(account=account, region=REGION, refs={"MessagingStackName": STACK}, exports=exports)
        iam = bootstrap("iam")
        recorder = Recorder(region=REGION, account=account)
        secrets: dict[str, str] = {}
        with RecordingProxy(moto, recorder, secrets) as proxy:
            lane = Lane(moto, proxy, recorder, outputs)
            FINDINGS.append(lane.findings)
            for identity in ["lane", *IDENTITIES]:
                user = identity.replace(" ", "-")
                iam.create_user(UserName=user)
                key = iam.create_access_key(UserName=user)["AccessKey"]
                lane.keys[identity] = (key["AccessKeyId"], key["SecretAccessKey"])
                secrets[key["AccessKeyId"]] = key["SecretAccessKey"]
                recorder.identities[key["AccessKeyId"]] = identity
            iam.put_user_policy(UserName="lane", PolicyName="everything", PolicyDocument=json.dumps(
                {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))  # fmt: skip
            for identity, (template, resources) in IDENTITIES.items():
                if template == "ecs.yaml":
                    document = policy_document(load_cfn(TEMPLATES / template), resources, resolve)
                else:  # the managed policy as the stack created it, read back from IAM
                    arn = outputs["OperatorPolicyArn"]
                    version = iam.get_policy(PolicyArn=arn)["Policy"]["DefaultVersionId"]
                    document = iam.get_policy_version(PolicyArn=arn, VersionId=version)["PolicyVersion"]["Document"]
                    document = json.loads(document) if isinstance(document, str) else document
                lane.set_policy(identity, document)
            # From here on every request must be signed by a user whose policies allow it.
            switch_on = urllib.request.Request(f"{moto}/moto-api/reset-auth", data=b"0", method="POST",
                                               headers={"content-type": "text/plain"})  # fmt: skip
            urllib.request.urlopen(switch_on, timeout=10).close()  # noqa: S310 - 127.0.0.1 only
            try:
                yield lane
            finally:
                FINDINGS.remove(lane.findings)
                for process in lane.processes:
                    process.stop()
                with (LOGS / "calls.jsonl").open("w", encoding="utf-8") as out:
                    for call in recorder.calls:
                        out.write(json.dumps(call.__dict__) + "\n")


def tap_queue(lane: Lane) -> tuple[Any, str]:
    """A queue of the lane's own subscribed to the topic: the exact envelopes the workers get, to replay."""
    sqs = lane.client("sqs")
    url = sqs.create_queue(QueueName=f"lane-tap-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    lane.client("sns").subscribe(TopicArn=lane.outputs["TopicArn"], Protocol="sqs", Endpoint=arn)
    return sqs, url


def tapped(sqs: Any, url: str, count: int) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []

    def more() -> bool:
        for m in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", []):
            got.append(json.loads(m["Body"]))
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
        return len(got) >= count

    eventually(f"{count} tapped envelopes", more)
    return got


def sse_sample(url: str) -> dict[str, Any]:
    """The first `sample` event of the console's stream."""
    request = urllib.request.Request(url, headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
    with urllib.request.urlopen(request, timeout=PATIENCE) as stream:  # noqa: S310 - 127.0.0.1 only
        event = None
        for raw in stream:
            line = raw.decode().rstrip("\n")
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event == "sample":
                return json.loads(line.split(":", 1)[1])
    pytest.fail("the console stream ended without a sample")


def test_every_flow_runs_on_exactly_the_permissions_the_templates_grant(lane: Lane) -> None:
    sqs, tap = tap_queue(lane)
    api = lane.start_api()
    process, process_health = lane.start_worker("process")
    logistics, logistics_health = lane.start_worker("logistics")
    ddb = lane.client("dynamodb")
    table = lane.outputs["OrdersTableName"]
    cliente = str(uuid.uuid4())
    pedido = str(uuid.uuid4())

    def item(pk: str) -> dict[str, Any] | None:
        return ddb.get_item(TableName=table, Key={"pk": {"S": pk}}, ConsistentRead=True).get("Item")

    with lane.flow("POST /api/pedidos, both workers apply"):
        status, answer = http("POST", f"{api}/api/pedidos", {
            "pedidoId": pedido, "clienteId": cliente, "fecha": "2026-12-04T10:00:00Z", "total": "10.50",
            "items": [{"productoId": "SKU-1", "cantidad": 1, "precioUnitario": "10.50"}]})  # fmt: skip
        assert status == 202, answer
        eventually("order applied by the process worker", lambda: item(f"PEDIDO#{pedido}"))
        eventually("shipment created by the logistics worker", lambda: item(f"ENVIO#{pedido}"))
    with lane.flow("PUT /api/pedidos/{id}, GET, customer listing"):
        status, answer = http("PUT", f"{api}/api/pedidos/{pedido}", {"clienteId": cliente, "total": "12.00", "version": 2})
        assert status == 202, answer
        eventually("version 2 applied", lambda: (item(f"PEDIDO#{pedido}") or {}).get("version", {}).get("N") == "2")
        status, order = http("GET", f"{api}/api/pedidos/{pedido}")
        assert status == 200 and order["version"] == 2 and order["envio"], order
        status, listing = http("GET", f"{api}/api/clientes/{cliente}/pedidos")
        assert status == 200 and pedido in json.dumps(listing), listing
        assert http("GET", f"{api}/ready")[0] == 200
    with lane.flow("duplicate and stale deliveries"):
        envelopes = tapped(sqs, tap, 2)  # version 1 (PedidoCreado) and version 2 (PedidoActualizado)
        by_version = {json.loads(e["Message"])["version"]: json.dumps(e) for e in envelopes}
        urls = {role: lane.outputs[f"{role}QueueUrl"] for role in ("Process", "Logistics")}
        lane.client("sqs").send_message(QueueUrl=urls["Process"], MessageBody=by_version[1])  # stale
        lane.client("sqs").send_message(QueueUrl=urls["Process"], MessageBody=by_version[2])  # duplicate
        lane.client("sqs").send_message(QueueUrl=urls["Logistics"], MessageBody=by_version[1])  # duplicate shipment

        def outcomes() -> bool:
            metrics = http("GET", f"{process_health}/metrics")[1]
            return isinstance(metrics, str) and re.search(r'outcome="stale"\} [1-9]', metrics) is not None \
                and re.search(r'outcome="duplicate"\} [1-9]', metrics) is not None

        eventually("the process worker recognised the stale and the duplicate delivery", outcomes)
    with lane.flow("poison messages to the DLQs"):
        for role in ("Process", "Logistics"):
            lane.client("sqs").send_message(QueueUrl=lane.outputs[f"{role}QueueUrl"], MessageBody="not json")
            dlq = lane.outputs[f"{role}DeadLetterQueueUrl"]
            eventually(f"the {role} poison message in its DLQ", lambda dlq=dlq: int(lane.client("sqs").get_queue_attributes(
                QueueUrl=dlq, AttributeNames=["ApproximateNumberOfMessages"])["Attributes"]["ApproximateNumberOfMessages"]) >= 1)  # fmt: skip
    with lane.flow("stats items"):
        eventually("both roles' stats items", lambda: item("STATS#process") and item("STATS#logistics"))
    with lane.flow("worker readiness"):
        for health in (process_health, logistics_health):
            assert http("GET", f"{health}/ready")[0] == 200
    with lane.flow("console: overview stream, DLQ list, redrive and delete"):
        sample = sse_sample(f"{api}/console/events")
        assert "unavailable" not in json.dumps(sample), sample
        status, listed = http("GET", f"{api}/console/api/dlq/process", token=ADMIN_TOKEN)
        assert status == 200 and len(listed["messages"]) == 1, listed
        ids = [m["messageId"] for m in listed["messages"]]
        status, redriven = http("POST", f"{api}/console/api/dlq/process/redrive", {"messageIds": ids}, ADMIN_TOKEN)
        assert status == 200 and redriven["done"] == 1, redriven
        status, listed = http("GET", f"{api}/console/api/dlq/logistics", token=ADMIN_TOKEN)
        assert status == 200 and len(listed["messages"]) == 1, listed
        ids = [m["messageId"] for m in listed["messages"]]
        status, deleted = http("POST", f"{api}/console/api/dlq/logistics/delete", {"messageIds": ids}, ADMIN_TOKEN)
        assert status == 200 and deleted["done"] == 1, deleted
    with lane.flow("email subscription"):
        status, answer = http("POST", f"{api}/api/suscripcion", {"email": "ops@example.com"}, ADMIN_TOKEN)
        assert status in (200, 201, 202), answer
        status, state = http("GET", f"{api}/api/suscripcion/estado/ops@example.com", token=ADMIN_TOKEN)
        assert status == 200, state
    with lane.flow("pedidos-admin dlq list, show, redrive, purge"):
        dlq = lane.outputs["ProcessDeadLetterQueueUrl"]
        # The poison message redriven by the console comes back to the DLQ.
        eventually("the redriven poison message back in the DLQ", lambda: "not_json" in lane.admin(
            "dlq", "list", "--dlq", dlq, "--scan-patience", "5s").stdout)  # fmt: skip
        listed = lane.admin("dlq", "list", "--queue", lane.outputs["ProcessQueueUrl"], "--json",
                            "--scan-patience", "5s")
        assert listed.returncode == 0, listed.stderr
        message_id = json.loads(listed.stdout.splitlines()[0])["messageId"]
        shown = lane.admin("dlq", "show", "--dlq", dlq, message_id, "--scan-patience", "5s")
        assert shown.returncode == 0 and "not json" in shown.stdout, shown.stderr
        # The worker rejects the copy again: it comes back as a new DLQ message, which the run recognises, reports
        # and leaves (G36), exiting 3 (partial: the message is still in the DLQ).
        redriven = lane.admin("dlq", "redrive", "--dlq", dlq, "--reason", "not_json", "--scan-patience", "5s")
        assert redriven.returncode == 3, (redriven.stdout, redriven.stderr)
        assert "redriven=1 skipped=0 failed=0 rejected-again=1 refused=0" in redriven.stdout, redriven.stdout
        assert "rejected again: not_json " in redriven.stdout, redriven.stdout
        eventually("the redriven poison message back in the DLQ", lambda: "not_json" in lane.admin(
            "dlq", "list", "--dlq", dlq, "--scan-patience", "5s").stdout)  # fmt: skip
        purged = lane.admin("dlq", "purge", "--dlq", dlq, "--yes")
        assert purged.returncode == 0, purged.stderr
    with lane.flow("SIGTERM"):
        assert process.stop() == 0 and logistics.stop() == 0

    findings = lane.findings()
    used = lane.used()
    write_identity_table(lane)
    documented = documented_actions()
    undocumented = sorted(f"{i}: {a}" for i, a in used if (i, a) not in documented)
    unexercised = sorted(f"{i}: {a}" for i, a in documented if (i, a) not in used)
    granted = {(i, a) for i, document in lane.documents.items() for st in document["Statement"]
               for a in ([st["Action"]] if isinstance(st["Action"], str) else st["Action"])}  # fmt: skip
    unused = sorted(f"{i}: {a}" for i, a in granted - set(used))
    SUMMARY.append(f"deployed-stack lane: {len(IDENTITIES)} identities, {len(lane.recorder.calls)} calls, "
                   f"{len(used)} identity/action pairs, {len(findings)} refused, {len(undocumented)} undocumented; "
                   f"granted but not called: {unused or 'none'}")  # fmt: skip
    assert not findings, "\n".join(findings)
    assert not undocumented, f"docs/deploy.md's identity table lacks: {undocumented}"
    assert not unexercised, f"docs/deploy.md's identity table lists actions no flow called: {unexercised}"
    for process_ in lane.processes:
        assert "AccessDenied" not in process_.text(), f"{process_.name} logged AccessDenied"


def write_identity_table(lane: Lane) -> None:
    """target/deployed-stack/identities.md: the table docs/deploy.md carries, from this run (copy it there when the
    lane reports an undocumented action)."""
    rows: dict[tuple[str, str], tuple[set[str], list[str]]] = {}
    for call in lane.recorder.calls:
        if call.identity in lane.documents and call.status < 400:
            resources, flows = rows.setdefault((call.identity, call.action), (set(), []))
            resources.update(r.rsplit(":", 1)[-1] if r != "*" else "*" for r in call.resources)
            if call.flow not in flows:
                flows.append(call.flow)
    lines = ["| identity | action | on (this run) | first used during the flow |", "|---|---|---|---|"]
    for (identity, action), (resources, flows) in sorted(rows.items()):
        lines.append(f"| `{identity}` | `{action}` | {', '.join(sorted(resources))} | {flows[0]} |")
    (LOGS / "identities.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def documented_actions() -> set[tuple[str, str]]:
    """(identity, action) pairs of docs/deploy.md's "Identities" table."""
    text = DEPLOY_DOC.read_text(encoding="utf-8")
    section = text.split("<!-- identities:begin", 1)[1].split("<!-- identities:end -->", 1)[0]
    pairs = set()
    for row in re.findall(r"^\| `([^`]+)` \| `([a-z]+:[A-Za-z]+)` \|", section, re.M):
        pairs.add((row[0], row[1]))
    return pairs


def remove_action(document: dict[str, Any], action: str) -> dict[str, Any]:
    """A copy of `document` without `action` anywhere (statements left empty are dropped)."""
    statements = []
    for st in document["Statement"]:
        actions = [a for a in ([st["Action"]] if isinstance(st["Action"], str) else st["Action"]) if a != action]
        if actions:
            statements.append({**st, "Action": actions})
    return {**document, "Statement": statements}


def test_a_removed_action_is_named_by_the_lane_and_by_the_binary(lane: Lane) -> None:
    """The lane can fail: without sqs:ReceiveMessage the API's DLQ panel, and without dynamodb:UpdateItem the process
    worker, are refused; the lane names the identity and the action, and the binary logs one line naming the action,
    the resource and the identity's ARN. The worker holds the order (no DLQ, no delete) until its role is fixed."""
    full = {identity: lane.documents[identity] for identity in ("pedidos-api", "pedidos-worker process")}
    since = len(lane.recorder.calls)
    try:
        lane.set_policy("pedidos-api", remove_action(full["pedidos-api"], "sqs:ReceiveMessage"))
        lane.set_policy("pedidos-worker process", remove_action(full["pedidos-worker process"], "dynamodb:UpdateItem"))
        api = lane.start_api()
        worker, health = lane.start_worker("process")
        with lane.flow("negative: console DLQ list without sqs:ReceiveMessage"):
            status, _ = http("GET", f"{api}/console/api/dlq/process", token=ADMIN_TOKEN)
            assert status == 503
        with lane.flow("negative: an order without dynamodb:UpdateItem"):
            pedido = str(uuid.uuid4())
            status, answer = http("POST", f"{api}/api/pedidos", {
                "pedidoId": pedido, "clienteId": str(uuid.uuid4()), "fecha": "2026-12-04T10:00:00Z", "total": "1.00"})  # fmt: skip
            assert status == 202, answer
            eventually("the worker's denied write", lambda: "AWS denied dynamodb:UpdateItem" in worker.text())
            status, ready = http("GET", f"{health}/ready")
            assert status == 503, ready  # dependency state: misconfigured store
            assert http("GET", f"{health}/health")[0] == 200  # liveness: the process is fine
        findings = lane.findings(since)
        api_log = next(p for p in lane.processes if p.name == f"api-{api.rsplit(':', 1)[1]}").text()
    finally:
        for identity, document in full.items():
            lane.set_policy(identity, document)
    SUMMARY.append(f"deployed-stack lane, negative: {len(findings)} refusals named, e.g. {findings[:2]}")
    assert any(f.startswith("pedidos-api: AccessDenied from AWS for sqs:ReceiveMessage on arn:aws:sqs:") for f in findings)
    assert any(f.startswith("pedidos-worker process: AccessDenied from AWS for dynamodb:UpdateItem") for f in findings)
    assert any("the template does not allow dynamodb:UpdateItem" in f for f in findings), findings
    denied = [json.loads(line) for line in api_log.splitlines() if "AWS denied sqs:ReceiveMessage" in line]
    assert denied and denied[0]["level"] == "ERROR", api_log[-2000:]
    assert "on queue " in denied[0]["error"] and "user/pedidos-api" in denied[0]["error"], denied[0]
    worker_lines = [json.loads(line) for line in worker.text().splitlines() if "AWS denied dynamodb:UpdateItem" in line]
    assert worker_lines[0]["level"] == "ERROR" and "user/pedidos-worker-process" in worker_lines[0]["error"]
    assert "on table ecomexpress-orders" in worker_lines[0]["error"], worker_lines[0]
    dlq = lane.outputs["ProcessDeadLetterQueueUrl"]
    attributes = lane.client("sqs").get_queue_attributes(QueueUrl=dlq, AttributeNames=["ApproximateNumberOfMessages"])
    assert attributes["Attributes"]["ApproximateNumberOfMessages"] == "0", "a denied write is not the message's fault"
    # With the role fixed, the held order is applied without a restart.
    table = lane.outputs["OrdersTableName"]
    eventually("the held order applied once the role is fixed", lambda: lane.client("dynamodb").get_item(
        TableName=table, Key={"pk": {"S": f"PEDIDO#{pedido}"}}, ConsistentRead=True).get("Item"), timeout=120)  # fmt: skip
    assert worker.stop() == 0


# ---------------------------------------------------------------- drift between `topology` and the templates
# Differences that are intended, each with its reason. Anything else the comparison finds fails the test.
INTENDED = {
    "queue *-subscription-dlq": "the stack's subscription DLQs catch SNS deliveries that fail in AWS; the emulators "
    "never fail a delivery, so topology makes none (docs/deploy.md, 'Subscription dead-letter queues')",
    "subscription RedrivePolicy": "the stack's subscriptions redrive to those subscription DLQs",
    "topic KmsMasterKeyId": "the stack encrypts the topic with its own KMS key; topology leaves local topics "
    "unencrypted (moto and LocalStack do not encrypt anyway)",
    "queue Policy": "topology attaches an allow-the-topic policy to each queue; the stack's AWS::SQS::QueuePolicy "
    "resources are not attached by moto (MOTO_GAPS in test_messaging_stack.py, checked statically there)",
    "table DeletionProtectionEnabled": "the stack protects the tables that hold the orders; local tables are "
    "disposable",
    "table TTL": "moto's CloudFormation drops TimeToLiveSpecification (MOTO_GAPS); the template's TTL attribute is "
    "checked statically against topology's in test_messaging_stack.py",
}


def _describe(client: Callable[[str], Any], prefix: str) -> dict[str, Any]:
    """What matters of every resource named `<prefix>-...`, with the prefix replaced by `PREFIX`."""
    sqs, sns, ddb = client("sqs"), client("sns"), client("dynamodb")
    norm = lambda text: re.sub(rf"\b{re.escape(prefix)}-", "PREFIX-", re.sub(r"\d{12}", "ACCOUNT", text))  # noqa: E731
    found: dict[str, Any] = {}
    for url in sqs.list_queues(QueueNamePrefix=f"{prefix}-").get("QueueUrls", []):
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        keep = {k: v for k, v in attributes.items() if k in {"VisibilityTimeout", "MessageRetentionPeriod",
                "ReceiveMessageWaitTimeSeconds", "DelaySeconds", "MaximumMessageSize", "SqsManagedSseEnabled",
                "KmsMasterKeyId", "FifoQueue", "Policy"}}  # fmt: skip
        if "RedrivePolicy" in attributes:
            redrive = json.loads(attributes["RedrivePolicy"])
            keep["RedrivePolicy"] = {"maxReceiveCount": int(redrive["maxReceiveCount"]),
                                     "target": norm(redrive["deadLetterTargetArn"])}  # fmt: skip
        found[f"queue {norm(url.rsplit('/', 1)[-1])}"] = keep
    topics = [t["TopicArn"] for t in sns.list_topics()["Topics"] if t["TopicArn"].split(":")[-1].startswith(f"{prefix}-")]
    for arn in topics:
        attributes = sns.get_topic_attributes(TopicArn=arn)["Attributes"]
        found[f"topic {norm(arn.split(':')[-1])}"] = {k: v for k, v in attributes.items()
                                                       if k in {"KmsMasterKeyId", "FifoTopic", "ContentBasedDeduplication"}}  # fmt: skip
        for sub in sns.list_subscriptions_by_topic(TopicArn=arn)["Subscriptions"]:
            attributes = sns.get_subscription_attributes(SubscriptionArn=sub["SubscriptionArn"])["Attributes"]
            found[f"subscription {norm(sub['Endpoint'].split(':')[-1])}"] = {
                "Protocol": sub["Protocol"],
                "RawMessageDelivery": attributes.get("RawMessageDelivery", "false"),
                "FilterPolicy": json.loads(attributes["FilterPolicy"]) if attributes.get("FilterPolicy") else None,
                "FilterPolicyScope": attributes.get("FilterPolicyScope", "MessageAttributes"),
                "RedrivePolicy": norm(attributes["RedrivePolicy"]) if attributes.get("RedrivePolicy") else None,
            }
    for name in ddb.list_tables()["TableNames"]:
        if not name.startswith(f"{prefix}-"):
            continue
        table = ddb.describe_table(TableName=name)["Table"]
        ttl = ddb.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
        found[f"table {norm(name)}"] = {
            "KeySchema": table["KeySchema"],
            "AttributeDefinitions": sorted(table["AttributeDefinitions"], key=lambda a: a["AttributeName"]),
            "BillingMode": table.get("BillingModeSummary", {}).get("BillingMode"),
            "GlobalSecondaryIndexes": sorted(
                ({"IndexName": i["IndexName"], "KeySchema": i["KeySchema"], "Projection": i["Projection"]}
                 for i in table.get("GlobalSecondaryIndexes", [])), key=lambda i: i["IndexName"]),  # fmt: skip
            "DeletionProtectionEnabled": table.get("DeletionProtectionEnabled", False),
            "TTL": ttl.get("AttributeName") if ttl.get("TimeToLiveStatus") == "ENABLED" else None,
        }
    return found


def _differences(stack: dict[str, Any], local: dict[str, Any]) -> list[tuple[str, str]]:
    """(intended-key, description) for every difference."""
    out = []
    for name in sorted(stack.keys() | local.keys()):
        kind = name.split(" ", 1)[0]
        if name not in local or name not in stack:
            where = "only in the stack" if name not in local else "only from topology"
            key = f"queue *-subscription-dlq" if name.endswith("-subscription-dlq") else name
            out.append((key, f"{name}: {where}"))
            continue
        for attribute in sorted(stack[name].keys() | local[name].keys()):
            a, b = stack[name].get(attribute), local[name].get(attribute)
            if a != b:
                out.append((f"{kind} {attribute}", f"{name} {attribute}: stack {a!r}, topology {b!r}"))
    return out


def test_topology_and_the_templates_create_the_same_resources() -> None:
    """`pedidos-api topology` (local runs, every test) and messaging.yaml (AWS) in one emulator, under two prefixes:
    tables, keys, indexes and projections, TTL, billing, queue attributes and redrive policies, subscriptions with their
    filter policies, topic attributes. Every difference is either fixed or listed in INTENDED with its reason."""
    LOGS.mkdir(parents=True, exist_ok=True)
    with start_moto(LOGS) as moto:

        def client(service: str) -> Any:
            return boto3.client(service, endpoint_url=moto, region_name=REGION,
                                aws_access_key_id="drift", aws_secret_access_key="drift")  # fmt: skip

        create_messaging_stack(client, "drift-messaging", {"NamePrefix": "drift"})
        topology = subprocess.run(  # noqa: S603 - our own binary
            [str(bin_dir() / "pedidos-api"), "topology"], capture_output=True, text=True, timeout=120, check=False,
            env={"PATH": "/usr/bin:/bin", "AWS_ENDPOINT_URL": moto, "AWS_REGION": REGION, "AWS_ACCESS_KEY_ID": "drift",
                 "AWS_SECRET_ACCESS_KEY": "drift"},
        )  # fmt: skip
        assert topology.returncode == 0, topology.stderr
        stack, local = _describe(client, "drift"), _describe(client, "ecomexpress")
    assert len(stack) >= 10 and len(local) >= 9, (stack.keys(), local.keys())
    differences = _differences(stack, local)
    unexplained = [text for key, text in differences if key not in INTENDED]
    SUMMARY.append(f"drift: {len(stack)} stack resources, {len(local)} from topology, {len(differences)} differences, "
                   f"{len(unexplained)} unexplained")  # fmt: skip
    assert not unexplained, "topology and messaging.yaml differ:\n" + "\n".join(unexplained)
    assert {key for key, _ in differences} <= INTENDED.keys()
    stale = INTENDED.keys() - {key for key, _ in differences}
    assert not stale, f"INTENDED lists differences that no longer exist: {stale}"
