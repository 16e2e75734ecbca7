# shellcheck shell=bash
# Helpers sourced by the scripts in scripts/. Everything installs into the project, never system-wide.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${ROOT}/.venv"
export ROOT VENV

die() { echo "error: $*" >&2; exit 1; }

require() {
  command -v "$1" >/dev/null 2>&1 || die "'$1' is required but not found on PATH. $2"
}

# ensure_venv: creates .venv and installs requirements-dev.txt when it changed since the last install.
ensure_venv() {
  require python3 "Install Python 3.10+ (e.g. 'apt-get install python3 python3-venv')."
  if [ ! -x "${VENV}/bin/python" ]; then
    echo "==> creating ${VENV}" >&2
    python3 -m venv "${VENV}" || die "python3 -m venv failed (on Debian/Ubuntu: apt-get install python3-venv)."
  fi
  local stamp="${VENV}/.requirements.sha256"
  local want
  want="$(sha256sum "${ROOT}/requirements-dev.txt" | cut -d' ' -f1)"
  if [ "$(cat "${stamp}" 2>/dev/null)" != "${want}" ]; then
    echo "==> installing Python dev tools into ${VENV} (moto, cfn-lint, hadolint, ...)" >&2
    "${VENV}/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2 \
      && "${VENV}/bin/python" -m pip install --quiet --disable-pip-version-check -r "${ROOT}/requirements-dev.txt" >&2 \
      || die "pip install -r requirements-dev.txt failed (is PyPI reachable?)."
    echo "${want}" > "${stamp}"
  fi
  export PATH="${VENV}/bin:${PATH}"
  export MOTO_SERVER_BIN="${VENV}/bin/moto_server"
}

# free_port: asks the kernel for an unused TCP port on 127.0.0.1.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# wait_http URL SECONDS: polls URL until it answers or the deadline passes.
wait_http() {
  local url="$1" deadline=$((SECONDS + $2))
  until python3 - "$url" <<'PY' 2>/dev/null
import sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=1)
PY
  do
    [ "${SECONDS}" -lt "${deadline}" ] || return 1
    sleep 0.2
  done
}

# Dummy credentials: emulators accept anything, and the SDK refuses to sign without some.
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-test}"
export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-test}"
export AWS_REGION="${AWS_REGION:-us-east-1}"
