"""Worker benchmark: drain a backlog of SNS-enveloped events with pedidos-worker, then with the seed-style loop.

Reports, per consumer: messages, wall time and msg/s (dominated by the emulator, see docs/BENCHMARKS.md), CPU
microseconds per message of the consumer process itself (schedstat of its threads, from /proc), SQS calls per message
(all of them, since the consumer started), receive+delete calls per message (from just before the backlog is written
to the end of the drain), store calls per message, peak RSS (VmHWM) and, for the worker, idle RSS.

Emulators (--emulator): `moto` (default) serves SQS, SNS and DynamoDB from scripts/lib/moto_server.py, the project's
moto with DynamoDB requests serialised (--keepalive: bench/moto_keepalive.py instead); `localstack` serves SNS and SQS
from LocalStack (scripts/lib/localstack_server.py, run by LocalStack's own Python, $LOCALSTACK_BIN) and DynamoDB from
scripts/lib/moto_server.py, wired as scripts/run-local --localstack does (AWS_ENDPOINT_URL and
AWS_ENDPOINT_URL_DYNAMODB). Each worker's log (JSON lines) is kept in target/bench-worker-<emulator>-<variant>.log.
Run through scripts/bench-worker, which builds the release binaries, provides the venv and, for LocalStack, installs
or locates it.
"""

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid

import boto3

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(ROOT, "target", "release")
LOCALSTACK_BIN = os.environ.get("LOCALSTACK_BIN") or os.path.join(ROOT, ".local", "localstack", "venv", "bin", "python")
# The two SQS operations a drain cannot do without: one receive and one batch delete per (up to) ten messages.
RECEIVE_DELETE = ('pedidos_worker_sqs_calls_total{operation="receive"}', 'pedidos_worker_sqs_calls_total{operation="delete"}')


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    sys.exit(f"timed out waiting for {what}")


