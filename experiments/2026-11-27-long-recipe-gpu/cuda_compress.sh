#!/usr/bin/env bash
# Prune / quantize recipes on a CUDA machine, from an existing float predictor; every file made lands in OUT_DIR,
# to be evaluated where the benchmark tables are (the GPU only makes the files).
# Usage: experiments/2026-11-27-long-recipe-gpu/cuda_compress.sh FLOAT.nern ORIGINAL.th RECIPES OUT_DIR [DEVICE]
# RECIPES holds one line per file: NAME PARENT COMMAND OPTIONS..., PARENT being "float" or an earlier NAME, e.g.
#   q8 float quantize --bits 8 --group-size 32 --qat-iters 2000 --kd-iters 1000
#   p50 float prune --sparsity 0.5 --finetune-iters 4000 --kd-iters 4500 --kd-lr 3e-5 --teacher @ORIGINAL@
# (@ORIGINAL@ and @FLOAT@ stand for the two files). Every command gets the KD images of KD_DATA (default: the two
# CIFAR-10 training files in DATA_DIR, itself default .devdata), the device, -o and --json. NC: the command.
set -uo pipefail
FLOAT=$1; ORIGINAL=$2; RECIPES=$3; O=$4; DEV=${5:-cuda}
NC=${NC:-python3 -m nerncompress}; DATA_DIR=${DATA_DIR:-.devdata}
KD_DATA=${KD_DATA:-$DATA_DIR/train2000_lossless.npz $DATA_DIR/train5000_jpeg.npz}
LOG=$O/log.jsonl; ERR=$O/stderr.log; W=$(mktemp -d)
mkdir -p "$O"
source "$(dirname "$0")/../2026-11-26-gpu-distillation/_step.sh"  # step NAME TIMEOUT CMD...
data_flags=""
for file in $KD_DATA; do data_flags="$data_flags --data $file"; done
while read -r name parent command options; do
  [ -z "$name" ] || [ "${name:0:1}" = "#" ] && continue
  input="$O/$parent.nern"; [ "$parent" = float ] && input=$FLOAT
  if [ ! -f "$input" ]; then echo "$name: no $input, skipped"; continue; fi
  options=${options//@ORIGINAL@/$ORIGINAL}; options=${options//@FLOAT@/$FLOAT}
  # shellcheck disable=SC2086  # options and data_flags are word lists
  step "$name" "${STEP_LIMIT:-600}" $NC "$command" "$input" $options $data_flags --device "$DEV" -o "$O/$name.nern" --json
done < "$RECIPES"
rm -rf "$W"
