# shellcheck shell=bash
# LocalStack without Docker, for SNS and SQS (DynamoDB stays on moto: LocalStack's DynamoDB downloads Java and
# DynamoDB Local at first use, so it cannot run offline). Sourced after scripts/lib/common.sh.
#
# LocalStack 4.14.0 needs Python >= 3.12. It is installed once into .local/localstack/venv (ignored by git) from the
# project's pins (scripts/localstack/requirements-4.14.0.txt) and started by scripts/lib/localstack_server.py, which
# binds it to 127.0.0.1 only.

LOCALSTACK_VERSION="4.14.0"
LOCALSTACK_HOME="${ROOT}/.local/localstack"
LOCALSTACK_VENV="${LOCALSTACK_HOME}/venv"
LOCALSTACK_PINS="${ROOT}/scripts/localstack/requirements-${LOCALSTACK_VERSION}.txt"
LOCALSTACK_SKIP_REASON=""
export LOCALSTACK_VERSION LOCALSTACK_HOME LOCALSTACK_VENV LOCALSTACK_SKIP_REASON

# usable_python CANDIDATE: prints the interpreter's real path when it runs, is 3.12 or 3.13 and has venv + ensurepip
# (a pyenv shim for a version that is not selected fails here, and so does a Debian python3.12 without
# python3.12-venv). LocalStack 4.14.0's pins were resolved for 3.13 and support 3.12; newer Pythons may lack wheels.
usable_python() {
  "$1" - 2>/dev/null <<'PY'
import sys
if sys.version_info[:2] not in ((3, 12), (3, 13)):
    sys.exit(1)
import ensurepip, venv  # noqa: F401  (a venv needs both)
print(sys.executable)
PY
}

# localstack_python: prints a usable Python 3.12/3.13, trying LOCALSTACK_PYTHON, then python3.13, python3.12 and
# python3 on PATH, then pyenv's installed versions (newest first). Prints nothing and fails when there is none.
localstack_python() {
  local candidate found
  local candidates=()
  [ -n "${LOCALSTACK_PYTHON:-}" ] && candidates+=("${LOCALSTACK_PYTHON}")
  candidates+=(python3.13 python3.12 python3)
  local pyenv_root="${PYENV_ROOT:-}"
  if [ -z "${pyenv_root}" ] && command -v pyenv >/dev/null 2>&1; then
    pyenv_root="$(pyenv root 2>/dev/null || true)"
  fi
  [ -n "${pyenv_root}" ] || pyenv_root="${HOME}/.pyenv"
  if [ -d "${pyenv_root}/versions" ]; then
    while IFS= read -r candidate; do
      candidates+=("${candidate}")
    done < <(find "${pyenv_root}/versions" -mindepth 3 -maxdepth 3 -path '*/bin/python3' \
               \( -path '*/versions/3.13*' -o -path '*/versions/3.12*' \) 2>/dev/null | sort -rV)
  fi
  for candidate in "${candidates[@]}"; do
    if found="$(usable_python "${candidate}")" && [ -n "${found}" ]; then
      echo "${found}"
      return 0
    fi
  done
  return 1
}

# ensure_localstack: installs LocalStack into LOCALSTACK_VENV when the pins (or the Python) changed since the last
# install, and builds its service catalog once (otherwise its first request takes about 5 s). Returns 1 with
# LOCALSTACK_SKIP_REASON set when there is no Python >= 3.12; dies when the install itself fails.
ensure_localstack() {
  local python
  if ! python="$(localstack_python)"; then
    LOCALSTACK_SKIP_REASON="no Python 3.12 or 3.13 with venv found (looked for \$LOCALSTACK_PYTHON, python3.13, python3.12, python3 and pyenv's versions); LocalStack ${LOCALSTACK_VERSION} needs one"
    return 1
  fi
  local stamp="${LOCALSTACK_VENV}/.installed.sha256" want
  want="$({ cat "${LOCALSTACK_PINS}"; echo "localstack-core==${LOCALSTACK_VERSION}"; "${python}" --version; } \
    | sha256sum | cut -d' ' -f1)"
  if [ "$(cat "${stamp}" 2>/dev/null)" != "${want}" ]; then
    echo "==> installing LocalStack ${LOCALSTACK_VERSION} into ${LOCALSTACK_VENV} with $("${python}" --version)" \
      "(first run only: about 2 minutes and 500 MB from PyPI)" >&2
    rm -rf "${LOCALSTACK_VENV}"
    mkdir -p "${LOCALSTACK_HOME}"
    "${python}" -m venv "${LOCALSTACK_VENV}" || die "${python} -m venv ${LOCALSTACK_VENV} failed."
    "${LOCALSTACK_VENV}/bin/python" -m pip install --quiet --disable-pip-version-check \
      -r "${LOCALSTACK_PINS}" "localstack-core==${LOCALSTACK_VERSION}" >&2 \
      || die "installing LocalStack ${LOCALSTACK_VERSION} failed (is PyPI reachable?); see the pip output above."
    # The service catalog index, built once here rather than on the first request of every instance (about 5 s).
    # It lands in <FILESYSTEM_ROOT>/usr/lib/localstack, which scripts/lib/localstack_server.py links into each
    # instance's own root.
    mkdir -p "${LOCALSTACK_VENV}/localstack-root/usr/lib/localstack"
    OVERRIDE_IN_DOCKER=0 FILESYSTEM_ROOT="${LOCALSTACK_VENV}/localstack-root" \
      "${LOCALSTACK_VENV}/bin/python" -m localstack.aws.spec >/dev/null \
      || die "building LocalStack's service catalog failed."
    echo "${want}" >"${stamp}"
  fi
  export LOCALSTACK_BIN="${LOCALSTACK_VENV}/bin/python"
}
