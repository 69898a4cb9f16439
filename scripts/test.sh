#!/usr/bin/env bash
# Everything the tests need, then all the tests: the project's virtual environment with the
# test extras, the local services (SLURM, DiracX, PostgreSQL), lint, types and pytest.
# Extra arguments go to pytest (e.g. `scripts/test.sh -k mapper`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
for service in slurm diracx postgres; do
    if [ -f "scripts/$service.sh" ]; then
        echo "== starting $service (scripts/$service.sh start)"
        bash "scripts/$service.sh" start
    fi
done
echo "== ruff"
.venv/bin/ruff check esap_dask pipelines tests bench
.venv/bin/ruff format --check esap_dask pipelines
echo "== mypy"
.venv/bin/mypy esap_dask
echo "== pytest"
.venv/bin/python -m pytest -ra "$@"
