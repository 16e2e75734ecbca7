"""Load generator and report for scripts/bench-api (run with the project's .venv Python).

Measures, against a running pedidos-api and the moto server behind it:
  * idle RSS of the API (VmRSS from /proc/<pid>/status), before and after load;
  * latency of POST /api/pedidos (sequential, so the numbers are not queueing), interleaved with the same SNS Publish
    sent straight to moto by the same lightweight HTTP client ("direct"), and with boto3 as a second reference;
  * a concurrent run: throughput and the API's CPU time per accepted order (utime+stime from /proc/<pid>/stat);
  * the API's own histograms from /metrics: time in the SNS call vs whole request, i.e. the API's share in-process;
  * order tracking: sequential GET /api/pedidos/{id} of unknown orders (a 404 after one DynamoDB BatchGetItem on
    moto), next to the store-call histogram the API records.
Prints a Markdown report and writes the raw numbers as JSON.

moto's Publish gets slower as messages pile up in the subscribed queues (about 15 ms at depth 0, 70 ms at depth
1700 on the reference machine), so the queues are purged every few dozen orders, outside the timed sections: the
numbers then describe the API, not moto's growing state. (In production the workers keep the queues near empty.)
"""

import argparse
import http.client
import json
import os
import re
import threading
import time
import urllib.parse
import uuid

import boto3  # from requirements-dev.txt (the venv scripts/bench-api runs)

CLIENTE = "6f1c2a0e-9a51-4c1e-8d0b-0c8f4f1a2b3c"
TICKS = os.sysconf("SC_CLK_TCK")


def seed_orders(moto_url, table, n):
    """Writes `n` orders as the process and logistics workers store them (docs/data-model.md); returns their ids."""
    dynamodb = boto3.client("dynamodb", endpoint_url=moto_url, region_name="us-east-1",
                            aws_access_key_id="test", aws_secret_access_key="test")
    ids = []
    now = "2026-12-02T10:00:00.000Z"
    for _ in range(n):
        pedido_id, cliente_id, request_id = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
        dynamodb.put_item(TableName=table, Item={
            "pk": {"S": f"PEDIDO#{pedido_id}"}, "tipo": {"S": "PEDIDO"}, "pedidoId": {"S": pedido_id},
            "version": {"N": "1"}, "estado": {"S": "CREADO"}, "clienteId": {"S": cliente_id},
            "fecha": {"S": "2026-12-02T07:00:00-03:00"}, "fechaOrden": {"S": f"{now}#{pedido_id}"},
            "dia": {"S": "2026-12-02"}, "actualizadoOrden": {"S": f"{now}#{pedido_id}"},
            "total": {"N": "59.98"}, "creadoEn": {"S": now}, "actualizadoEn": {"S": now}, "requestId": {"S": request_id},
            "items": {"L": [{"M": {"productoId": {"S": "SKU-1"}, "cantidad": {"N": "2"}, "precioUnitario": {"N": "29.99"}}}]},
            "versiones": {"L": [{"M": {"version": {"N": "1"}, "aplicadaEn": {"S": now}, "requestId": {"S": request_id}}}]},
        })
        dynamodb.put_item(TableName=table, Item={
            "pk": {"S": f"ENVIO#{pedido_id}"}, "tipo": {"S": "ENVIO"}, "pedidoId": {"S": pedido_id},
            "trackingCode": {"S": "ECX-BENCH0000000"}, "estado": {"S": "PREPARANDO"}, "creadoEn": {"S": now},
        })
        ids.append(pedido_id)
    return ids


def percentile(values, q):
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def ms(seconds):
    return seconds * 1000.0


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        # Fields after the ")" that closes the command name; utime and stime are fields 14 and 15 (1-based).
        rest = f.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / TICKS


def order_body(total="59.98"):
    # No client pedidoId: with one, the API first reads the order store (a retry or a reused id must be told apart),
    # which would put a DynamoDB call inside what this benchmark reports as the API's own share of a publish.
    return json.dumps({"clienteId": CLIENTE, "total": total})


def event_json():
    """The same event text the API publishes (shape and size), for the direct publishes."""
    return (
        '{"type":"PedidoCreado","version":1,"occurredAt":"2026-11-21T13:30:00.123456Z",'
        f'"pedidoId":"{uuid.uuid4()}","clienteId":"{CLIENTE}",'
        '"fecha":"2026-11-21T13:30:00.123456+00:00","total":59.98}'
    )


