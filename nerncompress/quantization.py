"""Number formats and storage of a compressed predictor.

Quantization is symmetric with one scale per output row of a Linear weight, or per group of ``group_size``
consecutive inputs of a row: q = clamp(round(w / s), -qmax, qmax), qmax = 2**(bits-1) - 1, dequantized
w' = q * s. A scale is s = fp16(max|w| / qmax), never below the smallest normal fp16 number. That choice makes
quantizing a dequantized tensor give back exactly the same integers and scales (q * s is exact in float32
because q has at most 7 significant bits and s 11), so a predictor that holds dequantized weights in memory
re-encodes bit-identically on every save.

Sparse weights keep their non-zero values in row-major order plus either a bitmask (1 bit per weight) or
delta-coded indices (gaps between kept positions at a fixed bit width), whichever is smaller, or stay dense
when that is smaller still.

``encode_predictor`` / ``decode_predictor`` are the only functions that know how predictor parameters are
stored; ``artifact.py`` calls them.

Compression state (``Nern.compression``, JSON in the artifact's metadata; ``{}`` = plain float32):
    version      1
    quantize     {"bits": 2..8 | "fp16", "group_size": int | null, "scale_dtype": "float16",
                  "bias_dtype": "float16" | "float32"}
    prune        {"sparsity", "scope"}: unstructured pruning; every Linear weight is stored sparse
    structured   {"sparsity", "scope", "widths_before"}: record only (the widths are in the predictor config)
    raw_fp16     true: float32 tensors stored raw are saved as float16 (``artifact.py``)
    layout       {weight: {"encoding": "bitmask" | "delta", "nnz", "index_bits"}}: written by the encoder

Tensors under ``predictor/``, for the weight ``w`` of each Linear (biases: float, in ``bias_dtype``):
    w            float32 / float16 values: dense (out, in), or the non-zero ones (nnz,) in row-major order
    w.q          integers: int8 at 8 bits, else uint8 packed at ``bits`` bits (offset by qmax); dense or non-zero
    w.scale      float16 (out, groups): one scale per row, or per ``group_size`` inputs of a row
    w.mask       uint8 (ceil(out * in / 8),) bitmask of the kept weights
    w.index      uint8 gaps between kept positions, packed at ``layout[w]["index_bits"]`` bits
"""

from __future__ import annotations

import json
from typing import Any

import torch
from torch import Tensor, nn

from .bitpack import bits_for, pack_uints, unpack_uints
from .errors import ArtifactError, UsageError
from .predictor import Predictor, PredictorConfig

STATE_VERSION = 1
BITS = (2, 3, 4, 5, 6, 7, 8, "fp16")
FLOAT_DTYPES = {"float32": torch.float32, "float16": torch.float16}
SCALE_DTYPE = torch.float16
MIN_SCALE = 2.0**-14  # smallest normal float16: subnormal scales would break exact re-quantization
_FP16_MAX = 65504.0
_STATE_KEYS = ("version", "quantize", "prune", "structured", "raw_fp16", "layout")
# Bytes a sparse encoding pays beyond its data (one more header entry and its layout record), so that a barely
# sparse tensor stays dense.
_SPARSE_OVERHEAD = 160


def qmax_for(bits: int) -> int:
    """Largest integer magnitude at ``bits`` bits (symmetric range, -2**(bits-1) unused)."""
    return (1 << (bits - 1)) - 1


