#!/usr/bin/env python3
"""Client identity rules against a pedidos-api running with two API clients (issue 17). Python stdlib only.

The API must run with `API_KEYS=shop-a:<key-a>,shop-b:<key-b>` and an `ADMIN_TOKEN`, and a process worker must be
applying its orders. Client A creates an order and waits until it is stored; then every order route is tried with no
key, hostile and wrong keys, client B's key (A's order must look exactly like an order that does not exist) and the
operator's token, plus updates that would re-price, freeze or move A's order. Requests go through the raw-socket
runner of http_nasties.py, so every answer is also checked for 5xx and problem+json.

Usage: http_identity.py --base http://127.0.0.1:PORT --key-a KEY --key-b KEY --admin-token TOKEN
Prints one line per failure and a summary; exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.parse
import uuid

from http_nasties import Response, Runner

# A customer of this run only: the other phases' orders (all for http_nasties.CLIENTE) stay out of its listings.
CLIENTE = str(uuid.uuid4())

# How far a PUT may go above the stored version (crates/api/src/routes/orders.rs, MAX_VERSION_STEP).
MAX_VERSION_STEP = 1000


def body_of(r: Response | None) -> dict:
    try:
        value = json.loads(r.body) if r is not None and r.body else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def anonymous(r: Response | None, pedido_id: str) -> tuple[int, str]:
    """A 404's status and detail with the order id blanked out: what an answer says beyond the id."""
    if r is None:
        return (0, "")
    return (r.status, str(body_of(r).get("detail", "")).replace(pedido_id, "<id>"))


