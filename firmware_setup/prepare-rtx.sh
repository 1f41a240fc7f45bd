#!/usr/bin/env bash
# Prepare an x86-64 box with an NVIDIA RTX GPU (e.g. a 4090) for the moe2 agent.
#
#   prepare-rtx.sh [--root DIR] [--dry-run] [--power-limit WATTS] [--build-llama [VENV]]
#
# Checks the NVIDIA driver (nvidia-smi), turns persistence mode on (and keeps it on across
# boots with nvidia-persistenced), optionally caps the GPU's power draw (now and at every boot,
# a oneshot unit moe2-gpu-power.service), and optionally rebuilds llama-cpp-python in VENV
# (/opt/moe2/venv) for CUDA. Idempotent; --root DIR stages files under DIR only; --dry-run
# prints every command and changes nothing, on any machine (an RTX box or not).
set -euo pipefail

export PROG
PROG=$(basename "$0")
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=common.sh
. "$here/common.sh"

common_args "$@"
set -- ${ARGS[@]+"${ARGS[@]}"}
power_limit="" build=""
while [ $# -gt 0 ]; do
  case "$1" in
    --power-limit) power_limit=${2:?--power-limit needs watts}; shift 2 ;;
    --build-llama)
      if [ $# -gt 1 ] && [[ "$2" != --* ]]; then build=$2; shift 2; else build=/opt/moe2/venv; shift; fi ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
if [ -n "$power_limit" ] && ! [[ "$power_limit" =~ ^[0-9]+$ ]]; then
  die "--power-limit must be whole watts, not '$power_limit'"
fi

# -- platform and driver --------------------------------------------------------------------
if [ -f "$(at /etc/nv_tegra_release)" ]; then
  wrong_platform "wrong platform: this is a Jetson; use prepare-jetson.sh"
elif live && [ "$(uname -m)" != x86_64 ]; then
  wrong_platform "wrong platform: an RTX box is x86_64, this machine is $(uname -m)"
fi
driver=1
if live && ! command -v nvidia-smi >/dev/null 2>&1; then
  driver=0
  wrong_platform "the NVIDIA driver is not installed (no nvidia-smi): on Debian enable non-free and apt-get install nvidia-driver, then reboot"
fi
need_root "$@"

if live && [ "$driver" = 1 ]; then
  gpus=$(nvidia-smi --query-gpu=name,driver_version,persistence_mode,power.limit \
    --format=csv,noheader 2>&1) || die "nvidia-smi cannot talk to the driver: $gpus"
  note "GPU(s): $gpus"
  grep -qi 'RTX' <<<"$gpus" || note "warning: no RTX GPU found; continuing"
else
  gpus=""
fi

# -- persistence mode -----------------------------------------------------------------------
if grep -q ', Enabled,' <<<"$gpus"; then
  note "persistence mode already on"
else
  sys_run nvidia-smi -pm 1
fi
if ! live || systemctl list-unit-files nvidia-persistenced.service >/dev/null 2>&1; then
  sys_run systemctl enable --now nvidia-persistenced.service
fi

# -- power limit ----------------------------------------------------------------------------
if [ -n "$power_limit" ]; then
  sys_run nvidia-smi -pl "$power_limit"
  install_text "$(at /etc/systemd/system/moe2-gpu-power.service)" 0644 <<UNIT
# Caps the GPU's power at boot; installed by firmware_setup/prepare-rtx.sh
[Unit]
Description=GPU power limit for moe2 (${power_limit} W)
After=nvidia-persistenced.service
Before=moe2-agent.service

[Service]
Type=oneshot
ExecStart=/usr/bin/nvidia-smi -pm 1
ExecStart=/usr/bin/nvidia-smi -pl ${power_limit}
RemainAfterExit=yes

[Install]
WantedBy=multi-user.target
UNIT
  sys_run systemctl daemon-reload
  sys_run systemctl enable moe2-gpu-power.service
fi

# -- llama.cpp with CUDA --------------------------------------------------------------------
if [ -n "$build" ]; then
  py=$(at "$build")/bin/python
  if [ "$DRY_RUN" = 0 ] && [ ! -x "$py" ]; then
    die "--build-llama: no virtual environment at $(at "$build") (run install-agent.sh first)"
  fi
  if live && [ "$DRY_RUN" = 0 ] && ! command -v nvcc >/dev/null 2>&1 \
    && [ ! -x /usr/local/cuda/bin/nvcc ]; then
    die "--build-llama needs the CUDA toolkit (nvcc): apt-get install nvidia-cuda-toolkit"
  fi
  export PATH="/usr/local/cuda/bin:$PATH"
  export CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=89"  # Ada: RTX 40xx
  printf '+ export CMAKE_ARGS=%q\n' "$CMAKE_ARGS"
  run "$py" -m pip --disable-pip-version-check install --force-reinstall --no-cache-dir \
    --no-deps "llama-cpp-python>=0.3.16"
fi
note "done"