class Api:
    def __init__(self, url):
        parsed = urllib.parse.urlsplit(url)
        self.conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)

    def post(self):
        body = order_body()
        started = time.perf_counter()
        self.conn.request("POST", "/api/pedidos", body, {"Content-Type": "application/json"})
        response = self.conn.getresponse()
        response.read()
        return response.status, time.perf_counter() - started

    def get(self, path):
        started = time.perf_counter()
        self.conn.request("GET", path)
        response = self.conn.getresponse()
        response.read()
        return response.status, time.perf_counter() - started


class DirectSns:
    """SNS Publish (query protocol) straight to moto over a keep-alive connection; moto does not check signatures."""

    def __init__(self, url, topic_arn):
        parsed = urllib.parse.urlsplit(url)
        self.conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
        self.topic_arn = topic_arn
        self.headers = {
            "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
            "Authorization": "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/sns/aws4_request, "
            "SignedHeaders=host, Signature=0",
        }

    def publish(self):
        pedido = str(uuid.uuid4())
        form = {
            "Action": "Publish",
            "Version": "2010-03-31",
            "TopicArn": self.topic_arn,
            "Subject": "Nuevo Pedido",
            "Message": event_json(),
        }
        for i, (name, kind, value) in enumerate(
            [("eventType", "String", "PedidoCreado"), ("version", "Number", "1"), ("pedidoId", "String", pedido),
             ("requestId", "String", str(uuid.uuid4()))],
            start=1,
        ):
            form[f"MessageAttributes.entry.{i}.Name"] = name
            form[f"MessageAttributes.entry.{i}.Value.DataType"] = kind
            form[f"MessageAttributes.entry.{i}.Value.StringValue"] = value
        body = urllib.parse.urlencode(form)
        started = time.perf_counter()
        self.conn.request("POST", "/", body, self.headers)
        response = self.conn.getresponse()
        response.read()
        return response.status, time.perf_counter() - started


def boto3_publisher(moto_url, topic_arn):
    import boto3  # from requirements-dev.txt

    client = boto3.client(
        "sns", endpoint_url=moto_url, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
    )
    attributes = {
        "eventType": {"DataType": "String", "StringValue": "PedidoCreado"},
        "version": {"DataType": "Number", "StringValue": "1"},
    }

    def publish():
        started = time.perf_counter()
        client.publish(TopicArn=topic_arn, Subject="Nuevo Pedido", Message=event_json(), MessageAttributes=attributes)
        return 200, time.perf_counter() - started

    return publish


def histogram(metrics_text, name, label_filter=""):
    """(sum, count, [(le, cumulative)]) of a Prometheus histogram, summed over series matching label_filter."""
    total_sum = total_count = 0.0
    buckets = {}
    for line in metrics_text.splitlines():
        if line.startswith("#") or label_filter not in line:
            continue
        value = line.rsplit(" ", 1)[-1]
        if line.startswith(name + "_sum"):
            total_sum += float(value)
        elif line.startswith(name + "_count"):
            total_count += float(value)
        elif line.startswith(name + "_bucket"):
            le = re.search(r'le="([^"]+)"', line).group(1)
            buckets[le] = buckets.get(le, 0.0) + float(value)
    ordered = sorted(((float("inf") if le == "+Inf" else float(le)), c) for le, c in buckets.items())
    return total_sum, total_count, ordered


def bucket_quantile(buckets, q):
    """Upper bound of the bucket holding quantile q (what Prometheus' histogram_quantile rounds up to)."""
    if not buckets or buckets[-1][1] == 0:
        return float("nan")
    target = q * buckets[-1][1]
    for le, cumulative in buckets:
        if cumulative >= target:
            return le
    return float("inf")


class Purger:
    """Empties the topology's queues between timed sections (see the module docstring)."""

    def __init__(self, moto_url, queue_urls):
        import boto3

        self.sqs = boto3.client(
            "sqs", endpoint_url=moto_url, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
        )
        self.queue_urls = queue_urls

    def __call__(self):
        for url in self.queue_urls:
            self.sqs.purge_queue(QueueUrl=url)


