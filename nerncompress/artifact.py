"""The ``.nern`` file: one safetensors container, never pickle. Only this module knows its layout.

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
from safetensors import safe_open
from torch import Tensor

from . import __version__
from .bitpack import bits_for, pack_uints, unpack_uints
from .embeddings import EmbeddingConfig
from .errors import ArtifactError
from .layers import LayerEntry
from .models.registry import ArchSpec
from .nern import Nern
from .predictor import PredictorConfig
from .quantization import decode_predictor, encode_predictor
from .safetensors_io import read_safetensors_header, save_safetensors

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


def save_artifact(nern: Nern, path: str | os.PathLike) -> None:
    """Write ``nern`` to ``path`` atomically (temporary file, then rename).

    Example:
        >>> save_artifact(nern, "resnet20.nern")
    """
    tensors, metadata = to_tensors(nern)
    specs = [(key, value.dtype, tuple(value.shape)) for key, value in tensors.items()]
    save_safetensors(tensors.items(), path, specs=specs, metadata=metadata)


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``__metadata__`` of a ``.nern`` file (JSON values decoded), after checking format and version.

    Raises:
        ArtifactError: missing, unreadable or not a .nern of a supported schema.
    """
    if not os.path.isfile(path):
        raise ArtifactError(f"{path}: no such file" if not os.path.exists(path) else f"{path}: is not a file")
    _, header = read_safetensors_header(path)
    metadata = header.get("__metadata__")
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ArtifactError(f"{path}: not a .nern artifact (no string metadata in its header)")
    return _parse_metadata(metadata, path)


def load_artifact(path: str | os.PathLike) -> Nern:
    """Load and validate a ``.nern`` file.

    Raises:
        ArtifactError: naming the key at fault, for any missing, corrupt or inconsistent content.

    Example:
        >>> nern = load_artifact("resnet20.nern")
    """
    tensors, raw_metadata = _open(path)
    meta = _parse_metadata(raw_metadata, path)
    try:
        return _build(tensors, meta)
    except ArtifactError:
        raise
    except Exception as exc:  # noqa: BLE001 - the file is untrusted input: any failure to interpret it is corruption
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ArtifactError(f"{path}: inconsistent artifact ({message})") from exc


def _open(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, str]]:
    if not os.path.exists(path):
        raise ArtifactError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ArtifactError(f"{path}: is a directory, expected a .nern file")
    if os.path.getsize(path) < 8:
        raise ArtifactError(f"{path}: file is empty or truncated, not a .nern artifact")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own and several builtin types on corrupt input
        detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ArtifactError(f"{path}: not a readable .nern (safetensors) file: {detail}") from exc
    return tensors, metadata


def _parse_metadata(raw: dict[str, str], path: str | os.PathLike) -> dict[str, Any]:
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


def _build(tensors: dict[str, Tensor], meta: dict[str, Any]) -> Nern:
    arch = ArchSpec.from_dict(meta["arch"])
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
