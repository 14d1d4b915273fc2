#!/usr/bin/env bash
# ResNet-20 h=180 over several seeds on a lent GPU: each seed's fit distilled twice from the same file, side by
# side, with and without a moving average of the predictor's weights (distill --ema), everything else the H100's
# recipe (experiments/2026-11-27-long-recipe-gpu/NOTES.md, "Lent H100": fit 12,000 steps,
# distill 3,000 with feature-map distillation).
# Every command stops DEADLINE s after the start at the latest; the files made by then are packed into
# OUT/files.tar, the per-command times into OUT/steps.txt.
# Usage: run_ema.sh OUT DEVICE DEADLINE FIT KD EMA SEED...   with .gpudata (G) holding resnet20-12fca82f.th and the
# two CIFAR-10 training files.
set -uo pipefail
O=$1; DEV=$2; DEADLINE=$3; FIT=$4; KD=$5; EMA=$6; shift 6
G=${G:-.gpudata}; NC=${NC:-python3 -m nerncompress}; export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
TRAIN="--data $G/train2000_lossless.npz --data $G/train5000_jpeg.npz"
R20=$G/resnet20-12fca82f.th; F=$O/files; END=$((SECONDS + DEADLINE))
mkdir -p "$F"

# shellcheck source=../2026-11-27-long-recipe-gpu/_deadline.sh
source "$(dirname "${BASH_SOURCE[0]}")/../2026-11-27-long-recipe-gpu/_deadline.sh"  # run NAME CMD...

seed() {  # seed N
  run "fit_s$1" $NC fit $R20 --hidden 180 --iters "$FIT" --seed "$1" -o "$F/fit_s$1.nern" || return
  local kd="distill $F/fit_s$1.nern --teacher $R20 $TRAIN --iters $KD --eval-every 250 --fmd-weight 1 --seed $1"
  run "kd_s$1" $NC $kd -o "$F/kd_s$1.nern" &
  run "ema_s$1" $NC $kd --ema "$EMA" -o "$F/ema_s$1.nern" &
  wait
}

for s in "$@"; do seed "$s" & done
wait
tar -cf "$O/files.tar" -C "$O" files && rm -rf "$F"
cat "$O/steps.txt"
