#!/usr/bin/env bash
# Everything the tests need, then all the tests: the project's virtual environment with the
# test extras, a headless browser, the local services (SLURM, DiracX, PostgreSQL, a loopback sshd), lint,
# types, the import layers and cycles, the documentation build (inside pytest) and pytest.
# Extra arguments go to pytest (e.g. `scripts/test.sh -k mapper`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    echo "== installing chromium and chromium-driver (the web page tests drive them)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
    echo "== installing nginx-light (the X.509 reverse-proxy tests run it)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null
fi
for service in slurm diracx postgres sshd; do
    if [ -f "scripts/$service.sh" ]; then
        echo "== starting $service (scripts/$service.sh start)"
        bash "scripts/$service.sh" start
    fi
done
echo "== ruff"
.venv/bin/ruff check esap_dask pipelines tests bench
.venv/bin/ruff format --check esap_dask pipelines
echo "== mypy"
# --no-incremental: a warm cache once hid an error a clean checkout (CI) reports
.venv/bin/mypy --no-incremental esap_dask
echo "== import layers (lint-imports, pyproject.toml [tool.importlinter]) and cycles"
.venv/bin/lint-imports
.venv/bin/python scripts/import_cycles.py
echo "== pytest"
.venv/bin/python -m pytest -ra "$@"
