"""Tracing benchmark: what OpenTelemetry traces cost the API per request and the process worker per message.

One pass per variant, side by side in one invocation, on one moto (scripts/lib/moto_server.py, SQS, SNS and DynamoDB):

  before   the binaries built from the commit before traces were added (--baseline DIR, optional)
  off      this build, no OTLP endpoint (traces off: no tracer, no exporter)
  1.0      this build, OTEL_TRACES_SAMPLER=parentbased_traceidratio, OTEL_TRACES_SAMPLER_ARG=1.0
  0.1      the same with OTEL_TRACES_SAMPLER_ARG=0.1

In each pass the API and a process-role worker run together: N orders are POSTed (8 at a time), SNS fans them out, the
worker drains the process queue with one conditional write per order, so its messages carry the API's trace context as
they do in production. CPU is each process's own (schedstat of its threads, from /proc) from just before the first
POST to 6 s after the drain (the export of the pass's last spans included), divided by N. With traces on, the spans go
to scripts/lib/otlp_dump.py --quiet (a local OTLP/HTTP receiver; its CPU is not counted). Spans exported and dropped
are the services' own counters.
Run through scripts/bench-traces, which builds the release binaries and provides the venv.
Logs in target/bench-traces-*.
"""

import argparse
import contextlib
import os
import re
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "lib"))

import boto3  # noqa: E402

from bench_api import run_concurrent  # noqa: E402
from worker_bench import (  # noqa: E402
    RELEASE, ROOT, _health_status, cpu_seconds, depth, free_port, start, start_emulators, status_kib, stop, wait,
    wait_ready,
)


