"""Format 1 of the ``.nern`` file (read only; ``save_v1`` remains for tests): fixed-width tensors.

Tensors:
    predictor/<param>     the predictor's parameters (float32, or as ``quantization.py`` encodes them)
    positions/<layer>     crossfilter: chain positions of the layer's N kernels, packed at ceil(log2 N) bits each
    positions/<layer>/filters, positions/<layer>/channels
                          infilter: rank of each filter (ceil(log2 C_out) bits) and of each channel inside its
                          filter (ceil(log2 C_in) bits): half the bytes of a general permutation
    scales/<layer>        per-filter scales, float32 (C_out,), only for layers fitted with filter scales
    raw/<key>             every tensor of the original state_dict that the predictor does not represent (float32
                          ones as float16 when the compression state has raw_fp16, read back as float32)

``__metadata__`` (str -> str, JSON where structured): format, schema_version, tool_version, arch, embedding,
predictor, layers, permute, key_order, raw_convs, source, history, compression.
Nothing time-dependent is stored, so the same inputs and seed give the same bytes.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from torch import Tensor

from .._version import __version__
from ..bitpack import bits_for, pack_uints, unpack_uints
from ..embeddings import EmbeddingConfig
from ..errors import ArtifactError, UsageError
from ..layers import LayerEntry
from ..models.registry import ArchSpec
from ..nern import Nern
from ..predictor import Predictor, PredictorConfig
from ..quantization import (
    BITS, FLOAT_DTYPES, MIN_SCALE, SCALE_DTYPE, STATE_VERSION, dequantize_weight, num_groups, qmax_for, quantize_weight,
)
from ..safetensors_io import save_safetensors
from .state import check_state as _check_state

FORMAT = "nern"
SCHEMA_VERSION = 1
_REQUIRED = (
    "format", "schema_version", "tool_version", "arch", "embedding", "predictor", "layers",
    "permute", "key_order", "raw_convs", "source", "history", "compression",
)  # fmt: skip
# The JSON type of each structured metadata key.
_JSON_TYPES = {
    "arch": dict, "embedding": dict, "predictor": dict, "layers": list, "key_order": list, "raw_convs": dict,
    "source": dict, "history": list, "compression": dict,
}  # fmt: skip


def to_tensors(nern: Nern) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The tensors and metadata of the file, without writing it."""
    tensors: dict[str, Tensor] = {}
    predictor_tensors, compression_meta = encode_predictor(nern.predictor, nern.compression)
    tensors.update({f"predictor/{k}": v for k, v in predictor_tensors.items()})
    layer_table = []
    for entry in nern.layers:
        tensors.update(_encode_positions(nern.permute, entry, nern.positions[entry.name]))
        scaled = entry.name in nern.scales
        if scaled:
            tensors[f"scales/{entry.name}"] = nern.scales[entry.name].to(torch.float32)
        layer_table.append(
            {**entry.to_dict(), "kernel_size": entry.kernel_size, "position_bits": round(position_bits(nern.permute, entry), 3),
             "scaled": scaled}
        )
    raw_fp16 = bool(nern.compression.get("raw_fp16"))  # set by `quantize --raw-fp16` (see compression.py)
    for key, value in nern.raw.items():
        tensors[f"raw/{key}"] = value.to(torch.float16) if raw_fp16 and value.dtype == torch.float32 else value
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    metadata = {
        "format": FORMAT,
        "schema_version": str(SCHEMA_VERSION),
        "tool_version": __version__,
        "arch": json.dumps(nern.arch.to_dict(), sort_keys=True),
        "embedding": json.dumps(nern.embedding.to_dict(), sort_keys=True),
        "predictor": json.dumps(nern.predictor.config.to_dict(), sort_keys=True),
        "layers": json.dumps(layer_table),
        "permute": nern.permute,
        "key_order": json.dumps(nern.key_order),
        "raw_convs": json.dumps(nern.raw_convs, sort_keys=True),
        "source": json.dumps(nern.source, sort_keys=True),
        "history": json.dumps(nern.history, sort_keys=True),
        "compression": json.dumps(compression_meta, sort_keys=True),
    }
    return tensors, metadata


def save_v1(nern: Nern, path: str | os.PathLike) -> None:
    """Write ``nern`` in format 1 (fixed-width tensors). Kept so that tests can make the files older versions
    wrote; ``save_artifact`` writes format 2."""
    tensors, metadata = to_tensors(nern)
    specs = [(key, value.dtype, tuple(value.shape)) for key, value in tensors.items()]
    save_safetensors(tensors.items(), path, specs=specs, metadata=metadata)


