#!/usr/bin/env bash
# The main job on a fresh machine: install into .venv, then run a local demo fleet.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/moe2 demo "$@"
