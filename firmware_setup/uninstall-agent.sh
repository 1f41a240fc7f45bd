#!/usr/bin/env bash
# Remove the moe2 agent service that install-agent.sh set up.
#
#   uninstall-agent.sh [--root DIR] [--dry-run] [--purge] [--user NAME (moe2)]
#
# Stops and disables moe2-agent.service, removes the unit and /opt/moe2. The config in
# /etc/moe2, the state in /var/lib/moe2 and /var/cache/moe2, and the user are kept unless
# --purge. Idempotent: whatever is already gone is skipped.
set -euo pipefail

export PROG
PROG=$(basename "$0")
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=common.sh
. "$here/common.sh"

common_args "$@"
set -- ${ARGS[@]+"${ARGS[@]}"}
purge=0 user=moe2
while [ $# -gt 0 ]; do
  case "$1" in
    --purge) purge=1; shift ;;
    --user) user=${2:?--user needs a name}; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
need_root "$@"
need_systemd

unit=/etc/systemd/system/moe2-agent.service
if live && systemctl list-unit-files moe2-agent.service >/dev/null 2>&1; then
  sys_run systemctl disable --now moe2-agent.service || true
elif ! live; then
  sys_run systemctl disable --now moe2-agent.service
fi

remove() {
  local path
  path=$(at "$1")
  if [ -e "$path" ] || [ -L "$path" ]; then
    run rm -rf -- "$path"
  else
    note "already gone: $path"
  fi
}
remove "$unit"
sys_run systemctl daemon-reload
remove /opt/moe2
if [ "$purge" = 1 ]; then
  remove /etc/moe2
  remove /var/lib/moe2
  remove /var/cache/moe2
  if ! live || getent passwd "$user" >/dev/null 2>&1; then
    sys_run userdel "$user"
  fi
else
  note "kept $(at /etc/moe2) and user $user (--purge removes them)"
fi
note "done"
