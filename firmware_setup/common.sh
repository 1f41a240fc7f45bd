# shellcheck shell=bash
# Helpers shared by the firmware_setup scripts; sourced, not run.
#   ROOT      install root ("/" for the live system, else a staging folder)
#   DRY_RUN   1: print every command, change nothing
# Each script sets PROG before sourcing this file.

ROOT=/
DRY_RUN=0

die() { echo "$PROG: $*" >&2; exit 1; }
note() { echo "$PROG: $*"; }

# --help: the comment block at the top of the running script (after the #! line), nothing else.
usage() { awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"; }

# This machine is not the one the script is for: fatal, except under --dry-run, which previews
# on any machine what would run on the right one.
wrong_platform() {
  if [ "$DRY_RUN" = 1 ]; then
    note "warning: $* -- --dry-run previews what would run on the right machine"
  else
    die "$*"
  fi
}

# The live system, not a staging root?
live() { [ "$ROOT" = / ]; }

# A path inside the install root: at "/somewhere" -> "$ROOT/somewhere".
at() { if live; then printf '%s\n' "$1"; else printf '%s%s\n' "${ROOT%/}" "$1"; fi; }

# Print a command, then run it unless --dry-run.
run() {
  printf '+ %s\n' "$*"
  [ "$DRY_RUN" = 1 ] || "$@"
}

# A command that changes the running system (users, services, drivers): only on the live root.
sys_run() {
  if ! live; then
    printf '+ %s   # skipped: --root %s is a staging root\n' "$*" "$ROOT"
    return 0
  fi
  run "$@"
}

# Write stdin to a file (mode $2) unless it already holds exactly that; say which.
install_text() {
  local dest=$1 mode=$2 content
  content=$(cat)
  if [ -f "$dest" ] && [ "$(cat "$dest")" = "$content" ]; then
    note "unchanged $dest"
    return 0
  fi
  printf '+ write %s (mode %s)\n' "$dest" "$mode"
  [ "$DRY_RUN" = 1 ] && return 0
  mkdir -p "$(dirname "$dest")"
  printf '%s\n' "$content" >"$dest.tmp"
  chmod "$mode" "$dest.tmp"
  mv -f "$dest.tmp" "$dest"
}

# Root is needed to change the live system (not for a staging root, nor for --dry-run).
need_root() {
  if live && [ "$DRY_RUN" = 0 ] && [ "$(id -u)" -ne 0 ]; then
    die "must run as root to change this system: sudo $0 $*  (or --root DIR to stage, --dry-run to preview)"
  fi
}

# systemd must be running to install or remove a service on the live system.
need_systemd() {
  if live && [ "$DRY_RUN" = 0 ] && [ ! -d /run/systemd/system ]; then
    die "systemd is not running here (no /run/systemd/system): this installs a systemd service; use --root DIR to stage the files instead"
  fi
}

# Parse the options every script takes; the rest are left in ARGS.
common_args() {
  ARGS=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --root) ROOT=${2:?--root needs a folder}; shift 2 ;;
      --root=*) ROOT=${1#--root=}; shift ;;
      --dry-run) DRY_RUN=1; shift ;;
      *) ARGS+=("$1"); shift ;;
    esac
  done
  case "$ROOT" in
    /*) ;;
    *) ROOT=$(pwd)/$ROOT ;;
  esac
  [ "$ROOT" = / ] || ROOT=${ROOT%/}
}
