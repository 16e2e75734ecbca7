"""LocalStack (SNS and SQS only) without Docker, bound to one local address.

Run by the Python of LocalStack's own venv (.local/localstack/venv, installed by scripts/lib/localstack.sh): the
end-to-end harness (tests/src/lib.rs) starts one per test, and `scripts/run-local --localstack` one for the run.

Usage: python scripts/lib/localstack_server.py -H 127.0.0.1 -p PORT --root DIR

DIR holds everything the instance writes (LocalStack's FILESYSTEM_ROOT); the caller removes it afterwards.
Readiness: GET http://127.0.0.1:PORT/_localstack/health answers 200 with sns and sqs "available" or "running".
"""

import argparse
import os
import runpy
import sys

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, required=True)
    parser.add_argument("--root", required=True, help="directory for everything this instance writes")
    parser.add_argument(
        "--eager-loading",
        choices=["0", "1"],
        default="1",
        help="EAGER_SERVICE_LOADING (default 1; the compose rehearsal passes the compose file's value)",
    )
    args = parser.parse_args()
    if args.host not in LOCAL_HOSTS:
        parser.error(f"--host {args.host}: only a loopback address is allowed")
    root = os.path.abspath(args.root)
    os.makedirs(root, exist_ok=True)
    # The service catalog index built at install time (scripts/lib/localstack.sh) in the venv, shared read-only by
    # every instance: without it each instance builds its own on its first request (about 5 s).
    catalog = os.path.join(sys.prefix, "localstack-root", "usr", "lib", "localstack")
    link = os.path.join(root, "usr", "lib", "localstack")
    if os.path.isdir(catalog) and not os.path.lexists(link):
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(catalog, link)
    address = f"{args.host}:{args.port}"
    os.environ.update(
        {
            # The machine may look like a container (/.dockerenv): LocalStack would then act as if it owned it.
            "OVERRIDE_IN_DOCKER": "0",
            # The default gateway server ignores the host part and listens on 0.0.0.0; hypercorn honours it.
            "GATEWAY_SERVER": "hypercorn",
            "GATEWAY_LISTEN": address,
            # Otherwise LocalStack starts a DNS server on 0.0.0.0:53.
            "DNS_ADDRESS": "0",
            "SERVICES": "sqs,sns",
            # Both services loaded at start, so the first request does not pay for it.
            "EAGER_SERVICE_LOADING": args.eager_loading,
            # No download of a TLS certificate, no analytics: nothing leaves the machine.
            "SKIP_SSL_CERT_DOWNLOAD": "1",
            "DISABLE_EVENTS": "1",
            "FILESYSTEM_ROOT": root,
            # Queue URLs that point back at this instance (http://127.0.0.1:PORT/queue/<region>/<account>/<name>)
            # rather than at *.localhost.localstack.cloud, which needs DNS.
            "LOCALSTACK_HOST": address,
            "SQS_ENDPOINT_STRATEGY": "path",
        }
    )
    sys.argv = ["localstack.runtime.main"]
    runpy.run_module("localstack.runtime.main", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
