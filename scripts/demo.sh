#!/usr/bin/env bash
# The main job on a fresh machine: install into .venv, then run a local demo fleet.
# The install runs when .venv is missing, broken or older than what pyproject.toml and
# scripts/install.sh ask for (a stamp of their hash, written once an install has succeeded);
# otherwise it is skipped and the demo starts at once. MOE2_REINSTALL=1 installs anyway.
set -euo pipefail
cd "$(dirname "$0")/.."

stamp=.venv/.moe2-install-stamp
wanted() {
  # What the install depends on: the project's metadata, the installer, the Python it uses.
  { cat pyproject.toml scripts/install.sh; "${PYTHON:-python3}" -V 2>&1; } | sha256sum | cut -d' ' -f1
}

up_to_date() {
  [ -z "${MOE2_REINSTALL:-}" ] &&
    [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$(wanted)" ] &&
    [ -x .venv/bin/moe2 ] && .venv/bin/python -c 'import moe2' >/dev/null 2>&1
}

if up_to_date; then
  echo "demo.sh: .venv is up to date (pyproject.toml unchanged); skipping the install" >&2
else
  rm -f "$stamp"
  bash scripts/install.sh
  wanted >"$stamp"
fi
exec .venv/bin/moe2 demo "$@"
