"""`docker compose up`, rehearsed without Docker.

Reads docker-compose.yml as compose would (its .env, the profile, `${VAR:-default}` interpolation, YAML anchors and
merges), then runs each service's command (the image's ENTRYPOINT and CMD from its Dockerfile, or compose's
`command`) with exactly the environment compose would give it (the image's ENV, then the service's `environment`), on
127.0.0.1, in `depends_on` order with its conditions; posts an order and waits until both workers applied it; runs
every healthcheck command; stops the services with their `stop_signal` and `stop_grace_period`, and checks that each
exited 0. Any mistake that would break `docker compose up` stops it with one message naming the service and the
variable, command or dependency at fault.

What it changes, and only this (each printed): the `emulator` network alias points at a local emulator (the serialised
moto of scripts/lib/moto_server.py for the moto profile; for the LocalStack profile, LocalStack 4.14.0 without Docker
for SNS and SQS plus that moto for DynamoDB, through the SDK's `AWS_ENDPOINT_URL_DYNAMODB`, as the test lane does,
since LocalStack's DynamoDB needs its image); `BIND_ADDR=127.0.0.1` (containers listen on every interface of their
own network namespace, processes here must stay on loopback); a listening port is moved to a free one only where
needed (two services listening on the same container port, or a port taken on this machine), through `PORT` for the
binaries and the server's `-p` for the emulator; image paths map to what the Dockerfiles copy there (the builder's
`/out/<binary>` is the workspace's build of that binary, a file copied from the context is that file, `python` in a
Python image is the project's venv with the same moto); `/tmp/` in a third-party image's shell healthcheck is a
directory of the run.

Services compose could start together are started one at a time, a long-running service before a one-shot it does not
wait for (the worst order compose allows), each settled (healthy, and past a worker's `"status": "starting"`) before
the next; any service that exits before the end fails the rehearsal (compose would restart it; a flapping service is
a defect).

Usage: python scripts/lib/compose_rehearsal.py [--profile moto|localstack] [--compose FILE] [--project-dir DIR]
       [--bin-dir target/debug] [--log-dir DIR]
Run by scripts/compose-rehearsal (which builds the binaries and installs the emulators) and by ./scripts/test.
"""

from __future__ import annotations

import argparse
import difflib
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compose_model as cm  # noqa: E402
from no_ansi import first_escape_line  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
# The emulators' network alias in docker-compose.yml.
EMULATOR_ALIAS = "emulator"
LOCALSTACK_VERSION = "4.14.0"
# Variables any binary may be given besides those its sources name: the AWS SDK's own and the process basics.
STANDARD_VARIABLES = {
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION",
    "AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_EC2_METADATA_DISABLED", "AWS_ENDPOINT_URL",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_AUTHORIZATION_TOKEN", "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN", "AWS_ROLE_SESSION_NAME", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE", "AWS_USE_FIPS_ENDPOINT",
    "AWS_USE_DUALSTACK_ENDPOINT", "AWS_SDK_UA_APP_ID", "RUST_LOG", "RUST_BACKTRACE", "NO_COLOR", "PATH", "HOME",
    "HOSTNAME", "TZ", "SSL_CERT_FILE", "SSL_CERT_DIR",
}  # fmt: skip
# The sources each binary is built from (its crate and the libraries it uses).
BINARY_SOURCES = {
    "pedidos-api": ["crates/api/src", "crates/platform/src", "crates/store/src", "crates/domain/src"],
    "pedidos-worker": ["crates/worker/src", "crates/platform/src", "crates/store/src", "crates/domain/src"],
}
# The distroless runtime's own ENV (gcr.io/distroless/cc-debian13): what a process there sees besides the image's.
DISTROLESS_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                  "SSL_CERT_FILE": "/etc/ssl/certs/ca-certificates.crt"}  # fmt: skip
SETTLE_TIMEOUT = 60.0
ONE_SHOT_TIMEOUT = 300.0


class RehearsalError(Exception):
    """Why `docker compose up` would not work, naming the service and the variable, command or dependency."""


