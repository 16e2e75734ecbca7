"""What Docker would read, read without Docker: docker-compose.yml with its .env, profiles, ${VAR} interpolation and
YAML anchors and merges; Dockerfiles (stages, ENV, COPY, ENTRYPOINT, CMD, HEALTHCHECK); and .dockerignore files.

Shared by scripts/lib/compose_rehearsal.py (runs the compose file's services without Docker), scripts/lib/
image_rehearsal.py (re-enacts the Dockerfiles' build stages) and deploy/tests. Each function follows the documented
behaviour of Docker Compose v2 and BuildKit for what this repository uses, and says so where it stops short.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml


class ComposeError(Exception):
    """Something compose itself would refuse, or that would not work under it: the message names the service and the
    variable, key or file."""


# ---------------------------------------------------------------------------------------------------------------------
# .env and interpolation


def read_dotenv(path: Path) -> dict[str, str]:
    """A compose `.env` file: `KEY=value` lines, `#` comments, blank lines, optional `export `, values optionally in
    single quotes (literal) or double quotes (with \\n, \\t and \\" escapes); an unquoted value ends at ` #`."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", key):
            raise ComposeError(f"{path.name}:{number}: not a KEY=value line: {raw!r}")
        value = value.strip()
        quote = value[:1]
        if quote in ("'", '"') and quote in value[1:]:
            end = value.index(quote, 1)
            while quote == '"' and value[end - 1] == "\\" and quote in value[end + 1 :]:
                end = value.index(quote, end + 1)
            inner, rest = value[1:end], value[end + 1 :].strip()
            if rest and not rest.startswith("#"):
                raise ComposeError(f"{path.name}:{number}: text after the closing quote: {raw!r}")
            value = inner if quote == "'" else inner.replace("\\n", "\n").replace("\\t", "\t").replace('\\"', '"')
        else:
            value = re.split(r"\s+#", value, maxsplit=1)[0].strip()
        values[key] = value
    return values


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def interpolate(text: str, env: dict[str, str], where: str) -> str:
    """Compose's interpolation of one string: `$VAR`, `${VAR}`, `${VAR:-default}` / `${VAR-default}` (default when
    unset-or-empty / unset), `${VAR:?message}` / `${VAR?message}` (an error), `${VAR:+other}` / `${VAR+other}`, and `$$`
    for a literal `$`. An unset variable without a default becomes the empty string, as compose does (with a warning).
    Defaults may hold further `${...}`."""
    out = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch != "$":
            out.append(ch)
            i += 1
            continue
        nxt = text[i + 1 : i + 2]
        if nxt == "$":
            out.append("$")
            i += 2
            continue
        if nxt != "{":
            match = _NAME.match(text, i + 1)
            if not match:
                out.append("$")
                i += 1
                continue
            out.append(env.get(match.group(0), ""))
            i = match.end()
            continue
        depth, j = 1, i + 2
        while j < len(text) and depth:
            if text.startswith("${", j):
                depth, j = depth + 1, j + 2
                continue
            depth -= text[j] == "}"
            j += 1
        if depth:
            raise ComposeError(f"{where}: unterminated ${{ in {text!r}")
        body = text[i + 2 : j - 1]
        match = _NAME.match(body)
        if not match:
            raise ComposeError(f"{where}: invalid interpolation {text[i:j]!r}")
        name, rest = match.group(0), body[match.end() :]
        op = rest[:2] if rest[:2] in (":-", ":?", ":+") else rest[:1]
        arg = rest[len(op) :]
        if rest and op not in (":-", ":?", ":+", "-", "?", "+"):
            raise ComposeError(f"{where}: invalid interpolation {text[i:j]!r}")
        value = env.get(name)
        unset_or_empty = value is None or value == ""
        missing = unset_or_empty if op.startswith(":") else value is None
        if op in (":-", "-"):
            out.append(interpolate(arg, env, where) if missing else str(value))
        elif op in (":?", "?"):
            if missing:
                raise ComposeError(f"{where}: required variable {name} is missing a value: {arg or 'not set'}")
            out.append(str(value))
        elif op in (":+", "+"):
            out.append("" if missing else interpolate(arg, env, where))
        else:
            out.append(value or "")
        i = j
    return "".join(out)


def interpolate_tree(node: Any, env: dict[str, str], where: str) -> Any:
    """[`interpolate`] on every string value of a parsed YAML document (keys are left as they are, as compose does)."""
    if isinstance(node, str):
        return interpolate(node, env, where)
    if isinstance(node, list):
        return [interpolate_tree(item, env, f"{where}[{i}]") for i, item in enumerate(node)]
    if isinstance(node, dict):
        return {key: interpolate_tree(value, env, f"{where}.{key}") for key, value in node.items()}
    return node


# ---------------------------------------------------------------------------------------------------------------------
# The compose file


def duration_seconds(value: Any, where: str) -> float:
    """A compose duration (`60s`, `1m30s`, `1h`, `500ms`, or a bare number of seconds)."""
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us|ns)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ComposeError(f"{where}: {value!r} is not a duration (e.g. 10s, 1m30s)")
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
    return sum(float(n) * scale[u] for n, u in parts)


