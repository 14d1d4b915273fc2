"""The compression state of a predictor (``Nern.compression``), as both file formats record it.

    version      1
    quantize     {"bits": 2..8 | "fp16", "group_size": int | null, "scale_dtype": "float16",
                  "bias_dtype": "float16" | "float32"}
    prune        {"sparsity", "scope"}: unstructured pruning; every Linear weight is stored sparse
    structured   {"sparsity", "scope", "widths_before"}: record only (the widths are in the predictor config)
    raw_fp16     true: float32 tensors stored raw are saved as float16
    layout       (format 1 only) {weight: {"encoding": "bitmask" | "delta", "nnz", "index_bits"}}
"""

from __future__ import annotations

import json
from typing import Any

from ..quantization import BITS, FLOAT_DTYPES, STATE_VERSION

STATE_KEYS = ("version", "quantize", "prune", "structured", "raw_fp16", "layout")


def check_state(state: Any, error: type[Exception]) -> dict[str, Any]:
    """Validate a compression state's keys and values; ``error`` is the exception type to raise."""
    if not isinstance(state, dict):
        raise error(f"compression state must be a JSON object, got {type(state).__name__}")
    if not state:
        return {}
    unknown = sorted(set(state) - set(STATE_KEYS))
    if unknown:
        raise error(f"unknown compression state key {unknown[0]!r}: written by a newer nerncompress? upgrade it")
    if state.get("version") != STATE_VERSION:
        raise error(f"compression state version {state.get('version')!r} is not supported (this reads {STATE_VERSION})")
    spec = state.get("quantize")
    if spec is not None:
        expected_keys = {"bits", "group_size", "scale_dtype", "bias_dtype"}
        if not isinstance(spec, dict) or set(spec) != expected_keys:
            raise error(f"compression state 'quantize' must hold exactly {sorted(expected_keys)}")
        group_size = spec["group_size"]
        if (
            spec["bits"] not in BITS or isinstance(spec["bits"], bool)
            or not (group_size is None or (type(group_size) is int and group_size >= 1))
            or spec["scale_dtype"] != "float16" or spec["bias_dtype"] not in FLOAT_DTYPES
        ):  # fmt: skip
            raise error(f"compression state 'quantize' is invalid: {json.dumps(spec, sort_keys=True)}")
    for key in ("prune", "structured"):
        if key in state and not isinstance(state[key], dict):
            raise error(f"compression state {key!r} must be a JSON object")
    if "raw_fp16" in state and not isinstance(state["raw_fp16"], bool):
        raise error("compression state 'raw_fp16' must be true or false")
    layout = state.get("layout", {})
    if layout and "prune" not in state:
        raise error("compression state has a sparse 'layout' but no 'prune' entry")
    if not isinstance(layout, dict):
        raise error("compression state 'layout' must be a JSON object")
    for name, entry in layout.items():
        if not _valid_layout_entry(entry):
            raise error(f"compression layout of {name!r} is invalid: {json.dumps(entry, sort_keys=True)}")
    return state


def _valid_layout_entry(entry: Any) -> bool:
    if not isinstance(entry, dict) or type(entry.get("nnz")) is not int or entry["nnz"] < 0:
        return False
    if entry.get("encoding") == "bitmask":
        return set(entry) == {"encoding", "nnz"}
    index_bits = entry.get("index_bits")
    return entry.get("encoding") == "delta" and set(entry) == {"encoding", "nnz", "index_bits"} and (
        type(index_bits) is int and 1 <= index_bits <= 32
    )