def run(r: Runner, key_a: str, key_b: str, admin_token: str, wait: float) -> None:
    a = [("X-Api-Key", key_a)]
    b = [("X-Api-Key", key_b)]
    operator = [("Authorization", f"Bearer {admin_token}")]
    pedido = str(uuid.uuid4())
    fecha = "2026-11-21T10:30:00-03:00"
    created = {"clienteId": CLIENTE, "total": "12.50", "pedidoId": pedido, "fecha": fecha}
    r.request("A creates an order", "POST", "/api/pedidos", a, json.dumps(created).encode(), expect={202})
    deadline = time.monotonic() + wait
    while True:
        got = r.request("A reads its order", "GET", f"/api/pedidos/{pedido}", a, content_type=None, expect={200, 404})
        if got is not None and got.status == 200:
            break
        if time.monotonic() > deadline:
            r.fail("A reads its order", f"not stored by the process worker within {wait:.0f} s")
            return
        r.cases -= 1  # polling is not a case
        time.sleep(0.2)

    order = f"/api/pedidos/{pedido}"
    listing = f"/api/clientes/{CLIENTE}/pedidos"
    update = lambda version, **kw: json.dumps({"clienteId": CLIENTE, "total": "13.00", "version": version, **kw}).encode()  # noqa: E731
    routes = [
        ("POST", "/api/pedidos", json.dumps({"clienteId": CLIENTE, "total": "1.00"}).encode()),
        ("PUT", order, update(2)),
        ("GET", order, None),
        ("HEAD", order, None),
        ("GET", listing, None),
        ("GET", f"{listing}?limit=1", None),
    ]
    hostile_keys: list[list[tuple[str, str | bytes]]] = [
        [("X-Api-Key", "not-a-configured-key-000")],
        [("X-Api-Key", key_a + "x")],
        [("X-Api-Key", key_a[:-1])],
        [("X-Api-Key", "sha256:" + "0" * 64)],
        [("X-Api-Key", "shop-a:" + key_a)],
        [("X-Api-Key", "k" * 8000)],
        [("X-Api-Key", b"\xff\xfe" + key_a.encode())],
        [("Authorization", "Bearer not-a-configured-key-000")],
        [("Authorization", f"Bearer {admin_token}x")],
        # X-Api-Key wins over a bearer: a wrong one is not rescued by a right bearer.
        [("X-Api-Key", "not-a-configured-key-000"), ("Authorization", f"Bearer {key_a}")],
    ]
    for method, path, body in routes:
        name = f"{method} {path[:40]}"
        r.request(f"{name} without a key", method, path, None, body, expect={401})
        r.request(f"{name} with Basic", method, path, [("Authorization", f"Basic {key_a}")], body, expect={401})
        r.request(f"{name} with an empty key", method, path, [("X-Api-Key", "")], body, expect={401})
        for headers in hostile_keys:
            r.request(f"{name} with {str(headers[0][1])[:24]!r}", method, path, headers, body, expect={403})

    # B on A's order: exactly an unknown order's answer, whatever B tries.
    for attempt in range(3):
        unknown = str(uuid.uuid4())
        seen = r.request("B reads an unknown order", "GET", f"/api/pedidos/{unknown}", b, content_type=None, expect={404})
        hidden = r.request("B reads A's order", "GET", order, b, content_type=None, expect={404})
        if anonymous(hidden, pedido) != anonymous(seen, unknown):
            r.fail("B reads A's order", f"answer differs from an unknown order's: {anonymous(hidden, pedido)} vs {anonymous(seen, unknown)}")
        for what, body in [
            ("re-prices", update(2, total="0.01")),
            ("freezes", update(1_000_000)),
            ("moves", json.dumps({"clienteId": str(uuid.uuid4()), "total": "12.50", "version": 2}).encode()),
            ("updates without fecha", update(2 + attempt)),
        ]:
            hit = r.request(f"B {what} A's order", "PUT", order, b, body, expect={404})
            miss = r.request(f"B {what} an unknown order", "PUT", f"/api/pedidos/{unknown}", b, body, expect={404})
            if anonymous(hit, pedido) != anonymous(miss, unknown):
                r.fail(f"B {what} A's order", "answer differs from an unknown order's")
    r.request("B HEADs A's order", "HEAD", order, b, content_type=None, expect={404})
    taken = r.request("B creates an order with A's pedidoId", "POST", "/api/pedidos", b,
                      json.dumps(created).encode(), expect={409})
    if taken is not None and ("12.50" in taken.body.decode("utf-8", "replace") or "shop-a" in taken.body.decode("utf-8", "replace")):
        r.fail("B creates an order with A's pedidoId", f"the 409 tells something of A's order: {taken.body[:200]!r}")
    for who, headers, expected in [("B", b, []), ("A", a, [pedido])]:
        page = r.request(f"{who} lists the customer", "GET", listing, headers, content_type=None, expect={200})
        ids = [o.get("pedidoId") for o in body_of(page).get("pedidos", [])]
        if ids != expected:
            r.fail(f"{who} lists the customer", f"listed {ids}, expected {expected}")
    # Idempotency keys are per client: one key from two clients, two orders.
    ids = []
    for headers in (a, b):
        got = r.request("Idempotency-Key from two clients", "POST", "/api/pedidos",
                        headers + [("Idempotency-Key", "checkout-42")],
                        json.dumps({"clienteId": CLIENTE, "total": "3.00"}).encode(), expect={202})
        ids.append(body_of(got).get("pedidoId"))
    if ids[0] == ids[1]:
        r.fail("Idempotency-Key from two clients", f"both got pedidoId {ids[0]}")

    # A's own limits: the step, the customer; the operator reads everything.
    r.request("A jumps past the step", "PUT", order, a, update(2 + MAX_VERSION_STEP), expect={422})
    r.request("A moves its order", "PUT", order, a,
              json.dumps({"clienteId": str(uuid.uuid4()), "total": "12.50", "version": 2}).encode(), expect={422})
    seen = r.request("operator reads A's order", "GET", order, operator, content_type=None, expect={200})
    if body_of(seen).get("clienteApi") != "shop-a":
        r.fail("operator reads A's order", f"clienteApi is {body_of(seen).get('clienteApi')!r}, not 'shop-a'")
    page = r.request("operator lists the customer", "GET", listing, operator, content_type=None, expect={200})
    if pedido not in [o.get("pedidoId") for o in body_of(page).get("pedidos", [])]:
        r.fail("operator lists the customer", "A's order is missing")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="http://127.0.0.1:PORT")
    parser.add_argument("--key-a", required=True)
    parser.add_argument("--key-b", required=True)
    parser.add_argument("--admin-token", required=True)
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds without an answer that count as a hang")
    parser.add_argument("--wait", type=float, default=30.0, help="seconds for the worker to store the first order")
    args = parser.parse_args()
    url = urllib.parse.urlsplit(args.base)
    runner = Runner(url.hostname or "127.0.0.1", url.port or 80, args.timeout)
    started = time.monotonic()
    run(runner, args.key_a, args.key_b, args.admin_token, args.wait)
    elapsed = time.monotonic() - started
    print(f"http_identity: {runner.cases} cases, {len(runner.failures)} failures, {elapsed:.1f} s")
    return 1 if runner.failures else 0


if __name__ == "__main__":
    sys.exit(main())
