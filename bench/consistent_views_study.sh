#!/usr/bin/env bash
# Issue 15's measurement (docs/consistent-views.md): DeiT soft distillation from the real ResNet-20 teacher,
# three ways to teach at the same budget, seeds 0..2:
#   a  today's cache (the teacher on each clean sample; targets mixed with the images)
#   b  a K-view cache, K = epochs (the teacher's logits on the exact erased and mixed images, replayed)
#   c  the teacher run online on each augmented batch (`cdeit train --online-teacher`)
#   vit  ViT without distillation (the mCE baseline), trained into OUT/vit-none-sSEED
# Usage: [EPOCHS=3] [SEEDS="0 1 2"] [TEACHER=NAME] [DEVICE=cpu] \
#          bash bench/consistent_views_study.sh DATA OUT BASELINES [ARMS]
#   DATA: a dataset built as in docs/results.md; OUT: the study folder (caches, runs, times.txt, compare.*);
#   BASELINES: a folder with vit-none-sSEED for each seed (the mCE baseline: OUT itself with the vit arm, or
#   bench/real_teacher_study.sh's runs at its 3 epochs); ARMS: which arms to run, in order (default "a b c").
#   EPOCHS is also the K of cache b. Finished caches, runs and evaluations are skipped.
#   TEACHER: another teacher than the ResNet-20 (e.g. deit3_small_patch16_224.fb_in22k_ft_in1k from a local
#   Hugging Face cache); DEVICE: where everything runs (cpu, as measured; cuda on a GPU machine).
# The default teacher needs ../shared/models (SHARED=DIR elsewhere); CDEIT names another cdeit command.
set -euo pipefail
data=$1; out=$2; baselines=$3; arms=${4:-a b c}
for arm in $arms; do
  case $arm in vit|a|b|c) ;; *) echo "unknown arm $arm: choose from vit a b c" >&2; exit 2 ;; esac
done
cdeit=${CDEIT:-cdeit}
here=$(cd "$(dirname "$0")/.." && pwd)
epochs=${EPOCHS:-3}
device=${DEVICE:-cpu}
if [ -n "${TEACHER:-}" ]; then  # another teacher: a timm name, name.tag or hf-hub:org/repo (with its head fitted)
  teacher=(--teacher "$TEACHER" --device "$device" --workers 2)
  online=()
else  # the real ResNet-20 of ../shared/models, through the example module, with its own head
  shared=${SHARED:-$here/../shared}  # the shared folder beside the checkout
  weights=$shared/models/resnet20_cifar10.safetensors
  module=$here/examples/cifar_resnet.py
  teacher=(--teacher-module "$module" --teacher resnet20_cifar --checkpoint "$weights" --head none --device "$device"
           --workers 2)
  online=(--teacher-checkpoint "$weights" --teacher-module "$module")
fi
model='{"depth": 4, "embed_dim": 96, "num_heads": 3}'  # the budget of bench/real_teacher_study.sh
budget=(--epochs $epochs --batch-size 128 --lr-per-512 4e-3 --warmup-epochs 0.5 --eval-batch-size 512 --device "$device"
        --workers 2 --model-kwargs "$model")
mkdir -p "$out"
timed() {  # timed NAME COMMAND...: run once, append its wall seconds to times.txt
  local name=$1; shift; local start; start=$(date +%s)
  "$@"
  echo "$name: $(( $(date +%s) - start )) s" >> "$out/times.txt"
}
[ -f "$out/cache-a/manifest.json" ] || timed cache-a $cdeit precompute-teacher --data "$data" --out "$out/cache-a" \
  "${teacher[@]}"
if [[ " $arms " == *" b "* ]] && [ ! -f "$out/cache-b/manifest.json" ]; then
  timed cache-b $cdeit precompute-teacher --data "$data" --out "$out/cache-b" "${teacher[@]}" --views $epochs
  $cdeit cache info "$out/cache-b"
  $cdeit cache verify "$out/cache-b" --data "$data" --full
fi
for seed in ${SEEDS:-0 1 2}; do
  for arm in $arms; do
    case $arm in
      vit) name=vit-none-s$seed; train=(--student vit --distill none) ;;
      a) name=deit-soft-a-s$seed; train=(--student deit --distill soft --teacher-cache "$out/cache-a") ;;
      b) name=deit-soft-b-s$seed; train=(--student deit --distill soft --teacher-cache "$out/cache-b") ;;
      c) name=deit-soft-c-s$seed; train=(--student deit --distill soft --teacher-cache "$out/cache-a" --online-teacher
                                          ${online[@]+"${online[@]}"}) ;;
    esac
    run=$out/$name
    [ -f "$run/summary.json" ] || timed "$name" $cdeit train --data "$data" --out "$run" --seed "$seed" \
      "${train[@]}" "${budget[@]}"
    [ -f "$run/eval/test.json" ] || $cdeit evaluate "$run" --split test --baseline "$baselines/vit-none-s$seed" \
      --teacher-cache "$out/cache-a" --device "$device" --batch-size 512 --workers 2
  done
done
runs=(); for run in "$out"/deit-soft-?-s* "$out"/vit-none-s*; do [ -d "$run" ] && runs+=("$run"); done
$cdeit compare "${runs[@]}" --out "$out" --split test
