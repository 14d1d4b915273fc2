#!/usr/bin/env bash
# Creates the virtualenv that runs the NNCodec baseline (benchmarks/nncodec/codec.py), separate from the
# project's own environment: nerncompress itself never depends on nncodec.
#
#     bash benchmarks/nncodec/setup.sh            # -> .nncodec-venv/ at the repository root
#     NNCODEC_VENV=/some/dir bash benchmarks/nncodec/setup.sh
#
# nncodec 2.1.3 is a source distribution: pip compiles its C++ extension (DeepCABAC) with the system's C++
# compiler (g++, a few minutes). It pins numpy<2 and asks for torch>=2 and torchvision; torch and torchvision
# are pinned here (constraints file) so that the resolver never swaps them for another release.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${NNCODEC_VENV:-$ROOT/.nncodec-venv}"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="2.14.1"
TORCHVISION_VERSION="0.29.1"
NNCODEC_VERSION="2.1.3"

"$PYTHON" -m venv "$VENV"
CONSTRAINTS="$(mktemp)"
trap 'rm -f "$CONSTRAINTS"' EXIT
printf 'torch==%s\ntorchvision==%s\n' "$TORCH_VERSION" "$TORCHVISION_VERSION" >"$CONSTRAINTS"

"$VENV/bin/python" -m pip install --upgrade pip setuptools wheel
# torch first, on its own, so that nncodec's build and dependencies see it already installed.
"$VENV/bin/python" -m pip install -c "$CONSTRAINTS" "torch==$TORCH_VERSION"
"$VENV/bin/python" -m pip install -c "$CONSTRAINTS" "torchvision==$TORCHVISION_VERSION" pybind11 safetensors
"$VENV/bin/python" -m pip install -c "$CONSTRAINTS" "nncodec==$NNCODEC_VERSION"

"$VENV/bin/python" - <<'PY'
import importlib.metadata as md

import numpy
import torch
from nncodec.nn import decode, encode  # noqa: F401  (the C++ extension loads)

print(f"nncodec {md.version('nncodec')}, torch {torch.__version__}, numpy {numpy.__version__}: ready")
PY
