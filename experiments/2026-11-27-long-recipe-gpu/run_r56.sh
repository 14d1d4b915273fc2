#!/usr/bin/env bash
# The fourth lent H200's command (NOTES.md in this folder; run from the repository root): four processes sharing
# the GPU, each under LIMIT s.
# a: a ResNet-56 h=280 fit (FIT steps) + distill (KD steps), kept for evaluation elsewhere;
# int8, prune50, prune60: cuda_compress.sh's recipes from the CPU table's float predictor, KD on 90% of the training
# images (the other 10%, train_hold10.npz, select among the files).
# Usage: run_r56.sh OUT DEVICE RECIPES_DIR LIMIT FIT KD, with .gpudata holding resnet56-4bfd9763.th, the two
# training files, train_kd90.npz and r56_float_cpu.nern.
O=$1; DEV=$2; R=$3; L=$4
G=.gpudata; export NC=${NC:-python3 -m nerncompress} OMP_NUM_THREADS=4
timeout "$L" env KEEP=1 EVAL=0 EXPAND=0 FIT_ITERS="$5" KD_ITERS="$6" MODELS=resnet56:280 \
  bash experiments/2026-11-26-gpu-distillation/cuda_check.sh $G "$O/a" "$DEV" > "$O/a.out" 2>&1 &
for p in int8 prune50 prune60; do
  timeout "$L" env KD_DATA=$G/train_kd90.npz bash experiments/2026-11-27-long-recipe-gpu/cuda_compress.sh $G/r56_float_cpu.nern \
    $G/resnet56-4bfd9763.th "$R/r56_$p.txt" "$O/$p" "$DEV" > "$O/$p.out" 2>&1 &
done
wait; tail -n 30 "$O"/*.out
