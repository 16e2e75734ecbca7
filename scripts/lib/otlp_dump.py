"""A development OTLP/HTTP trace receiver: prints each trace as an indented tree. Not a tracing backend.

Listens on 127.0.0.1 for `POST /v1/traces` (protobuf, as the services send it), decodes each request with the
`opentelemetry-proto` package, groups the spans by trace, and prints a trace once no span of it has arrived for
--settle seconds (the services export in batches, each service on its own schedule). Each line is one span:

    POST /api/pedidos  [pedidos-api]  12.4 ms  request_id=... pedido_id=...
      ecomexpress-sns-orders-events publish  [pedidos-api]  9.8 ms
        SNS.Publish  [pedidos-api]  9.5 ms
        ecomexpress-sqs-orders-process process  [pedidos-worker-process]  31.0 ms  outcome=processed ...
          * duplicate  outcome=duplicate ...          (a span event)

Spans whose parent is not in the trace (a remote caller's, or not exported yet) start a tree of their own. A span
marked `!` ended with an error status. Attribute values are printed with control characters escaped, so nothing a
client sent can drive the terminal. `--quiet` prints one line of counts every 10 s instead (for benchmarks).
Run through scripts/otlp-dump (which provides the venv), or scripts/run-local --traces.
"""

import argparse
import http.server
import sys
import threading
import time

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

MAX_BODY = 16 * 1024 * 1024
# Attributes shown on a span's line, in this order; the rest only with --all-attributes.
SHOWN = ("http.response.status_code", "request_id", "pedido_id", "version", "event_type", "outcome", "action",
         "reject_reason", "receive_count", "messaging.message.id")


def inert(text, limit=200):
    """`text` with control characters escaped and cut to `limit` characters."""
    text = str(text)
    out = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)
    return out if len(out) <= limit else out[:limit] + "..."


def value(any_value):
    kind = any_value.WhichOneof("value")
    if kind is None:
        return ""
    if kind == "array_value":
        return "[" + ", ".join(value(v) for v in any_value.array_value.values) + "]"
    if kind == "kvlist_value":
        return "{" + ", ".join(f"{kv.key}={value(kv.value)}" for kv in any_value.kvlist_value.values) + "}"
    if kind == "bytes_value":
        return any_value.bytes_value.hex()
    return getattr(any_value, kind)


def attributes(pairs):
    return {kv.key: value(kv.value) for kv in pairs}


class Traces:
    """Spans by trace id, printed when a trace has been quiet for `settle` seconds."""

    def __init__(self, settle, all_attributes, quiet, out):
        self.settle, self.all_attributes, self.quiet, self.out = settle, all_attributes, quiet, out
        self.lock = threading.Lock()
        self.pending = {}  # trace id -> (last arrival, [span dicts])
        self.received = self.requests = 0

    def add(self, request):
        now = time.monotonic()
        with self.lock:
            self.requests += 1
            for resource_spans in request.resource_spans:
                service = attributes(resource_spans.resource.attributes).get("service.name", "?")
                for scope in resource_spans.scope_spans:
                    for span in scope.spans:
                        self.received += 1
                        if self.quiet:
                            continue
                        trace_id = span.trace_id.hex()
                        _, spans = self.pending.get(trace_id, (now, []))
                        spans.append({
                            "service": service, "name": span.name, "span_id": span.span_id.hex(),
                            "parent": span.parent_span_id.hex(), "start": span.start_time_unix_nano,
                            "end": span.end_time_unix_nano, "attributes": attributes(span.attributes),
                            "events": [(e.name, attributes(e.attributes)) for e in span.events],
                            "error": span.status.code == 2, "kind": span.kind,
                        })
                        self.pending[trace_id] = (now, spans)

    def flush(self, everything=False):
        now = time.monotonic()
        with self.lock:
            ready = [t for t, (last, _) in self.pending.items() if everything or now - last >= self.settle]
            done = [(t, self.pending.pop(t)[1]) for t in ready]
        for trace_id, spans in sorted(done, key=lambda item: min(s["start"] for s in item[1])):
            self.print_trace(trace_id, spans)

    def print_trace(self, trace_id, spans):
        ids = {s["span_id"] for s in spans}
        children = {}
        for span in spans:
            children.setdefault(span["parent"] if span["parent"] in ids else None, []).append(span)
        services = sorted({s["service"] for s in spans})
        lines = [f"trace {trace_id}  ({len(spans)} spans: {', '.join(inert(s) for s in services)})"]

        def walk(span, depth):
            millis = (span["end"] - span["start"]) / 1e6
            shown = span["attributes"] if self.all_attributes else {k: span["attributes"][k] for k in SHOWN if k in span["attributes"]}
            attrs = "  ".join(f"{inert(k)}={inert(v)}" for k, v in shown.items())
            mark = "! " if span["error"] else ""
            remote = f"  (parent {span['parent']} not in this trace)" if depth == 0 and span["parent"] else ""
            lines.append(f"{'  ' * (depth + 1)}{mark}{inert(span['name'])}  [{inert(span['service'])}]  {millis:.1f} ms  {attrs}{remote}".rstrip())
            for name, event_attributes in span["events"]:
                detail = "  ".join(f"{inert(k)}={inert(v)}" for k, v in event_attributes.items())
                lines.append(f"{'  ' * (depth + 2)}* {inert(name)}  {detail}".rstrip())
            for child in sorted(children.get(span["span_id"], []), key=lambda s: s["start"]):
                walk(child, depth + 1)

        for root in sorted(children.get(None, []), key=lambda s: s["start"]):
            walk(root, 0)
        print("\n".join(lines) + "\n", file=self.out, flush=True)


def handler_for(traces):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):  # noqa: N802 - http.server's name
            length = int(self.headers.get("Content-Length") or 0)
            if self.path.rstrip("/") != "/v1/traces":
                return self.answer(404, b"only /v1/traces")
            if length <= 0 or length > MAX_BODY:
                return self.answer(413, b"body missing or too large")
            if "protobuf" not in (self.headers.get("Content-Type") or ""):
                return self.answer(415, b"application/x-protobuf only")
            body = self.rfile.read(length)
            try:
                request = ExportTraceServiceRequest.FromString(body)
            except Exception:  # noqa: BLE001 - any decoding failure is the client's
                return self.answer(400, b"not an ExportTraceServiceRequest")
            traces.add(request)
            self.answer(200, ExportTraceServiceResponse().SerializeToString(), "application/x-protobuf")

        def answer(self, status, body, content_type="text/plain"):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    return Handler


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=4318, help="port on 127.0.0.1 (default 4318, OTLP/HTTP's)")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds a trace must be quiet before it is printed")
    parser.add_argument("--all-attributes", action="store_true", help="print every attribute, not only the usual ones")
    parser.add_argument("--quiet", action="store_true", help="print counts every 10 s instead of traces")
    args = parser.parse_args()
    traces = Traces(args.settle, args.all_attributes, args.quiet, sys.stdout)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), handler_for(traces))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"otlp-dump: receiving OTLP/HTTP traces on http://127.0.0.1:{args.port}/v1/traces "
          f"(OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:{args.port})", file=sys.stderr, flush=True)
    last_report = time.monotonic()
    try:
        while True:
            time.sleep(0.5)
            traces.flush()
            if args.quiet and time.monotonic() - last_report >= 10:
                last_report = time.monotonic()
                print(f"otlp-dump: {traces.received} spans in {traces.requests} requests so far", flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        traces.flush(everything=True)
        server.shutdown()
        if args.quiet:
            print(f"otlp-dump: {traces.received} spans in {traces.requests} requests", flush=True)


if __name__ == "__main__":
    main()
