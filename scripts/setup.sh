#!/usr/bin/env bash
# Set up esap-dask on a fresh machine (Python >= 3.11): a virtual environment in .venv with
# esap-dask installed in editable mode. `scripts/setup.sh test` adds what the tests need.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
extras=""
[ "${1:-}" = "test" ] && extras="[test]"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet --editable ".${extras}"
# The installed command must run: a failure inside "$(...)" in echo's arguments would not
# stop `set -e`, so the version is taken first, on its own.
if ! version=$(.venv/bin/esap-dask --version); then
    echo "error: esap-dask was installed in $(pwd)/.venv but '.venv/bin/esap-dask --version'" \
        "fails (output above); the installation is broken" >&2
    exit 1
fi
echo "esap-dask installed in $(pwd)/.venv: ${version}"
