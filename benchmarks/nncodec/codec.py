"""Encode one checkpoint with NNCodec (MPEG NNC, ISO/IEC 15938-17), write the bitstream, decode it back from the
file, and write the decoded weights as a float32 safetensors state_dict.

Runs inside the NNCodec virtualenv (benchmarks/nncodec/setup.sh), never in the project's: it imports no
nerncompress. benchmarks/nncodec_sweep.py calls it once per point and evaluates the decoded file.

    .nncodec-venv/bin/python benchmarks/nncodec/codec.py CHECKPOINT --qp -28 --opt-qp \\
        --bitstream out.nnc --decoded out.safetensors

Prints one JSON line on stdout (the last line): bytes of the bitstream file, encode and decode wall seconds, the
thread count, and the versions used. NNCodec's own chatter goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file

SKIPPED_SUFFIXES = ("num_batches_tracked",)
STRIP_PREFIXES = ("module.",)


def load_state_dict(path: Path) -> dict[str, np.ndarray]:
    """The checkpoint's tensors as float32 numpy arrays, keyed as the model expects them.

    Takes ``state_dict`` when the file nests it, strips a ``module.`` prefix (DataParallel) and drops
    ``num_batches_tracked`` counters (integers that are not weights).
    """
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    params: dict[str, np.ndarray] = {}
    for key, value in loaded.items():
        if not isinstance(value, torch.Tensor) or key.endswith(SKIPPED_SUFFIXES):
            continue
        for prefix in STRIP_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        params[key] = value.detach().to(torch.float32).numpy().copy()
    return params


def encode(params: dict[str, np.ndarray], *, qp: int, use_dq: bool, opt_qp: bool, nonweight_qp: int) -> bytes:
    """NNCodec's data-free encoder. Tensors of two or more dimensions (conv and linear weights) are quantized at
    ``qp``; one-dimensional ones (BatchNorm parameters and statistics, biases) at ``nonweight_qp``."""
    from nncodec.nn import encode as nnc_encode

    args = {"qp": qp, "use_dq": use_dq, "opt_qp": opt_qp, "nonweight_qp": nonweight_qp, "verbose": False}
    with tempfile.TemporaryDirectory() as scratch:  # nncodec writes its own copy of the bitstream there
        with contextlib.redirect_stdout(sys.stderr):
            bitstream = nnc_encode(params, args={**args, "results": scratch})
    return bytes(bitstream)


def decode(bitstream: bytes) -> dict[str, np.ndarray]:
    """NNCodec's decoder: parameter name -> array."""
    from nncodec.nn import decode as nnc_decode

    with contextlib.redirect_stdout(sys.stderr):
        return nnc_decode(bytearray(bitstream))


def restore(decoded: dict[str, np.ndarray], original: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The decoded tensors as float32 in the original's key order and shapes; fails on missing or extra keys."""
    if set(decoded) != set(original):
        missing, extra = sorted(set(original) - set(decoded)), sorted(set(decoded) - set(original))
        raise ValueError(f"decoded keys differ from the checkpoint's: missing {missing}, extra {extra}")
    return {k: np.ascontiguousarray(np.asarray(decoded[k], dtype=np.float32).reshape(v.shape)) for k, v in original.items()}


def versions() -> dict[str, str]:
    """Versions of the libraries that made the bitstream."""
    return {
        "nncodec": importlib.metadata.version("nncodec"),
        "torch": torch.__version__,
        "numpy": np.__version__,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--qp", type=int, required=True, help="quantization parameter of the weights (higher = coarser)")
    parser.add_argument("--nonweight-qp", type=int, default=-75, help="qp of 1-D tensors (BatchNorm, biases)")
    parser.add_argument("--use-dq", action=argparse.BooleanOptionalAction, default=True,
                        help="dependent (trellis-coded) quantization")  # fmt: skip
    parser.add_argument("--opt-qp", action="store_true", help="let the encoder adapt qp per tensor")
    parser.add_argument("--bitstream", type=Path, required=True, help="where the NNC bitstream is written")
    parser.add_argument("--decoded", type=Path, required=True, help="where the decoded state_dict is written")
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    params = load_state_dict(args.checkpoint)

    started = time.perf_counter()
    bitstream = encode(params, qp=args.qp, use_dq=args.use_dq, opt_qp=args.opt_qp, nonweight_qp=args.nonweight_qp)
    encode_seconds = time.perf_counter() - started
    args.bitstream.parent.mkdir(parents=True, exist_ok=True)
    args.bitstream.write_bytes(bitstream)

    started = time.perf_counter()
    decoded = decode(args.bitstream.read_bytes())
    decode_seconds = time.perf_counter() - started
    restored = restore(decoded, params)
    args.decoded.parent.mkdir(parents=True, exist_ok=True)
    save_file(restored, str(args.decoded))

    report = {
        "bytes": args.bitstream.stat().st_size,
        "encode_seconds": round(encode_seconds, 3),
        "decode_seconds": round(decode_seconds, 3),
        "threads": torch.get_num_threads(),
        "qp": args.qp,
        "nonweight_qp": args.nonweight_qp,
        "use_dq": args.use_dq,
        "opt_qp": args.opt_qp,
        "tensors": len(restored),
        "max_abs_error": float(max(np.abs(restored[k] - params[k]).max() for k in params)),
        "versions": versions(),
    }
    print(json.dumps(report), flush=True)
    return report


if __name__ == "__main__":
    main()
