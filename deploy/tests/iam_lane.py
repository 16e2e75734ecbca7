"""The deployed-stack lane's instruments: a recording proxy in front of moto and a policy evaluator.

moto enforces IAM once `/moto-api/reset-auth` switches it on, but only partly: it checks every request's action, and
the resource only for SQS (DynamoDB and SNS requests are checked against Resource "*"); it ignores condition keys
(`dynamodb:LeadingKeys`, `sns:Protocol`); and it names batch calls by their own action (`sqs:DeleteMessageBatch`)
where AWS authorises the single action (`sqs:DeleteMessage`). So the lane gives each IAM user a moto-shaped copy of
its policy (`for_moto`) and, on top, evaluates every recorded call against the template's real statements
(`evaluate`): action, resource and the condition keys the binaries' calls carry. A call either layer refuses fails
the lane, naming the binary, the action and the resource.
"""

from __future__ import annotations

import copy
import http.client
import json
import re
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

# AWS authorises a batch call as its single action (SQS developer guide, "Amazon SQS API permissions").
BATCH_ACTIONS = {
    "sqs:DeleteMessageBatch": "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibilityBatch": "sqs:ChangeMessageVisibility",
    "sqs:SendMessageBatch": "sqs:SendMessage",
}
# Services whose resource moto checks (everything else is checked against "*" by moto, so by `evaluate` here), and
# the SQS actions whose resource moto cannot find (it reads the queue from QueueUrl, which these calls do not carry).
MOTO_CHECKS_RESOURCES = ("sqs:",)
MOTO_SQS_WITHOUT_QUEUE_URL = {
    "sqs:GetQueueUrl", "sqs:ListQueues", "sqs:StartMessageMoveTask", "sqs:ListMessageMoveTasks",
    "sqs:CancelMessageMoveTask",
}  # fmt: skip
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


@dataclass(frozen=True)
class Call:
    identity: str
    action: str  # the IAM action AWS would authorise, e.g. sqs:DeleteMessage for DeleteMessageBatch
    resources: tuple[str, ...]
    context: tuple[tuple[str, tuple[str, ...]], ...]  # condition keys and their values
    status: int
    flow: str


@dataclass
class Recorder:
    """What passed through the proxy, by identity (from the access key that signed it)."""

    region: str
    account: str
    identities: dict[str, str] = field(default_factory=dict)  # access key id -> identity name
    flow: str = "start-up"
    calls: list[Call] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, headers: Any, body: bytes, status: int) -> None:
        auth = headers.get("Authorization", "")
        scope = re.search(r"Credential=([^/]+)/[^/]+/[^/]+/([^/]+)/", auth)
        if not scope:
            return  # unsigned: moto's own API
        key, service = scope[1], scope[2]
        action, params = _action_and_params(service, headers, body)
        if not action:
            return
        action = BATCH_ACTIONS.get(action, action)
        resources, context = _resources(self, action, params)
        with self.lock:
            identity = self.identities.get(key, f"unknown key {key}")
            self.calls.append(Call(identity, action, resources, context, status, self.flow))


def _action_and_params(service: str, headers: Any, body: bytes) -> tuple[str | None, dict[str, Any]]:
    target = headers.get("X-Amz-Target")
    if target:  # JSON protocols: DynamoDB_20120810.UpdateItem, AmazonSQS.ReceiveMessage
        try:
            params = json.loads(body or b"{}")
        except ValueError:
            params = {}
        return f"{service}:{target.rsplit('.', 1)[-1]}", params
    form = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
    params = {k: v[0] for k, v in form.items()}
    return (f"{service}:{params['Action']}" if "Action" in params else None), params