def _string(value: Any) -> str:
    """An environment value as compose passes it: numbers and booleans as their YAML text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass
class Dependency:
    service: str
    condition: str = "service_started"
    required: bool = True


@dataclass
class Healthcheck:
    """`test` is the exec form (`["CMD", ...]` without the CMD) or a shell command line (`CMD-SHELL`)."""

    argv: list[str] | None
    shell: str | None
    interval: float = 30.0
    timeout: float = 30.0
    retries: int = 3
    start_period: float = 0.0


@dataclass
class Service:
    name: str
    raw: dict[str, Any]
    environment: dict[str, str]
    depends_on: list[Dependency]
    profiles: list[str]
    command: list[str] | None
    entrypoint: list[str] | None
    healthcheck: Healthcheck | None
    healthcheck_disabled: bool
    stop_signal: str
    stop_grace_period: float
    restart: str
    ports: list[tuple[str, int, int]]  # (host address, host port, container port)
    aliases: list[str]
    image: str | None
    dockerfile: Path | None
    build_context: Path | None


@dataclass
class Project:
    path: Path
    env: dict[str, str]
    profiles: list[str]
    services: dict[str, Service]  # every service, active or not
    active: list[str] = field(default_factory=list)


def _healthcheck(raw: Any, where: str) -> tuple[Healthcheck | None, bool]:
    if raw is None:
        return None, False
    if raw.get("disable") is True:
        return None, True
    test = raw.get("test")
    argv = shell = None
    if isinstance(test, str):
        shell = test
    elif isinstance(test, list) and test:
        kind = test[0]
        if kind == "NONE":
            return None, True
        if kind == "CMD":
            argv = [str(t) for t in test[1:]]
        elif kind == "CMD-SHELL":
            if len(test) != 2:
                raise ComposeError(f"{where}: CMD-SHELL takes exactly one string")
            shell = str(test[1])
        else:
            raise ComposeError(f"{where}: a healthcheck test starts with CMD, CMD-SHELL or NONE, not {kind!r}")
    elif test is not None:
        raise ComposeError(f"{where}: healthcheck test must be a list or a string")

    def seconds(key: str, default: float) -> float:
        return duration_seconds(raw[key], f"{where}.{key}") if key in raw else default

    return (
        Healthcheck(argv=argv, shell=shell, interval=seconds("interval", 30.0), timeout=seconds("timeout", 30.0),
                    retries=int(raw.get("retries", 3)), start_period=seconds("start_period", 0.0)),
        False,
    )  # fmt: skip


def _environment(raw: Any, interpolation_env: dict[str, str], where: str) -> dict[str, str]:
    if raw is None:
        return {}
    if isinstance(raw, list):
        out = {}
        for item in raw:
            key, sep, value = str(item).partition("=")
            if sep:
                out[key] = value
            elif key in interpolation_env:  # `- KEY` alone: the value compose itself sees
                out[key] = interpolation_env[key]
        return out
    if isinstance(raw, dict):
        out = {}
        for key, value in raw.items():
            if value is None:
                if key in interpolation_env:
                    out[str(key)] = interpolation_env[key]
            else:
                out[str(key)] = _string(value)
        return out
    raise ComposeError(f"{where}: environment must be a mapping or a list")


def _depends_on(raw: Any, where: str) -> list[Dependency]:
    if raw is None:
        return []
    if isinstance(raw, list):
        return [Dependency(str(name)) for name in raw]
    if isinstance(raw, dict):
        deps = []
        for name, spec in raw.items():
            spec = spec or {}
            condition = spec.get("condition", "service_started")
            if condition not in ("service_started", "service_healthy", "service_completed_successfully"):
                raise ComposeError(f"{where}.{name}.condition: unknown condition {condition!r}")
            deps.append(Dependency(str(name), condition, bool(spec.get("required", True))))
        return deps
    raise ComposeError(f"{where}: depends_on must be a list or a mapping")


def _command(raw: Any) -> list[str] | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        return shlex.split(raw)
    return [str(part) for part in raw]


def _ports(raw: Any, where: str) -> list[tuple[str, int, int]]:
    out = []
    for entry in raw or []:
        if isinstance(entry, dict):
            out.append((str(entry.get("host_ip", "0.0.0.0")), int(entry.get("published", entry["target"])), int(entry["target"])))
            continue
        parts = str(entry).split("/")[0].split(":")
        if len(parts) == 3:
            out.append((parts[0], int(parts[1]), int(parts[2])))
        elif len(parts) == 2:
            out.append(("0.0.0.0", int(parts[0]), int(parts[1])))
        else:
            raise ComposeError(f"{where}: port {entry!r} publishes nothing fixed (HOST:CONTAINER expected)")
    return out


def load_project(path: Path, env_file: Path | None = None, profiles: list[str] | None = None,
                 overrides: dict[str, str] | None = None, project_dir: Path | None = None) -> Project:  # fmt: skip
    """Parses a compose file as `docker compose` would in its directory: `.env` (or `env_file`) then `overrides`
    (standing in for the shell's variables, which win over `.env`) for interpolation; `profiles` as `--profile` flags
    (which replace `COMPOSE_PROFILES`), else `COMPOSE_PROFILES`. YAML anchors, aliases and `<<` merges are resolved by
    the YAML loader; top-level `x-` extension fields are ignored. Build contexts are relative to `project_dir` (as
    `--project-directory`), by default the file's directory."""
    base = project_dir if project_dir is not None else path.parent
    env = read_dotenv(env_file if env_file is not None else base / ".env")
    env.update(overrides or {})
    with path.open(encoding="utf-8") as fh:
        document = yaml.safe_load(fh)
    if not isinstance(document, dict) or not isinstance(document.get("services"), dict):
        raise ComposeError(f"{path.name}: no services")
    document = interpolate_tree(document, env, path.name)
    if profiles is None:
        profiles = [p for p in re.split(r"\s*,\s*", env.get("COMPOSE_PROFILES", "")) if p]
    services: dict[str, Service] = {}
    for name, raw in document["services"].items():
        raw = raw or {}
        where = f"{path.name}: services.{name}"
        build = raw.get("build")
        dockerfile = context = None
        if isinstance(build, str):
            context = (base / build).resolve()
            dockerfile = context / "Dockerfile"
        elif isinstance(build, dict):
            context = (base / build.get("context", ".")).resolve()
            dockerfile = context / build.get("dockerfile", "Dockerfile")
        healthcheck, disabled = _healthcheck(raw.get("healthcheck"), f"{where}.healthcheck")
        networks = raw.get("networks") or {}
        aliases = []
        if isinstance(networks, dict):
            for network in networks.values():
                aliases += (network or {}).get("aliases", [])
        services[name] = Service(
            name=name,
            raw=raw,
            environment=_environment(raw.get("environment"), env, f"{where}.environment"),
            depends_on=_depends_on(raw.get("depends_on"), f"{where}.depends_on"),
            profiles=[str(p) for p in raw.get("profiles", [])],
            command=_command(raw.get("command")),
            entrypoint=_command(raw.get("entrypoint")),
            healthcheck=healthcheck,
            healthcheck_disabled=disabled,
            stop_signal=str(raw.get("stop_signal", "SIGTERM")),
            stop_grace_period=duration_seconds(raw.get("stop_grace_period", "10s"), f"{where}.stop_grace_period"),
            restart=str(raw.get("restart", "no")),
            ports=_ports(raw.get("ports"), f"{where}.ports"),
            aliases=[str(a) for a in aliases],
            image=raw.get("image"),
            dockerfile=dockerfile,
            build_context=context,
        )
    project = Project(path=path, env=env, profiles=profiles, services=services)
    project.active = [n for n, s in services.items() if not s.profiles or set(s.profiles) & set(profiles)]
    return project


def start_order(project: Project) -> list[str]:
    """The active services in an order compose could start them (each after everything it depends on), checking what
    `docker compose up` refuses or what could never start: an unknown dependency, a required dependency left out by
    the profiles, a cycle, `service_healthy` on a service without a healthcheck, `service_completed_successfully` on one
    that restarts (never completes). Among services compose could start together, long-running ones come first, so the
    rehearsal starts a service before a one-shot it does not wait for (the worst order compose allows)."""
    active = set(project.active)
    graph: dict[str, list[Dependency]] = {}
    for name in project.active:
        service = project.services[name]
        deps = []
        for dep in service.depends_on:
            if dep.service not in project.services:
                raise ComposeError(f"{name}: depends_on names {dep.service!r}, which is not a service of the file")
            if dep.service not in active:
                if dep.required:
                    raise ComposeError(
                        f"{name}: depends on {dep.service}, which the profiles {project.profiles} leave out; compose "
                        f"refuses that unless the dependency says `required: false`"
                    )
                continue
            target = project.services[dep.service]
            if dep.condition == "service_healthy" and (target.healthcheck is None or target.healthcheck_disabled):
                # The image's own HEALTHCHECK would do, if it has one (checked by the caller, which reads the image).
                if target.healthcheck_disabled:
                    raise ComposeError(f"{name}: waits for {dep.service} to be healthy, whose healthcheck is disabled")
            if dep.condition == "service_completed_successfully" and target.restart in ("always", "unless-stopped"):
                raise ComposeError(
                    f"{name}: waits for {dep.service} to complete, but {dep.service} has restart: {target.restart}"
                )
            deps.append(dep)
        graph[name] = deps

    def one_shot(name: str) -> bool:
        return project.services[name].restart in ("no", "on-failure")

    order: list[str] = []
    placed: set[str] = set()
    while len(order) < len(graph):
        ready = [n for n in graph if n not in placed and all(d.service in placed for d in graph[n])]
        if not ready:
            left = sorted(set(graph) - placed)
            raise ComposeError(f"depends_on has a cycle among {', '.join(left)}")
        ready.sort(key=lambda n: (one_shot(n), list(graph).index(n)))
        order.append(ready[0])
        placed.add(ready[0])
    return order


# ---------------------------------------------------------------------------------------------------------------------
# Dockerfiles


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int

    def exec_form(self) -> list[str] | None:
        """The JSON-array form's arguments, or None for the shell form."""
        text = self.args.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                return None
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return value
        return None


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction]

    def env(self) -> dict[str, str]:
        """The stage's ENV instructions (`KEY=value ...`, or the legacy `KEY value`)."""
        out: dict[str, str] = {}
        for ins in self.instructions:
            if ins.keyword != "ENV":
                continue
            tokens = shlex.split(ins.args)
            if tokens and "=" not in tokens[0]:
                out[tokens[0]] = " ".join(tokens[1:])
                continue
            for token in tokens:
                key, _, value = token.partition("=")
                out[key] = value
        return out

    def last(self, keyword: str) -> Instruction | None:
        found = [i for i in self.instructions if i.keyword == keyword]
        return found[-1] if found else None

    def copies(self) -> list[tuple[str | None, list[str], str]]:
        """Each COPY as (`--from` stage or None, sources, destination)."""
        out = []
        for ins in self.instructions:
            if ins.keyword != "COPY":
                continue
            tokens = ins.exec_form() or shlex.split(ins.args)
            source = None
            rest = []
            for token in tokens:
                if token.startswith("--from="):
                    source = token.split("=", 1)[1]
                elif token.startswith("--"):
                    continue
                else:
                    rest.append(token)
            out.append((source, rest[:-1], rest[-1]))
        return out


