"""moto with HTTP/1.1 keep-alive, for benchmarks only.

`moto_server` runs on werkzeug's development server, which answers every request with `Connection: close`, so each
SQS call a benchmarked consumer makes also pays for a new TCP connection; real SQS and LocalStack keep connections
alive. This serves the same moto application with waitress, which does keep-alive.
Usage: python bench/moto_keepalive.py PORT
"""

import sys

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from waitress import serve

if __name__ == "__main__":
    serve(DomainDispatcherApplication(create_backend_app), host="127.0.0.1", port=int(sys.argv[1]), threads=8, _quiet=True)
