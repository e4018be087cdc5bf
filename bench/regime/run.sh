#!/usr/bin/env bash
# The regime study of docs/results.md ("Where distillation pays"): ViT, DeiT hard, DeiT soft and DeiT soft with the
# calibrated teacher, 3 seeds, in every cell of train split size {1,100, 5,500 images} x epochs {3, 10, 30}, all
# taught by the real CIFAR-10 ResNet-20 from a cache; then one comparison per cell and the figure.
# Usage: bash bench/regime/run.sh CIFAR10_DIR TEACHER_SAFETENSORS OUT
#   CIFAR10_DIR: the cifar-10-batches-py layout (python ../shared/data/build_cifar10.py DIR writes it);
#   TEACHER_SAFETENSORS: the ResNet-20 weights of docs/results.md (../shared/models/resnet20_cifar10.safetensors on the
#   machine that measured it). Reruns skip what is done. Each run validates every 5 epochs (eval_every) and at its end.
set -euo pipefail
raw=$1; weights=$2; out=$3
here=$(cd "$(dirname "$0")" && pwd); repo=$(dirname "$(dirname "$here")")
cdeit=${CDEIT:-cdeit}; python=${PYTHON:-python}   # PYTHON: an interpreter that imports cdeit (figure.py)
mkdir -p "$out"
for n in 10 50; do   # photographs per class per type in train: 1,100 and 5,500 training images
  [ -f "$out/d$n/manifest.json" ] || $cdeit data prepare --cifar10 "$raw" --corruptions generate --sources test \
      --per-class-per-type "$n,20,20" --out "$out/d$n" --workers 2
  [ -f "$out/c$n/manifest.json" ] || $cdeit precompute-teacher --data "$out/d$n" --out "$out/c$n" \
      --teacher-module "$repo/examples/cifar_resnet.py" --teacher resnet20_cifar --checkpoint "$weights" \
      --head none --device cpu --workers 2
done
for n in 10 50; do
  for epochs in 3 10 30; do
    cell=$out/n$((n * 110))-e$epochs
    $cdeit sweep "$here/study.toml" --out "$cell" --jobs 2 --set data="$out/d$n" --set teacher_cache="$out/c$n" \
        --set epochs=$epochs --set eval_every=5
    $cdeit compare "$cell" --out "$cell/compare" --split test
  done
done
"$python" "$here/figure.py" "$out" "$out/regime.png"