@dataclass
class Dockerfile:
    path: Path
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise ComposeError(f"{self.path.name}: no stage named {name!r}")

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def has_shell(self) -> bool:
        """Whether the final image has /bin/sh: distroless and scratch images do not."""
        base = self.final.base
        return not (base.startswith("gcr.io/distroless/") or base == "scratch")


def read_dockerfile(path: Path) -> Dockerfile:
    """Instructions with their line continuations joined and comments dropped, grouped by stage."""
    stages: list[Stage] = []
    joined = ""
    start = 0
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, raw in enumerate(lines, 1):
        stripped = raw.strip()
        if not joined and (not stripped or stripped.startswith("#")):
            continue
        if joined and stripped.startswith("#"):
            continue
        if not joined:
            start = number
        if stripped.endswith("\\"):
            joined += stripped[:-1] + " "
            continue
        joined += stripped
        keyword, _, args = joined.partition(" ")
        instruction = Instruction(keyword.upper(), args.strip(), start)
        joined = ""
        if instruction.keyword == "FROM":
            tokens = instruction.args.split()
            tokens = [t for t in tokens if not t.startswith("--")]
            name = tokens[2] if len(tokens) >= 3 and tokens[1].upper() == "AS" else None
            stages.append(Stage(base=tokens[0], name=name, instructions=[]))
        elif not stages:
            if instruction.keyword != "ARG":
                raise ComposeError(f"{path.name}:{start}: {instruction.keyword} before any FROM")
        else:
            stages[-1].instructions.append(instruction)
    if not stages:
        raise ComposeError(f"{path.name}: no FROM")
    return Dockerfile(path=path, stages=stages)


