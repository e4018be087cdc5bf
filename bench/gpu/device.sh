#!/usr/bin/env bash
# The GPU check on the device machine (bench/gpu/README.md): install what .carry/ holds, then run the stages.
#
#   bash bench/gpu/device.sh [run.py options]      # from the repository root; results in $OUT (or ./out-gpu)
#
# The device image has torch, timm, h5py, typer, numba, rich, safetensors and OpenCV but neither ffcv nor
# cdeit, and no package registry: ffcv, imagecorruptions and cdeit itself are installed with --no-index into
# one --target folder (cdeit built from this working tree, its build backend taken from .carry/wheels), and
# ffcv's shared libraries come from .carry/lib through LD_LIBRARY_PATH.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CARRY=${CARRY:-$ROOT/.carry}
SITE=${SITE:-/tmp/cdeit-site}
PY=${PYTHON:-python3}
OUT=${OUT:-$ROOT/out-gpu}
export PYTHONUNBUFFERED=1

fail() { echo "[gpu-check] self-check failed: $*" | tee -a "$OUT/gpu-check.log"; exit 3; }
why() { grep -m1 -E '^ *ERROR' "$OUT/install.log" | sed 's/^ *//' || tail -1 "$OUT/install.log"; }
mkdir -p "$OUT"
[[ -d "$CARRY/wheels" && -d "$CARRY/lib" ]] || fail "no carry folder at $CARRY: run bench/gpu/prepare_carry.sh and name .carry in carry."
start=$(date +%s)
rm -rf "$SITE"
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" \
  "$CARRY"/wheels/ffcv-*.whl "$CARRY"/wheels/imagecorruptions-*.whl >"$OUT/install.log" 2>&1 ||
  fail "pip could not install the carried wheels ($(why))."
# cdeit from this tree; build isolation finds setuptools and wheel in the carry folder, never on a registry.
"$PY" -m pip install -q --no-index --find-links "$CARRY/wheels" --no-deps --no-cache-dir --target "$SITE" \
  "$ROOT" >>"$OUT/install.log" 2>&1 || fail "pip could not install cdeit from $ROOT ($(why))."
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
export LD_LIBRARY_PATH="$CARRY/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PATH="$SITE/bin:$PATH"
echo "[gpu-check] installed ffcv, imagecorruptions and cdeit into $SITE in $(($(date +%s) - start)) s"
cd "$ROOT" && exec "$PY" bench/gpu/run.py --out "$OUT" "$@"