def parse_metadata(raw: dict[str, str], path: str | os.PathLike) -> dict[str, Any]:
    """The format-1 ``__metadata__``, JSON values decoded and checked for their types."""
    if raw.get("format") != FORMAT:
        raise ArtifactError(f"{path}: not a .nern artifact (metadata 'format' is {raw.get('format')!r})")
    version = raw.get("schema_version")
    if version != str(SCHEMA_VERSION):
        raise ArtifactError(
            f"{path}: schema version {version!r} is not supported (this nerncompress reads {SCHEMA_VERSION}): "
            "upgrade nerncompress or refit"
        )
    missing = [key for key in _REQUIRED if key not in raw]
    if missing:
        raise ArtifactError(f"{path}: metadata key {missing[0]!r} is missing")
    meta: dict[str, Any] = {}
    for key, value in raw.items():
        if key in ("format", "schema_version", "tool_version", "permute"):
            meta[key] = value
            continue
        try:
            meta[key] = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ArtifactError(f"{path}: metadata key {key!r} is not valid JSON") from exc
        expected = _JSON_TYPES.get(key)
        if expected is not None and not isinstance(meta[key], expected):
            kind = "a JSON object" if expected is dict else "a JSON list"
            raise ArtifactError(f"{path}: metadata key {key!r} must be {kind}, got {type(meta[key]).__name__}")
    return meta


def build(tensors: dict[str, Tensor], meta: dict[str, Any], *, trust_code: bool) -> Nern:
    """The Nern of a format-1 file's tensors and parsed metadata."""
    arch = ArchSpec.from_dict(meta["arch"], trusted=trust_code)
    embedding = EmbeddingConfig(**meta["embedding"])
    predictor_config = PredictorConfig.from_dict(meta["predictor"])
    if predictor_config.input_dim != embedding.dim:
        raise ArtifactError(f"predictor input width {predictor_config.input_dim} != embedding width {embedding.dim}")
    predictor_tensors = {k[len("predictor/"):]: v for k, v in tensors.items() if k.startswith("predictor/")}
    predictor = decode_predictor(predictor_tensors, predictor_config, meta["compression"])
    permute = meta["permute"]
    layers, positions, scales = [], {}, {}
    for index, row in enumerate(meta["layers"]):
        entry = LayerEntry.from_dict(row)
        if entry.layer_index != index:
            raise ArtifactError(f"layer table row {index} ({entry.name}) has layer_index {entry.layer_index}")
        if entry.kernel_size not in predictor_config.kernel_sizes:
            raise ArtifactError(f"layer {entry.name!r} has {entry.kernel_size}x{entry.kernel_size} kernels but no head")
        if row.get("scaled", False):
            scale = _tensor(tensors, f"scales/{entry.name}", (entry.c_out,), torch.float32)
            if not torch.isfinite(scale).all():
                raise ArtifactError(f"tensor 'scales/{entry.name}' holds NaN or Inf")
            scales[entry.name] = scale
        layers.append(entry)
        positions[entry.name] = _decode_positions(permute, entry, tensors)
    raw = {k[len("raw/"):]: v for k, v in tensors.items() if k.startswith("raw/")}
    if meta["compression"].get("raw_fp16"):
        raw = {k: v.to(torch.float32) if v.dtype == torch.float16 else v for k, v in raw.items()}
    key_order = [str(k) for k in meta["key_order"]]
    expected = set(raw) | {entry.name for entry in layers}
    if set(key_order) != expected or len(key_order) != len(expected):
        extra = sorted(expected - set(key_order)) + sorted(set(key_order) - expected)
        raise ArtifactError(f"key_order does not match the stored tensors (first difference: {extra[:1]})")
    finite_checked = [(f"predictor/{k}", v) for k, v in predictor.state_dict().items()]
    for key, value in finite_checked + [(f"raw/{k}", v) for k, v in raw.items()]:
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ArtifactError(f"tensor {key!r} holds NaN or Inf values: the file is corrupt, refit or re-download it")
    known_prefixes = ("predictor/", "positions/", "scales/", "raw/")
    stray = [k for k in tensors if not k.startswith(known_prefixes)]
    stray += [k for k in tensors if k.startswith("scales/") and k[len("scales/"):] not in scales]
    if stray:
        raise ArtifactError(f"unexpected tensor {stray[0]!r} in artifact")
    return Nern(
        arch=arch,
        layers=layers,
        embedding=embedding,
        predictor=predictor,
        positions=positions,
        scales=scales,
        raw=raw,
        key_order=key_order,
        permute=permute,
        source=meta["source"],
        raw_convs=meta["raw_convs"],
        history=meta["history"],
        compression=meta["compression"],
    )