def run_concurrent(api_url, requests, concurrency):
    latencies, statuses = [], {}
    lock = threading.Lock()
    per_thread = [requests // concurrency + (1 if i < requests % concurrency else 0) for i in range(concurrency)]

    def work(count):
        api = Api(api_url)
        local_lat, local_status = [], {}
        for _ in range(count):
            status, elapsed = api.post()
            local_status[status] = local_status.get(status, 0) + 1
            if status == 202:
                local_lat.append(elapsed)
        with lock:
            latencies.extend(local_lat)
            for k, v in local_status.items():
                statuses[k] = statuses.get(k, 0) + v

    threads = [threading.Thread(target=work, args=(n,)) for n in per_thread]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, statuses, time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--api", required=True)
    parser.add_argument("--moto", required=True)
    parser.add_argument("--topic-arn", required=True)
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--sequential", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--queue-url", action="append", default=[])
    parser.add_argument("--chunk", type=int, default=200, help="orders between queue purges in the concurrent run")
    parser.add_argument("--orders-table", required=True, help="orders table, seeded with applied orders to GET")
    parser.add_argument("--json-out", required=True)
    args = parser.parse_args()

    rss_idle = rss_kib(args.pid)

    api, direct, boto = Api(args.api), DirectSns(args.moto, args.topic_arn), boto3_publisher(args.moto, args.topic_arn)
    purge = Purger(args.moto, args.queue_url)
    for _ in range(100):  # warm-up: connections, SDK, moto's code paths
        api.post()
        direct.publish()
        boto()
    purge()

    # Sequential and interleaved, so drift in moto (its queues fill up) affects both sides alike.
    api_lat, direct_lat, boto_lat, failures = [], [], [], 0
    for i in range(args.sequential):
        if i % 25 == 0:
            purge()
        status, elapsed = api.post()
        if status == 202:
            api_lat.append(elapsed)
        else:
            failures += 1
        status, elapsed = direct.publish()
        if status == 200:
            direct_lat.append(elapsed)
        else:
            failures += 1
        boto_lat.append(boto()[1])

    conc_lat, statuses, wall, cpu_used, done = [], {}, 0.0, 0.0, 0
    while done < args.requests:
        chunk = min(args.chunk, args.requests - done)
        purge()
        cpu_before = cpu_seconds(args.pid)
        lat, st, w = run_concurrent(args.api, chunk, args.concurrency)
        cpu_used += cpu_seconds(args.pid) - cpu_before
        conc_lat += lat
        wall += w
        for k, v in st.items():
            statuses[k] = statuses.get(k, 0) + v
        done += chunk
    purge()
    accepted = statuses.get(202, 0)

    # Tracking reads: orders as a worker applies them (state + shipment, seeded straight into the table), each GET one
    # BatchGetItem answered 200; CPU of the API process counted over the reads alone.
    tracked = seed_orders(args.moto, args.orders_table, 100)
    get_lat, get_statuses = [], {}
    for pedido_id in tracked[:20]:  # warm-up
        api.get(f"/api/pedidos/{pedido_id}")
    cpu_before = cpu_seconds(args.pid)
    for i in range(args.sequential):
        status, elapsed = api.get(f"/api/pedidos/{tracked[i % len(tracked)]}")
        get_statuses[status] = get_statuses.get(status, 0) + 1
        get_lat.append(elapsed)
    get_cpu = cpu_seconds(args.pid) - cpu_before

    conn = http.client.HTTPConnection(urllib.parse.urlsplit(args.api).hostname, urllib.parse.urlsplit(args.api).port)
    conn.request("GET", "/metrics")
    metrics_text = conn.getresponse().read().decode()
    publish_sum, publish_count, publish_buckets = histogram(metrics_text, "pedidos_api_publish_duration_seconds")
    http_sum, http_count, http_buckets = histogram(
        metrics_text, "pedidos_api_http_request_duration_seconds", 'route="/api/pedidos"'
    )
    store_sum, store_count, store_buckets = histogram(
        metrics_text, "pedidos_store_call_duration_seconds", 'operation="get"'
    )
    time.sleep(2)  # let the process settle before reading RSS "idle after load"
    rss_after = rss_kib(args.pid)

    result = {
        "rss_idle_kib": rss_idle,
        "rss_after_load_kib": rss_after,
        "sequential": {
            "n": args.sequential,
            "api_p50_ms": ms(percentile(api_lat, 0.50)),
            "api_p99_ms": ms(percentile(api_lat, 0.99)),
            "direct_p50_ms": ms(percentile(direct_lat, 0.50)),
            "direct_p99_ms": ms(percentile(direct_lat, 0.99)),
            "boto3_p50_ms": ms(percentile(boto_lat, 0.50)),
            "boto3_p99_ms": ms(percentile(boto_lat, 0.99)),
            "failures": failures,
        },
        "concurrent": {
            "requests": args.requests,
            "concurrency": args.concurrency,
            "statuses": {str(k): v for k, v in statuses.items()},
            "wall_s": wall,
            "throughput_rps": accepted / wall if wall else 0,
            "p50_ms": ms(percentile(conc_lat, 0.50)),
            "p99_ms": ms(percentile(conc_lat, 0.99)),
            "api_cpu_s": cpu_used,
            "api_cpu_ms_per_order": ms(cpu_used / accepted) if accepted else float("nan"),
        },
        "in_process": {
            "requests": http_count,
            "http_mean_ms": ms(http_sum / http_count) if http_count else float("nan"),
            "publish_mean_ms": ms(publish_sum / publish_count) if publish_count else float("nan"),
            "api_own_mean_ms": ms((http_sum - publish_sum) / http_count) if http_count else float("nan"),
            "http_p99_bucket_ms": ms(bucket_quantile(http_buckets, 0.99)),
            "publish_p99_bucket_ms": ms(bucket_quantile(publish_buckets, 0.99)),
            "http_p50_bucket_ms": ms(bucket_quantile(http_buckets, 0.50)),
            "publish_p50_bucket_ms": ms(bucket_quantile(publish_buckets, 0.50)),
        },
        "tracking": {
            "n": args.sequential,
            "statuses": {str(k): v for k, v in get_statuses.items()},
            "get_cpu_ms_per_request": ms(get_cpu / args.sequential),
            "get_p50_ms": ms(percentile(get_lat, 0.50)),
            "get_p99_ms": ms(percentile(get_lat, 0.99)),
            "store_get_mean_ms": ms(store_sum / store_count) if store_count else float("nan"),
            "store_get_p99_bucket_ms": ms(bucket_quantile(store_buckets, 0.99)),
        },
    }
    with open(args.json_out, "w") as f:
        json.dump(result, f, indent=2)

    s, c, p, t = result["sequential"], result["concurrent"], result["in_process"], result["tracking"]
    print(f"""
| measure | value |
|---|---|
| idle RSS after start-up | {rss_idle / 1024:.1f} MiB |
| RSS after the load (idle again) | {rss_after / 1024:.1f} MiB |
| sequential POST /api/pedidos p50 / p99 (n={s['n']}) | {s['api_p50_ms']:.2f} / {s['api_p99_ms']:.2f} ms |
| same Publish straight to moto, same client, p50 / p99 | {s['direct_p50_ms']:.2f} / {s['direct_p99_ms']:.2f} ms |
| same Publish with boto3, p50 / p99 | {s['boto3_p50_ms']:.2f} / {s['boto3_p99_ms']:.2f} ms |
| API minus direct, p50 / p99 | {s['api_p50_ms'] - s['direct_p50_ms']:.2f} / {s['api_p99_ms'] - s['direct_p99_ms']:.2f} ms |
| concurrent: {c['requests']} POSTs, {c['concurrency']} connections | {c['throughput_rps']:.0f} orders/s, statuses {c['statuses']} |
| concurrent p50 / p99 | {c['p50_ms']:.2f} / {c['p99_ms']:.2f} ms |
| API CPU time per accepted order | {c['api_cpu_ms_per_order']:.3f} ms ({c['api_cpu_s']:.2f} s for {c['statuses'].get('202', 0)}) |
| in-process mean: whole request / SNS call / API's own share | {p['http_mean_ms']:.3f} / {p['publish_mean_ms']:.3f} / {p['api_own_mean_ms']:.3f} ms |
| in-process p99 bucket (upper bound): whole request / SNS call | <= {p['http_p99_bucket_ms']:g} / <= {p['publish_p99_bucket_ms']:g} ms |
| sequential GET /api/pedidos/{{id}} (applied order with shipment) p50 / p99 (n={t['n']}) | {t['get_p50_ms']:.2f} / {t['get_p99_ms']:.2f} ms, statuses {t['statuses']} |
| API CPU time per GET /api/pedidos/{{id}} | {t['get_cpu_ms_per_request']:.3f} ms |
| in-process store read (BatchGetItem): mean / p99 bucket | {t['store_get_mean_ms']:.3f} / <= {t['store_get_p99_bucket_ms']:g} ms |
""")


if __name__ == "__main__":
    main()
