#!/usr/bin/env bash
# ResNet-20 h=180 over several seeds with the development CPU's long recipe, the best of each pair of seeds kept by
# `nerncompress select` on distill's held-out training images, then every file evaluated on the test images
# (SEEDS.md in this folder).
# Usage: r20_seeds.sh DATA OUT SEED_A SEED_B [SEED_A SEED_B ...]
#   DATA holds resnet20-12fca82f.th, train2000_lossless.npz, train5000_jpeg.npz, test1000_lossless.npz and
#   test10k_jpeg.npz (../shared/data/{models,cifar10} in one folder). Each seed: fit 12,000 steps, then distill
#   1,500 steps with feature-map distillation, on THREADS (default 1) threads; run two of these side by side on a
#   2-core machine. OUT gets fit_sN.nern, kd_sN.nern, their --json results, select_kd_sA_sB.json and eval_*.json.
#   STAGE=train (fit and distill only) or STAGE=score (select and evaluate only) splits the two halves;
#   FIT_ITERS and KD_ITERS (default 12000 and 1500) shorten a smoke test; HIDDEN (default 180) sets the width.
#   EMA=0.998 distills with a moving average of the predictor's weights (distill --ema) into ARM_sN.nern (ARM:
#   default kd); a fit_sN.nern already in OUT is distilled again rather than refitted, so that two arms share fits.
#   Paired table of two arms: python experiments/2026-11-27-resnet20-seeds/seeds_table.py OUT kd ema.
set -euo pipefail
D=$1; O=$2; shift 2
NC=${NC:-nerncompress}; THREADS=${THREADS:-1}; STAGE=${STAGE:-all}
FIT_ITERS=${FIT_ITERS:-12000}; KD_ITERS=${KD_ITERS:-1500}; HIDDEN=${HIDDEN:-180}; EMA=${EMA:-0}; ARM=${ARM:-kd}
R20=$D/resnet20-12fca82f.th; TRAIN=(--data "$D/train2000_lossless.npz" --data "$D/train5000_jpeg.npz")
mkdir -p "$O"

if [ "$STAGE" != score ]; then
  for s in "$@"; do
    if [ ! -f "$O/fit_s$s.nern" ]; then
      $NC fit "$R20" --hidden "$HIDDEN" --iters "$FIT_ITERS" --seed "$s" --threads "$THREADS" -o "$O/fit_s$s.nern" \
        --json > "$O/fit_s$s.json"
    fi
    $NC distill "$O/fit_s$s.nern" --teacher "$R20" "${TRAIN[@]}" --iters "$KD_ITERS" --eval-every 100 --fmd-weight 1 \
      --ema "$EMA" --seed "$s" --threads "$THREADS" -o "$O/${ARM}_s$s.nern" --json > "$O/${ARM}_s$s.json"
  done
fi

if [ "$STAGE" != train ]; then
  # Selection first, on the 700 images distill held out (the same for every seed); the test images come after.
  while [ $# -ge 2 ]; do
    $NC select "$O/${ARM}_s$1.nern" "$O/${ARM}_s$2.nern" --reference "$R20" "${TRAIN[@]}" --threads "$THREADS" \
      -o "$O/best_${ARM}_s$1_s$2.nern" --json > "$O/select_${ARM}_s$1_s$2.json"
    shift 2
  done
  for file in "$O"/"$ARM"_s*.nern; do
    name=$(basename "$file" .nern)
    for test in test1000_lossless test10k_jpeg; do
      $NC eval "$file" --data "$D/$test.npz" --compare "$R20" --threads "$THREADS" --json > "$O/eval_${name}_$test.json"
    done
  done
fi
