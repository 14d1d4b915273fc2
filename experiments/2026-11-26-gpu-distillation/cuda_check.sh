#!/usr/bin/env bash
# One prepared run on a CUDA machine: fit / distill / eval / expand timings and the fidelity that longer
# distillation reaches. Usage: experiments/2026-11-26-gpu-distillation/cuda_check.sh DATA_DIR OUT_DIR [DEVICE]
# DATA_DIR holds resnet20-12fca82f.th, resnet56-4bfd9763.th and the CIFAR-10 .npz files of ../shared/data.
# FIT_ITERS, FIT_FLAGS, KD_ITERS, KD_FLAGS, MODELS ("resnet56 resnet20"), EXPAND, EVAL, KEEP (1/0) and NC (the
# command) may be overridden from the environment, e.g. for a CPU smoke test. A MODELS entry may name the predictor
# width: "resnet56:400" (default h: 280 for resnet56, 180 for resnet20); each entry's files and log steps are tagged
# with it, e.g. resnet56_h400.
# COMPRESS=1 adds the meta-compression of the distilled predictor: learned int8 (Q_KD_ITERS KD steps, the float
# predictor teaching), 50% pruning (P_FT_ITERS refit + P_KD_ITERS KD steps) and int8 on top of it, each evaluated
# against the original and against the float predictor.
set -uo pipefail
D=$1; O=$2; DEV=${3:-cuda}
FIT_ITERS=${FIT_ITERS:-12000}; KD_ITERS=${KD_ITERS:-3000}; NC=${NC:-python3 -m nerncompress}
MODELS=${MODELS:-resnet56 resnet20}; EXPAND=${EXPAND:-1}; KD_FLAGS=${KD_FLAGS:-}  # extra distill options
FIT_FLAGS=${FIT_FLAGS:-}  # extra fit options
declare -A CHECKPOINT=([resnet56]=resnet56-4bfd9763 [resnet20]=resnet20-12fca82f) HIDDEN=([resnet56]=280 [resnet20]=180)
LOG=$O/log.jsonl; ERR=$O/stderr.log; W=$(mktemp -d)  # only the log and stderr land in OUT_DIR (and KEEP's file)
mkdir -p "$O"
source "$(dirname "$0")/_step.sh"  # step NAME TIMEOUT CMD...
step env 60 $NC env --json; cat "$W/env.json"
TRAIN="--data $D/train2000_lossless.npz --data $D/train5000_jpeg.npz"
for entry in $MODELS; do
  model=${entry%%:*}; m=${CHECKPOINT[$model]}; h=${HIDDEN[$model]}
  [ "$entry" = "$model" ] || h=${entry#*:}
  short=${model}_h$h
  step "${short}_fit" 400 $NC fit "$D/$m.th" --hidden "$h" --iters "$FIT_ITERS" $FIT_FLAGS --device "$DEV" \
    -o "$W/$short.nern" --json
  step "${short}_distill" 600 $NC distill "$W/$short.nern" --teacher "$D/$m.th" $TRAIN --iters "$KD_ITERS" \
    --eval-every 250 $KD_FLAGS --device "$DEV" -o "$W/${short}d.nern" --json
  [ "${KEEP:-0}" = 1 ] && cp "$W/${short}d.nern" "$O/"  # KEEP=1: the distilled predictor lands in OUT_DIR too
  for data in test1000_lossless test10k_jpeg; do
    [ "${EVAL:-1}" = 1 ] || break  # EVAL=0: no test images on this machine (evaluated elsewhere, with KEEP=1)
    step "${short}_eval_$data" 120 $NC eval "$W/${short}d.nern" --data "$D/$data.npz" --compare "$D/$m.th" --device "$DEV" --json
  done
  if [ "${COMPRESS:-0}" = 1 ]; then
    QK=${Q_KD_ITERS:-2000}; PF=${P_FT_ITERS:-4000}; PK=${P_KD_ITERS:-1500}
    evaluate() {  # evaluate VARIANT: against the original and against the float predictor, as soon as it exists
      for data in test10k_jpeg test1000_lossless; do
        step "${short}$1_eval_$data" 120 $NC eval "$W/${short}$1.nern" --data "$D/$data.npz" --compare "$D/$m.th" \
          --device "$DEV" --json
        step "${short}$1_vsfloat_$data" 120 $NC eval "$W/${short}$1.nern" --data "$D/$data.npz" \
          --compare "$W/${short}d.nern" --device "$DEV" --json
      done
    }
    step "${short}_int8" 600 $NC quantize "$W/${short}d.nern" --bits 8 --qat-iters 0 --kd-iters "$QK" $TRAIN \
      --device "$DEV" -o "$W/${short}q.nern" --json
    evaluate q
    step "${short}_prune50" 600 $NC prune "$W/${short}d.nern" --sparsity 0.5 --finetune-iters "$PF" --kd-iters "$PK" \
      --kd-lr 3e-5 $TRAIN --device "$DEV" -o "$W/${short}p.nern" --json
    evaluate p
    step "${short}_prune50_int8" 600 $NC quantize "$W/${short}p.nern" --bits 8 --qat-iters 0 --kd-iters "$QK" $TRAIN \
      --teacher "$W/${short}d.nern" --device "$DEV" -o "$W/${short}pq.nern" --json
    evaluate pq
  fi
  [ "$EXPAND" = 1 ] || continue
  step "${short}_expand_safetensors" 120 $NC expand "$W/${short}d.nern" -o "$W/$short.safetensors" --device "$DEV" --json
  step "${short}_expand_onnx" 180 $NC expand "$W/${short}d.nern" -o "$W/$short.onnx" --device "$DEV" --json
done
rm -rf "$W"
