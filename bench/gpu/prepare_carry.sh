#!/usr/bin/env bash
# Build the carry folder for the GPU check (bench/gpu/README.md): what the device image lacks, here.
#
#   bash bench/gpu/prepare_carry.sh            # writes .carry/ at the repository root (git-ignored)
#
# .carry/wheels/  ffcv 1.0.2 built for CPython 3.12 with this machine's pyenv Python 3.12, the
#                 imagecorruptions wheel (its frost photographs), setuptools, wheel and packaging (to build cdeit there)
# .carry/lib/     every shared library the ffcv extension links (per ldd) beyond glibc, libstdc++, libgcc
#                 and zlib: libturbojpeg, the OpenCV libraries and what they pull in, from `apt-get download`
#                 of the Debian packages installed here, unpacked and named by their sonames
# .carry/MANIFEST.txt  sizes and sha256 of every file
# Needs: the apt packages libopencv-dev and libturbojpeg0-dev (ffcv compiles against them), PyPI, Debian.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CARRY=${CARRY:-$ROOT/.carry}
LIMIT_MIB=${LIMIT_MIB:-48}  # the device call moves at most 64 MiB, working tree included
FFCV=ffcv==1.0.2
PURE=(imagecorruptions==1.1.2 setuptools==84.2.1 wheel==0.48.0 packaging==26.4)  # the last three build cdeit there
BASE='^(linux-vdso|ld-linux-x86-64|libc|libm|libdl|librt|libpthread|libstdc\+\+|libgcc_s|libz)\.so'

die() { echo "prepare_carry: $*" >&2; exit 1; }

py312() {
  local p
  for p in "${PY312:-}" "$HOME"/.pyenv/versions/3.12*/bin/python3.12 /root/.pyenv/versions/3.12*/bin/python3.12; do
    [[ -n "$p" && -x "$p" ]] && { echo "$p"; return; }
  done
  die "no Python 3.12 found under ~/.pyenv/versions; set PY312=/path/to/python3.12."
}

exclude_carry() {  # the main repository's info/exclude, which every worktree shares
  local common
  common=$(git -C "$ROOT" rev-parse --path-format=absolute --git-common-dir)
  mkdir -p "$common/info"
  grep -qxF "/.carry/" "$common/info/exclude" 2>/dev/null || echo "/.carry/" >>"$common/info/exclude"
  git -C "$ROOT" check-ignore -q "$CARRY/x" || die "$CARRY is not ignored by git; add it to $common/info/exclude."
}

build_wheels() {  # $1: wheels folder
  local py
  py=$(py312)
  pkg-config --exists opencv4 libturbojpeg ||
    die "ffcv needs pkg-config's opencv4 and libturbojpeg: apt-get install libopencv-dev libturbojpeg0-dev."
  "$py" -m pip wheel -q --no-deps -w "$1" "$FFCV" || die "building the $FFCV wheel with $py failed (see above)."
  "$py" -m pip download -q --no-deps --only-binary=:all: -d "$1" "${PURE[@]}" || die "pip download failed."
  echo "wheels: $(cd "$1" && ls | tr '\n' ' ')"
}

carry_libs() {  # $1: wheels folder, $2: lib folder, $3: scratch
  local so lib path real pkg ver deb found
  (cd "$3" && unzip -q -o "$1"/ffcv-1.0.2-cp312-*.whl 'ffcv/_libffcv*.so')
  so=$(ls "$3"/ffcv/_libffcv*.so)
  ldd "$so" | grep -q "not found" && die "ldd $so: a library is missing here: $(ldd "$so" | grep 'not found')."
  mkdir -p "$3/debs" "$3/root"
  while read -r lib path; do
    [[ "$lib" =~ $BASE ]] && continue
    real=$(readlink -f "$path")
    pkg=$(dpkg -S "$path" 2>/dev/null || dpkg -S "$real" 2>/dev/null || true)
    pkg=${pkg%%:*}
    [[ -n "$pkg" ]] || die "no Debian package owns $path ($lib)."
    ver=$(dpkg-query -W -f='${Version}' "$pkg")
    if [[ ! -e "$3/debs/$pkg.done" ]]; then
      (cd "$3/debs" && apt-get download -q "$pkg=$ver" >/dev/null 2>&1) || die "apt-get download $pkg=$ver failed."
      deb=$(ls "$3/debs/${pkg}_"*.deb | head -1)
      dpkg -x "$deb" "$3/root"
      touch "$3/debs/$pkg.done"
    fi
    found=$(find "$3/root" -name "$(basename "$real")" \( -type f -o -type l \) | head -1)
    [[ -n "$found" ]] || die "$pkg=$ver holds no $(basename "$real") for $lib."
    cp -L "$found" "$2/$lib"
    echo "lib: $lib <- $pkg $ver"
  done < <(ldd "$so" | awk '/=>/ {print $1, $3}')
  LD_LIBRARY_PATH="$2" ldd "$so" | awk '/=>/ {print $1, $3}' | while read -r lib path; do
    [[ "$lib" =~ $BASE || "$path" == "$2/$lib" ]] || die "$lib resolves to $path, not to the carried $2/$lib."
  done
}

main() {
  exclude_carry
  local tmp
  tmp="$CARRY.tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$tmp/wheels" "$tmp/lib" "$tmp/scratch"
  trap 'rm -rf "$tmp"' EXIT
  build_wheels "$tmp/wheels"
  carry_libs "$tmp/wheels" "$tmp/lib" "$tmp/scratch"
  rm -rf "$tmp/scratch"
  (cd "$tmp" && find wheels lib -type f | sort | xargs sha256sum) >"$tmp/MANIFEST.txt"
  local kib
  kib=$(du -sk "$tmp" | cut -f1)
  ((kib <= LIMIT_MIB * 1024)) || die "the carry folder is $((kib / 1024)) MiB, over its $LIMIT_MIB MiB share."
  rm -rf "$CARRY"
  mv "$tmp" "$CARRY"
  trap - EXIT
  echo "carry folder ready: $CARRY, $((kib / 1024)) MiB ($(($(wc -l <"$CARRY/MANIFEST.txt"))) files)"
}

main "$@"