def position_bits(permute: str, entry: LayerEntry) -> float:
    """Stored bits per kernel of a layer's positions (0 without permutation)."""
    if permute == "none":
        return 0.0
    if permute == "infilter":
        return bits_for(entry.c_in) + bits_for(entry.c_out) / entry.c_in
    return float(bits_for(entry.num_kernels))


def _encode_positions(permute: str, entry: LayerEntry, position: Tensor) -> dict[str, Tensor]:
    key = f"positions/{entry.name}"
    if permute == "none":
        return {}
    if permute == "infilter":
        grid = position.view(entry.c_out, entry.c_in)
        filters = torch.div(grid[:, 0], entry.c_in, rounding_mode="floor")
        channels = torch.remainder(grid, entry.c_in)
        return {
            f"{key}/filters": pack_uints(filters, bits_for(entry.c_out)),
            f"{key}/channels": pack_uints(channels.reshape(-1), bits_for(entry.c_in)),
        }
    return {key: pack_uints(position, bits_for(entry.num_kernels))}


def _is_permutation(values: Tensor, count: int) -> bool:
    """Whether every row of ``values`` (..., count) holds each of 0..count-1 exactly once."""
    return bool(torch.equal(values.sort(dim=-1).values, torch.arange(count).expand_as(values)))


def _decode_positions(permute: str, entry: LayerEntry, tensors: dict[str, Tensor]) -> Tensor:
    key = f"positions/{entry.name}"
    if permute == "none":
        return torch.arange(entry.num_kernels, dtype=torch.int64)
    if permute == "infilter":
        filters = unpack_uints(_tensor(tensors, f"{key}/filters", None, torch.uint8), bits_for(entry.c_out), entry.c_out)
        channels = unpack_uints(
            _tensor(tensors, f"{key}/channels", None, torch.uint8), bits_for(entry.c_in), entry.num_kernels
        ).view(entry.c_out, entry.c_in)
        if not _is_permutation(filters, entry.c_out) or not _is_permutation(channels, entry.c_in):
            raise ArtifactError(f"tensors '{key}/*' are not permutations of the layer's filters and channels")
        return (filters[:, None] * entry.c_in + channels).reshape(-1)
    if permute != "crossfilter":
        raise ArtifactError(f"unknown permutation {permute!r} in metadata")
    position = unpack_uints(_tensor(tensors, key, None, torch.uint8), bits_for(entry.num_kernels), entry.num_kernels)
    if not _is_permutation(position, entry.num_kernels):
        raise ArtifactError(f"tensor {key!r} is not a permutation of its kernels")
    return position


def _tensor(tensors: dict[str, Tensor], key: str, shape: tuple[int, ...] | None, dtype: torch.dtype) -> Tensor:
    if key not in tensors:
        raise ArtifactError(f"tensor {key!r} is missing")
    value = tensors[key]
    if value.dtype != dtype:
        raise ArtifactError(f"tensor {key!r} has dtype {value.dtype}, expected {dtype}")
    if shape is not None and tuple(value.shape) != shape:
        raise ArtifactError(f"tensor {key!r} has shape {tuple(value.shape)}, expected {shape}")
    return value


# Compression state (``Nern.compression``, JSON in the metadata; ``{}`` = plain float32):
#     version      1
#     quantize     {"bits": 2..8 | "fp16", "group_size": int | null, "scale_dtype": "float16",
#                   "bias_dtype": "float16" | "float32"}
#     prune        {"sparsity", "scope"}: unstructured pruning; every Linear weight is stored sparse
#     structured   {"sparsity", "scope", "widths_before"}: record only (the widths are in the predictor config)
#     raw_fp16     true: float32 tensors stored raw are saved as float16
#     layout       {weight: {"encoding": "bitmask" | "delta", "nnz", "index_bits"}}: written by the encoder
#
# Tensors under ``predictor/``, for the weight ``w`` of each Linear (biases: float, in ``bias_dtype``):
#     w            float32 / float16 values: dense (out, in), or the non-zero ones (nnz,) in row-major order
#     w.q          integers: int8 at 8 bits, else uint8 packed at ``bits`` bits (offset by qmax); dense or non-zero
#     w.scale      float16 (out, groups): one scale per row, or per ``group_size`` inputs of a row
#     w.mask       uint8 (ceil(out * in / 8),) bitmask of the kept weights
#     w.index      uint8 gaps between kept positions, packed at ``layout[w]["index_bits"]`` bits
# Sparse weights keep their non-zero values in row-major order plus either a bitmask or delta-coded indices,
# whichever is smaller, or stay dense when that is smaller still.
# Bytes a sparse encoding pays beyond its data (one more header entry and its layout record), so that a barely
# sparse tensor stays dense.
_SPARSE_OVERHEAD = 160


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