def cpu_seconds(pid):
    """On-CPU time of every live thread of `pid`, in seconds, from /proc/<pid>/task/*/schedstat (nanoseconds; utime
    and stime in /proc/<pid>/stat count 10 ms ticks, too coarse for tens of microseconds per message)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:
            pass
    return total / 1e9


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def envelope(topic_arn, i):
    pedido_id = str(uuid.uuid4())
    event = {
        "type": "PedidoCreado", "version": 1, "occurredAt": "2026-11-21T10:00:00Z", "pedidoId": pedido_id,
        "clienteId": str(uuid.uuid4()), "fecha": "2026-11-21T10:00:00-03:00", "total": 59.98,
    }
    return json.dumps({
        "Type": "Notification", "MessageId": str(uuid.uuid4()), "TopicArn": topic_arn, "Subject": "Nuevo Pedido",
        "Message": json.dumps(event, separators=(",", ":")), "Timestamp": "2026-11-21T10:00:00.000Z",
        "SignatureVersion": "1", "Signature": "x" * 344,
        "MessageAttributes": {"eventType": {"Type": "String", "Value": "PedidoCreado"},
                              "requestId": {"Type": "String", "Value": f"bench-{i}"}},
    })


def fill(sqs, url, topic_arn, n):
    for start in range(0, n, 10):
        entries = [{"Id": str(i), "MessageBody": envelope(topic_arn, start + i)} for i in range(min(10, n - start))]
        sqs.send_message_batch(QueueUrl=url, Entries=entries)


def depth(sqs, url):
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])


def metrics(port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values = {}
    for line in text.splitlines():
        m = re.match(r"^(pedidos_(?:worker|store)_[a-z_]+(?:\{[^}]*\})?) ([0-9.e+-]+)$", line)
        if m:
            values[m.group(1)] = float(m.group(2))
    return values


def receive_delete(worker_metrics):
    return sum(worker_metrics.get(key, 0) for key in RECEIVE_DELETE)


def run_worker(env, url, concurrency, binary, log):
    port = free_port()
    env = dict(env, SQS_QUEUE_URL=url, PORT=str(port), BIND_ADDR="127.0.0.1", WORKER_CONCURRENCY=str(concurrency), LOG_FORMAT="json", RUST_LOG=os.environ.get("BENCH_RUST_LOG", "info"))
    with open(log, "w") as out:
        proc = subprocess.Popen([os.path.join(RELEASE, binary)], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        # /health answers 200 from the start ({"status":"starting"}): measuring waits for "ok" (consuming).
        wait(lambda: _health_status(port) == "ok", 30, f"worker health to say ok (log: {log})")
        time.sleep(3)  # let it settle into idle long polls before reading idle RSS (measurement, not synchronisation)
        idle_rss = status_kib(proc.pid, "VmRSS")
        return proc, port, idle_rss
    except BaseException:
        proc.kill()
        raise


def _health_status(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as answer:
            return json.load(answer).get("status")
    except (OSError, ValueError):
        return None


def start(command, name, stack):
    """Starts an emulator with its output in target/bench-NAME.log; stopped when `stack` closes."""
    log = os.path.join(ROOT, "target", f"bench-{name}.log")
    with open(log, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    stack.callback(stop, proc)
    return proc, log


def stop(proc, timeout=15):
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_ready(proc, log, check, timeout, what):
    def ready():
        if proc.poll() is not None:
            sys.exit(f"{what} exited with status {proc.returncode}; see {log}")
        return check()

    return wait(ready, timeout, f"{what} (log: {log})")


def start_emulators(emulator, keepalive, stack):
    """Starts the emulator(s); returns the environment for the worker and the topology, and a line describing them."""
    if emulator == "localstack" and not os.access(LOCALSTACK_BIN, os.X_OK):
        sys.exit(f"--emulator localstack: no LocalStack Python at {LOCALSTACK_BIN}; run through scripts/bench-worker, "
                 "which installs LocalStack (scripts/lib/localstack.sh), or set LOCALSTACK_BIN")
    env = dict(os.environ, AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_REGION="us-east-1")
    env.pop("AWS_ENDPOINT_URL_DYNAMODB", None)
    moto_port = free_port()
    moto_endpoint = f"http://127.0.0.1:{moto_port}"
    if keepalive:
        command = [sys.executable, os.path.join(ROOT, "bench", "moto_keepalive.py"), str(moto_port)]
        moto_name = "moto with keep-alive (bench/moto_keepalive.py)"
    else:
        command = [sys.executable, os.path.join(ROOT, "scripts", "lib", "moto_server.py"), "-H", "127.0.0.1", "-p", str(moto_port)]
        moto_name = "moto (scripts/lib/moto_server.py)"
    moto, moto_log = start(command, "moto", stack)
    if emulator == "moto":
        wait_ready(moto, moto_log, lambda: _reachable(moto_endpoint), 30, "moto")
        env["AWS_ENDPOINT_URL"] = moto_endpoint
        return env, f"{moto_name} for SQS, SNS and DynamoDB, {moto_endpoint}"

    # LocalStack for SNS and SQS, moto for DynamoDB (LocalStack's DynamoDB cannot run offline), as scripts/run-local
    # --localstack wires them.
    ls_port = free_port()
    ls_endpoint = f"http://127.0.0.1:{ls_port}"
    root = tempfile.mkdtemp(prefix="bench-localstack-")
    # Removed after LocalStack has stopped (the stack unwinds last in, first out).
    stack.callback(shutil.rmtree, root, ignore_errors=True)
    localstack, ls_log = start([LOCALSTACK_BIN, os.path.join(ROOT, "scripts", "lib", "localstack_server.py"),
                                "-H", "127.0.0.1", "-p", str(ls_port), "--root", root], "localstack", stack)
    wait_ready(moto, moto_log, lambda: _reachable(moto_endpoint), 30, "moto")
    version = wait_ready(localstack, ls_log, lambda: _localstack_ready(ls_endpoint), 90, "LocalStack")
    env["AWS_ENDPOINT_URL"] = ls_endpoint
    env["AWS_ENDPOINT_URL_DYNAMODB"] = moto_endpoint
    return env, f"LocalStack {version} for SNS and SQS, {ls_endpoint}; {moto_name} for DynamoDB, {moto_endpoint}"


def _localstack_ready(endpoint):
    """LocalStack's version once /_localstack/health reports SNS and SQS up."""
    try:
        with urllib.request.urlopen(f"{endpoint}/_localstack/health", timeout=1) as answer:
            health = json.load(answer)
    except (OSError, ValueError):
        return None
    up = all(health.get("services", {}).get(s) in ("running", "available") for s in ("sns", "sqs"))
    return (health.get("version") or "(version unknown)") if up else None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--emulator", choices=("moto", "localstack"), default="moto",
                        help="moto: SQS, SNS and DynamoDB on scripts/lib/moto_server.py (default); localstack: SNS and "
                             "SQS on LocalStack, DynamoDB on scripts/lib/moto_server.py")
    parser.add_argument("--keepalive", action="store_true",
                        help="serve moto with HTTP keep-alive (bench/moto_keepalive.py), as real SQS does; moto only")
    args = parser.parse_args()
    if args.keepalive and args.emulator != "moto":
        parser.error("--keepalive applies to --emulator moto only")
    n = args.messages

    results = []
    with contextlib.ExitStack() as stack:
        env, emulators = start_emulators(args.emulator, args.keepalive, stack)
        endpoint = env["AWS_ENDPOINT_URL"]
        topo = dict(line.split("=", 1) for line in subprocess.check_output([os.path.join(RELEASE, "pedidos-api"), "topology"], env=env, text=True).split())
        url, topic = topo["PROCESS_QUEUE_URL"], topo["SNS_TOPIC_ARN"]
        # The process role applies each order to the orders table: one conditional write per message.
        env["ORDERS_TABLE"] = topo["ORDERS_TABLE"]
        sqs = boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test")

        # The same consumer three ways: no store (queue path alone), one conditional write per message, and the writes of
        # each received batch as one TransactWriteItems.
        variants = [
            ("queue-only", "pedidos-worker, queue only (no-op handler)", os.path.join("examples", "queue_only"), {}),
            ("single", "pedidos-worker, process role, single writes", "pedidos-worker", {}),
            ("batched", "pedidos-worker, process role, batched writes", "pedidos-worker", {"STORE_WRITES": "batched"}),
        ]
        for key, name, binary, extra in variants:
            log = os.path.join(ROOT, "target", f"bench-worker-{args.emulator}-{key}.log")
            proc, port, idle_rss = run_worker(dict(env, **extra), url, args.concurrency, binary, log)
            try:
                # Receives and deletes are counted from here: the idle long polls before the fill are not the drain's.
                # (Read before the CPU mark, so rendering these metrics is not counted as the drain's CPU.)
                before = metrics(port)
                # CPU counted from before the fill: the worker starts consuming while the backlog is still written.
                cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
                fill(sqs, url, topic, n)
                # Drained is watched on the queue (asking the emulator), not on the worker's /metrics: rendering metrics
                # ten times a second would be counted as the worker's CPU, more so the longer a drain takes.
                wait(lambda: depth(sqs, url) == 0, 3600, "worker drain")
                wait(lambda: metrics(port).get('pedidos_worker_messages_total{outcome="processed"}', 0) >= n, 60, "worker counters")
                elapsed, cpu = time.monotonic() - t0, cpu_seconds(proc.pid) - cpu0
                m = metrics(port)
                results.append(dict(
                    name=name, messages=n, elapsed=elapsed, cpu=cpu,
                    # All SQS calls since start-up: the idle receives before the fill also count; they are a handful.
                    calls=sum(v for k, v in m.items() if k.startswith("pedidos_worker_sqs_calls_total")),
                    receive_delete=receive_delete(m) - receive_delete(before),
                    store_calls=sum(v for k, v in m.items() if k.startswith("pedidos_store_calls_total")),
                    peak=status_kib(proc.pid, "VmHWM"), idle=idle_rss, metrics=m, before=before, log=log))
            finally:
                proc.terminate()
                proc.wait(timeout=60)

        # Seed-style loop
        # Same protocol as for the worker: the consumer runs while the backlog is written.
        t0 = time.monotonic()
        seed = subprocess.Popen([os.path.join(RELEASE, "examples", "seed_loop"), url, str(n)], env=env, stdout=subprocess.PIPE, text=True)
        fill(sqs, url, topic, n)
        cpu0, peak = 0.0, 0
        last_cpu = 0.0
        while seed.poll() is None:
            try:
                last_cpu = cpu_seconds(seed.pid)
                peak = max(peak, status_kib(seed.pid, "VmHWM"))
            except OSError:
                pass
            time.sleep(0.2)
        elapsed = time.monotonic() - t0
        out = seed.stdout.read()
        counts = dict(kv.split("=") for kv in out.split())
        # Every call it makes is a receive or a (single) delete.
        calls = int(counts["receive_calls"]) + int(counts["delete_calls"])
        results.append(dict(name="seed-style loop (no store)", messages=n, elapsed=elapsed, cpu=last_cpu - cpu0, calls=calls,
                            receive_delete=calls, store_calls=None, peak=peak, idle=None, metrics={}, before={}, log=None))

    print(f"emulator: {emulators}")
    print()
    print("| consumer | messages | wall s | msg/s (emulator-bound) | CPU µs/msg | SQS calls/msg | receive+delete calls/msg | store calls/msg | peak RSS MiB | idle RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        count = r["messages"]
        idle_text = f"{r['idle'] / 1024:.1f}" if r["idle"] else "n/a"
        store_text = f"{r['store_calls'] / count:.3f}" if r["store_calls"] is not None else "n/a"
        print(f"| {r['name']} | {count} | {r['elapsed']:.1f} | {count / r['elapsed']:.1f} | {r['cpu'] * 1e6 / count:.1f} | {r['calls'] / count:.3f} | {r['receive_delete'] / count:.3f} | {store_text} | {r['peak'] / 1024:.1f} | {idle_text} |")
    print()
    for r in results:
        if r["log"] is None:
            continue
        m, before = r["metrics"], r["before"]
        receives, deletes = (m.get(k, 0) - before.get(k, 0) for k in RECEIVE_DELETE)
        # The store calls column also counts the periodic role-stats report (operation "stats"), which is not per message.
        writes = sum(v - before.get(k, 0) for k, v in m.items() if k.startswith("pedidos_store_calls_total") and 'operation="stats"' not in k)
        # Average sizes over the drain; the receives include the empty long polls that end it.
        print(f"{r['name']}: during the drain {receives:.0f} receives ({r['messages'] / max(receives, 1):.2f} messages "
              f"per receive), {deletes:.0f} delete batches ({r['messages'] / max(deletes, 1):.2f} per batch), {writes:.0f} "
              f"store writes ({writes / r['messages']:.3f} per message); log {r['log']}")
        print(f"{r['name']}: SQS calls", {k: v for k, v in m.items() if "sqs_calls" in k})
        print(f"{r['name']}: store calls", {k: v for k, v in m.items() if "store_calls_total" in k})


def _reachable(endpoint):
    try:
        urllib.request.urlopen(endpoint, timeout=1)
        return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


if __name__ == "__main__":
    main()
