"""The compose rehearsal (scripts/lib/compose_rehearsal.py) catches what would break `docker compose up`: each test runs
it on a deliberately broken copy of docker-compose.yml (moto profile, real binaries on 127.0.0.1) and checks that it
fails naming the service and the variable, command or dependency. Both profiles of the real file run green in
./scripts/test (its compose rehearsal lane). Also: the parsing it shares with the image rehearsal (interpolation,
.env, .dockerignore) against compose's and BuildKit's documented behaviour.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts" / "lib"))
import compose_model as cm  # noqa: E402

REHEARSAL = ROOT / "scripts" / "lib" / "compose_rehearsal.py"
COMPOSE = (ROOT / "docker-compose.yml").read_text(encoding="utf-8")


def bin_dir() -> Path:
    if os.environ.get("PEDIDOS_BIN_DIR"):
        return Path(os.environ["PEDIDOS_BIN_DIR"])
    return Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug"


def rehearse(tmp_path: Path, broken: str) -> subprocess.CompletedProcess[str]:
    for binary in ("pedidos-api", "pedidos-worker"):
        if not (bin_dir() / binary).is_file():
            pytest.fail(f"{bin_dir() / binary} is not built: run `cargo build --workspace --bins` (./scripts/test does)")
    assert broken != COMPOSE, "the replacement changed nothing: the test no longer breaks the file"
    compose = tmp_path / "docker-compose.yml"
    compose.write_text(broken, encoding="utf-8")
    return subprocess.run(  # noqa: S603 - our own script
        [sys.executable, str(REHEARSAL), "--profile", "moto", "--compose", str(compose), "--project-dir", str(ROOT),
         "--bin-dir", str(bin_dir()), "--python", sys.executable, "--log-dir", str(tmp_path / "logs")],
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip


def failure(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, f"the rehearsal passed a broken file:\n{done.stdout}\n{done.stderr}"
    lines = [line for line in done.stderr.splitlines() if "FAILED" in line]
    assert len(lines) == 1, done.stderr
    # Whatever it started is gone: nothing of this run listens or runs any more.
    return lines[0]


def test_a_misspelt_variable_is_named_with_its_service(tmp_path: Path) -> None:
    broken = COMPOSE.replace("      SQS_QUEUE_URL: ecomexpress-sqs-logistics", "      SQS_QUEUE_ULR: ecomexpress-sqs-logistics")
    line = failure(rehearse(tmp_path, broken))
    assert "worker-logistics: SQS_QUEUE_ULR is not a variable pedidos-worker reads (did you mean SQS_QUEUE_URL?)" in line


def test_a_misspelt_shared_variable_is_named(tmp_path: Path) -> None:
    """In the `x-aws-env` anchor every service merges: the first service in start order that gets it is named."""
    broken = COMPOSE.replace("  ORDERS_TABLE: ecomexpress-orders\n", "  ORDER_TABLE: ecomexpress-orders\n")
    line = failure(rehearse(tmp_path, broken))
    assert "topology: ORDER_TABLE is not a variable pedidos-api reads (did you mean ORDERS_TABLE?)" in line


def test_a_missing_variable_is_named_by_the_binary_and_the_rehearsal_names_the_service(tmp_path: Path) -> None:
    broken = COMPOSE.replace("      SNS_TOPIC_ARN: ecomexpress-sns-orders-events\n", "")
    done = rehearse(tmp_path, broken)
    line = failure(done)
    assert line.startswith("compose rehearsal (moto) FAILED: api exited with status 1"), line
    assert "configuration error: SNS_TOPIC_ARN is required but not set" in done.stderr


def test_a_healthcheck_command_the_binary_lacks(tmp_path: Path) -> None:
    broken = COMPOSE.replace('"/usr/local/bin/pedidos-worker", "healthcheck"]', '"/usr/local/bin/pedidos-worker", "health"]')
    line = failure(rehearse(tmp_path, broken))
    assert "worker-process: its healthcheck command" in line and "pedidos-worker health does not exist" in line, line
    assert 'unknown command "health"' in line


def test_a_healthcheck_tool_the_image_lacks(tmp_path: Path) -> None:
    broken = COMPOSE.replace('test: ["CMD", "/usr/local/bin/pedidos-api", "healthcheck"]',
                             'test: ["CMD", "curl", "-f", "http://localhost:8080/health"]')  # fmt: skip
    line = failure(rehearse(tmp_path, broken))
    assert "api: curl is not in the image: Dockerfile.api copies nothing there" in line, line


def test_a_shell_healthcheck_in_a_distroless_image(tmp_path: Path) -> None:
    broken = COMPOSE.replace('test: ["CMD", "/usr/local/bin/pedidos-api", "healthcheck"]',
                             'test: ["CMD-SHELL", "/usr/local/bin/pedidos-api healthcheck"]')  # fmt: skip
    line = failure(rehearse(tmp_path, broken))
    assert "api: its healthcheck is a shell command (CMD-SHELL), but gcr.io/distroless/cc-debian13:nonroot has no /bin/sh" in line


def test_a_worker_that_does_not_wait_for_topology(tmp_path: Path) -> None:
    """The workers' anchor waiting for the emulator instead of `topology`: the rehearsal starts them before topology
    (an order compose allows), they find no queue and exit, and the message says why."""
    broken = COMPOSE.replace(
        "  depends_on:\n    topology:\n      condition: service_completed_successfully\n  healthcheck:",
        "  depends_on:\n    moto:\n      condition: service_healthy\n      required: false\n  healthcheck:",
        1,
    )
    done = rehearse(tmp_path, broken)
    line = failure(done)
    assert "worker-process exited with status 1" in line, line
    assert "it does not wait for topology in depends_on, so compose may start it first" in line, line
    assert "does not exist" in done.stderr


def test_a_dependency_the_profile_leaves_out(tmp_path: Path) -> None:
    """`required: false` dropped from topology's dependency on moto: under the default profile (LocalStack) compose
    refuses to start, and so does the rehearsal, before starting anything."""
    broken = COMPOSE.replace("      moto:\n        condition: service_healthy\n        required: false\n",
                             "      moto:\n        condition: service_healthy\n", 1)  # fmt: skip
    compose = tmp_path / "docker-compose.yml"
    compose.write_text(broken, encoding="utf-8")
    done = subprocess.run(  # noqa: S603 - our own script
        [sys.executable, str(REHEARSAL), "--compose", str(compose), "--project-dir", str(ROOT),
         "--bin-dir", str(bin_dir()), "--log-dir", str(tmp_path / "logs")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    line = failure(done)
    assert "topology: depends on moto, which the profiles ['localstack'] leave out" in line, line


# ---------------------------------------------------------------- the parsing, against the documented behaviour
def test_interpolation_follows_compose() -> None:
    env = {"SET": "x", "EMPTY": ""}
    assert cm.interpolate("${SET:-d} ${EMPTY:-d} ${EMPTY-d} ${UNSET-d} ${UNSET}", env, "t") == "x d  d "
    assert cm.interpolate("${SET:+alt} ${EMPTY:+alt} ${EMPTY+alt} $$SET $SET", env, "t") == "alt  alt $SET x"
    assert cm.interpolate("${UNSET:-a${SET}b}", env, "t") == "axb"
    with pytest.raises(cm.ComposeError, match="required variable EMPTY is missing a value: say it"):
        cm.interpolate("${EMPTY:?say it}", env, "t")
    with pytest.raises(cm.ComposeError, match="unterminated"):
        cm.interpolate("${SET", env, "t")


def test_the_project_resolves_anchors_merges_profiles_and_dotenv(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("COMPOSE_PROFILES=b\nTAG='1.0' # not a comment inside quotes\nLEVEL=debug # a comment\n")
    (tmp_path / "c.yml").write_text(
        "x-env: &env\n  LEVEL: ${LEVEL:-info}\n  N: 5\nservices:\n"
        "  a:\n    profiles: [a]\n    image: a\n"
        "  b:\n    profiles: [b]\n    image: b:${TAG}\n    environment:\n      <<: *env\n      EXTRA: 'yes'\n"
        "  c:\n    image: c\n    depends_on:\n      b:\n        condition: service_healthy\n    healthcheck:\n"
        "      disable: true\n    stop_grace_period: 1m30s\n"
    )  # fmt: skip
    project = cm.load_project(tmp_path / "c.yml")
    assert project.active == ["b", "c"]
    assert project.services["b"].image == "b:1.0"
    assert project.services["b"].environment == {"LEVEL": "debug", "N": "5", "EXTRA": "yes"}
    assert project.services["c"].stop_grace_period == 90
    assert cm.start_order(project) == ["b", "c"]
    assert cm.load_project(tmp_path / "c.yml", profiles=["a"]).active == ["a", "c"]


def test_dockerignore_follows_buildkit(tmp_path: Path) -> None:
    ignore = cm.DockerIgnore.parse(["*", "!keep", "!src/**/*.rs", "src/gen", "**/target"])
    assert ignore.excluded("README.md") and not ignore.excluded("keep")
    assert not ignore.excluded("src/a/b.rs") and ignore.excluded("src/a/b.txt")
    assert ignore.excluded("src/gen/x.rs"), "a later pattern wins over an earlier exception"
    assert not ignore.excluded("keep/sub/x"), "a directory let back in keeps its contents"
    assert ignore.excluded("keep/target/x"), "unless a later pattern excludes them again"
    for name in ("keep/a", "src/x/y.rs", "src/x/y.txt", "other/z"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    assert list(ignore.context_files(tmp_path)) == ["keep/a", "src/x/y.rs"]
