#!/usr/bin/env bash
# The test suite on a fresh machine: install into .venv (with Mosquitto), lint, run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --with-mosquitto
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
