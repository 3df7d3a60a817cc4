#!/usr/bin/env bash
# The Python example in two commands (see README.md):
#
#   examples/python/run.sh setup                       # venv + dependencies, stubs from proto/
#   examples/python/run.sh example [--broker HOST:PORT] [--topic NAME]
#
# `setup` is idempotent and quick when nothing changed: the venv is rebuilt only when
# requirements.txt changed (a copy kept in the venv is the marker); the stubs are regenerated
# every time (well under a second), so they always match proto/.
#
# Environment: PYTHON (default python3) creates the venv; WEIR_PY_VENV (default
# examples/python/.venv) and WEIR_PY_STUBS (default examples/python/gen) say where the venv and
# the generated stubs go.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${WEIR_PY_VENV:-$here/.venv}"
stubs="${WEIR_PY_STUBS:-$here/gen}"
python="${PYTHON:-python3}"
marker="$venv/weir-requirements.txt"

setup() {
  if ! command -v "$python" >/dev/null 2>&1; then
    echo "error: $python not found; install Python 3 with venv support (Debian: apt-get install python3 python3-venv)" >&2
    exit 1
  fi
  # Reuse the venv when it was built from these requirements and still imports them.
  if cmp -s "$here/requirements.txt" "$marker" &&
    "$venv/bin/python" -c 'import grpc, grpc_tools, grpc_health' >/dev/null 2>&1; then
    echo "venv $venv is up to date"
  else
    echo "creating venv $venv"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
    cp "$here/requirements.txt" "$marker" # written last: marks a complete install
  fi
  rm -rf "$stubs"
  mkdir -p "$stubs"
  "$venv/bin/python" -m grpc_tools.protoc -I "$root/proto" \
    --python_out="$stubs" --grpc_python_out="$stubs" "$root/proto/weir/v1/weir.proto"
  echo "generated stubs in $stubs"
}

case "${1:-}" in
  setup)
    setup
    ;;
  example)
    shift
    if [ ! -x "$venv/bin/python" ]; then
      echo "error: no venv at $venv; run: $0 setup" >&2
      exit 1
    fi
    exec "$venv/bin/python" "$here/weir_example.py" --stubs "$stubs" "$@"
    ;;
  *)
    echo "usage: $0 setup | example [--broker HOST:PORT] [--topic NAME] [--timeout SECONDS]" >&2
    exit 2
    ;;
esac
