#!/usr/bin/env bash
# Rehearse the device call on this machine (bench/gpu/README.md): a clean Python 3.12 venv holding only what
# the device image has from the registry, a copy of the working tree as the device receives it (tracked and
# untracked-not-ignored files plus .carry), then bench/gpu/device.sh in that copy, installing ffcv,
# imagecorruptions and cdeit ONLY from .carry with --no-index, and the CPU dry run of the entry script.
#
#   bash bench/gpu/prepare_carry.sh && bash bench/gpu/rehearse.sh [VENV]    # VENV default /tmp/cdeit-rehearsal-venv
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
VENV=${1:-/tmp/cdeit-rehearsal-venv}
# The device image's packages that cdeit and ffcv use (docs: /work/.library/device KINDS.md), pinned where
# the device's version is known. Nothing else comes from a registry.
DEVICE_PACKAGES=(torch==2.11.0 torchvision==0.26.0 timm h5py typer numba rich safetensors numpy
  opencv-python-headless scipy pillow tqdm psutil)

die() { echo "rehearse: $*" >&2; exit 1; }

py312() {
  local p
  for p in "${PY312:-}" "$HOME"/.pyenv/versions/3.12*/bin/python3.12 /root/.pyenv/versions/3.12*/bin/python3.12; do
    [[ -n "$p" && -x "$p" ]] && { echo "$p"; return; }
  done
  die "no Python 3.12 found under ~/.pyenv/versions; set PY312=/path/to/python3.12."
}

[[ -d "$ROOT/.carry/wheels" ]] || die "no $ROOT/.carry; run bash bench/gpu/prepare_carry.sh first."
if [[ ! -x "$VENV/bin/python" ]]; then
  "$(py312)" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q "${DEVICE_PACKAGES[@]}"
fi
for missing in ffcv cdeit imagecorruptions; do  # what the device lacks must be missing here too
  if "$VENV/bin/python" -c "import $missing" 2>/dev/null; then die "$VENV can import $missing; use a venv without it."; fi
done

WORK=$(mktemp -d /tmp/cdeit-rehearsal.XXXXXX)
mkdir -p "$WORK/tree"
(cd "$ROOT" && git ls-files -co --exclude-standard -z | xargs -0 -I{} sh -c 'test -e "{}" && printf "%s\0" "{}"' |
  tar --null -T - -cf -) | tar -xf - -C "$WORK/tree"
cp -r "$ROOT/.carry" "$WORK/tree/.carry"
echo "rehearsal in $WORK (tree $(du -sh "$WORK/tree" | cut -f1) with .carry)"

# No registry and no local wheel folders: pip sees the carry folder only, as on the device.
for v in $(compgen -e | grep '^PIP_' || true); do unset "$v"; done
export PIP_CONFIG_FILE=/dev/null
unset PYTHONPATH LD_LIBRARY_PATH
cd "$WORK/tree"
set +e
PYTHON="$VENV/bin/python" SITE="$WORK/site" OUT="$WORK/out" bash bench/gpu/device.sh \
  --preset tiny --device cpu --workdir "$WORK/work" --recipe-epochs 1
status=$?
set -e
[[ -f "$WORK/out/gpu-check.json" ]] || die "device.sh (exit status $status) wrote no $WORK/out/gpu-check.json."
"$VENV/bin/python" - "$WORK/out/gpu-check.json" "$WORK/site" "$WORK/tree/.carry/lib" <<'EOF'
import json, sys
doc = json.load(open(sys.argv[1]))
bad = {k: v.get("error") for k, v in doc["stages"].items() if v["status"] != "ok"}
sc = doc["stages"]["selfcheck"]["result"]
libs = sc["ffcv_libraries"]
assert sc["cdeit_location"].startswith(sys.argv[2]), f"cdeit came from {sc['cdeit_location']}, not the --target folder"
for lib in ("libopencv_core.so.406", "libopencv_imgproc.so.406", "libturbojpeg.so.0"):
    assert lib in libs["from_ld_library_path"], f"{lib} did not resolve from the carried {sys.argv[3]}"
print(f"rehearsal: python {sc['python']}, torch {sc['torch']}, ffcv {sc['ffcv']} from {libs['extension']}")
print(f"rehearsal: cdeit from {sc['cdeit_location']}, commands {sc['cdeit_commands']}, script {sc['cdeit_script']}")
print(f"rehearsal: {len(libs['from_ld_library_path'])} libraries from .carry/lib; stages not ok: {bad or 'none'}")
sys.exit(1 if bad else 0)
EOF
echo "rehearsal: device.sh exit status $status; results in $WORK/out"
exit "$status"
