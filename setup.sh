#!/usr/bin/env bash
# Installs everything cdeit needs on a fresh Debian/Ubuntu machine: the system libraries FFCV
# compiles against, a virtual environment in .venv, and the project with its test tools.
# Idempotent: a second run only checks. Usage: bash setup.sh
set -euo pipefail
cd "$(dirname "$0")"

need_apt=()
for pkg in libopencv-dev libturbojpeg0-dev pkg-config build-essential python3-dev python3-venv; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing system packages (FFCV compiles against OpenCV and libturbojpeg; venv, compiler, headers): ${need_apt[*]}"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "setup: cdeit needs Python 3.10 or newer; set PYTHON=/path/to/python3.x and run again." >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.cdeit-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing cdeit and its dependencies into .venv (torch, timm, ffcv, h5py, ...)"
  .venv/bin/python -m pip install -q --upgrade pip setuptools wheel
  # FFCV 1.0.2 builds from source, needs numpy at build time and Pillow at run time.
  .venv/bin/python -m pip install -q numpy Pillow
  .venv/bin/python -m pip install -q -e ".[dev]"
  touch "$stamp"
fi
.venv/bin/python -c 'import torch, timm, ffcv, h5py, typer' || {
  echo "setup: the environment in .venv does not import; remove .venv and run bash setup.sh again." >&2
  exit 1
}
echo "setup: ready (.venv/bin/cdeit)"
