"""Fixtures for the deployment tests: a private moto server and CloudFormation-aware YAML loading.

Run with `.venv/bin/pytest deploy/tests` (the venv comes from `scripts/lib/common.sh: ensure_venv`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import boto3
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "deploy" / "cloudformation"
REGION = "us-east-1"


# ---------------------------------------------------------------- YAML with CloudFormation tags
sys.path.insert(0, str(ROOT / "deploy" / "iam"))
from role_policy import load_cfn  # noqa: E402 - the templates' loader lives with the policy resolver

__all__ = ["ROOT", "TEMPLATES", "REGION", "load_cfn", "load_yaml", "start_moto"]


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


# ---------------------------------------------------------------- moto server
def _moto_server_bin() -> str:
    candidates = [
        os.environ.get("MOTO_SERVER_BIN", ""),
        str(Path(sys.executable).with_name("moto_server")),
        shutil.which("moto_server") or "",
    ]
    for cand in candidates:
        if cand and os.access(cand, os.X_OK):
            return cand
    pytest.fail("moto_server not found: run `source scripts/lib/common.sh; ensure_venv` first")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def start_moto(log_dir: Path, *, serialised: bool = False) -> Iterator[str]:
    """A moto server on 127.0.0.1 and a free port until the block ends; yields its endpoint.

    `serialised`: the project's scripts/lib/moto_server.py, whose DynamoDB serves one request at a time (per-item
    atomicity, what the binaries rely on), instead of plain `moto_server`.
    """
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log_path = log_dir / f"moto-{port}.log"
    server = _moto_server_bin()
    argv = ([str(Path(server).with_name("python")), str(ROOT / "scripts/lib/moto_server.py")] if serialised
            else [server]) + ["-H", "127.0.0.1", "-p", str(port)]  # fmt: skip
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)  # noqa: S603
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"moto exited with {proc.returncode}:\n{log_path.read_text(errors='replace')}")
            try:
                with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"moto did not answer on {endpoint} within 60 s")
            time.sleep(0.1)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A plain moto server for the whole session."""
    with start_moto(tmp_path_factory.mktemp("moto")) as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def aws(moto_endpoint: str) -> Callable[[str], Any]:
    """aws("sqs") -> a boto3 client for the private moto server, with dummy credentials."""

    def client(service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=moto_endpoint,
            region_name=REGION,
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )

    return client


# ---------------------------------------------------------------- totals lines
SUMMARY: list[str] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Lines tests add to SUMMARY (the deployed-stack lane's totals), printed even under `-q`."""
    for line in SUMMARY:
        terminalreporter.write_line(line)
