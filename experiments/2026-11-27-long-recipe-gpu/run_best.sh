#!/usr/bin/env bash
# The fifth lent GPU's command (NOTES.md in this folder): the meta-compression targets measured on the best
# ResNet-56 recipe found, and ResNet-20's fidelity target over several seeds, side by side in one call.
# r56: ResNet-56 h=280, fit FIT + distill KD56 steps (the fourth H200's recipe, 95.37% agreement), then from that
#      float predictor, side by side: learned int8 (Q8_STEPS, the recipe selected on the fourth H200) and 50% pruning
#      with re-assigned positions (P50_STEPS, the original teaching); then int8 of the pruned file (PQ8_STEPS).
#      Compression KD runs on 90% of the training images (train_kd90.npz); distill holds out the same other 10%.
# r20_sN: ResNet-20 h=180, fit FIT + distill KD20 steps with feature-map distillation (weight 1), seed N.
# Every command stops DEADLINE s after the start at the latest; the files made by then are packed into
# OUT/files.tar (a run returns few files), the per-command times into OUT/steps.txt.
# Usage: run_best.sh OUT DEVICE DEADLINE FIT KD56 KD20 SEED...   (WITH_R56=0: the ResNet-20 seeds alone)
# with .gpudata (G) holding both checkpoints, the two CIFAR-10 training files and train_kd90.npz.
# On the lent H100 (`run_best.sh OUT cuda 548 12000 3000 3000 0 1 2 3`) the crowded pruning missed the deadline;
# NOTES.md gives the two commands that made the pruned files after it.
set -uo pipefail
O=$1; DEV=$2; DEADLINE=$3; FIT=$4; KD56=$5; KD20=$6; shift 6
G=${G:-.gpudata}; NC=${NC:-python3 -m nerncompress}; export OMP_NUM_THREADS=${OMP_NUM_THREADS:-3}
Q8_STEPS=${Q8_STEPS:---qat-iters 2000 --kd-iters 1000}
P50_STEPS=${P50_STEPS:---finetune-iters 4000 --kd-iters 3000}
PQ8_STEPS=${PQ8_STEPS:---qat-iters 500 --kd-iters 300}
TRAIN="--data $G/train2000_lossless.npz --data $G/train5000_jpeg.npz"; KD90="--data $G/train_kd90.npz"
R56=$G/resnet56-4bfd9763.th; R20=$G/resnet20-12fca82f.th; F=$O/files; END=$((SECONDS + DEADLINE))
mkdir -p "$F"

# shellcheck source=_deadline.sh
source "$(dirname "${BASH_SOURCE[0]}")/_deadline.sh"  # run NAME CMD...

r56() {
  run r56_fit $NC fit $R56 --hidden 280 --iters "$FIT" -o "$F/r56_fit.nern" || return
  run r56 $NC distill "$F/r56_fit.nern" --teacher $R56 $TRAIN --iters "$KD56" --eval-every 250 -o "$F/r56.nern" || return
  run r56_q8 $NC quantize "$F/r56.nern" --bits 8 --group-size 32 $Q8_STEPS $KD90 -o "$F/r56_q8.nern" &
  run r56_p50 $NC prune "$F/r56.nern" --sparsity 0.5 $P50_STEPS --kd-lr 3e-5 --teacher $R56 \
    $KD90 -o "$F/r56_p50.nern" &&
    run r56_p50_q8 $NC quantize "$F/r56_p50.nern" --bits 8 --group-size 32 --raw-fp16 $PQ8_STEPS \
      $KD90 -o "$F/r56_p50_q8.nern"
  wait
}

r20() {  # r20 SEED
  run "r20_s$1_fit" $NC fit $R20 --hidden 180 --iters "$FIT" --seed "$1" -o "$F/r20_s$1_fit.nern" || return
  run "r20_s$1" $NC distill "$F/r20_s$1_fit.nern" --teacher $R20 $TRAIN --iters "$KD20" --eval-every 250 \
    --fmd-weight 1 --seed "$1" -o "$F/r20_s$1.nern"
}

if [ "${WITH_R56:-1}" = 1 ]; then r56 & fi
for seed in "$@"; do r20 "$seed" & done
wait
rm -f "$F"/*_fit.nern  # the distilled files are the ones evaluated
tar -cf "$O/files.tar" -C "$O" files && rm -rf "$F"
cat "$O/steps.txt"
