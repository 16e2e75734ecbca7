"""The images' build, rehearsed without Docker: Dockerfile.api and Dockerfile.worker re-enacted stage by stage.

For each Dockerfile: the build context is copied to a scratch directory exactly as its .dockerignore leaves it; the
`chef` stage's cargo-chef is the version the Dockerfile pins (installed into .local/tools once); the `planner` stage
runs its RUN lines (`cargo chef prepare`) in a copy of that context; the `builder` stage starts with nothing but the
recipe, runs `cargo chef cook` (the dependency layer), then gets the context and runs the final `cargo build`, and
the `install` into /out. Every RUN line is the Dockerfile's own, run by `sh -c` with the stage's ENV, `/app` and `/out`
mapped to scratch directories. Then the binary is checked against the runtime stage (gcr.io/distroless/cc-debian13):
every shared library it needs (readelf's NEEDED) must be one that image ships, and no glibc symbol version newer than
its glibc; and its `healthcheck` command, run the way Docker's exec form runs it (no shell, no PATH), must answer 0
against the binary serving and 1 once it stopped.

What differs from `docker build` (printed): the toolchain is this machine's rustc (checked against the `rust:` tag's
version), and the crates come from this machine's cargo registry cache when present (the same crates.io versions,
Cargo.lock and --locked). Not in every CI run: it compiles both binaries from scratch in release mode (minutes).

Usage: python scripts/lib/image_rehearsal.py [--dockerfile Dockerfile.api ...] [--scratch DIR] [--keep]
Run by scripts/image-rehearsal.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compose_model as cm  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".local" / "tools"
# What gcr.io/distroless/cc-debian13 ships (its package list: libc6 2.41, libgcc-s1, libgomp1, libstdc++6,
# libssl3t64, libzstd1): the shared objects a binary may need there.
RUNTIME_LIBRARIES = {
    "libc.so.6", "libm.so.6", "libdl.so.2", "libpthread.so.0", "librt.so.1", "libresolv.so.2", "libutil.so.1",
    "ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1", "libgcc_s.so.1", "libgomp.so.1", "libstdc++.so.6",
    "libssl.so.3", "libcrypto.so.3", "libzstd.so.1",
}  # fmt: skip
RUNTIME_GLIBC = (2, 41)


class RehearsalError(Exception):
    pass


def say(message: str) -> None:
    print(message, flush=True)


def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)  # noqa: S603, PLW1510


def ensure_cargo_chef(version: str) -> Path:
    binary = TOOLS / "bin" / "cargo-chef"
    found = run([str(binary), "chef", "--version"]) if binary.is_file() else None
    if found is None or version not in found.stdout:
        say(f"    installing cargo-chef {version} (the Dockerfile's pin) into {TOOLS}")
        done = subprocess.run(  # noqa: S603
            ["cargo", "install", "--locked", "--quiet", "--root", str(TOOLS), "cargo-chef", "--version", version],
            check=False,
        )
        if done.returncode != 0:
            raise RehearsalError(f"cargo install cargo-chef {version} failed (is crates.io reachable?)")
    return binary


def copy_context(context: list[str], destination: Path) -> None:
    for relative in context:
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / relative, target)


def rehearse(dockerfile_path: Path, scratch: Path) -> dict[str, object]:
    dockerfile = cm.read_dockerfile(dockerfile_path)
    ignore_file = cm.dockerignore_for(dockerfile_path, ROOT)
    ignore = cm.DockerIgnore.read(ignore_file)
    context = list(ignore.context_files(ROOT))
    size = sum((ROOT / f).stat().st_size for f in context)
    say(f"==> {dockerfile_path.name}: context {len(context)} files, {size / 1024:.0f} KiB (after {ignore_file.name})")
    base = scratch / dockerfile_path.name
    shutil.rmtree(base, ignore_errors=True)
    out_dir = base / "out"
    out_dir.mkdir(parents=True)
    context_dir = base / "context"
    copy_context(context, context_dir)

    rust_tags = {s.base for s in dockerfile.stages if s.base.startswith("rust:")}
    if len(rust_tags) != 1:
        raise RehearsalError(f"{dockerfile_path.name}: expected one rust: image, found {sorted(rust_tags)}")
    wanted = re.match(r"rust:(\d+\.\d+)", next(iter(rust_tags)))
    rustc = run(["rustc", "--version"]).stdout.strip()
    if not wanted or f"rustc {wanted.group(1)}." not in rustc:
        raise RehearsalError(f"{dockerfile_path.name} builds with {next(iter(rust_tags))}, this machine has {rustc}")

    timings: dict[str, float] = {}
    stage_dirs: dict[str, Path] = {}
    stage_env: dict[str, dict[str, str]] = {}
    stage_workdir: dict[str, str] = {}  # WORKDIR, inherited by the stages built FROM a stage
    chef_bin: Path | None = None
    for stage in dockerfile.stages:
        if not stage.base.startswith("rust:") and stage.base not in stage_env:
            continue  # the runtime stage: checked below
        name = stage.name or "unnamed"
        env = dict(stage_env.get(stage.base, {}))
        relative = stage_workdir.get(stage.base, "")
        workdir = base / name / relative
        workdir.mkdir(parents=True, exist_ok=True)
        for ins in stage.instructions:
            if ins.keyword == "ENV":
                env.update(cm.Stage(base="", name=None, instructions=[ins]).env())
            elif ins.keyword == "WORKDIR":
                relative = ins.args.strip().lstrip("/")
                workdir = base / name / relative
                workdir.mkdir(parents=True, exist_ok=True)
            elif ins.keyword == "COPY":
                tokens = shlex.split(ins.args)
                source_stage = next((t.split("=", 1)[1] for t in tokens if t.startswith("--from=")), None)
                paths = [t for t in tokens if not t.startswith("--")]
                sources, destination = paths[:-1], paths[-1]
                for source in sources:
                    if source_stage is None and source == ".":
                        shutil.copytree(context_dir, workdir, dirs_exist_ok=True)
                    elif source_stage is not None:
                        origin = stage_dirs[source_stage] / source.removeprefix("/app/")
                        shutil.copy2(origin, workdir / destination)
                    else:
                        raise RehearsalError(f"{dockerfile_path.name}:{ins.line}: COPY {source} is not re-enacted")
            elif ins.keyword == "RUN":
                command = ins.args
                chef = re.search(r"cargo install cargo-chef --locked --version (\S+)", command)
                if chef:
                    chef_bin = ensure_cargo_chef(chef.group(1))
                    continue
                command = command.replace("/out/", f"{out_dir}/")
                run_env = {k: v for k, v in os.environ.items() if k not in ("CARGO_TARGET_DIR", "RUSTFLAGS")}
                run_env.update(env)
                if chef_bin is not None:
                    run_env["PATH"] = f"{chef_bin.parent}:{run_env.get('PATH', '')}"
                say(f"    [{name}] RUN {command}")
                started = time.monotonic()
                log = base / f"{name}-{ins.line}.log"
                with log.open("w") as fh:
                    done = subprocess.run(["sh", "-c", command], cwd=workdir, env=run_env, stdout=fh,  # noqa: S603, S607
                                          stderr=subprocess.STDOUT, check=False)  # fmt: skip
                took = time.monotonic() - started
                timings[f"{name}: {command.split('&&')[0].strip()[:60]}"] = took
                say(f"      {'ok' if done.returncode == 0 else 'FAILED'} in {took:.0f} s (log {log})")
                if done.returncode != 0:
                    tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
                    raise RehearsalError(f"{dockerfile_path.name}:{ins.line} ({name}): `{command}` failed:\n{tail}")
        stage_dirs[name] = workdir
        stage_env[name] = env
        stage_workdir[name] = relative

    runtime = dockerfile.final
    copies = runtime.copies()
    if len(copies) != 1 or copies[0][0] is None:
        raise RehearsalError(f"{dockerfile_path.name}: the runtime stage should copy one binary from the builder")
    binary_path = out_dir / Path(copies[0][1][0]).name
    if not binary_path.is_file():
        raise RehearsalError(f"{dockerfile_path.name}: the builder left no {copies[0][1][0]}")
    result: dict[str, object] = {"dockerfile": dockerfile_path.name, "binary": binary_path.name,
                                 "size_mb": round(binary_path.stat().st_size / 1e6, 1),
                                 "timings": {k: round(v) for k, v in timings.items()},
                                 "build_seconds": round(sum(timings.values()))}  # fmt: skip
    result.update(check_libraries(binary_path, runtime.base))
    result.update(check_healthcheck(dockerfile_path, runtime, binary_path))
    return result


def check_libraries(binary: Path, base: str) -> dict[str, object]:
    if not base.startswith("gcr.io/distroless/cc-debian13"):
        raise RehearsalError(f"runtime base {base}: this check knows gcr.io/distroless/cc-debian13 only")
    dynamic = run(["readelf", "-d", str(binary)]).stdout
    needed = sorted(re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dynamic))
    missing = [lib for lib in needed if lib not in RUNTIME_LIBRARIES]
    if missing:
        raise RehearsalError(f"{binary.name} needs {missing}, which {base} does not ship")
    versions = run(["readelf", "-V", "--wide", str(binary)]).stdout
    glibc = sorted({tuple(int(n) for n in v.split(".")) for v in re.findall(r"GLIBC_(\d+\.\d+(?:\.\d+)?)", versions)})
    newest = glibc[-1] if glibc else (0, 0)
    if newest[:2] > RUNTIME_GLIBC:
        raise RehearsalError(f"{binary.name} needs GLIBC_{'.'.join(map(str, newest))}, newer than the runtime's 2.41")
    interpreter = re.search(r"Requesting program interpreter: ([^\]]+)\]", run(["readelf", "-l", str(binary)]).stdout)
    say(f"    {binary.name}: needs {', '.join(needed)}; newest glibc symbol GLIBC_{'.'.join(map(str, newest))} "
        f"(runtime: 2.41); interpreter {interpreter.group(1) if interpreter else 'none'}: all in {base}")  # fmt: skip
    return {"needed": needed, "newest_glibc": ".".join(map(str, newest)),
            "interpreter": interpreter.group(1) if interpreter else None}  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def check_healthcheck(dockerfile_path: Path, runtime: cm.Stage, binary: Path) -> dict[str, object]:
    """The HEALTHCHECK's exec form run as Docker runs it (execve of argv[0], no shell, no PATH), against the binary
    serving with its endpoints unreachable (liveness does not depend on them), then once it stopped."""
    ins = runtime.last("HEALTHCHECK")
    form = cm.Instruction("CMD", ins.args.split("CMD", 1)[1].strip(), ins.line).exec_form() if ins else None
    if not form:
        raise RehearsalError(f"{dockerfile_path.name}: HEALTHCHECK must use the exec form (the image has no shell)")
    image_binary = runtime.copies()[0][2]
    if form[0] != image_binary:
        raise RehearsalError(f"{dockerfile_path.name}: HEALTHCHECK runs {form[0]}, the image has {image_binary}")
    port = free_port()
    nowhere = f"http://127.0.0.1:{free_port()}"
    env = {"PORT": str(port), "BIND_ADDR": "127.0.0.1", "AWS_ENDPOINT_URL": nowhere, "AWS_REGION": "us-east-1",
           "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_EC2_METADATA_DISABLED": "true",
           "LOG_FORMAT": "json", "SNS_TOPIC_ARN": "ecomexpress-sns-orders-events",
           "SQS_QUEUE_URL": "ecomexpress-sqs-orders-process"}  # fmt: skip
    server = subprocess.Popen([str(binary)], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,  # noqa: S603
                              stderr=subprocess.DEVNULL)  # fmt: skip
    argv = [str(binary)] + form[1:]
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)  # noqa: S310
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RehearsalError(f"{binary.name} did not serve /health within 30 s") from None
                time.sleep(0.1)
        healthy = subprocess.run(argv, env={"PORT": str(port)}, capture_output=True, text=True, timeout=10,  # noqa: S603
                                 check=False)  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=30)
    stopped = subprocess.run(argv, env={"PORT": str(port)}, capture_output=True, text=True, timeout=10, check=False)  # noqa: S603
    if healthy.returncode != 0 or stopped.returncode != 1:
        raise RehearsalError(f"{binary.name} healthcheck: {healthy.returncode} while serving (want 0), "
                             f"{stopped.returncode} once stopped (want 1): {healthy.stderr}{stopped.stderr}")  # fmt: skip
    say(f"    {binary.name}: `{' '.join(form)}` without a shell or PATH: exit 0 while serving, 1 once stopped")
    return {"healthcheck": form, "healthcheck_ok": True}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dockerfile", action="append", help="default: Dockerfile.api and Dockerfile.worker")
    parser.add_argument("--scratch", default=str(ROOT / "target" / "image-rehearsal"))
    parser.add_argument("--keep", action="store_true", help="keep the scratch directories (several GB)")
    args = parser.parse_args()
    dockerfiles = [ROOT / d for d in (args.dockerfile or ["Dockerfile.api", "Dockerfile.worker"])]
    scratch = Path(args.scratch).resolve()
    started = time.monotonic()
    results = []
    say(f"==> image rehearsal: {', '.join(d.name for d in dockerfiles)} in {scratch} with {run(['rustc', '--version']).stdout.strip()}"
        f" (docker build would use the Dockerfile's rust image; same version)")  # fmt: skip
    try:
        for dockerfile in dockerfiles:
            results.append(rehearse(dockerfile, scratch))
            if not args.keep:
                shutil.rmtree(scratch / dockerfile.name, ignore_errors=True)
    except RehearsalError as e:
        print(f"image rehearsal FAILED: {e}", file=sys.stderr, flush=True)
        return 1
    total = time.monotonic() - started
    report = {"total_seconds": round(total), "images": results}
    scratch.mkdir(parents=True, exist_ok=True)
    (scratch / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    summary = ", ".join(f"{r['binary']} {r['build_seconds']} s ({r['size_mb']} MB)" for r in results)
    say(f"image rehearsal: {len(results)} images built and checked in {total / 60:.0f} min {total % 60:.0f} s: {summary}; "
        f"report {scratch / 'report.json'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
