"""Fixtures for the deployment tests: a private moto server and CloudFormation-aware YAML loading.

Run with `.venv/bin/pytest deploy/tests` (the venv comes from `scripts/lib/common.sh: ensure_venv`).
"""

from __future__ import annotations

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
class _CfnLoader(yaml.SafeLoader):
    """SafeLoader that keeps short-form intrinsics: `!Ref X` becomes {"Ref": "X"}, `!Sub s` {"Fn::Sub": s}."""


def _intrinsic(loader: yaml.SafeLoader, tag_suffix: str, node: yaml.Node) -> Any:
    name = "Ref" if tag_suffix == "Ref" else f"Fn::{tag_suffix}"
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if tag_suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {name: value}


_CfnLoader.add_multi_constructor("!", _intrinsic)


def load_cfn(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as fh:
        return yaml.load(fh, Loader=_CfnLoader)  # noqa: S506 - SafeLoader subclass


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


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Starts `moto_server -H 127.0.0.1 -p <free port>`, waits until it answers, kills it at the end."""
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("moto") / "moto_server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(  # noqa: S603 - fixed argv
            [_moto_server_bin(), "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"moto_server exited with {proc.returncode}:\n{log_path.read_text(errors='replace')}")
            try:
                with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"moto_server did not answer on {endpoint} within 60 s")
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