def _resources(rec: Recorder, action: str, p: dict[str, Any]) -> tuple[tuple[str, ...], tuple]:
    arn = f"arn:aws:{{}}:{rec.region}:{rec.account}:{{}}"
    service = action.split(":", 1)[0]
    context: dict[str, set[str]] = {}
    resources: list[str] = []
    if service == "dynamodb":
        tables = [p["TableName"]] if "TableName" in p else list(p.get("RequestItems", {}))
        for item in p.get("TransactItems", []):
            tables += [op["TableName"] for op in item.values()]
        for table in tables:
            resources.append(arn.format("dynamodb", f"table/{table}" + (f"/index/{p['IndexName']}" if "IndexName" in p else "")))
        keys = [p.get("Key"), p.get("Item")] + [op.get("Key") or op.get("Item") for i in p.get("TransactItems", []) for op in i.values()]
        for request in p.get("RequestItems", {}).values():
            keys += request.get("Keys", []) if isinstance(request, dict) else []
        leading = {k["pk"]["S"] for k in keys if isinstance(k, dict) and "pk" in k} | {
            k["id"]["S"] for k in keys if isinstance(k, dict) and "id" in k
        }
        if leading:
            context["dynamodb:LeadingKeys"] = leading
    elif service == "sqs":
        if "QueueUrl" in p:
            resources.append(arn.format("sqs", p["QueueUrl"].rstrip("/").rsplit("/", 1)[-1]))
        elif "QueueName" in p:
            owner = p.get("QueueOwnerAWSAccountId", rec.account)
            resources.append(f"arn:aws:sqs:{rec.region}:{owner}:{p['QueueName']}")
        elif "SourceArn" in p:  # StartMessageMoveTask, ListMessageMoveTasks
            resources.append(p["SourceArn"])
        elif "TaskHandle" in p:  # CancelMessageMoveTask: the handle encodes the source queue
            resources.append("*")
    elif service == "sns":
        resources.append(p.get("TopicArn") or p.get("SubscriptionArn", "*").rsplit(":", 1)[0] or "*")
        if "Protocol" in p:
            context["sns:Protocol"] = {p["Protocol"]}
    return tuple(resources or ["*"]), tuple(sorted((k, tuple(sorted(v))) for k, v in context.items()))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    upstream: tuple[str, int]
    recorder: Recorder
    secrets: dict[str, str]  # access key id -> secret, to sign again what moto cannot verify (see _resign)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def _proxy(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        if self.headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
            body, headers = self._resign(body, headers)
        conn = http.client.HTTPConnection(*self.upstream, timeout=60)
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except OSError:
            self.send_error(502)
            return
        finally:
            conn.close()
        self.recorder.record(self.headers, body, resp.status)
        self.send_response(resp.status)
        for key, value in resp.getheaders():
            if key.lower() not in HOP_BY_HOP | {"content-length"}:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _resign(self, body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
        """moto checks a query-protocol (form) request's signature over the form as botocore would encode it, not
        over the bytes received, so a signature from another SDK (the Rust SDK percent-encodes differently) never
        matches. The same identity's signature over the same parameters, encoded botocore's way, does."""
        scope = re.search(r"Credential=([^/]+)/[^/]+/([^/]+)/([^/]+)/", self.headers.get("Authorization", ""))
        if not scope or scope[1] not in self.secrets:
            return body, headers
        params = urllib.parse.parse_qsl(body.decode("utf-8"), keep_blank_values=True)
        request = AWSRequest(method=self.command, url=f"http://{self.upstream[0]}:{self.upstream[1]}{self.path}",
                             data=dict(params), headers={"Content-Type": self.headers["Content-Type"]})  # fmt: skip
        SigV4Auth(Credentials(scope[1], self.secrets[scope[1]]), scope[3], scope[2]).add_auth(request)
        prepared = request.prepare()
        signed = {k: v for k, v in headers.items()
                  if k.lower() not in {"authorization", "x-amz-date", "host", "content-length"}}  # fmt: skip
        signed.update({k: v for k, v in prepared.headers.items() if k.lower() in {"authorization", "x-amz-date"}})
        signed["Host"] = f"{self.upstream[0]}:{self.upstream[1]}"
        return prepared.body.encode() if isinstance(prepared.body, str) else prepared.body, signed

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _proxy  # noqa: N815


class RecordingProxy:
    """An HTTP proxy on 127.0.0.1 that forwards to moto and records every signed call."""

    def __init__(self, upstream: str, recorder: Recorder, secrets: dict[str, str]) -> None:
        parsed = urllib.parse.urlparse(upstream)
        handler = type("Handler", (_Handler,),
                       {"upstream": (parsed.hostname, parsed.port), "recorder": recorder, "secrets": secrets})  # fmt: skip
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> RecordingProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


# ---------------------------------------------------------------- policies
def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _glob(pattern: str, value: str) -> bool:
    return re.fullmatch(re.escape(pattern).replace(r"\*", ".*").replace(r"\?", "."), value) is not None


def for_moto(document: dict[str, Any]) -> dict[str, Any]:
    """The moto-shaped copy of a policy: batch action names added next to their single action, and Resource "*" for
    the actions whose resource moto does not check (it would compare the ARN with "*" and refuse). `evaluate` checks
    those resources instead."""
    statements = []
    for st in copy.deepcopy(document)["Statement"]:
        actions = _as_list(st["Action"])
        actions += [b for b, single in BATCH_ACTIONS.items() if single in actions]
        st.pop("Condition", None)  # moto does not evaluate condition keys (and ignores them when it has no value)
        unscoped = [a for a in actions if not a.startswith(MOTO_CHECKS_RESOURCES) or a in MOTO_SQS_WITHOUT_QUEUE_URL]
        scoped = [a for a in actions if a not in unscoped]
        if scoped:
            statements.append({**st, "Action": scoped})
        if unscoped:
            sid = {"Sid": f"{st['Sid']}Unscoped"} if "Sid" in st else {}
            statements.append({**st, **sid, "Action": unscoped, "Resource": "*"})
    return {**document, "Statement": statements}


_OPERATORS = {
    "StringEquals": lambda want, have: have in want,
    "StringLike": lambda want, have: any(_glob(w, have) for w in want),
}


def _condition_holds(condition: dict[str, Any], context: dict[str, tuple[str, ...]]) -> bool | None:
    """True or False, or None when a key is not in the call's context (the lane cannot judge it: the caller
    decides; only keys the binaries' calls carry are evaluated)."""
    for operator, keys in condition.items():
        for key, want in keys.items():
            want = [str(w) for w in _as_list(want)]
            if operator == "Null":
                if (key not in context) != (want == ["true"]):
                    return False
                continue
            if key not in context:
                return None
            qualifier, _, base = operator.rpartition(":")
            test = _OPERATORS.get(base)
            if test is None:
                return None
            values = context[key]
            if qualifier == "ForAllValues" and not all(test(want, v) for v in values):
                return False
            if qualifier in ("", "ForAnyValue") and not any(test(want, v) for v in values):
                return False
    return True


def evaluate(document: dict[str, Any], call: Call) -> str | None:
    """None when the template's statements allow `call` (every resource it touches), else why not."""
    context = dict(call.context)
    for resource in call.resources:
        allowed = False
        for st in document["Statement"]:
            if st["Effect"] != "Allow" or not any(_glob(a, call.action) for a in _as_list(st["Action"])):
                continue
            if resource != "*" and not any(_glob(r, resource) for r in _as_list(st["Resource"])):
                continue
            if resource == "*" and _as_list(st["Resource"]) != ["*"] and not call.action.startswith("sqs:"):
                continue
            if _condition_holds(st.get("Condition", {}), context) is not False:
                allowed = True
                break
        if not allowed:
            return f"{call.action} on {resource} (context {context or 'none'})"
    return None
