"""Fixtures for the console's real-browser tests: a private moto server, the topology, the real binaries, and one
headless Chromium driven by Selenium.

Run with `scripts/browser-test` (installs Chromium when it can), or `.venv/bin/pytest -q tests/browser` once
`cargo build --workspace --bins` has built target/debug/pedidos-api and target/debug/pedidos-worker. Nothing is built
here.

One stack serves the whole session:
- moto (scripts/lib/moto_server.py) on a free 127.0.0.1 port, and `pedidos-api topology` against it;
- `pedidos-api` with ADMIN_TOKEN (the console), and a second `pedidos-api` without it (the admin surface must 404);
- one `pedidos-worker` per queue (process, logistics).
Every process is started in its own session and killed at the end, failures and Ctrl-C included. When a test fails,
the tail of each service's log and the browser's console log are added to its report.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
MOTO_SERVER = ROOT / "scripts" / "lib" / "moto_server.py"
API_BIN = ROOT / "target" / "debug" / "pedidos-api"
WORKER_BIN = ROOT / "target" / "debug" / "pedidos-worker"
CHROMIUM = os.environ.get("CHROMIUM_BIN", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER_BIN", "/usr/bin/chromedriver")
REGION = "us-east-1"
TOPOLOGY_KEYS = (
    "SNS_TOPIC_ARN",
    "PROCESS_QUEUE_URL",
    "LOGISTICS_QUEUE_URL",
    "PROCESS_DLQ_URL",
    "LOGISTICS_DLQ_URL",
    "ORDERS_TABLE",
    "IDEMPOTENCY_TABLE",
)
# Services write their logs here (one file each); reports of failed tests quote their tails.
_LOGS: list[Path] = []
_DRIVER: list[Any] = []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http(
    method: str, url: str, body: Any = None, headers: dict[str, str] | None = None, timeout: float = 10
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request with urllib, no redirects followed: (status, lower-cased headers, body), whatever the status."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:  # noqa: ANN401
            return None

    data = None
    all_headers = dict(headers or {})
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        all_headers.setdefault("Content-Type", "application/json")
    request = urllib.request.Request(url, data=data, method=method, headers=all_headers)
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


def _sanitised_env(extra: dict[str, str]) -> dict[str, str]:
    """The caller's environment without anything that would change the services' behaviour, plus `extra`."""
    drop_prefixes = ("AWS_", "ADMIN_", "API_KEYS", "SNS_", "SQS_", "TOPIC_ARN", "QUEUE_URL", "ORDERS_TABLE")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop_prefixes)}
    env.update(
        {
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_REGION": REGION,
            "LOG_FORMAT": "json",
            "RUST_LOG": "info",
            "BIND_ADDR": "127.0.0.1",
        }
    )
    env.update(extra)
    return env


@dataclass
class Service:
    name: str
    proc: subprocess.Popen
    log: Path
    url: str

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError as error:
            return f"(no log: {error})"

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        # Own process group (start_new_session): signal exactly what this fixture started.
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)


@dataclass
class Stack:
    moto: str
    topology: dict[str, str]
    api: str
    api_without_admin: str
    process_worker: str
    logistics_worker: str
    admin_token: str
    services: list[Service] = field(default_factory=list)

    def sqs(self) -> Any:
        return boto3.client(
            "sqs",
            endpoint_url=self.moto,
            region_name=REGION,
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )


def _die_with_pytest() -> None:
    """In the child, before exec: SIGTERM when pytest dies, even by SIGKILL (Linux), so nothing is left running."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def pytest_configure(config: pytest.Config) -> None:
    # A CI runner cancels with SIGTERM: make it unwind like Ctrl-C, so the fixtures' teardown stops the services.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)


def _terminate(signum: int, frame: Any) -> None:  # noqa: ARG001
    raise KeyboardInterrupt(f"signal {signum}")


def _start(name: str, argv: list[str], env: dict[str, str], logs: Path, url: str) -> Service:
    log = logs / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(  # noqa: S603 - fixed argv
            argv,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            start_new_session=True,
            preexec_fn=_die_with_pytest,  # noqa: PLW1509 - only a prctl, no locks taken
        )
    _LOGS.append(log)
    return Service(name, proc, log, url)


