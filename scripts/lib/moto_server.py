"""moto server for the tests, with DynamoDB's per-item atomicity.

moto serves requests on threads and its DynamoDB backend takes no lock, so two concurrent conditional writes on one
item can both pass their condition (a lost update: `tests/tests/store_e2e.rs` caught it). Real DynamoDB evaluates a
condition and applies the write atomically per item. This runs the same moto application as `moto_server`, with every
DynamoDB request serialised by one lock; SQS and SNS (long polls included) stay concurrent.

Usage: python scripts/lib/moto_server.py -H 127.0.0.1 -p PORT

The tests, `scripts/run-local` and docker-compose's `moto` profile (deploy/moto/Dockerfile, which copies this file)
all run it, with moto 5.2.1. Its log is plain text unless stderr is a terminal (and never with NO_COLOR).
"""

import argparse
import os
import sys
import threading

import werkzeug.serving
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple

_DYNAMODB = threading.Lock()


def serialise_dynamodb(app):
    def wrapped(environ, start_response):
        if environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB_"):
            with _DYNAMODB:
                # The body is produced inside the lock: moto builds responses eagerly.
                return list(app(environ, start_response))
        return app(environ, start_response)

    return wrapped


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, default=5000)
    args = parser.parse_args()
    # werkzeug colours its start-up line and 4xx/5xx request lines whatever the output is (only colorama, when
    # installed, strips them again): `docker compose logs > file` would get escape codes.
    if not sys.stderr.isatty() or os.environ.get("NO_COLOR"):
        werkzeug.serving._log_add_style = False  # noqa: SLF001 - werkzeug's only switch for it
    os.environ.setdefault("MOTO_PORT", str(args.port))
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(args.host, args.port, serialise_dynamodb(app), threaded=True)


if __name__ == "__main__":
    main()
