#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run every check: ruff, mypy, and the pytest
# suite (kernel tests on veth in network namespaces; the VM suite).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
.venv/bin/ruff check vtnet_py cli tests benchmarks
.venv/bin/ruff format --check vtnet_py cli tests benchmarks
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