def say(message: str) -> None:
    print(message, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback URLs we built
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


def variables_read(binary: str) -> set[str]:
    """Every environment variable name `binary` can read: the names its sources spell out (string literals in capitals
    that could be a variable) plus the SDK's and the process's own."""
    names = set(STANDARD_VARIABLES)
    for directory in BINARY_SOURCES[binary]:
        for path in (ROOT / directory).rglob("*.rs"):
            names.update(re.findall(r'"([A-Z][A-Z0-9_]{2,})"', path.read_text(encoding="utf-8")))
    return names


def tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        return f"<cannot read {path}: {e}>"
    return "\n".join("    " + (line if len(line) <= 300 else line[:300] + " ...") for line in text.splitlines()[-lines:])


def poll(deadline: float, check: Callable[[], Any], interval: float = 0.2) -> Any:
    """Calls `check` until it returns something truthy or `deadline` (time.monotonic) passes; returns its last value."""
    while True:
        value = check()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


@dataclass
class Process:
    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    popen: subprocess.Popen[bytes]
    port: int | None = None
    long_running: bool = True
    started: float = field(default_factory=time.monotonic)

    def exited(self) -> int | None:
        return self.popen.poll()


class HealthShim:
    """`/_localstack/health` as LocalStack in its image would answer it: the local LocalStack's own answer (SNS, SQS),
    with `dynamodb` taken from the moto that serves DynamoDB in this lane (`running` once it answers). The compose
    healthcheck's shell command runs unchanged against it."""

    def __init__(self, localstack: str, moto: str) -> None:
        shim = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path.split("?")[0] != "/_localstack/health":
                    self.send_error(404)
                    return
                try:
                    status, body = http_get(f"{shim.localstack}/_localstack/health")
                    health = json.loads(body)
                except (OSError, ValueError):
                    self.send_error(503)
                    return
                try:
                    moto_up = http_get(f"{shim.moto}/moto-api/")[0] == 200
                except OSError:
                    moto_up = False
                health.setdefault("services", {})["dynamodb"] = "running" if moto_up else "available"
                data = json.dumps(health).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_: Any) -> None:
                pass

        self.localstack, self.moto = localstack, moto
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Rehearsal:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.compose = Path(args.compose).resolve()
        self.project_dir = Path(args.project_dir).resolve() if args.project_dir else self.compose.parent
        self.bin_dir = Path(args.bin_dir).resolve()
        self.python = Path(args.python).absolute()  # not resolved: a venv's python is a symlink
        self.log_dir = Path(args.log_dir).resolve()
        self.running: list[Process] = []
        self.ports: dict[int, str] = {}  # host port -> service
        self.notes: list[str] = []
        self.emulator: dict[str, str] = {}  # messaging, dynamodb URLs
        self.emulator_service: str | None = None
        self.shim: HealthShim | None = None
        self.localstack_root: Path | None = None
        self.label = args.profile or "default profiles"

    # ----------------------------------------------------------------------------------------------- the whole run
    def run(self) -> None:
        started = time.monotonic()
        self.project = cm.load_project(
            self.compose,
            env_file=self.project_dir / ".env",
            profiles=[self.args.profile] if self.args.profile else None,
            project_dir=self.project_dir,
        )
        self.label = ",".join(self.project.profiles) or "no profile"
        order = cm.start_order(self.project)
        say(f"==> compose rehearsal ({self.label}): {self.compose.name}, services in start order: {', '.join(order)}")
        # The emulator first: every other service's environment points at it.
        emulators = [n for n in order if EMULATOR_ALIAS in self.project.services[n].aliases]
        plans = {name: self.plan(name) for name in emulators}
        plans.update({name: self.plan(name) for name in order if name not in plans})
        if self.log_dir.exists():
            shutil.rmtree(self.log_dir)
        self.log_dir.mkdir(parents=True)
        try:
            for name in order:
                self.start(name, plans[name])
            self.post_an_order()
            self.check_healthchecks(plans)
            self.stop_all(order)
            self.check_logs()
        finally:
            self.cleanup()
        say(f"compose rehearsal ({self.label}): {len(order)} services started in order, an order applied by both "
            f"roles, every healthcheck passed, clean stops; {time.monotonic() - started:.0f} s")  # fmt: skip

    # ----------------------------------------------------------------------------------------------- planning
    def plan(self, name: str) -> dict[str, Any]:
        """The command, environment, port and healthcheck of one service, checked before anything starts."""
        service = self.project.services[name]
        if EMULATOR_ALIAS in service.aliases:
            return self.plan_emulator(service)
        if service.dockerfile is None or not service.dockerfile.is_file():
            raise RehearsalError(f"{name}: no Dockerfile to read its command from ({service.dockerfile})")
        dockerfile = cm.read_dockerfile(service.dockerfile)
        entrypoint = service.entrypoint or (dockerfile.final.last("ENTRYPOINT").exec_form() if dockerfile.final.last("ENTRYPOINT") else [])  # noqa: E501
        cmd_ins = dockerfile.final.last("CMD")
        command = service.command if service.command is not None else (cmd_ins.exec_form() if cmd_ins else [])
        if not entrypoint and not command:
            raise RehearsalError(f"{name}: neither the image nor compose gives a command")
        image_argv = list(entrypoint or []) + list(command or [])
        binary = Path(image_argv[0]).name
        argv = [self.image_path(name, dockerfile, image_argv[0])] + image_argv[1:]
        # Exactly compose's environment: the base image's, the image's ENV, then the service's environment.
        env = dict(DISTROLESS_ENV) if dockerfile.final.base.startswith("gcr.io/distroless/") else {}
        env.update(dockerfile.final.env())
        env.update(service.environment)
        composed = dict(env)
        if binary in BINARY_SOURCES:
            known = variables_read(binary)
            for variable in service.environment:
                if variable not in known:
                    close = difflib.get_close_matches(variable, sorted(known), n=1, cutoff=0.75)
                    hint = f" (did you mean {close[0]}?)" if close else ""
                    raise RehearsalError(f"{name}: {variable} is not a variable {binary} reads{hint}")
        if binary in BINARY_SOURCES and self.emulator_service is None:
            raise RehearsalError(f"{name}: no active service holds the network alias {EMULATOR_ALIAS!r}")
        env = self.rewrite_emulator_urls(name, env) if self.emulator_service else env
        env["BIND_ADDR"] = "127.0.0.1"
        long_running = service.restart not in ("no", "on-failure")
        port = None
        if long_running:
            if "PORT" not in env:
                raise RehearsalError(f"{name}: no PORT in the image's ENV or compose's environment: cannot tell its port")
            container_port = int(env["PORT"])
            for host_ip, _, target in service.ports:
                if target != container_port:
                    raise RehearsalError(
                        f"{name}: publishes container port {target}, but listens on {container_port} (PORT)"
                    )
                if host_ip not in ("127.0.0.1", "::1", "localhost"):
                    raise RehearsalError(f"{name}: publishes port {target} on {host_ip}, not on loopback")
            port = self.claim(name, container_port)
            env["PORT"] = str(port)
        healthcheck = self.plan_healthcheck(name, service, dockerfile, env)
        return {"argv": argv, "env": env, "port": port, "long_running": long_running, "healthcheck": healthcheck,
                "image_argv": image_argv, "compose_env": composed}  # fmt: skip

    def image_path(self, name: str, dockerfile: cm.Dockerfile, path: str) -> str:
        """The local file standing for `path` inside the image, from the Dockerfile's final-stage COPY lines."""
        if path in ("python", "python3") and dockerfile.final.base.startswith("python:"):
            return str(self.python)
        for source_stage, sources, destination in dockerfile.final.copies():
            for source in sources:
                target = destination if not destination.endswith("/") else destination + Path(source).name
                if target != path:
                    continue
                if source_stage is not None:
                    if source.startswith("/out/"):
                        local = self.bin_dir / Path(source).name
                        if not local.is_file():
                            raise RehearsalError(f"{name}: {local} is not built (cargo build --workspace --bins)")
                        return str(local)
                    raise RehearsalError(f"{name}: {path} comes from stage {source_stage}'s {source}, unknown here")
                context = self.project.services[name].build_context or self.project_dir
                local = context / source
                if not local.is_file():
                    raise RehearsalError(f"{name}: {dockerfile.path.name} copies {source}, which does not exist")
                return str(local)
        raise RehearsalError(
            f"{name}: {path} is not in the image: {dockerfile.path.name} copies nothing there (base "
            f"{dockerfile.final.base})"
        )

    def plan_healthcheck(self, name: str, service: cm.Service, dockerfile: cm.Dockerfile, env: dict[str, str]) -> dict[str, Any] | None:  # noqa: E501
        if service.healthcheck_disabled:
            return None
        check = service.healthcheck
        if check is None:
            ins = dockerfile.final.last("HEALTHCHECK")
            if ins is None:
                return None
            form = cm.Instruction("CMD", ins.args.split("CMD", 1)[1].strip(), ins.line).exec_form()
            check = cm.Healthcheck(argv=form, shell=None if form else ins.args.split("CMD", 1)[1].strip())
        if check.shell is not None:
            if not dockerfile.has_shell():
                raise RehearsalError(
                    f"{name}: its healthcheck is a shell command (CMD-SHELL), but {dockerfile.final.base} has no "
                    f"/bin/sh: use the exec form, e.g. [\"CMD\", \"/usr/local/bin/<binary>\", \"healthcheck\"]"
                )
            return {"argv": ["/bin/sh", "-c", check.shell], "check": check, "env": env}
        if not check.argv:
            raise RehearsalError(f"{name}: its healthcheck has no command")
        argv = [self.image_path(name, dockerfile, check.argv[0])] + [self.local_address(a) for a in check.argv[1:]]
        return {"argv": argv, "check": check, "env": env}

    def local_address(self, text: str) -> str:
        """An address inside the emulator's container (`localhost:4566`, `127.0.0.1:4566`) as the local emulator's."""
        if not self.emulator.get("own_port"):
            return text
        own = self.emulator["own_port"]
        return re.sub(r"(localhost|127\.0\.0\.1):4566\b", f"127.0.0.1:{own}", text)

    def rewrite_emulator_urls(self, name: str, env: dict[str, str]) -> dict[str, str]:
        out = {}
        alias = re.compile(rf"\b{EMULATOR_ALIAS}:(\d+)")
        for key, value in env.items():
            match = alias.search(value)
            if match:
                if match.group(1) != str(self.emulator["container_port"]):
                    raise RehearsalError(
                        f"{name}: {key}={value} uses port {match.group(1)}, but the emulator listens on "
                        f"{self.emulator['container_port']}"
                    )
                value = value.replace(match.group(0), self.emulator["messaging"].removeprefix("http://"))
            out[key] = value
        if out.get("AWS_ENDPOINT_URL", "").startswith(self.emulator["messaging"]) and self.emulator["dynamodb"] != \
                self.emulator["messaging"] and "AWS_ENDPOINT_URL_DYNAMODB" not in out:  # fmt: skip
            out["AWS_ENDPOINT_URL_DYNAMODB"] = self.emulator["dynamodb"]
        return out

    def claim(self, name: str, port: int) -> int:
        if port in self.ports or not port_free(port):
            why = f"{self.ports[port]} listens on it" if port in self.ports else "taken on this machine"
            new = free_port()
            while new in self.ports:
                new = free_port()
            self.notes.append(f"{name}: port {port} {why}: listens on 127.0.0.1:{new} instead")
            port = new
        self.ports[port] = name
        return port

    def plan_emulator(self, service: cm.Service) -> dict[str, Any]:
        name = service.name
        if self.emulator_service is not None:
            raise RehearsalError(
                f"{name} and {self.emulator_service} both hold the alias {EMULATOR_ALIAS!r}: enable one profile"
            )
        self.emulator_service = name
        container_ports = [target for _, _, target in service.ports] or [4566]
        self.emulator["container_port"] = container_ports[0]
        own = self.claim(name, container_ports[0])
        self.emulator["own_port"] = own
        if service.dockerfile is not None:  # the moto image, built from this repository
            dockerfile = cm.read_dockerfile(service.dockerfile)
            entry = dockerfile.final.last("ENTRYPOINT")
            cmd = dockerfile.final.last("CMD")
            image_argv = (service.entrypoint or (entry.exec_form() if entry else [])) + (
                service.command if service.command is not None else (cmd.exec_form() if cmd else [])
            )
            argv = [self.image_path(name, dockerfile, image_argv[0])]
            rest = image_argv[1:]
            argv.append(self.image_path(name, dockerfile, rest[0]) if rest and rest[0].startswith("/") else rest[0])
            args = rest[1:]
            for i, arg in enumerate(args):
                if arg in ("-H", "--host") and i + 1 < len(args):
                    args[i + 1] = "127.0.0.1"
                if arg in ("-p", "--port") and i + 1 < len(args):
                    if int(args[i + 1]) != container_ports[0]:
                        raise RehearsalError(f"{name}: listens on {args[i + 1]}, but publishes {container_ports[0]}")
                    args[i + 1] = str(own)
            argv += args
            self.check_moto_version(name)
            env = dockerfile.final.env()
            env.update(service.environment)
            url = f"http://127.0.0.1:{own}"
            self.emulator.update(messaging=url, dynamodb=url, kind="moto")
            return {"argv": argv, "env": env, "port": own, "long_running": True, "emulator": "moto",
                    "healthcheck": self.plan_emulator_healthcheck(name, service, dockerfile)}  # fmt: skip
        image = service.image or ""
        if not image.startswith("localstack/localstack:"):
            raise RehearsalError(f"{name}: an emulator image this rehearsal cannot stand in for: {image!r}")
        version = image.split(":", 1)[1]
        if version != LOCALSTACK_VERSION:
            raise RehearsalError(f"{name}: image {image}, but the local lane runs LocalStack {LOCALSTACK_VERSION}")
        env = service.environment
        wanted = set(env.get("SERVICES", "").replace(" ", "").split(","))
        if not {"sns", "sqs", "dynamodb"} <= wanted:
            raise RehearsalError(f"{name}: SERVICES={env.get('SERVICES', '')!r} lacks one of sns, sqs, dynamodb")
        if env.get("LOCALSTACK_HOST") != f"{EMULATOR_ALIAS}:{container_ports[0]}":
            raise RehearsalError(
                f"{name}: LOCALSTACK_HOST={env.get('LOCALSTACK_HOST')!r}: queue URLs must name "
                f"{EMULATOR_ALIAS}:{container_ports[0]}, which the other containers resolve"
            )
        if env.get("SQS_ENDPOINT_STRATEGY") != "path":
            raise RehearsalError(f"{name}: SQS_ENDPOINT_STRATEGY must be path (a host per queue needs DNS)")
        eager = "1" if env.get("EAGER_SERVICE_LOADING", "").lower() in ("1", "true") else "0"
        moto_port = free_port()
        while moto_port in self.ports:
            moto_port = free_port()
        self.ports[moto_port] = f"{name} (moto for DynamoDB)"
        self.localstack_root = self.log_dir.parent / f"{self.log_dir.name}-localstack"
        argv = [str(Path(self.args.localstack_python)), str(ROOT / "scripts/lib/localstack_server.py"), "-H",
                "127.0.0.1", "-p", str(own), "--root", str(self.localstack_root), "--eager-loading", eager]  # fmt: skip
        self.emulator.update(messaging=f"http://127.0.0.1:{own}", dynamodb=f"http://127.0.0.1:{moto_port}",
                             kind="localstack", moto_port=str(moto_port))  # fmt: skip
        self.notes.append(f"{name}: LocalStack {version} without Docker for SNS and SQS on 127.0.0.1:{own} "
                          f"(EAGER_SERVICE_LOADING={eager} from the compose file), moto for DynamoDB on "
                          f"127.0.0.1:{moto_port} (AWS_ENDPOINT_URL_DYNAMODB for the binaries)")  # fmt: skip
        check = service.healthcheck
        healthcheck = None
        if check is not None:
            if check.shell is None and not check.argv:
                raise RehearsalError(f"{name}: its healthcheck has no command")
            healthcheck = {"check": check, "shim": True}
        return {"argv": argv, "env": {}, "port": own, "long_running": True, "emulator": "localstack",
                "healthcheck": healthcheck}  # fmt: skip

    def plan_emulator_healthcheck(self, name: str, service: cm.Service, dockerfile: cm.Dockerfile) -> dict[str, Any] | None:  # noqa: E501
        check = service.healthcheck
        if check is None:
            return None
        if check.shell is not None:
            return {"argv": ["/bin/sh", "-c", self.local_address(check.shell)], "check": check, "env": {}}
        argv = [self.image_path(name, dockerfile, check.argv[0])] + [self.local_address(a) for a in check.argv[1:]]
        return {"argv": argv, "check": check, "env": {}}

    def check_moto_version(self, name: str) -> None:
        pins = (ROOT / "deploy/moto/requirements.txt").read_text(encoding="utf-8")
        pinned = re.search(r"^moto(?:\[[^\]]*\])?==(\S+)", pins, re.M)
        found = subprocess.run(  # noqa: S603 - the project's venv
            [str(self.python), "-c", "import importlib.metadata as m; print(m.version('moto'))"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if not pinned or found.stdout.strip() != pinned.group(1):
            raise RehearsalError(
                f"{name}: the image pins moto {pinned.group(1) if pinned else '?'}, the venv here has "
                f"{found.stdout.strip() or found.stderr.strip()}: the rehearsal would not run the image's moto"
            )

    # ----------------------------------------------------------------------------------------------- running
    def spawn(self, name: str, argv: list[str], env: dict[str, str], port: int | None, long_running: bool) -> Process:
        log = self.log_dir / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(  # noqa: S603 - the project's binaries and emulators
                argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=self.log_dir,
            )  # fmt: skip
        process = Process(name, argv, env, log, popen, port, long_running)
        self.running.append(process)
        return process

    def check_alive(self, exempt: str | None = None) -> None:
        for process in self.running:
            if process.long_running and process.name != exempt and process.exited() is not None:
                raise RehearsalError(
                    f"{process.name} exited with status {process.exited()} while the rehearsal ran{self.order_hint(process.name)};"
                    f" its log ends:\n{tail(process.log)}"
                )

    def waits_for(self, name: str) -> set[str]:
        """Every service `name` waits for, directly or through its dependencies."""
        seen: set[str] = set()
        todo = [name]
        while todo:
            for dep in self.project.services[todo.pop()].depends_on:
                if dep.service not in seen and dep.service in self.project.active:
                    seen.add(dep.service)
                    todo.append(dep.service)
        return seen

    def order_hint(self, name: str) -> str:
        """When `name` does not wait for a one-shot (e.g. topology) that had not completed when it started, say so:
        compose may start it first, and it fails as it did here."""
        started = [p.name for p in self.running]
        before = started[: started.index(name)] if name in started else started
        missing = [
            other for other in self.project.active
            if self.project.services[other].restart in ("no", "on-failure") and other not in self.waits_for(name)
            and (other not in before or next(p for p in self.running if p.name == other).exited() != 0)
        ]  # fmt: skip
        if not missing:
            return ""
        return (f" (start order: it does not wait for {', '.join(missing)} in depends_on, so compose may start it "
                f"first, as here)")  # fmt: skip

    def start(self, name: str, plan: dict[str, Any]) -> None:
        service = self.project.services[name]
        for dep in service.depends_on:
            if dep.service not in self.project.active:
                continue
            # Sequential start: every dependency has settled (or completed) by now; check it is what was asked for.
            done = next((p for p in self.running if p.name == dep.service), None)
            if done is None:
                raise RehearsalError(f"{name}: started before its dependency {dep.service}")
            if dep.condition == "service_completed_successfully" and done.exited() != 0:
                raise RehearsalError(f"{name}: waits for {dep.service} to complete successfully; it did not")
        if plan.get("emulator") == "localstack":
            self.start_localstack(name, plan)
            return
        composed = plan.get("compose_env", plan["env"])
        changed = sorted(f"{k}={v}" for k, v in plan["env"].items() if composed.get(k) != v)
        say(f"    {name}: {' '.join(plan['argv'])}" + (f"  [set here: {', '.join(changed)}]" if changed else ""))
        process = self.spawn(name, plan["argv"], plan["env"], plan["port"], plan["long_running"])
        if plan["long_running"]:
            self.settle(process, plan)
        else:
            self.complete(process)

    def start_localstack(self, name: str, plan: dict[str, Any]) -> None:
        moto_port = self.emulator["moto_port"]
        say(f"    {name}: LocalStack {LOCALSTACK_VERSION} (SNS, SQS) on {self.emulator['messaging']}, moto (DynamoDB) on "
            f"{self.emulator['dynamodb']}")  # fmt: skip
        if self.localstack_root is not None and self.localstack_root.exists():
            shutil.rmtree(self.localstack_root)
        self.spawn(f"{name}-moto", [str(self.python), str(ROOT / "scripts/lib/moto_server.py"), "-H", "127.0.0.1",
                                    "-p", moto_port], {}, int(moto_port), True)  # fmt: skip
        process = self.spawn(name, plan["argv"], {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, plan["port"], True)
        if plan["healthcheck"] is not None:
            check = plan["healthcheck"]["check"]
            self.shim = HealthShim(self.emulator["messaging"], self.emulator["dynamodb"])
            tmp = self.log_dir / "tmp"
            tmp.mkdir(exist_ok=True)
            command = re.sub(r"(localhost|127\.0\.0\.1):4566\b", f"127.0.0.1:{self.shim.port}",
                             check.shell if check.shell is not None else " ".join(check.argv or []))  # fmt: skip
            command = command.replace("/tmp/", f"{tmp}/")
            plan["healthcheck"] = {"argv": ["/bin/sh", "-c", command], "check": check,
                                   "env": {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}}  # fmt: skip
        self.settle(process, plan)

    def run_healthcheck(self, name: str, healthcheck: dict[str, Any]) -> tuple[int, str]:
        check: cm.Healthcheck = healthcheck["check"]
        try:
            done = subprocess.run(  # noqa: S603 - the image's healthcheck, mapped to local paths
                healthcheck["argv"], env=healthcheck["env"], capture_output=True, text=True,
                timeout=max(check.timeout, 1.0), check=False, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return 124, f"timed out after {check.timeout} s"
        except OSError as e:
            raise RehearsalError(f"{name}: its healthcheck cannot run: {healthcheck['argv'][0]}: {e}") from e
        return done.returncode, (done.stdout + done.stderr).strip()

    def settle(self, process: Process, plan: dict[str, Any]) -> None:
        """Until the healthcheck passes (within compose's own patience: start period plus retries), and a worker is
        past `"status": "starting"`; fails when the process exits or a healthcheck command cannot be run."""
        healthcheck = plan["healthcheck"]
        patience = SETTLE_TIMEOUT
        if healthcheck is not None:
            check = healthcheck["check"]
            patience = max(SETTLE_TIMEOUT, check.start_period + check.retries * check.interval)
        deadline = time.monotonic() + patience
        last = (0, "")

        def ready() -> bool:
            nonlocal last
            self.check_alive()
            if healthcheck is not None:
                last = self.run_healthcheck(process.name, healthcheck)
                if last[0] != 0:
                    if "unknown command" in last[1] or last[0] in (126, 127):
                        raise RehearsalError(
                            f"{process.name}: its healthcheck command {' '.join(healthcheck['argv'])} does not exist "
                            f"(exit {last[0]}): {last[1]}"
                        )
                    return False
            if process.port is not None and "emulator" not in plan:
                try:
                    status, body = http_get(f"http://127.0.0.1:{process.port}/health", timeout=1.0)
                    state = json.loads(body).get("status") if status == 200 else None
                except (OSError, ValueError, AttributeError):
                    return False
                if state == "starting":
                    return False
            return True

        if not poll(deadline, ready, interval=0.25):
            raise RehearsalError(
                f"{process.name}: not healthy within {patience:.0f} s (last healthcheck: exit {last[0]} {last[1]!r}); "
                f"its log ends:\n{tail(process.log)}"
            )
        say(f"      healthy after {time.monotonic() - process.started:.1f} s"
            + (f" (listening on 127.0.0.1:{process.port})" if process.port else ""))  # fmt: skip

    def complete(self, process: Process) -> None:
        deadline = time.monotonic() + ONE_SHOT_TIMEOUT

        def finished() -> bool:
            self.check_alive(exempt=process.name)
            return process.exited() is not None

        if not poll(deadline, finished):
            raise RehearsalError(f"{process.name}: still running after {ONE_SHOT_TIMEOUT:.0f} s; its log ends:\n"
                                 f"{tail(process.log)}")  # fmt: skip
        if process.exited() != 0:
            raise RehearsalError(f"{process.name} exited with status {process.exited()}; its log ends:\n"
                                 f"{tail(process.log)}")  # fmt: skip
        say(f"      completed (exit 0) after {time.monotonic() - process.started:.1f} s")

    # ----------------------------------------------------------------------------------------------- the order
    def post_an_order(self) -> None:
        api = next((p for p in self.running if p.long_running and "pedidos-api" in Path(p.argv[0]).name), None)
        if api is None:
            raise RehearsalError("no running pedidos-api to post an order to")
        base = f"http://127.0.0.1:{api.port}"
        body = json.dumps({"clienteId": str(uuid.uuid4()), "total": "59.98"}).encode()
        request = urllib.request.Request(f"{base}/api/pedidos", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=15) as response:  # noqa: S310 - loopback
                status, answer = response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            raise RehearsalError(f"{api.name}: POST /api/pedidos answered {e.code}: {e.read()[:500]!r}") from e
        if status != 202 or "pedidoId" not in answer:
            raise RehearsalError(f"{api.name}: POST /api/pedidos answered {status} {answer}")
        pedido = answer["pedidoId"]
        say(f"    order {pedido} accepted (202); waiting for the process and logistics workers to apply it")
        started = time.monotonic()
        last: tuple[int, str] = (0, "")

        def applied() -> bool:
            nonlocal last
            self.check_alive()
            last = http_get(f"{base}/api/pedidos/{pedido}")
            if last[0] != 200:
                return False
            order = json.loads(last[1])
            return bool(order.get("estado")) and bool((order.get("envio") or {}).get("trackingCode"))

        if not poll(time.monotonic() + 60, applied, interval=0.3):
            raise RehearsalError(f"order {pedido} not applied by both roles within 60 s: GET answered {last}")
        say(f"      applied by both roles (state and shipment) after {time.monotonic() - started:.1f} s")

    def check_healthchecks(self, plans: dict[str, dict[str, Any]]) -> None:
        for process in self.running:
            plan = plans.get(process.name)
            if plan is None or plan.get("healthcheck") is None or not process.long_running:
                continue
            code, output = self.run_healthcheck(process.name, plan["healthcheck"])
            if code != 0:
                raise RehearsalError(f"{process.name}: healthcheck {' '.join(plan['healthcheck']['argv'])} exited "
                                     f"{code}: {output}")  # fmt: skip
            shown = " ".join(plan["healthcheck"]["argv"])
            say(f"    {process.name}: healthcheck {shown[:110] + ('...' if len(shown) > 110 else '')} -> exit 0")

    # ----------------------------------------------------------------------------------------------- stopping
    def stop_all(self, order: list[str]) -> None:
        """As `docker compose down`: the services that depend on others first (all of them at once), then the
        emulator; each gets its stop_signal, then SIGKILL when its stop_grace_period ends. Each of the project's
        services must exit 0 within its grace (it drains what it holds). An emulator killed at the end of its grace
        is only reported: its state is thrown away by `docker compose down` anyway, and LocalStack's own shutdown
        has been seen to take longer than 10 s on a loaded machine."""
        apps = [p for p in self.running if p.long_running and p.name in order and p.name != self.emulator_service]
        emulators = [p for p in self.running if p not in apps and p.exited() is None]
        failures = self.stop_group(apps, drains=True)
        failures += self.stop_group(emulators, drains=False)
        if failures:
            raise RehearsalError("; ".join(failures))

    def stop_group(self, group: list[Process], drains: bool) -> list[str]:
        started = time.monotonic()
        plans = []
        for process in group:
            service = self.project.services.get(process.name) or self.project.services[self.emulator_service or ""]
            signum = signal.Signals[service.stop_signal if service.stop_signal.startswith("SIG") else f"SIG{service.stop_signal}"]  # noqa: E501
            if process.exited() is None:
                process.popen.send_signal(signum)
            plans.append((process, service.stop_grace_period, signum.name))
        failures = []
        for process, grace, signame in plans:
            try:
                code = process.popen.wait(timeout=max(0.0, started + grace - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.popen.kill()
                process.popen.wait()
                if drains:
                    failures.append(f"{process.name} did not stop within its stop_grace_period ({grace:.0f} s) "
                                    f"after {signame}: compose would SIGKILL it mid-drain")  # fmt: skip
                else:
                    say(f"    {process.name}: no exit within its stop_grace_period ({grace:.0f} s) after {signame}: "
                        "SIGKILL, as compose does (an emulator: nothing to drain)")  # fmt: skip
                continue
            took = time.monotonic() - started
            if drains and code != 0:
                failures.append(f"{process.name} exited with status {code} after {signame}; its log ends:\n"
                                f"{tail(process.log)}")  # fmt: skip
            else:
                say(f"    {process.name}: {signame} -> exit {code} after {took:.1f} s (stop_grace_period {grace:.0f} s)")
        return failures

    def check_logs(self) -> None:
        for log in sorted(self.log_dir.glob("*.log")):
            line = first_escape_line(log)
            if line is not None:
                raise RehearsalError(f"{log.stem}: its log holds an ANSI escape code (line {line}): logs must be plain "
                                     "text unless the output is a terminal")  # fmt: skip
        say(f"    no ANSI escape code in any log ({self.log_dir})")

    def cleanup(self) -> None:
        for process in reversed(self.running):
            if process.exited() is None:
                try:
                    os.killpg(process.popen.pid, signal.SIGKILL)
                except OSError:
                    process.popen.kill()
                process.popen.wait()
        if self.shim is not None:
            self.shim.close()
        if self.localstack_root is not None:
            shutil.rmtree(self.localstack_root, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", help="as `docker compose --profile` (replaces COMPOSE_PROFILES from .env)")
    parser.add_argument("--compose", default=str(ROOT / "docker-compose.yml"))
    parser.add_argument("--project-dir", help="where .env and the build contexts are (default: the compose file's)")
    parser.add_argument("--bin-dir", default=str(ROOT / "target/debug"))
    parser.add_argument("--python", default=str(ROOT / ".venv/bin/python"), help="Python with moto (the venv)")
    parser.add_argument("--localstack-python",
                        default=os.environ.get("LOCALSTACK_BIN", str(ROOT / ".local/localstack/venv/bin/python")))
    parser.add_argument("--log-dir", help="default: target/compose-rehearsal/<profile>")
    args = parser.parse_args()
    if not args.log_dir:
        args.log_dir = str(ROOT / "target/compose-rehearsal" / (args.profile or "default"))
    rehearsal = Rehearsal(args)
    try:
        rehearsal.run()
    except (RehearsalError, cm.ComposeError) as e:
        print(f"compose rehearsal ({rehearsal.label}) FAILED: {e}", file=sys.stderr, flush=True)
        for note in rehearsal.notes:
            print(f"    ({note})", file=sys.stderr)
        return 1
    for note in rehearsal.notes:
        say(f"    ({note})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
