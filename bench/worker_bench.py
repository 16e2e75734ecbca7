"""Worker benchmark: drain a backlog of SNS-enveloped events with pedidos-worker, then with the seed-style loop.

Reports, per consumer: messages, wall time and msg/s (dominated by moto, see docs/BENCHMARKS.md), CPU microseconds per
message of the consumer process itself (schedstat of its threads, from /proc), SQS calls per message, peak RSS (VmHWM) and, for the
worker, idle RSS. Run through scripts/bench-worker, which builds the release binaries and provides the venv.
"""

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

import boto3

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(ROOT, "target", "release")


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


def run_worker(env, url, n, concurrency, binary):
    port = free_port()
    env = dict(env, SQS_QUEUE_URL=url, PORT=str(port), BIND_ADDR="127.0.0.1", WORKER_CONCURRENCY=str(concurrency), LOG_FORMAT="json", RUST_LOG=os.environ.get("BENCH_RUST_LOG", "info"))
    proc = subprocess.Popen([os.path.join(RELEASE, binary)], env=env, stdout=open(os.path.join(ROOT, "target", "bench-worker.log"), "w"), stderr=subprocess.STDOUT)
    try:
        wait(lambda: _healthy(port), 30, "worker health")
        time.sleep(3)  # let it settle into idle long polls before reading idle RSS (measurement, not synchronisation)
        idle_rss = status_kib(proc.pid, "VmRSS")
        return proc, port, idle_rss
    except BaseException:
        proc.kill()
        raise


def _healthy(port):
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).status == 200
    except OSError:
        return False


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--keepalive", action="store_true",
                        help="serve moto with HTTP keep-alive (bench/moto_keepalive.py), as real SQS does")
    args = parser.parse_args()
    n = args.messages

    moto_port = free_port()
    endpoint = f"http://127.0.0.1:{moto_port}"
    if args.keepalive:
        command = [sys.executable, os.path.join(ROOT, "bench", "moto_keepalive.py"), str(moto_port)]
    else:
        command = [os.path.join(ROOT, ".venv", "bin", "moto_server"), "-H", "127.0.0.1", "-p", str(moto_port)]
    moto = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = dict(os.environ, AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_REGION="us-east-1")
    results = []
    try:
        wait(lambda: _reachable(endpoint), 30, "moto")
        topo = dict(line.split("=", 1) for line in subprocess.check_output([os.path.join(RELEASE, "pedidos-api"), "topology"], env=env, text=True).split())
        url, topic = topo["PROCESS_QUEUE_URL"], topo["SNS_TOPIC_ARN"]
        # The process role applies each order to the orders table: one conditional write per message.
        env["ORDERS_TABLE"] = topo["ORDERS_TABLE"]
        sqs = boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test")

        # The same consumer three ways: no store (queue path alone), one conditional write per message, and the writes of
        # each received batch as one TransactWriteItems.
        variants = [
            ("pedidos-worker, queue only (no-op handler)", os.path.join("examples", "queue_only"), {}),
            ("pedidos-worker, process role, single writes", "pedidos-worker", {}),
            ("pedidos-worker, process role, batched writes", "pedidos-worker", {"STORE_WRITES": "batched"}),
        ]
        for name, binary, extra in variants:
            proc, port, idle_rss = run_worker(dict(env, **extra), url, n, args.concurrency, binary)
            try:
                # CPU counted from before the fill: the worker starts consuming while the backlog is still written.
                cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
                fill(sqs, url, topic, n)
                # Drained is watched on the queue (asking moto), not on the worker's /metrics: rendering metrics ten
                # times a second would be counted as the worker's CPU, more so the longer a drain takes.
                wait(lambda: depth(sqs, url) == 0, 3600, "worker drain")
                wait(lambda: metrics(port).get('pedidos_worker_messages_total{outcome="processed"}', 0) >= n, 60, "worker counters")
                elapsed, cpu = time.monotonic() - t0, cpu_seconds(proc.pid) - cpu0
                m = metrics(port)
                calls = sum(v for k, v in m.items() if k.startswith("pedidos_worker_sqs_calls_total"))
                store_calls = sum(v for k, v in m.items() if k.startswith("pedidos_store_calls_total"))
                # Receives while idle before the fill also count; they are a handful.
                results.append((name, n, elapsed, cpu, calls, status_kib(proc.pid, "VmHWM"), idle_rss, m, store_calls))
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
        calls = int(counts["receive_calls"]) + int(counts["delete_calls"])
        results.append(("seed-style loop (no store)", n, elapsed, last_cpu - cpu0, calls, peak, None, {}, None))
    finally:
        moto.kill()

    print(f"| consumer | messages | wall s | msg/s (moto-bound) | CPU µs/msg | SQS calls/msg | store calls/msg | peak RSS MiB | idle RSS MiB |")
    print(f"|---|---|---|---|---|---|---|---|---|")
    for name, count, elapsed, cpu, calls, peak, idle, _, store_calls in results:
        idle_text = f"{idle / 1024:.1f}" if idle else "n/a"
        store_text = f"{store_calls / count:.3f}" if store_calls is not None else "n/a"
        print(f"| {name} | {count} | {elapsed:.1f} | {count / elapsed:.1f} | {cpu * 1e6 / count:.1f} | {calls / count:.3f} | {store_text} | {peak / 1024:.1f} | {idle_text} |")
    print()
    for name, _, _, _, _, _, _, worker_metrics, _ in results[:3]:
        print(f"{name}: SQS calls", {k: v for k, v in worker_metrics.items() if "sqs_calls" in k})
        print(f"{name}: store calls", {k: v for k, v in worker_metrics.items() if "store_calls_total" in k})


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
