#!/usr/bin/env bash
# The paper's comparison at CPU scale with a real teacher (docs/results.md): ViT without distillation,
# DeiT hard, DeiT soft and CdeiT hard (strategy 2), same budget, seeds 0..2, all from one ResNet-20 cache.
# Usage: bash bench/real_teacher_study.sh DATA CACHE OUT   (DATA and CACHE as built in docs/results.md)
# Runs seed by seed (each seed's ViT first: it is the mCE baseline), skips finished runs, then compares.
set -euo pipefail
data=$1; cache=$2; out=$3
cdeit=${CDEIT:-cdeit}
model='{"depth": 4, "embed_dim": 96, "num_heads": 3}'  # 0.46M parameters: fits ~1 h of 2 CPU cores
budget=(--epochs 3 --batch-size 128 --lr-per-512 4e-3 --warmup-epochs 0.5 --eval-batch-size 512 --device cpu
        --workers 2 --model-kwargs "$model")
for seed in 0 1 2; do
  for spec in vit:none deit:hard deit:soft cdeit:hard; do
    student=${spec%%:*}; distill=${spec##*:}; run=$out/$student-$distill-s$seed
    if [ ! -f "$run/summary.json" ]; then
      teacher=(); [ "$distill" = none ] || teacher=(--teacher-cache "$cache")
      start=$(date +%s)
      $cdeit train --student "$student" --distill "$distill" --data "$data" --out "$run" --seed "$seed" \
        "${teacher[@]}" "${budget[@]}"
      echo "$run: $(( $(date +%s) - start )) s" >> "$out/times.txt"
    fi
    [ -f "$run/eval/test.json" ] || $cdeit evaluate "$run" --split test --baseline "$out/vit-none-s$seed" \
      --teacher-cache "$cache" --device cpu --batch-size 512 --workers 2
  done
done
$cdeit compare "$out"/*-s? --out "$out" --split test