def _grouped(weight: Tensor, group_size: int | None) -> Tensor:
    """View (out, in) as (out, groups, group) with zero padding of the last group."""
    out_features, in_features = weight.shape
    size = in_features if group_size is None else min(group_size, in_features)
    groups = -(-in_features // size)
    padded = nn.functional.pad(weight, (0, groups * size - in_features))
    return padded.view(out_features, groups, size)


def num_groups(in_features: int, group_size: int | None) -> int:
    """Scales per row: 1 without groups, else ceil(in_features / group_size)."""
    return 1 if group_size is None else -(-in_features // min(group_size, in_features))


def quantize_weight(weight: Tensor, bits: int, group_size: int | None = None) -> tuple[Tensor, Tensor]:
    """Symmetric integer quantization of a 2-D weight.

    Args:
        weight: float (out, in).
        bits: 2..8.
        group_size: inputs sharing one scale; None = one scale per row.

    Returns:
        (q, scales): int64 (out, in) in [-qmax, qmax], and float16 (out, groups).

    Raises:
        UsageError: a weight so large that its scale does not fit in float16.
    """
    qmax = qmax_for(bits)
    grouped = _grouped(weight.detach().to(torch.float32), group_size)
    peak = grouped.abs().amax(dim=2)
    if peak.numel() and float(peak.max()) / qmax > _FP16_MAX:
        raise UsageError(f"predictor weight magnitude {float(peak.max()):.3g} is too large for float16 scales")
    scales = (peak / qmax).to(SCALE_DTYPE).clamp_min(MIN_SCALE)
    q = torch.round(grouped / scales.to(torch.float32).unsqueeze(2)).clamp(-qmax, qmax)
    return q.flatten(1)[:, : weight.shape[1]].to(torch.int64), scales


def dequantize_weight(q: Tensor, scales: Tensor, group_size: int | None = None) -> Tensor:
    """Inverse of ``quantize_weight``: float32 (out, in) = q * scale of its group."""
    in_features = q.shape[1]
    size = in_features if group_size is None else min(group_size, in_features)
    per_weight = scales.to(torch.float32).repeat_interleave(size, dim=1)[:, :in_features]
    return q.to(torch.float32) * per_weight


def round_weight(weight: Tensor, bits: int, group_size: int | None = None) -> Tensor:
    """``dequantize_weight(quantize_weight(weight))``: the float32 values the artifact will hold."""
    q, scales = quantize_weight(weight, bits, group_size)
    return dequantize_weight(q, scales, group_size).to(weight.device)


def gptq_weight(
    weight: Tensor, gram: Tensor, bits: int, group_size: int | None = None, *, mask: Tensor | None = None,
    damp: float = 0.01,
) -> Tensor:
    """Error-compensated rounding of a Linear weight (GPTQ, Frantar et al., ICLR 2023).

    Columns are rounded one at a time, and each rounding error is spread over the columns not yet rounded, in
    proportion to how the layer's inputs correlate (the inverse of ``gram``), so that the layer's *outputs* on
    those inputs move as little as possible. Scales follow the max-abs rule of ``quantize_weight``, taken when a
    row's (or group's) first column is reached.

    Args:
        weight: float (out, in).
        gram: float (in, in) = X^T X of the layer's inputs X (N, in).
        bits: 2..8.
        group_size: as in ``quantize_weight``.
        mask: bool (out, in) of the weights that may be non-zero (pruned ones round to 0); None = all.
        damp: added to the diagonal, as a share of its mean, to keep the inverse stable.

    Returns:
        float32 (out, in) on the quantization grid (re-quantize with ``round_weight`` to settle the scales).
    """
    work = weight.detach().to(torch.float32).clone()
    hessian = gram.detach().to(torch.float64).clone()
    out_features, in_features = work.shape
    dead = torch.diagonal(hessian) == 0
    hessian[dead, dead] = 1.0
    work[:, dead] = 0.0
    hessian += damp * torch.diagonal(hessian).mean() * torch.eye(in_features, dtype=torch.float64)
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(hessian))
    upper = torch.linalg.cholesky(inverse, upper=True).to(torch.float32)
    qmax = qmax_for(bits)
    size = in_features if group_size is None else min(group_size, in_features)
    rounded = torch.zeros_like(work)
    scale = torch.ones(out_features)
    for column in range(in_features):
        if column % size == 0:
            block = work[:, column : column + size]
            peak = (block if mask is None else block * mask[:, column : column + size]).abs().amax(dim=1)
            scale = (peak / qmax).to(SCALE_DTYPE).clamp_min(MIN_SCALE).to(torch.float32)
        value = work[:, column]
        q = torch.round(value / scale).clamp(-qmax, qmax) * scale
        if mask is not None:
            q = q * mask[:, column]
        rounded[:, column] = q
        error = (value - q) / upper[column, column]
        work[:, column + 1 :] -= error[:, None] * upper[column, column + 1 :][None, :]
    return rounded


def round_fp16(tensor: Tensor) -> Tensor:
    """Float32 values exactly representable in float16 (the stored values of fp16 tensors)."""
    return tensor.to(torch.float16).to(tensor.dtype)


class FakeQuantize(nn.Module):
    """Parametrization that rounds a weight to its quantized values in the forward pass and lets gradients pass
    through unchanged (straight-through estimator); the scales follow the current weight."""

    def __init__(self, bits: int, group_size: int | None) -> None:
        super().__init__()
        self.bits = bits
        self.group_size = group_size

    def forward(self, weight: Tensor) -> Tensor:
        rounded = round_weight(weight.detach(), self.bits, self.group_size)
        return weight + (rounded - weight).detach()


class FakeFP16(nn.Module):
    """Parametrization rounding to float16 values, with a straight-through gradient."""

    def forward(self, tensor: Tensor) -> Tensor:
        return tensor + (round_fp16(tensor.detach()) - tensor).detach()


class FixedMask(nn.Module):
    """Parametrization that keeps pruned weights at zero (their gradient is zero too)."""

    def __init__(self, mask: Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.to(torch.float32))

    def forward(self, weight: Tensor) -> Tensor:
        return weight * self.mask


# ----------------------------------------------------------------------------------------- integer storage


def pack_ints(q: Tensor, bits: int) -> Tensor:
    """Store quantized integers: int8 as they are at 8 bits, else offset by qmax and bit-packed (uint8, 1-D)."""
    if bits == 8:
        return q.to(torch.int8)
    return pack_uints(q.reshape(-1) + qmax_for(bits), bits)


def unpack_ints(stored: Tensor, bits: int, count: int) -> Tensor:
    """Inverse of ``pack_ints``: int64 (count,).

    Raises:
        ValueError: wrong dtype or length, or a value outside [-qmax, qmax].
    """
    qmax = qmax_for(bits)
    if bits == 8:
        if stored.dtype != torch.int8 or stored.numel() != count:
            raise ValueError(f"expected int8 with {count} values, got {stored.dtype} with {stored.numel()}")
        q = stored.reshape(-1).to(torch.int64)
    else:
        if stored.dtype != torch.uint8 or stored.dim() != 1:
            raise ValueError(f"expected packed uint8 (1-D), got {stored.dtype} {tuple(stored.shape)}")
        q = unpack_uints(stored, bits, count) - qmax
    if q.numel() and int(q.abs().max()) > qmax:
        raise ValueError(f"holds a value outside [-{qmax}, {qmax}]")
    return q


def packed_bytes(count: int, bits: int) -> int:
    return (count * bits + 7) // 8


# -------------------------------------------------------------------------------------------- sparse masks


def index_gaps(mask: Tensor) -> tuple[Tensor, int]:
    """Delta coding of a flat boolean mask: gaps (kept position - previous kept position - 1) and their width."""
    positions = torch.nonzero(mask.reshape(-1)).reshape(-1)
    if positions.numel() == 0:
        return positions, 1
    gaps = torch.diff(positions, prepend=torch.tensor([-1])) - 1
    return gaps, bits_for(int(gaps.max()) + 1)


def mask_from_gaps(packed: Tensor, index_bits: int, nnz: int, numel: int) -> Tensor:
    """Inverse of ``index_gaps`` after packing: flat boolean (numel,).

    Raises:
        ValueError: wrong length, or positions past the end of the tensor.
    """
    gaps = unpack_uints(packed, index_bits, nnz)
    positions = torch.cumsum(gaps + 1, dim=0) - 1
    if positions.numel() and int(positions[-1]) >= numel:
        raise ValueError(f"indexes position {int(positions[-1])} of a tensor of {numel} values")
    mask = torch.zeros(numel, dtype=torch.bool)
    mask[positions] = True
    return mask


def pack_mask(mask: Tensor) -> Tensor:
    """A flat boolean mask as a bitmask: uint8 (ceil(numel / 8),)."""
    return pack_uints(mask.reshape(-1).to(torch.int64), 1)


def unpack_mask(packed: Tensor, numel: int) -> Tensor:
    """Inverse of ``pack_mask``. Raises ValueError for a wrong length."""
    return unpack_uints(packed, 1, numel).to(torch.bool)


# ------------------------------------------------------------------------------------------ predictor storage


def predictor_bytes(predictor: Predictor, state: dict[str, Any]) -> int:
    """Bytes of tensor data the artifact spends on the predictor in this state (header not counted)."""
    tensors, _ = encode_predictor(predictor, state)
    return sum(t.numel() * t.element_size() for t in tensors.values())


def encode_predictor(predictor: Predictor, state: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Tensors that store the predictor in the given compression state, and the metadata describing them.

    Args:
        predictor: the (float) predictor; quantized weights are re-derived from its values, exactly when they
            are already the dequantized values ``compress`` leaves there.
        state: the compression state (``{}`` = float32). Its ``layout`` is ignored and recomputed.

    Returns:
        (tensors keyed without the ``predictor/`` prefix, the state with a fresh ``layout``).

    Raises:
        UsageError: an invalid state.
    """
    state = _check_state(state, UsageError)
    spec = state.get("quantize")
    sparse = "prune" in state
    bias_dtype = FLOAT_DTYPES[spec["bias_dtype"]] if spec is not None else torch.float32
    tensors: dict[str, Tensor] = {}
    layout: dict[str, dict[str, Any]] = {}
    for name, parameter in predictor.state_dict().items():
        value = parameter.detach().cpu().to(torch.float32)
        if value.dim() != 2:
            tensors[name] = value.to(bias_dtype)
            continue
        if spec is None or spec["bits"] == "fp16":
            values = value.to(torch.float16 if spec is not None else torch.float32)
            if not torch.isfinite(values).all():
                raise UsageError(f"predictor weight {name!r} does not fit in {values.dtype}")
            key, value_bits = name, values.element_size() * 8
        else:
            values, scales = quantize_weight(value, spec["bits"], spec["group_size"])
            tensors[f"{name}.scale"] = scales
            key, value_bits = f"{name}.q", spec["bits"]
        kept = values != 0
        encoding, gaps, index_bits = _choose_encoding(kept, value_bits) if sparse else ("dense", None, 0)
        if encoding == "dense":
            tensors[key] = _stored_values(values, spec)
            continue
        tensors[key] = _stored_values(values.reshape(-1)[kept.reshape(-1)], spec)
        layout[name] = {"encoding": encoding, "nnz": int(kept.sum())}
        if encoding == "bitmask":
            tensors[f"{name}.mask"] = pack_mask(kept)
        else:
            tensors[f"{name}.index"] = pack_uints(gaps, index_bits)
            layout[name]["index_bits"] = index_bits
    metadata = {key: value for key, value in state.items() if key != "layout"}
    if layout:
        metadata["layout"] = layout
    return tensors, metadata


def _stored_values(values: Tensor, spec: dict[str, Any] | None) -> Tensor:
    """Float values as they are; quantized integers as ``pack_ints`` stores them."""
    return values if values.is_floating_point() else pack_ints(values, spec["bits"])


def _choose_encoding(kept: Tensor, value_bits: int) -> tuple[str, Tensor | None, int]:
    """The smallest of dense, bitmask and delta-coded indices for a weight with these kept positions."""
    numel, nnz = kept.numel(), int(kept.sum())
    gaps, index_bits = index_gaps(kept)
    values = packed_bytes(nnz, value_bits) + _SPARSE_OVERHEAD
    sizes = {
        "dense": packed_bytes(numel, value_bits),
        "bitmask": packed_bytes(numel, 1) + values,
        "delta": packed_bytes(nnz, index_bits) + values,
    }
    best = min(sizes, key=lambda name: (sizes[name], name != "dense"))
    return best, gaps, index_bits


def decode_predictor(tensors: dict[str, Tensor], config: PredictorConfig, state: dict[str, Any]) -> Predictor:
    """Rebuild the float predictor from its stored tensors, dequantizing and un-sparsifying as the state says.

    Args:
        tensors: the artifact's ``predictor/*`` tensors, keyed without the prefix.
        config: the predictor's shape.
        state: the compression state from the artifact's metadata.

    Returns:
        The predictor in eval mode, holding float32 parameters.

    Raises:
        ArtifactError: an unknown or malformed state, a missing, extra or mis-shaped tensor, a wrong dtype, an
            integer out of range, non-positive or non-finite scales, NaN/Inf values, or an inconsistent layout.
    """
    state = _check_state(state, ArtifactError)
    predictor = Predictor(config)
    expected = predictor.state_dict()
    layout = state.get("layout", {})
    unknown = sorted(set(layout) - {name for name, value in expected.items() if value.dim() == 2})
    if unknown:
        raise ArtifactError(f"compression layout names {unknown[0]!r}, which is not a predictor weight")
    used: set[str] = set()
    values = {}
    for name, reference in expected.items():
        if reference.dim() == 2:
            values[name] = _decode_weight(tensors, name, tuple(reference.shape), state, used)
        else:
            spec = state.get("quantize")
            dtype = FLOAT_DTYPES[spec["bias_dtype"]] if spec is not None else torch.float32
            values[name] = _stored(tensors, name, dtype, tuple(reference.shape), used).to(torch.float32)
    extra = sorted(set(tensors) - used)
    if extra:
        raise ArtifactError(f"unexpected tensor 'predictor/{extra[0]}'")
    predictor.load_state_dict(values)
    return predictor.eval()


def _stored(
    tensors: dict[str, Tensor], name: str, dtype: torch.dtype, shape: tuple[int, ...], used: set[str]
) -> Tensor:
    key = f"predictor/{name}"
    if name not in tensors:
        raise ArtifactError(f"tensor {key!r} is missing")
    value = tensors[name]
    if value.dtype != dtype or tuple(value.shape) != shape:
        raise ArtifactError(f"tensor {key!r} is {value.dtype} {tuple(value.shape)}, expected {dtype} {shape}")
    if value.is_floating_point() and not torch.isfinite(value).all():
        raise ArtifactError(f"tensor {key!r} holds NaN or Inf")
    used.add(name)
    return value


def _decode_weight(
    tensors: dict[str, Tensor], name: str, shape: tuple[int, int], state: dict[str, Any], used: set[str]
) -> Tensor:
    numel = shape[0] * shape[1]
    entry = state.get("layout", {}).get(name)
    kept = None
    if entry is not None:
        try:
            if entry["encoding"] == "bitmask":
                packed = _stored(tensors, f"{name}.mask", torch.uint8, (packed_bytes(numel, 1),), used)
                kept = unpack_mask(packed, numel)
            else:
                size = (packed_bytes(entry["nnz"], entry["index_bits"]),)
                packed = _stored(tensors, f"{name}.index", torch.uint8, size, used)
                kept = mask_from_gaps(packed, entry["index_bits"], entry["nnz"], numel)
        except ValueError as exc:
            raise ArtifactError(f"sparse index of 'predictor/{name}' is corrupt: {exc}") from exc
        if int(kept.sum()) != entry["nnz"]:
            raise ArtifactError(
                f"sparse index of 'predictor/{name}' keeps {int(kept.sum())} weights, its layout says {entry['nnz']}"
            )
    count = numel if kept is None else int(kept.sum())
    value_shape = shape if kept is None else (count,)
    spec = state.get("quantize")
    if spec is None or spec["bits"] == "fp16":
        dtype = torch.float32 if spec is None else torch.float16
        values = _stored(tensors, name, dtype, value_shape, used).to(torch.float32).reshape(-1)
        scales = None
    else:
        bits, group_size = spec["bits"], spec["group_size"]
        scales = _stored(tensors, f"{name}.scale", SCALE_DTYPE, (shape[0], num_groups(shape[1], group_size)), used)
        if not bool((scales.to(torch.float32) >= MIN_SCALE).all()):
            raise ArtifactError(f"tensor 'predictor/{name}.scale' holds scales below {MIN_SCALE} or negative")
        packed_shape = value_shape if bits == 8 else (packed_bytes(count, bits),)
        stored = _stored(tensors, f"{name}.q", torch.int8 if bits == 8 else torch.uint8, packed_shape, used)
        try:
            values = unpack_ints(stored, bits, count)
        except ValueError as exc:
            raise ArtifactError(f"tensor 'predictor/{name}.q' {exc}") from exc
    dense = values if kept is None else torch.zeros(numel, dtype=values.dtype).masked_scatter_(kept, values)
    dense = dense.view(shape)
    return dense if scales is None else dequantize_weight(dense, scales, spec["group_size"])


def _check_state(state: Any, error: type[Exception]) -> dict[str, Any]:
    """Validate a compression state's keys and values; ``error`` is the exception type to raise."""
    if not isinstance(state, dict):
        raise error(f"compression state must be a JSON object, got {type(state).__name__}")
    if not state:
        return {}
    unknown = sorted(set(state) - set(_STATE_KEYS))
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