def _wait_http(service: Service, path: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        if service.proc.poll() is not None:
            pytest.fail(f"{service.name} exited with {service.proc.returncode}:\n{service.tail()}")
        try:
            with urllib.request.urlopen(f"{service.url}{path}", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{service.name} did not answer {service.url}{path} within {seconds:.0f} s:\n{service.tail()}")
        time.sleep(0.1)


def _require_binaries() -> None:
    missing = [str(p.relative_to(ROOT)) for p in (API_BIN, WORKER_BIN) if not os.access(p, os.X_OK)]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} missing: build first with `cargo build --workspace --bins` "
            "(scripts/test and scripts/browser-test do); this suite builds nothing itself",
            pytrace=False,
        )
    if not os.access(VENV_PYTHON, os.X_OK):
        pytest.fail(
            "no .venv: run `source scripts/lib/common.sh; ensure_venv` (scripts/browser-test does)", pytrace=False
        )


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    _require_binaries()
    logs = tmp_path_factory.mktemp("services")
    services: list[Service] = []
    try:
        moto_port = free_port()
        moto = _start(
            "moto",
            [str(VENV_PYTHON), str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(moto_port)],
            _sanitised_env({}),
            logs,
            f"http://127.0.0.1:{moto_port}",
        )
        services.append(moto)
        _wait_http(moto, "/moto-api/", 60)

        aws_env = {"AWS_ENDPOINT_URL": moto.url}
        topo = subprocess.run(  # noqa: S603 - fixed argv
            [str(API_BIN), "topology"],
            env=_sanitised_env(aws_env),
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
            check=False,
        )
        if topo.returncode != 0:
            pytest.fail(f"pedidos-api topology exited with {topo.returncode}:\n{topo.stdout}\n{topo.stderr}")
        topology = dict(
            line.split("=", 1) for line in topo.stdout.splitlines() if "=" in line and not line.startswith("#")
        )
        missing = [key for key in TOPOLOGY_KEYS if not topology.get(key)]
        if missing:
            pytest.fail(f"pedidos-api topology printed no {', '.join(missing)}:\n{topo.stdout}")

        token = secrets.token_urlsafe(32)  # 43 visible ASCII characters
        api_env = {
            **aws_env,
            "SNS_TOPIC_ARN": topology["SNS_TOPIC_ARN"],
            "ORDERS_TABLE": topology["ORDERS_TABLE"],
            "IDEMPOTENCY_TABLE": topology["IDEMPOTENCY_TABLE"],
        }
        ports = {name: free_port() for name in ("api", "api-no-admin", "worker-process", "worker-logistics")}
        api = _start(
            "api",
            [str(API_BIN)],
            _sanitised_env({**api_env, "PORT": str(ports["api"]), "ADMIN_TOKEN": token}),
            logs,
            f"http://127.0.0.1:{ports['api']}",
        )
        services.append(api)
        bare_api = _start(
            "api-no-admin",
            [str(API_BIN)],
            _sanitised_env({**api_env, "PORT": str(ports["api-no-admin"])}),
            logs,
            f"http://127.0.0.1:{ports['api-no-admin']}",
        )
        services.append(bare_api)
        workers = {}
        for role in ("process", "logistics"):
            name = f"worker-{role}"
            workers[role] = _start(
                name,
                [str(WORKER_BIN)],
                _sanitised_env(
                    {
                        **aws_env,
                        "SQS_QUEUE_URL": topology[f"{role.upper()}_QUEUE_URL"],
                        "ORDERS_TABLE": topology["ORDERS_TABLE"],
                        "IDEMPOTENCY_TABLE": topology["IDEMPOTENCY_TABLE"],
                        "WAIT_TIME_SECONDS": "1",
                        "SHUTDOWN_GRACE_SECONDS": "2",
                        "PORT": str(ports[name]),
                    }
                ),
                logs,
                f"http://127.0.0.1:{ports[name]}",
            )
            services.append(workers[role])
        for service in services[1:]:
            _wait_http(service, "/health", 60)

        yield Stack(
            moto=moto.url,
            topology=topology,
            api=api.url,
            api_without_admin=bare_api.url,
            process_worker=workers["process"].url,
            logistics_worker=workers["logistics"].url,
            admin_token=token,
            services=services,
        )
    finally:
        # Services first, moto last: the workers' shutdown still talks to SQS.
        for service in reversed(services[1:]):
            service.stop()
        for service in services[:1]:
            service.stop()


@pytest.fixture(scope="session")
def driver(stack: Stack) -> Iterator[Any]:
    """One headless Chromium for the session (the tests follow an operator through the console, in file order)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            pytest.fail(f"{path} not found: install {package} (scripts/browser-test does on Debian)", pytrace=False)
    profile = tempfile.mkdtemp(prefix="console-browser-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-quic",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit chromedriver: no Selenium Manager, nothing downloaded.
    service = DriverService(executable_path=CHROMEDRIVER, log_output=str(_LOGS[0].parent / "chromedriver.log"))
    browser = webdriver.Chrome(service=service, options=options)
    _DRIVER.append(browser)
    try:
        browser.set_page_load_timeout(30)
        browser.set_script_timeout(30)
        yield browser
    finally:
        _DRIVER.clear()
        try:
            browser.quit()
        finally:
            shutil.rmtree(profile, ignore_errors=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    for log in _LOGS:
        try:
            lines = log.read_text(errors="replace").splitlines()
        except OSError:
            continue
        # moto logs every request; only what is not a plain success says anything.
        tail = "\n".join([line for line in lines if not line.endswith('" 200 -')][-30:])
        report.sections.append((f"log tail: {log.name}", tail))
    for browser in _DRIVER:
        try:
            report.sections.append(("browser url", browser.current_url))
            entries = browser.get_log("browser")
            report.sections.append(("browser console", "\n".join(str(e) for e in entries[-30:])))
        except Exception as error:  # noqa: BLE001 - diagnostics only
            report.sections.append(("browser console", f"(unavailable: {error})"))