def metrics(port):
    """Every sample of the service's /metrics as {name{labels}: value}."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^([a-z_]+(?:\{[^}]*\})?) ([0-9.e+-]+)$", text, re.M)}


def total(values, prefix):
    return sum(v for k, v in values.items() if k.startswith(prefix))


def launch(binary, env, name, stack):
    port = free_port()
    log = os.path.join(ROOT, "target", f"bench-traces-{name}.log")
    with open(log, "w") as out:
        proc = subprocess.Popen([binary], env=dict(env, PORT=str(port), BIND_ADDR="127.0.0.1", LOG_FORMAT="json",
                                                   RUST_LOG=os.environ.get("BENCH_RUST_LOG", "info")),
                                stdout=out, stderr=subprocess.STDOUT)
    stack.callback(stop, proc, 60)  # a worker finishes its long poll (up to 20 s) before it exits
    return proc, port, log


def one_pass(variant, bindir, extra, env, topo, sqs, orders, concurrency):
    name = f"{variant['key']}-{variant['round']}"
    env = dict(env, **extra)
    with contextlib.ExitStack() as stack:
        api, api_port, api_log = launch(os.path.join(bindir, "pedidos-api"), dict(
            env, SNS_TOPIC_ARN=topo["SNS_TOPIC_ARN"], ORDERS_TABLE=topo["ORDERS_TABLE"]), f"{name}-api", stack)
        worker, worker_port, worker_log = launch(os.path.join(bindir, "pedidos-worker"), dict(
            env, SQS_QUEUE_URL=topo["PROCESS_QUEUE_URL"], ORDERS_TABLE=topo["ORDERS_TABLE"],
            WORKER_CONCURRENCY="10"), f"{name}-worker", stack)
        wait_ready(api, api_log, lambda: _health_status(api_port) == "ok", 30, "pedidos-api")
        wait_ready(worker, worker_log, lambda: _health_status(worker_port) == "ok", 30, "pedidos-worker")
        time.sleep(2)  # let both settle into idle (measurement, not synchronisation)
        before_api, before_worker = metrics(api_port), metrics(worker_port)
        api_cpu0, worker_cpu0 = cpu_seconds(api.pid), cpu_seconds(worker.pid)
        _, statuses, _ = run_concurrent(f"http://127.0.0.1:{api_port}", orders, concurrency)
        if statuses.get(202, 0) != orders:
            sys.exit(f"{name}: the API answered {statuses}, not {orders} x 202; see {api_log}")
        # Drained is watched on the queue (asking the emulator): scraping the worker would count as its CPU.
        wait(lambda: depth(sqs, topo["PROCESS_QUEUE_URL"]) == 0, 3600, f"{name}: the worker's drain")
        # Spans are exported in batches at most OTEL_BSP_SCHEDULE_DELAY (5 s) apart: wait that long (every variant,
        # so each pays the same idle time) so the export of this pass's spans is counted in the pass.
        time.sleep(6)
        api_cpu, worker_cpu = cpu_seconds(api.pid) - api_cpu0, cpu_seconds(worker.pid) - worker_cpu0
        applied = 'pedidos_worker_messages_total{outcome="processed"}'
        wait(lambda: metrics(worker_port).get(applied, 0) - before_worker.get(applied, 0) >= orders, 60,
             f"{name}: the worker's counters")
        after_api, after_worker = metrics(api_port), metrics(worker_port)
        result = dict(variant=variant["key"], round=variant["round"], api_cpu=api_cpu / orders,
                      worker_cpu=worker_cpu / orders, api_rss=status_kib(api.pid, "VmHWM"),
                      worker_rss=status_kib(worker.pid, "VmHWM"))
        for who, before, after in (("api", before_api, after_api), ("worker", before_worker, after_worker)):
            for what in ("exported", "dropped"):
                prefix = f"pedidos_trace_spans_{what}_total"
                result[f"{who}_{what}"] = total(after, prefix) - total(before, prefix)
    # The logistics copies are not consumed here: dropped so the emulator's queue scans stay short.
    sqs.purge_queue(QueueUrl=topo["LOGISTICS_QUEUE_URL"])
    return result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--orders", type=int, default=1000, help="orders per pass (default 1000)")
    parser.add_argument("--rounds", type=int, default=1, help="passes per variant, interleaved; medians reported")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--baseline", help="directory with pedidos-api and pedidos-worker built before traces existed")
    args = parser.parse_args()

    collector_port = free_port()
    traced = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector_port}",
              "OTEL_TRACES_SAMPLER": "parentbased_traceidratio"}
    variants = [("off", RELEASE, {}), ("1.0", RELEASE, dict(traced, OTEL_TRACES_SAMPLER_ARG="1.0")),
                ("0.1", RELEASE, dict(traced, OTEL_TRACES_SAMPLER_ARG="0.1"))]
    if args.baseline:
        variants.insert(0, ("before", args.baseline, {}))
    for _, bindir, _ in variants:
        for binary in ("pedidos-api", "pedidos-worker"):
            if not os.access(os.path.join(bindir, binary), os.X_OK):
                sys.exit(f"no {binary} in {bindir}: build it first (scripts/bench-traces builds this tree's)")

    results = []
    with contextlib.ExitStack() as stack:
        env, emulators = start_emulators("moto", False, stack)
        for key in [k for k in os.environ if k.startswith("OTEL_")]:
            env.pop(key)  # only what a variant sets
        topo = dict(line.split("=", 1) for line in subprocess.check_output(
            [os.path.join(RELEASE, "pedidos-api"), "topology"], env=env, text=True).split())
        sqs = boto3.client("sqs", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                           aws_access_key_id="test", aws_secret_access_key="test")
        collector, collector_log = start([sys.executable, os.path.join(ROOT, "scripts", "lib", "otlp_dump.py"),
                                          "--port", str(collector_port), "--quiet"], "traces-collector", stack)
        wait_ready(collector, collector_log, lambda: _listening(collector_port), 30, "the OTLP receiver")
        print(f"emulator: {emulators}; load average before: {open('/proc/loadavg').read().split()[:3]}", flush=True)
        for round_ in range(1, args.rounds + 1):
            for key, bindir, extra in variants:
                print(f"==> {key}, round {round_}", file=sys.stderr, flush=True)
                results.append(one_pass(dict(key=key, round=round_), bindir, extra, env, topo, sqs, args.orders,
                                        args.concurrency))

    print(f"{args.orders} orders per pass, {args.concurrency} at a time, {args.rounds} round(s); "
          "medians, each round in parentheses")
    print()
    print("| traces | API CPU µs/request | worker CPU µs/message | spans exported (API / worker) | spans dropped | "
          "peak RSS MiB (API / worker) |")
    print("|---|---|---|---|---|---|")
    for key, _, _ in variants:
        rows = [r for r in results if r["variant"] == key]

        def cell(field, scale=1e6):
            values = [r[field] * scale for r in rows]
            each = f" ({', '.join(f'{v:.0f}' for v in values)})" if len(values) > 1 else ""
            return f"{statistics.median(values):.0f}{each}"

        exported = f"{statistics.median(r['api_exported'] for r in rows):.0f} / " \
                   f"{statistics.median(r['worker_exported'] for r in rows):.0f}"
        dropped = f"{max(r['api_dropped'] + r['worker_dropped'] for r in rows):.0f}"
        rss = f"{max(r['api_rss'] for r in rows) / 1024:.1f} / {max(r['worker_rss'] for r in rows) / 1024:.1f}"
        print(f"| {key} | {cell('api_cpu')} | {cell('worker_cpu')} | {exported} | {dropped} | {rss} |")


def _listening(port):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
    return True


if __name__ == "__main__":
    main()
