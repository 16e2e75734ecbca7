#!/usr/bin/env python3
"""Hand-written hostile HTTP requests against pedidos-api (issue 5, section 6). Python stdlib only.

Requests are written byte by byte on raw sockets, so nothing (not even http.client) tidies them up first. Every answer
must be below 500, and every 4xx must be `application/problem+json` with a JSON body carrying `status` and `title`.
A request that gets no answer within the timeout is a hang, and a failure. Some cases also pin the expected status.

Usage: http_nasties.py --base http://127.0.0.1:PORT [--timeout SECONDS] [--admin-token TOKEN]
With --admin-token (the API's ADMIN_TOKEN), every request carries it as a bearer token, so the admin routes
(subscriptions) are exercised as an operator would call them, and a group of hostile credentials (missing, wrong,
forged cookies, CSRF and login garbage) checks that the admin surface refuses them cleanly.
Prints one line per failure and a summary; exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import sys
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from typing import Callable, Iterable

CLIENTE = "6f1c2a0e-9a51-4c1e-8d0b-0c8f4f1a2b3c"
MB = 1024 * 1024


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class Runner:
    host: str
    port: int
    timeout: float
    cases: int = 0
    failures: list[str] = field(default_factory=list)
    # Added to every request unless it asks for `bare=True` (the admin token, as a bearer header).
    extra_headers: list[tuple[str, str]] = field(default_factory=list)

    # ---- transport -------------------------------------------------------------------------------------------------

    def exchange(self, method: str, chunks: Iterable[bytes]) -> Response:
        """Sends `chunks` from a thread while reading the answer, so a server that answers early (413) is seen."""
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        send_error: list[BaseException] = []

        def feed() -> None:
            try:
                for chunk in chunks:
                    sock.sendall(chunk)
            except OSError as e:  # the server may close after answering early: expected for oversized bodies
                send_error.append(e)

        sender = threading.Thread(target=feed, daemon=True)
        sender.start()
        try:
            answer = http.client.HTTPResponse(sock, method=method)
            answer.begin()
            body = answer.read()
            headers = {k.lower(): v for k, v in answer.getheaders()}
            return Response(answer.status, headers, body)
        finally:
            sock.close()
            sender.join(self.timeout)

    # ---- one case --------------------------------------------------------------------------------------------------

    def request(
        self,
        name: str,
        method: str,
        target: str | bytes,
        headers: list[tuple[str | bytes, str | bytes]] | None = None,
        body: bytes | Iterable[bytes] | None = None,
        *,
        content_type: str | None = "application/json",
        expect: set[int] | None = None,
        chunked: bool = False,
        bare: bool = False,
    ) -> Response | None:
        """Builds the request by hand, sends it and checks the answer. Returns it (or None if there was none)."""
        self.cases += 1
        as_bytes = lambda v: v if isinstance(v, bytes) else v.encode("latin-1")  # noqa: E731
        head = [b"%s %s HTTP/1.1" % (as_bytes(method), as_bytes(target)), b"Host: %s:%d" % (self.host.encode(), self.port)]
        all_headers = list(headers or []) + ([] if bare else list(self.extra_headers))
        if content_type is not None and body is not None:
            all_headers.append(("Content-Type", content_type))
        all_headers.append(("Connection", "close"))
        if isinstance(body, bytes):
            all_headers.append(("Content-Length", str(len(body))))
            parts: Iterable[bytes] = [body]
        elif body is not None:  # a stream: chunked, or the caller states its Content-Length
            if chunked:
                all_headers.append(("Transfer-Encoding", "chunked"))
            parts = body
        else:
            parts = []
        head += [as_bytes(k) + b": " + as_bytes(v) for k, v in all_headers]
        prefix = b"\r\n".join(head) + b"\r\n\r\n"
        started = time.monotonic()
        try:
            response = self.exchange(method, _prepend(prefix, parts))
        except socket.timeout:
            self.fail(name, f"no answer within {self.timeout:.0f} s (hang)")
            return None
        except (OSError, http.client.HTTPException) as e:
            self.fail(name, f"no HTTP answer: {type(e).__name__}: {e}")
            return None
        self.check(name, method, response, expect, time.monotonic() - started)
        return response

    def check(self, name: str, method: str, r: Response, expect: set[int] | None, elapsed: float) -> None:
        if r.status >= 500:
            self.fail(name, f"server error {r.status}: {r.body[:300]!r}")
        if expect is not None and r.status not in expect:
            self.fail(name, f"status {r.status}, expected one of {sorted(expect)}: {r.body[:200]!r}")
        # A head over the limits (16 KiB, 64 fields) is refused by hyper before any router runs: 431, no body.
        if r.status == 431 and not r.body:
            return
        if 400 <= r.status < 500:
            content_type = r.headers.get("content-type", "")
            if content_type.split(";")[0].strip().lower() != "application/problem+json":
                self.fail(name, f"{r.status} with Content-Type {content_type!r}, not application/problem+json: {r.body[:200]!r}")
            elif method != "HEAD":
                try:
                    problem = json.loads(r.body)
                except ValueError:
                    self.fail(name, f"{r.status} problem body is not JSON: {r.body[:200]!r}")
                    return
                if not isinstance(problem, dict) or problem.get("status") != r.status or not isinstance(problem.get("title"), str):
                    self.fail(name, f"{r.status} problem body lacks status/title: {r.body[:200]!r}")
        if elapsed > self.timeout / 2:
            self.fail(name, f"answered {r.status} only after {elapsed:.1f} s")

    def fail(self, name: str, why: str) -> None:
        self.failures.append(f"{name}: {why}")
        print(f"FAIL {name}: {why}", file=sys.stderr)

    # ---- shorthands ------------------------------------------------------------------------------------------------

    def post_order(self, name: str, order: dict | str | bytes, expect: set[int] | None = None, **kw) -> Response | None:
        body = order if isinstance(order, bytes) else (order if isinstance(order, str) else json.dumps(order)).encode()
        return self.request(name, "POST", "/api/pedidos", body=body, expect=expect, **kw)

    def put_order(self, name: str, path_id: str, order: dict, expect: set[int] | None = None) -> Response | None:
        return self.request(name, "PUT", f"/api/pedidos/{path_id}", body=json.dumps(order).encode(), expect=expect)


def _prepend(prefix: bytes, parts: Iterable[bytes]) -> Iterable[bytes]:
    yield prefix
    yield from parts


def _chunked(data: bytes, size: int = 64 * 1024) -> Iterable[bytes]:
    for i in range(0, len(data), size):
        piece = data[i : i + size]
        yield b"%x\r\n%s\r\n" % (len(piece), piece)
    yield b"0\r\n\r\n"


def _slowly(data: bytes, delay: float) -> Iterable[bytes]:
    for byte in data:
        time.sleep(delay)
        yield bytes([byte])


def order(**fields) -> dict:
    base = {"clienteId": CLIENTE, "total": "10.00"}
    base.update(fields)
    return base


# ---- the cases ----------------------------------------------------------------------------------------------------

ERR = {400, 413, 415, 422}  # any of these is a fine way to refuse garbage


def numbers(r: Runner) -> None:
    raw_totals = {
        "1e400": "1e400",
        "40-digit integer": "1" + "0" * 39,
        "-0": "-0",
        "0.001": "0.001",
        "999999999.995": "999999999.995",
        "1e3 number": "1e3",
        "-1": "-1",
        "huge negative exponent": "1e-400",
        "600-digit number": "9" * 600,
        "29-digit decimal": "0." + "1" * 29,
    }
    for label, text in raw_totals.items():
        r.post_order(f"total {label}", f'{{"clienteId": "{CLIENTE}", "total": {text}}}', expect=ERR)
    for text in ["NaN", "Infinity", "-Infinity", "1e3", "1e400", "0x10", "1,000.00", "", " ", "١٠", "10.00\u0000", "+-1"]:
        r.post_order(f"total string {text!r}", order(total=text), expect=ERR)
    # Bare NaN/Infinity are not JSON at all.
    for text in ["NaN", "Infinity", "-Infinity"]:
        r.post_order(f"total bare {text}", f'{{"clienteId": "{CLIENTE}", "total": {text}}}', expect={400})
    r.post_order("total 10 (valid control)", order(total=10), expect={202})
    r.post_order("total 999999999.99 (max)", order(total="999999999.99"), expect={202})
    items = [{"productoId": "A", "cantidad": 4294967295, "precioUnitario": "999999999.99"}] * 500
    r.post_order("items at max quantity and price", order(items=items, total="1"), expect=ERR)
    r.post_order("cantidad 40 digits", order(items=[{"productoId": "A", "cantidad": int("9" * 40), "precioUnitario": 1}]), expect=ERR)
    r.post_order("cantidad 1e400", f'{{"clienteId":"{CLIENTE}","total":1,"items":[{{"productoId":"A","cantidad":1e400,"precioUnitario":1}}]}}', expect=ERR)
    r.post_order("cantidad -1", order(items=[{"productoId": "A", "cantidad": -1, "precioUnitario": 1}]), expect=ERR)
    r.post_order("cantidad 1.5", order(items=[{"productoId": "A", "cantidad": 1.5, "precioUnitario": 1}]), expect=ERR)
    r.post_order("501 items", order(items=[{"productoId": "A", "cantidad": 1, "precioUnitario": "0.01"}] * 501, total="5.01"), expect=ERR)
    r.put_order("version 40 digits", CLIENTE, order(version=int("9" * 40)), expect=ERR)
    r.put_order("version 2^64", CLIENTE, order(version=2**64), expect=ERR)
    r.put_order("version -2", CLIENTE, order(version=-2), expect=ERR)
    r.put_order("version 2.0", CLIENTE, order(version=2.0), expect=ERR | {202})
    r.put_order("version \"2\"", CLIENTE, order(version="2"), expect=ERR | {202})


def nesting(r: Runner) -> None:
    r.post_order("100k nested arrays (over the body limit)", b"[" * 100_000 + b"]" * 100_000, expect={413})
    r.post_order("30k nested arrays as total", b'{"total":' + b"[" * 30_000 + b"]" * 30_000 + b"}", expect={400})
    r.post_order("10k nested objects", b'{"a":' * 10_000 + b"1" + b"}" * 10_000, expect={400})
    r.post_order("nesting at 127 levels", b'{"total":' + b"[" * 126 + b"]" * 126 + b"}", expect=ERR)
    r.request("deep nesting in subscription body", "POST", "/api/suscripcion", body=b'{"email":' + b"[" * 20_000 + b"]" * 20_000 + b"}", expect={400})


def encodings(r: Runner) -> None:
    r.post_order("invalid UTF-8 in a string", b'{"clienteId":"' + CLIENTE.encode() + b'","total":"1\xff\xfe"}', expect={400})
    r.post_order("invalid UTF-8 as a key", b'{"\xc3\x28":1}', expect={400})
    r.post_order("overlong UTF-8 slash", b'{"clienteId":"\xc0\xaf","total":1}', expect={400})
    r.post_order("UTF-16 body", json.dumps(order()).encode("utf-16"), expect={400})
    r.post_order("UTF-8 BOM", b"\xef\xbb\xbf" + json.dumps(order()).encode(), expect={400, 202})
    r.post_order("lone surrogate escape", f'{{"clienteId":"{CLIENTE}","total":"\\ud800"}}', expect={400, 422})
    r.post_order("null byte raw in body", b'{"clienteId":"' + CLIENTE.encode() + b'","total":"1\x00"}', expect={400})
    r.post_order("null byte escaped in productoId", order(items=[{"productoId": "A\u0000B", "cantidad": 1, "precioUnitario": "10.00"}]), expect={202, 422})
    r.post_order("null byte escaped in key", {"clienteId\u0000": CLIENTE, "total": 1}, expect=ERR)
    r.request("null byte in email body", "POST", "/api/suscripcion", body=json.dumps({"email": "a\u0000@b.co"}).encode(), expect={422})
    r.post_order("empty body", b"", expect={400})
    r.post_order("only whitespace", b" \r\n\t ", expect={400})
    r.post_order("JSON array", b"[]", expect={400})
    r.post_order("JSON string", b'"x"', expect={400})
    r.post_order("JSON null", b"null", expect={400})
    r.post_order("trailing garbage", json.dumps(order()).encode() + b"}", expect={400})
    r.post_order("two objects", json.dumps(order()).encode() * 2, expect={400})


def fields(r: Runner) -> None:
    r.post_order("empty object", {}, expect={422})
    r.post_order("missing clienteId", {"total": 1}, expect={422})
    r.post_order("missing total", {"clienteId": CLIENTE}, expect={422})
    r.post_order("total as object", order(total={"amount": 1}), expect={422})
    r.post_order("total as array", order(total=[1]), expect={422})
    r.post_order("total as bool", order(total=True), expect={422})
    r.post_order("total null", order(total=None), expect={422})
    r.post_order("clienteId as number", order(clienteId=5), expect={422})
    r.post_order("clienteId nil UUID", order(clienteId=str(uuid.UUID(int=0))), expect={422})
    r.post_order("pedidoId braces", order(pedidoId="{" + CLIENTE + "}"), expect={422, 202})
    r.post_order("fecha garbage", order(fecha="yesterday"), expect={422})
    r.post_order("fecha year 99999", order(fecha="99999-01-01T00:00:00Z"), expect={422})
    r.post_order("items empty", order(items=[]), expect={422})
    r.post_order("items null", order(items=None), expect={422})
    r.post_order("items of strings", order(items=["a"]), expect={422})
    r.post_order("version on create", order(version=2), expect={422})
    r.post_order("unknown field", order(extra=1), expect={422})
    r.post_order("3000 unknown fields", {**order(), **{f"f{i}": i for i in range(3000)}}, expect={422})
    r.post_order("very long key", {**order(), "k" * 60_000: 1}, expect={422})
    r.post_order("productoId 60k chars", order(items=[{"productoId": "p" * 60_000, "cantidad": 1, "precioUnitario": "10.00"}]), expect={422})
    dup = f'{{"clienteId":"{CLIENTE}","total":1,"total":2}}'
    r.post_order("duplicate key total", dup, expect={400})
    dup_item = f'{{"clienteId":"{CLIENTE}","total":1,"items":[{{"productoId":"A","cantidad":1,"cantidad":9,"precioUnitario":1}}]}}'
    r.post_order("duplicate key in an item", dup_item, expect={400})
    r.post_order("camelCase and PascalCase duplicates", {"clienteId": CLIENTE, "ClienteId": CLIENTE, "total": 1, "Total": 1}, expect={422})
    r.post_order("PascalCase only (seed)", {"ClienteId": CLIENTE, "Total": "10.00", "PedidoId": str(uuid.uuid4())}, expect={202})
    r.post_order("UPPER and lower duplicates", {"CLIENTEID": CLIENTE, "clienteid": CLIENTE, "total": 1}, expect={422})
    r.put_order("PUT body pedidoId differs", str(uuid.uuid4()), order(version=2, pedidoId=CLIENTE), expect={422})
    r.put_order("PUT without version", str(uuid.uuid4()), order(), expect={422})
    r.put_order("PUT valid (control)", str(uuid.uuid4()), order(version=2), expect={202})
    r.request("subscription email as number", "POST", "/api/suscripcion", body=b'{"email": 5}', expect={422})
    r.request("subscription email missing", "POST", "/api/suscripcion", body=b"{}", expect={422})
    r.request("subscription email 10k chars", "POST", "/api/suscripcion", body=json.dumps({"email": "a" * 10_000 + "@b.co"}).encode(), expect={422})
    r.request("subscription Email and email", "POST", "/api/suscripcion", body=b'{"Email":"a@b.co","email":"c@d.co"}', expect={200, 201, 422})


def sizes(r: Runner) -> None:
    ten_mb = b'{"total":"' + b"1" * (10 * MB) + b'"}'
    r.post_order("10 MB body", ten_mb, expect={413})
    r.request("10 MB body, chunked", "POST", "/api/pedidos", body=_chunked(ten_mb), chunked=True, expect={413})
    r.request("10 MB subscription body", "POST", "/api/suscripcion", body=ten_mb, expect={413})
    r.request("10 MB subscription body, chunked", "POST", "/api/suscripcion", body=_chunked(ten_mb), chunked=True, expect={413})
    r.put_order("10 MB PUT body", CLIENTE, {"total": "1" * (10 * MB)}, expect={413})
    r.post_order("body just over 64 KiB", b'{"total":"' + b"1" * (64 * 1024) + b'"}', expect={413})
    r.request("Content-Length 10 MB, few bytes sent", "POST", "/api/pedidos",
              headers=[("Content-Length", str(10 * MB)), ("Content-Type", "application/json")], body=iter([b"{}"]), content_type=None,
              expect={413})
    r.request("subscription, Content-Length 10 MB, few bytes sent", "POST", "/api/suscripcion",
              headers=[("Content-Length", str(10 * MB)), ("Content-Type", "application/json")], body=iter([b"{}"]), content_type=None,
              expect={413})


def headers(r: Runner) -> None:
    ok = json.dumps(order()).encode()
    # The id lands in logs and in an SNS message attribute: unusable ones must be replaced, not trusted or refused.
    r.post_order("X-Request-Id 60000 chars (head over 16 KiB)", ok, headers=[(b"X-Request-Id", b"r" * 60_000)], expect={431})
    r.post_order("65 header fields", ok, headers=[(f"X-Extra-{i}", "v") for i in range(65)], expect={431})
    for label, value in [("129 chars", b"r" * 129), ("8000 chars", b"r" * 8_000),
                         ("invalid UTF-8", b"\xff\xfe\xfd"), ("empty", b""), ("with spaces", b"a b"), ("with a tab", b"a\tb")]:
        resp = r.post_order(f"X-Request-Id {label}", ok, headers=[(b"X-Request-Id", value)], expect={202})
        echoed = resp.headers.get("x-request-id", "") if resp is not None else ""
        if resp is not None and (echoed.encode("latin-1") == value or not echoed):
            r.fail(f"X-Request-Id {label}", f"kept the unusable id instead of generating one: {echoed[:80]!r}")
    resp = r.post_order("X-Request-Id 128 chars (kept)", ok, headers=[("X-Request-Id", "k" * 128)], expect={202})
    if resp is not None and resp.headers.get("x-request-id") != "k" * 128:
        r.fail("X-Request-Id 128 chars (kept)", "a usable id was not echoed")
    r.post_order("X-Request-Id with quotes and braces", ok, headers=[("X-Request-Id", '"}{\\n<script>')], expect={202})
    r.post_order("two X-Request-Id headers", ok, headers=[("X-Request-Id", "a"), ("X-Request-Id", "b")], expect={202})
    for ct in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/xml",
               "application/jsonx", "json", "", "application/json\t; charset=utf-8"]:
        r.post_order(f"Content-Type {ct!r}", ok, content_type=ct, expect={415, 202})
    r.post_order("no Content-Type", ok, content_type=None, expect={415})
    r.post_order("two Content-Types", ok, headers=[("Content-Type", "text/plain")], expect={415, 202})
    r.request("subscription with text/plain body", "POST", "/api/suscripcion", body=b'{"email":"a@b.co"}', content_type="text/plain", expect={415})
    r.request("subscription form body", "POST", "/api/suscripcion", body=b"email=a%40b.co", content_type="application/x-www-form-urlencoded", expect={415})
    r.post_order("Content-Encoding gzip (not gzip)", ok, headers=[("Content-Encoding", "gzip")], expect={202, 400, 415})
    r.post_order("Expect: 100-continue", ok, headers=[("Expect", "100-continue")], expect={202})


def methods_and_routes(r: Runner) -> None:
    for method, path in [("DELETE", "/api/pedidos"), ("GET", "/api/pedidos"), ("PATCH", f"/api/pedidos/{CLIENTE}"),
                         ("POST", f"/api/pedidos/{CLIENTE}"), ("PUT", "/api/suscripcion"), ("DELETE", "/health"),
                         ("POST", "/openapi.json"), ("TRACE", "/api/pedidos"), ("OPTIONS", "/api/pedidos"), ("FOO", "/api/pedidos")]:
        r.request(f"{method} {path}", method, path, expect={405})
    r.request("HEAD on a POST-only route", "HEAD", "/api/pedidos", expect={405})
    # Any token is a valid method; each one must not become a new metrics time series (unbounded memory).
    r.request("invented method", "XFUZZ" + uuid.uuid4().hex[:8].upper(), "/api/pedidos", expect={405})
    metrics = r.request("metrics after an invented method", "GET", "/metrics", expect={200})
    if metrics is not None and b'method="XFUZZ' in metrics.body:
        r.fail("invented method", "became a metrics label")
    for path in ["/nope", "/api", "/api/pedidos/a/b", "/api/pedidos/", "//api/pedidos", "/api/PEDIDOS", "/../../etc/passwd",
                 "/%2e%2e/%2e%2e/etc/passwd", "/api/suscripcion/estado", "/api/suscripcion/estado/", "/docs/nonexistent.js",
                 "/health/../health/x", "/" + "a" * 8000, "/%", "/%zz", "/%00", "/api/pedidos%2f" + CLIENTE]:
        r.request(f"GET {path[:60]}", "GET", path, expect={404, 405, 400})
    r.request("absolute-form target", "GET", f"http://{r.host}:{r.port}/health", expect={200})
    r.request("asterisk-form target", "OPTIONS", "*", expect={400, 404, 405})


def paths_and_queries(r: Runner) -> None:
    body = json.dumps(order(version=2)).encode()
    garbage = ["%FF%FE", "%00", "%C0%AF", "%ED%A0%80", "%", "%%", "%2F", "%0D%0AX-Injected:%201", "a%20b", "%E2%80%8B",
               urllib.parse.quote("ñandú"), "x" * 5000, urllib.parse.quote(CLIENTE + "\u0000"), CLIENTE.upper(), "{" + CLIENTE + "}"]
    for g in garbage:
        r.request(f"PUT /api/pedidos/{g[:40]}", "PUT", f"/api/pedidos/{g}", body=body, expect={400, 404, 422, 202})
        r.request(f"GET estado/{g[:40]}", "GET", f"/api/suscripcion/estado/{g}", expect={400, 404, 422})
    r.request("estado of a valid unknown email", "GET", "/api/suscripcion/estado/nadie%40example.com", expect={404})
    for q in ["email=a%40b.co&email=c%40d.co", "email=a%40b.co&email=a%40b.co", "email=%FF", "email=%00%40b.co", "email",
              "email=", "email[]=a%40b.co", "%FF=1", "email=a%40b.co&&&==&", "email=" + "a" * 5000 + "%40b.co"]:
        r.request(f"POST /api/suscripcion?{q[:50]}", "POST", f"/api/suscripcion?{q}", expect={200, 201, 400, 422})
    r.request("query on a JSON route", "POST", "/api/pedidos?x=%FF&x=1", body=json.dumps(order()).encode(), expect={202})


def tracking(r: Runner) -> None:
    """The order-tracking reads (DynamoDB behind them): hostile ids, queries, cursors and conditional headers."""
    unknown = str(uuid.uuid4())
    r.request("GET an unknown order", "GET", f"/api/pedidos/{unknown}", content_type=None, expect={404})
    r.request("HEAD an unknown order", "HEAD", f"/api/pedidos/{unknown}", content_type=None, expect={404})
    garbage = ["%FF%FE", "%00", "%C0%AF", "%ED%A0%80", "%", "%%", "%2F", "%0D%0AX-Injected:%201", "a%20b", "%E2%80%8B",
               urllib.parse.quote("ñandú"), "x" * 5000, urllib.parse.quote(CLIENTE + "\u0000"), "{" + CLIENTE + "}",
               "00000000-0000-0000-0000-000000000000", "-1", "1e400", "null"]
    for g in garbage:
        r.request(f"GET /api/pedidos/{g[:40]}", "GET", f"/api/pedidos/{g}", content_type=None, expect={400, 404, 422})
        r.request(f"GET /api/clientes/{g[:40]}/pedidos", "GET", f"/api/clientes/{g}/pedidos", content_type=None,
                  expect={200, 400, 404, 422})
    for tag in [b"*", b'"1-0"', b'W/"1-0"', b'"1-0", "2-1"', b"", b"\xff\xfe", b'"' + b"9" * 5000 + b'"', b",,,", b"W/"]:
        r.request(f"If-None-Match {tag[:20]!r}", "GET", f"/api/pedidos/{unknown}", headers=[(b"If-None-Match", tag)],
                  content_type=None, expect={404})
    base = f"/api/clientes/{CLIENTE}/pedidos"
    r.request("list a customer's orders", "GET", base, content_type=None, expect={200})
    for q in ["limit=0", "limit=101", "limit=-1", "limit=abc", "limit=1e2", "limit=99999999999999999999", "limit=%FF",
              "limit=", "limit=1.5", "cursor=", "cursor=zz", "cursor=%00", "cursor=" + "ab" * 5000, "cursor=%FF%FE",
              "cursor=" + "68656c6c6f", "limit=0&cursor=zz"]:
        r.request(f"GET list ?{q[:50]}", "GET", f"{base}?{q}", content_type=None, expect={422})
    for q in ["limit=1&limit=2", "cursor=a&cursor=b"]:
        r.request(f"GET list ?{q}", "GET", f"{base}?{q}", content_type=None, expect={400})
    # Cursors shaped like the store's own (hex of `<RFC 3339>#<uuid>`), pointing nowhere: an empty page, never a 5xx.
    for key in [f"2026-11-21T10:30:00.000Z#{unknown}", f"1970-01-01T00:00:00+14:00#{unknown}", f"9999-12-31T23:59:59Z#{CLIENTE}"]:
        r.request(f"GET list with a foreign cursor {key[:24]}", "GET", f"{base}?limit=5&cursor={key.encode().hex()}",
                  content_type=None, expect={200})
    r.request("GET list, unknown query parameters", "GET", f"{base}?x=%FF&limit=1&y", content_type=None, expect={200})
    for method in ["DELETE", "POST", "PUT", "PATCH"]:
        r.request(f"{method} a customer's orders", method, base, content_type=None, expect={405})
    r.request("DELETE an order", "DELETE", f"/api/pedidos/{unknown}", content_type=None, expect={405})


def slow_clients(r: Runner) -> None:
    """Slowloris: several connections trickle their headers a byte at a time; a normal request must still be quick."""
    stop = threading.Event()
    request = f"POST /api/pedidos HTTP/1.1\r\nHost: {r.host}\r\nContent-Type: application/json\r\nX-Padding: {'p' * 200}\r\n".encode()

    def trickle() -> None:
        try:
            with socket.create_connection((r.host, r.port), timeout=r.timeout) as sock:
                for byte in request:
                    if stop.is_set():
                        return
                    sock.sendall(bytes([byte]))
                    time.sleep(0.02)
        except OSError:
            pass  # the server may hang up on a slow client: that is fine

    slow = [threading.Thread(target=trickle, daemon=True) for _ in range(20)]
    for t in slow:
        t.start()
    time.sleep(0.5)
    deadline = time.monotonic() + 3
    quick = 0
    while time.monotonic() < deadline:
        started = time.monotonic()
        resp = r.request("normal request during slowloris", "GET", "/health", expect={200})
        if resp is not None and time.monotonic() - started > 1.0:
            r.fail("normal request during slowloris", f"took {time.monotonic() - started:.2f} s")
        quick += 1
        time.sleep(0.2)
    r.post_order("order during slowloris", order(), expect={202})
    stop.set()
    for t in slow:
        t.join(r.timeout)
    # A body that arrives slowly but completely is still served.
    ok = json.dumps(order()).encode()
    r.request("slow but complete body", "POST", "/api/pedidos", body=_slowly(ok, 0.01), headers=[("Content-Length", str(len(ok)))],
              expect={202})


def protocol(r: Runner) -> None:
    """Broken HTTP framing: answered by hyper before the app runs, so only 'no 5xx, no hang' applies (not problem+json)."""
    for label, raw in [("garbage request line", b"HELLO\r\n\r\n"), ("HTTP/9.9", b"GET /health HTTP/9.9\r\n\r\n"),
                       ("bare LF", b"GET /health HTTP/1.1\nHost: x\n\n"),
                       ("null byte in header", b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n"),
                       ("conflicting lengths", b"POST /api/pedidos HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}"),
                       ("500 KB header", b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 500_000 + b"\r\n\r\n"),
                       ("100 KB URI", b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"),
                       ("bad chunk size", b"POST /api/pedidos HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")]:
        r.cases += 1
        try:
            resp = r.exchange("GET", [raw])
        except socket.timeout:
            r.fail(f"protocol {label}", "no answer (hang)")
            continue
        except (OSError, http.client.HTTPException):
            continue  # closing the connection is a fine answer to broken framing
        if resp.status >= 500:
            r.fail(f"protocol {label}", f"server error {resp.status}")


def admin_surface(r: Runner) -> None:
    """Hostile credentials against the admin routes (run with --admin-token): every refusal is a clean 4xx problem,
    a browser without a session is sent to the login page, and nothing is ever a 5xx."""
    sub = b'{"email":"ops@example.com"}'
    protected = [("POST", "/api/suscripcion", sub), ("GET", "/api/suscripcion/estado/ops%40example.com", None),
                 ("GET", "/console/api/session", None), ("POST", "/console/logout", None),
                 ("GET", "/console/events", None), ("GET", "/console/api/dlq/process", None),
                 ("POST", "/console/api/dlq/process/redrive", b'{"all":true}'),
                 ("POST", "/console/api/dlq/process/delete", b'{"all":true}')]
    garbage_auth = ["Bearer", "Bearer ", "Bearer x", "bearer " + "x" * 4000, "Basic YWRtaW46YWRtaW4=", "Bearer \t\t",
                    "Bearer a b c", "Digest x", "Bearer " + "é".encode("utf-8").decode("latin-1") * 20, ""]
    forged_cookies = ["pedidos_admin=", "pedidos_admin=1.2", "pedidos_admin=99999999999999999999." + "0" * 64,
                      "pedidos_admin=18446744073709551616." + "a" * 64, "pedidos_admin=4102444800." + "f" * 64,
                      "pedidos_admin=" + "1" * 5000, "a=b; " * 500 + "pedidos_admin=x",
                      "pedidos_admin=1.2; pedidos_admin=3.4", "=; ;;=="]
    for method, path, body in protected:
        r.request(f"{method} {path} without credentials", method, path, body=body, expect={401}, bare=True)
        for value in garbage_auth:
            r.request(f"{method} {path} Authorization {value[:30]!r}", method, path, headers=[("Authorization", value)],
                      body=body, expect={401}, bare=True)
        for cookie in forged_cookies:
            r.request(f"{method} {path} Cookie {cookie[:40]!r}", method, path, headers=[("Cookie", cookie)], body=body,
                      expect={401}, bare=True)
    resp = r.request("browser GET without a session", "GET", "/console/api/session", headers=[("Accept", "text/html")],
                     content_type=None, expect={303}, bare=True)
    if resp is not None and resp.headers.get("location") != "/console/login":
        r.fail("browser GET without a session", f"redirected to {resp.headers.get('location')!r}")
    form = "application/x-www-form-urlencoded"
    for label, body, ct in [("empty form", b"", form), ("no token field", b"x=1", form), ("wrong token", b"token=nope", form),
                            ("huge token", b"token=" + b"a" * 60_000, form), ("invalid encoding", b"token=%zz%", form),
                            ("repeated token", b"token=a&token=b", form), ("invalid UTF-8", b"token=\xff\xfe", form),
                            ("JSON body", b'{"token":"x"}', "application/json"), ("no content type", b"token=x", None),
                            ("10 MB form", b"token=" + b"a" * (10 * MB), form)]:
        r.request(f"POST /console/login {label}", "POST", "/console/login", body=body, content_type=ct,
                  expect={400, 401, 413, 415, 429}, bare=True)
    for origin in ["null", "https://evil.example", "http://127.0.0.1:1", "garbage", "http://" + "a" * 5000]:
        r.request(f"POST /console/login Origin {origin[:30]!r}", "POST", "/console/login", body=b"token=x", content_type=form,
                  headers=[("Origin", origin)], expect={401, 403, 429}, bare=True)
    r.request("GET /console/login", "GET", "/console/login?error=%3Cscript%3E", content_type=None, expect={200}, bare=True)


GROUPS: list[Callable[[Runner], None]] = [numbers, nesting, encodings, fields, sizes, headers, methods_and_routes, paths_and_queries,
                                          tracking, slow_clients, protocol]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="http://127.0.0.1:PORT")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds without an answer that count as a hang")
    parser.add_argument("--admin-token", help="the API's ADMIN_TOKEN: sent as a bearer token, and enables the admin group")
    args = parser.parse_args()
    url = urllib.parse.urlsplit(args.base)
    runner = Runner(url.hostname or "127.0.0.1", url.port or 80, args.timeout)
    groups = list(GROUPS)
    if args.admin_token:
        runner.extra_headers.append(("Authorization", f"Bearer {args.admin_token}"))
        groups.append(admin_surface)
    started = time.monotonic()
    for group in groups:
        group(runner)
    elapsed = time.monotonic() - started
    print(f"http_nasties: {runner.cases} cases, {len(runner.failures)} failures, {elapsed:.1f} s")
    return 1 if runner.failures else 0


if __name__ == "__main__":
    sys.exit(main())
