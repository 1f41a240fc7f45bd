#!/usr/bin/env bash
# Prepare an NVIDIA Jetson (Orin) for the moe2 agent.
#
#   prepare-jetson.sh [--root DIR] [--dry-run] [--power-mode N (0, MAXN on Orin)]
#                     [--clocks] [--jtop] [--build-llama [VENV (/opt/moe2/venv)]]
#
#   --power-mode N   nvpmodel power mode (see /etc/nvpmodel.conf; 0 is MAXN on AGX/NX Orin)
#   --clocks         pin clocks to the maximum with jetson_clocks now and at every boot
#                    (a oneshot unit moe2-jetson-clocks.service)
#   --jtop           install jetson-stats and enable its jtop service (GPU/power monitor)
#   --build-llama    rebuild llama-cpp-python in VENV for CUDA on aarch64
#                    (CMAKE_ARGS="-DGGML_CUDA=on"; needs the JetPack CUDA toolkit)
# Idempotent; --root DIR stages files under DIR and leaves the running system alone;
# --dry-run prints every command and changes nothing, on any machine (a Jetson or not).
set -euo pipefail

export PROG
PROG=$(basename "$0")
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=common.sh
. "$here/common.sh"

common_args "$@"
set -- ${ARGS[@]+"${ARGS[@]}"}
power_mode=0 clocks=0 jtop=0 build="" 
while [ $# -gt 0 ]; do
  case "$1" in
    --power-mode) power_mode=${2:?--power-mode needs a number}; shift 2 ;;
    --clocks) clocks=1; shift ;;
    --jtop) jtop=1; shift ;;
    --build-llama)
      if [ $# -gt 1 ] && [[ "$2" != --* ]]; then build=$2; shift 2; else build=/opt/moe2/venv; shift; fi ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
[[ "$power_mode" =~ ^[0-9]+$ ]] || die "--power-mode must be a number, not '$power_mode'"

# -- is this a Jetson? ----------------------------------------------------------------------
release=$(at /etc/nv_tegra_release)
if [ ! -f "$release" ]; then
  wrong_platform "wrong platform: not a Jetson ($release missing; this needs JetPack / L4T). For an RTX box use prepare-rtx.sh"
elif live && [ "$(uname -m)" != aarch64 ]; then
  wrong_platform "wrong platform: a Jetson is aarch64, this machine is $(uname -m)"
else
  note "L4T: $(head -n 1 "$release")"
fi
need_root "$@"

if live && [ "$DRY_RUN" = 0 ]; then
  command -v nvpmodel >/dev/null 2>&1 \
    || die "nvpmodel not found: it comes with JetPack (apt-get install nvidia-l4t-tools)"
fi

# -- power mode -----------------------------------------------------------------------------
current=""
if live && command -v nvpmodel >/dev/null 2>&1; then
  current=$(nvpmodel -q 2>/dev/null | sed -n 's/^\([0-9][0-9]*\)$/\1/p' | head -n 1 || true)
fi
if [ "$current" = "$power_mode" ]; then
  note "power mode already $power_mode"
else
  sys_run nvpmodel -m "$power_mode"
fi

# -- clocks ---------------------------------------------------------------------------------
if [ "$clocks" = 1 ]; then
  sys_run jetson_clocks
  install_text "$(at /etc/systemd/system/moe2-jetson-clocks.service)" 0644 <<UNIT
# Pins Jetson clocks to their maximum at boot; installed by firmware_setup/prepare-jetson.sh
[Unit]
Description=Jetson clocks at maximum for moe2
After=nvpmodel.service
Before=moe2-agent.service

[Service]
Type=oneshot
ExecStart=/usr/bin/jetson_clocks
RemainAfterExit=yes

[Install]
WantedBy=multi-user.target
UNIT
  sys_run systemctl daemon-reload
  sys_run systemctl enable moe2-jetson-clocks.service
fi

# -- jtop -----------------------------------------------------------------------------------
if [ "$jtop" = 1 ]; then
  if live && systemctl is-enabled jtop.service >/dev/null 2>&1; then
    note "jtop service already enabled"
  else
    if live && [ "$DRY_RUN" = 0 ] && ! command -v pip3 >/dev/null 2>&1; then
      die "--jtop needs pip3 (apt-get install python3-pip)"
    fi
    sys_run pip3 install -U jetson-stats
    sys_run systemctl enable --now jtop.service
  fi
fi

# -- llama.cpp with CUDA --------------------------------------------------------------------
if [ -n "$build" ]; then
  py=$(at "$build")/bin/python
  if [ "$DRY_RUN" = 0 ] && [ ! -x "$py" ]; then
    die "--build-llama: no virtual environment at $(at "$build") (run install-agent.sh first)"
  fi
  if live && [ "$DRY_RUN" = 0 ] && ! command -v nvcc >/dev/null 2>&1 \
    && [ ! -x /usr/local/cuda/bin/nvcc ]; then
    die "--build-llama needs the CUDA toolkit (nvcc): apt-get install nvidia-jetpack"
  fi
  export PATH="/usr/local/cuda/bin:$PATH"
  export CMAKE_ARGS="-DGGML_CUDA=on"
  printf '+ export CMAKE_ARGS=%q\n' "$CMAKE_ARGS"
  run "$py" -m pip --disable-pip-version-check install --force-reinstall --no-cache-dir \
    --no-deps "llama-cpp-python>=0.3.16"
fi
note "done"