# ---------------------------------------------------------------------------------------------------------------------
# .dockerignore


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """moby/patternmatcher's translation of one pattern: `**` any number of directories, `*` anything but `/`, `?` one
    character but `/`, `[...]` a class, `\\` escapes the next character."""
    out = "^"
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            if i + 1 < len(pattern) and pattern[i + 1] == "*":
                i += 1
                if i + 1 < len(pattern) and pattern[i + 1] == "/":
                    i += 1
                out += ".*" if i + 1 >= len(pattern) else "(.*/)?"
            else:
                out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        elif ch == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out += re.escape(ch)
            else:
                out += "[" + pattern[i + 1 : end].replace("!", "^", 1 if pattern[i + 1 : i + 2] == "!" else 0) + "]"
                i = end
        else:
            out += re.escape(ch)
        i += 1
    return re.compile(out + "$")


@dataclass
class DockerIgnore:
    """A .dockerignore: patterns in order, `!` for exceptions; a path is excluded when the last pattern matching it or
    one of its parent directories is not an exception (moby/patternmatcher's `MatchesOrParentMatches`)."""

    patterns: list[tuple[bool, str, re.Pattern[str]]]

    @classmethod
    def read(cls, path: Path) -> "DockerIgnore":
        if not path.is_file():
            return cls([])
        return cls.parse(path.read_text(encoding="utf-8").splitlines())

    @classmethod
    def parse(cls, lines: list[str]) -> "DockerIgnore":
        patterns = []
        for raw in lines:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            exception = line.startswith("!")
            if exception:
                line = line[1:].strip()
            line = os.path.normpath(line.lstrip("/")) if line not in ("/", "") else "."
            if line == ".":
                continue
            patterns.append((exception, line, _pattern_regex(line)))
        return cls(patterns)

    def excluded(self, relative: str) -> bool:
        relative = relative.strip("/")
        parents = relative.split("/")[:-1]
        matched = False
        for exception, _, regex in self.patterns:
            if exception != matched:
                continue
            hit = bool(regex.match(relative)) or any(
                regex.match("/".join(parents[: i + 1])) for i in range(len(parents))
            )
            if hit:
                matched = not exception
        return matched

    def _may_reinclude_below(self, directory: str) -> bool:
        """Whether an exception pattern could let back in something below the excluded `directory`."""
        depth = len(directory.split("/"))
        for exception, pattern, _ in self.patterns:
            if not exception:
                continue
            parts = pattern.split("/")
            if "**" in pattern or len(parts) > depth and all(
                _pattern_regex(p).match(d) for p, d in zip(parts[:depth], directory.split("/"))
            ):
                return True
        return False

    def context_files(self, root: Path) -> Iterator[str]:
        """The files of the build context rooted at `root`, relative and sorted, as BuildKit would send them (symbolic
        links are listed as files; empty directories are left out)."""
        for current, dirs, files in os.walk(root):
            rel_dir = os.path.relpath(current, root)
            rel_dir = "" if rel_dir == "." else rel_dir
            keep = []
            for d in sorted(dirs):
                rel = f"{rel_dir}/{d}" if rel_dir else d
                if not self.excluded(rel) or self._may_reinclude_below(rel):
                    keep.append(d)
            dirs[:] = keep
            for f in sorted(files):
                rel = f"{rel_dir}/{f}" if rel_dir else f
                if not self.excluded(rel):
                    yield rel


def dockerignore_for(dockerfile: Path, context: Path) -> Path:
    """BuildKit's rule: `<Dockerfile>.dockerignore` next to the Dockerfile wins over the context's `.dockerignore`."""
    specific = dockerfile.with_name(dockerfile.name + ".dockerignore")
    return specific if specific.is_file() else context / ".dockerignore"
