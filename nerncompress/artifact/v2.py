"""Format 2: every stored value entropy-coded (``entropy.py``), the structure in one compressed JSON document.

The safetensors container holds two uint8 tensors:

    meta      zlib-compressed JSON: arch, key order, how each tensor is stored (predicted, coded, raw), the
              layer table, predictor and embedding configs, compression state, provenance, history, and the list
              of streams as [name, bytes] in the order they follow each other in ``streams``
    streams   the entropy-coded streams, back to back

and ``__metadata__`` only ``format``, ``schema_version`` and ``tool_version``. Streams are named by what they hold:

    predictor/<param>          float values (encode_floats), or integers (encode_ints) for a quantized weight
    predictor/<param>.scale    its float16 scales; predictor/<param>.mask its kept weights (0/1) when pruned
    positions/<layer>          crossfilter: the permutation (about log2(N!) bits); none for a layer whose row
                               says "identity" (positions = index: 1x1 layers)
    positions/<layer>/filters, positions/<layer>/channels   infilter: the filter order, then each filter's
                               channel order (one permutation per filter, back to back, each after its length)
    scales/<layer>             per-filter scales (float32)
    codes/<key>                a coded tensor's integers, plane by plane for k x k kernels
    raw/<key>                  a raw tensor, losslessly (float16 when the compression state says raw_fp16)

Decoding is bit-exact; sizes, stream lengths and shapes are checked against each other before anything is
decoded, so a corrupt or crafted file is a one-line ArtifactError, never a huge allocation.
"""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .. import entropy
from .._version import __version__
from ..codes import QuantizedTensor, from_plane_order, plane_order
from ..embeddings import EmbeddingConfig
from ..errors import ArtifactError, UsageError
from ..layers import LayerEntry
from ..models.registry import ArchSpec
from ..nern import Nern
from ..predictor import Predictor, PredictorConfig
from ..quantization import FLOAT_DTYPES, MIN_SCALE, SCALE_DTYPE, dequantize_weight, num_groups, qmax_for, quantize_weight
from .state import check_state

SCHEMA_VERSION = 2
MAX_META_BYTES = 16 << 20  # the decompressed JSON document
MAX_ELEMENTS = 1 << 30  # values in all tensors together: beyond, a header is crafted, not a model

_DTYPES = {
    "float64": torch.float64, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
    "int64": torch.int64, "int32": torch.int32, "int16": torch.int16, "int8": torch.int8, "uint8": torch.uint8,
    "bool": torch.bool,
}  # fmt: skip
_NUMPY_FLOATS = {torch.float64: np.float64, torch.float32: np.float32, torch.float16: np.float16}


# ------------------------------------------------------------------------------------------------------ writing
class _Streams:
    """The streams of a file in writing order: names and lengths for the JSON, bytes for the data tensor."""

    def __init__(self) -> None:
        self.table: list[list[Any]] = []
        self.chunks: list[bytes] = []

    def add(self, name: str, data: bytes) -> None:
        self.table.append([name, len(data)])
        self.chunks.append(data)


def encode(nern: Nern) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The two tensors and the ``__metadata__`` of a format-2 file.

    Raises:
        UsageError: an invalid compression state, or a value the format cannot hold.
    """
    streams = _Streams()
    state = {key: value for key, value in check_state(nern.compression, UsageError).items() if key != "layout"}
    if nern.predictor is not None:
        _encode_predictor(streams, nern.predictor, state)
    layers = []
    for entry in nern.layers:
        identity = torch.equal(nern.positions[entry.name], torch.arange(entry.num_kernels))
        _encode_positions(streams, "none" if identity else nern.permute, entry, nern.positions[entry.name])
        if entry.name in nern.scales:
            streams.add(f"scales/{entry.name}", entropy.encode_floats(nern.scales[entry.name].float().numpy()))
        row = {**entry.to_dict(), "scaled": entry.name in nern.scales}
        layers.append({**row, "identity": True} if identity else row)
    represented = {entry.name for entry in nern.layers}
    tensors = []
    for key in nern.key_order:
        if key in nern.codes:
            code = nern.codes[key]
            streams.add(f"codes/{key}", entropy.encode_ints(plane_order(code.ints.numpy())))
            tensors.append([key, "float32", list(code.shape), {"step": code.step, "residual": key in represented}])
        elif key in represented:
            tensors.append([key, "float32", list(nern.layer(key).shape), {"predicted": True}])
        else:
            value = nern.raw[key]
            stored = _raw_dtype(value, bool(state.get("raw_fp16")))
            streams.add(f"raw/{key}", _encode_raw(value.to(stored)))
            tensors.append([key, _dtype_name(value.dtype), list(value.shape), {"stored": _dtype_name(stored)}])
    document = {
        "arch": nern.arch.to_dict(),
        "embedding": nern.embedding.to_dict(),
        "predictor": None if nern.predictor is None else nern.predictor.config.to_dict(),
        "permute": nern.permute,
        "layers": layers,
        "tensors": tensors,
        "raw_convs": nern.raw_convs,
        "compression": state,
        "source": nern.source,
        "history": nern.history,
        "streams": streams.table,
        "coordinate_layers": nern.coordinate_layers,
    }
    meta = zlib.compress(json.dumps(document, sort_keys=True, separators=(",", ":")).encode(), 9)
    data = b"".join(streams.chunks)
    tensors_out = {"meta": _bytes_tensor(meta), "streams": _bytes_tensor(data)}
    metadata = {"format": "nern", "schema_version": str(SCHEMA_VERSION), "tool_version": __version__}
    return tensors_out, metadata


def _bytes_tensor(data: bytes) -> Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.zeros(0, dtype=torch.uint8)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _raw_dtype(value: Tensor, raw_fp16: bool) -> torch.dtype:
    if raw_fp16 and value.dtype == torch.float32:
        if value.numel() and float(value.abs().max()) > 65504.0:
            raise UsageError("a raw tensor holds values beyond the float16 range: store raw tensors as float32")
        return torch.float16
    return value.dtype


def _encode_raw(value: Tensor) -> bytes:
    value = value.detach().cpu().contiguous().reshape(-1)
    if value.dtype in _NUMPY_FLOATS:
        return entropy.encode_floats(value.numpy())
    if value.dtype == torch.bfloat16:
        return entropy.encode_ints(value.view(torch.int16).numpy().astype(np.int64))
    if value.dtype in _DTYPES.values():
        return entropy.encode_ints(value.to(torch.int64).numpy())
    raise UsageError(f"a raw tensor of dtype {value.dtype} cannot be stored")


def _encode_predictor(streams: _Streams, predictor: Predictor, state: dict[str, Any]) -> None:
    spec = state.get("quantize")
    sparse = "prune" in state
    bias_dtype = FLOAT_DTYPES[spec["bias_dtype"]] if spec is not None else torch.float32
    for name, parameter in predictor.state_dict().items():
        value = parameter.detach().cpu().to(torch.float32)
        key = f"predictor/{name}"
        if value.dim() != 2:
            streams.add(key, entropy.encode_floats(value.to(bias_dtype).numpy()))
            continue
        kept = (value != 0).reshape(-1)
        if sparse:
            streams.add(f"{key}.mask", entropy.encode_ints(kept.to(torch.int64).numpy()))
        if spec is None or spec["bits"] == "fp16":
            values = value.to(torch.float16 if spec is not None else torch.float32).reshape(-1)
            if not torch.isfinite(values).all():
                raise UsageError(f"predictor weight {name!r} does not fit in {values.dtype}")
            streams.add(key, entropy.encode_floats((values[kept] if sparse else values).numpy()))
        else:
            q, scales = quantize_weight(value, spec["bits"], spec["group_size"])
            streams.add(f"{key}.scale", entropy.encode_floats(scales.numpy()))
            q = q.reshape(-1)
            streams.add(key, entropy.encode_ints((q[kept] if sparse else q).numpy()))


def predictor_bytes(predictor: Predictor, state: dict[str, Any]) -> int:
    """Bytes the file spends on the predictor's streams in this compression state."""
    streams = _Streams()
    _encode_predictor(streams, predictor, check_state(state, UsageError))
    return sum(len(chunk) for chunk in streams.chunks)


def _encode_positions(streams: _Streams, permute: str, entry: LayerEntry, positions: Tensor) -> None:
    key = f"positions/{entry.name}"
    if permute == "crossfilter":
        streams.add(key, entropy.encode_permutation(positions.numpy()))
    elif permute == "infilter":
        grid = positions.view(entry.c_out, entry.c_in)
        filters = torch.div(grid[:, 0], entry.c_in, rounding_mode="floor")
        channels = torch.remainder(grid, entry.c_in).numpy()
        streams.add(f"{key}/filters", entropy.encode_permutation(filters.numpy()))
        rows = [entropy.encode_permutation(row) for row in channels]
        streams.add(f"{key}/channels", b"".join(struct.pack("<I", len(row)) + row for row in rows))


# ------------------------------------------------------------------------------------------------------ reading
def decode(tensors: dict[str, Tensor], *, trust_code: bool) -> Nern:
    """The Nern of a format-2 file's tensors.

    Raises:
        ArtifactError: naming what is missing, corrupt or inconsistent.
    """
    if set(tensors) != {"meta", "streams"}:
        raise ArtifactError(f"a format-2 .nern holds the tensors 'meta' and 'streams', not {sorted(tensors)}")
    document = read_document(tensors["meta"])
    reader = _Reader(document["streams"], tensors["streams"])
    state = check_state(document["compression"], ArtifactError)
    arch = ArchSpec.from_dict(document["arch"], trusted=trust_code)
    embedding = EmbeddingConfig(**document["embedding"])
    predictor = None
    if document["predictor"] is not None:
        config = PredictorConfig.from_dict(document["predictor"])
        if config.input_dim != embedding.dim:
            raise ArtifactError(f"predictor input width {config.input_dim} != embedding width {embedding.dim}")
        predictor = _decode_predictor(reader, config, state)
    permute = document["permute"]
    coordinate_layers = document["coordinate_layers"]
    if not 0 <= coordinate_layers <= 1 << 20 or (coordinate_layers and coordinate_layers < len(document["layers"])):
        raise ArtifactError(f"coordinate_layers {coordinate_layers} is invalid for {len(document['layers'])} layers")
    layers, positions, scales = [], {}, {}
    for index, row in enumerate(document["layers"]):
        entry = LayerEntry.from_dict(row)
        previous = layers[-1].layer_index if layers else -1
        valid = entry.layer_index == index if not coordinate_layers else previous < entry.layer_index < coordinate_layers
        if not valid:
            raise ArtifactError(f"layer table row {index} ({entry.name}) has layer_index {entry.layer_index}")
        if predictor is None or entry.kernel_size not in predictor.config.kernel_sizes:
            raise ArtifactError(f"layer {entry.name!r} has {entry.kernel_size}x{entry.kernel_size} kernels but no head")
        identity = row.get("identity", False)
        if not isinstance(identity, bool):
            raise ArtifactError(f"layer {entry.name!r}: 'identity' must be true or false")
        positions[entry.name] = _decode_positions(reader, "none" if identity else permute, entry)
        if row.get("scaled"):
            scales[entry.name] = _finite(reader.floats(f"scales/{entry.name}", entry.c_out, torch.float32), entry.name)
        layers.append(entry)
    key_order, codes, raw = _decode_tensors(reader, document["tensors"], {e.name: e for e in layers}, state)
    reader.check_all_read()
    return Nern(
        arch=arch, layers=layers, embedding=embedding, predictor=predictor, positions=positions, scales=scales,
        raw=raw, key_order=key_order, permute=permute, source=document["source"], raw_convs=document["raw_convs"],
        history=document["history"], compression=state, codes=codes, coordinate_layers=coordinate_layers,
    )  # fmt: skip


# The JSON type of every key of the document.
_DOCUMENT = {
    "arch": dict, "embedding": dict, "predictor": (dict, type(None)), "permute": str, "layers": list, "tensors": list,
    "raw_convs": dict, "compression": dict, "source": dict, "history": list, "streams": list, "coordinate_layers": int,
}  # fmt: skip


def read_document(meta: Tensor) -> dict[str, Any]:
    """The JSON document of a format-2 file, decompressed (bounded) and checked for its keys and their types."""
    decompressor = zlib.decompressobj()
    try:
        text = decompressor.decompress(meta.numpy().tobytes(), MAX_META_BYTES)
        if decompressor.unconsumed_tail or not decompressor.eof:
            raise ArtifactError("the metadata document is truncated or larger than 16 MB")
        document = json.loads(text)
    except (zlib.error, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"the metadata document is corrupt ({type(exc).__name__})") from exc
    if not isinstance(document, dict) or set(document) != set(_DOCUMENT):
        raise ArtifactError("the metadata document does not have the keys of format 2")
    for key, kind in _DOCUMENT.items():
        if not isinstance(document[key], kind):
            raise ArtifactError(f"metadata {key!r} has the wrong JSON type ({type(document[key]).__name__})")
    if document["permute"] not in ("crossfilter", "infilter", "none"):
        raise ArtifactError(f"unknown permutation {document['permute']!r} in metadata")
    return document


class _Reader:
    """The streams of a file by name, each decoded once, with the decoders' errors turned into ArtifactErrors."""

    def __init__(self, table: list[Any], data: Tensor) -> None:
        self.spans: dict[str, tuple[int, int]] = {}
        offset = 0
        for item in table:
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str) and type(item[1]) is int
                    and item[1] >= 0 and item[0] not in self.spans):  # fmt: skip
                raise ArtifactError(f"stream table entry {str(item)[:80]} is invalid")
            self.spans[item[0]] = (offset, offset + item[1])
            offset += item[1]
        if offset != data.numel():
            raise ArtifactError(f"the streams take {data.numel()} bytes but the table says {offset}")
        self.data = data.numpy().tobytes()
        self.read: set[str] = set()

    def _bytes(self, name: str) -> bytes:
        if name not in self.spans:
            raise ArtifactError(f"stream {name!r} is missing")
        self.read.add(name)
        start, end = self.spans[name]
        return self.data[start:end]

    def _decoded(self, name: str, decode: Any) -> Any:
        try:
            return decode(self._bytes(name))
        except ValueError as exc:
            raise ArtifactError(f"stream {name!r} is corrupt: {str(exc).splitlines()[0]}") from exc

    def ints(self, name: str, count: int) -> np.ndarray:
        return self._decoded(name, lambda data: entropy.decode_ints(data, count))

    def floats(self, name: str, count: int, dtype: torch.dtype) -> Tensor:
        values = self._decoded(name, lambda data: entropy.decode_floats(data, count, _NUMPY_FLOATS[dtype]))
        return torch.from_numpy(values.copy())

    def permutation(self, name: str, count: int) -> Tensor:
        values = torch.from_numpy(self._decoded(name, lambda data: entropy.decode_permutation(data, count)).copy())
        if not torch.equal(values.sort().values, torch.arange(count)):
            raise ArtifactError(f"stream {name!r} is not a permutation of {count} values")
        return values

    def rows_of_permutations(self, name: str, rows: int, count: int) -> Tensor:
        def decode(data: bytes) -> np.ndarray:
            out, offset = np.empty((rows, count), dtype=np.int64), 0
            for row in range(rows):
                if offset + 4 > len(data):
                    raise ValueError("truncated")
                (length,) = struct.unpack_from("<I", data, offset)
                out[row] = entropy.decode_permutation(data[offset + 4 : offset + 4 + length], count)
                offset += 4 + length
            if offset != len(data):
                raise ValueError("trailing bytes")
            return out

        return torch.from_numpy(self._decoded(name, decode))

    def check_all_read(self) -> None:
        unread = sorted(set(self.spans) - self.read)
        if unread:
            raise ArtifactError(f"unexpected stream {unread[0]!r} in artifact")


def _finite(value: Tensor, name: str) -> Tensor:
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        raise ArtifactError(f"{name!r} holds NaN or Inf values: the file is corrupt, refit or re-download it")
    return value


def _decode_predictor(reader: _Reader, config: PredictorConfig, state: dict[str, Any]) -> Predictor:
    predictor = Predictor(config)
    spec = state.get("quantize")
    sparse = "prune" in state
    values = {}
    for name, reference in predictor.state_dict().items():
        key = f"predictor/{name}"
        count = reference.numel()
        if reference.dim() != 2:
            dtype = FLOAT_DTYPES[spec["bias_dtype"]] if spec is not None else torch.float32
            values[name] = _finite(reader.floats(key, count, dtype).float(), key).view(reference.shape)
            continue
        kept = None
        if sparse:
            mask = reader.ints(f"{key}.mask", count)
            if mask.size and (mask.min() < 0 or mask.max() > 1):
                raise ArtifactError(f"stream '{key}.mask' holds values other than 0 and 1")
            kept = torch.from_numpy(mask.astype(bool))
        stored = count if kept is None else int(kept.sum())
        if spec is None or spec["bits"] == "fp16":
            dtype = torch.float16 if spec is not None else torch.float32
            flat = _finite(reader.floats(key, stored, dtype).float(), key)
            scales = None
        else:
            scales = reader.floats(f"{key}.scale", reference.shape[0] * num_groups(reference.shape[1], spec["group_size"]), SCALE_DTYPE)
            if not bool((scales.float() >= MIN_SCALE).all()):
                raise ArtifactError(f"stream '{key}.scale' holds scales below {MIN_SCALE}, negative or NaN")
            ints = reader.ints(key, stored)
            qmax = qmax_for(spec["bits"])
            if ints.size and int(np.abs(ints).max()) > qmax:
                raise ArtifactError(f"stream {key!r} holds a value outside [-{qmax}, {qmax}]")
            flat = torch.from_numpy(ints).float()
        dense = flat if kept is None else torch.zeros(count).masked_scatter_(kept, flat)
        dense = dense.view(reference.shape)
        if scales is not None:
            dense = dequantize_weight(dense, scales.view(reference.shape[0], -1), spec["group_size"])
        values[name] = dense
    predictor.load_state_dict(values)
    return predictor.eval()


def _decode_positions(reader: _Reader, permute: str, entry: LayerEntry) -> Tensor:
    key = f"positions/{entry.name}"
    if permute == "none":
        return torch.arange(entry.num_kernels, dtype=torch.int64)
    if permute == "infilter":
        filters = reader.permutation(f"{key}/filters", entry.c_out)
        channels = reader.rows_of_permutations(f"{key}/channels", entry.c_out, entry.c_in)
        return (filters[:, None] * entry.c_in + channels).reshape(-1)
    return reader.permutation(key, entry.num_kernels)


def _decode_tensors(
    reader: _Reader, table: list[Any], represented: dict[str, LayerEntry], state: dict[str, Any]
) -> tuple[list[str], dict[str, QuantizedTensor], dict[str, Tensor]]:
    shapes = [_check_row(row) for row in table]
    if sum(int(np.prod(shape)) for shape in shapes) > MAX_ELEMENTS:
        raise ArtifactError(f"the tensors hold more than {MAX_ELEMENTS:,} values: corrupt or crafted header")
    key_order, codes, raw = [], {}, {}
    for (key, dtype_name, _, how), shape in zip(table, shapes):
        if key in key_order:
            raise ArtifactError(f"tensor {key!r} appears twice")
        key_order.append(key)
        count = int(np.prod(shape))
        if "step" in how:
            step = how["step"]
            if not isinstance(step, (int, float)) or not np.isfinite(step) or step <= 0:
                raise ArtifactError(f"coded tensor {key!r} has an invalid step {step!r}")
            if bool(how.get("residual")) != (key in represented):
                raise ArtifactError(f"coded tensor {key!r} is a residual of a layer the predictor does not represent")
            ints = reader.ints(f"codes/{key}", count)
            if ints.size and int(np.abs(ints).max()) > 2**31 - 1:
                raise ArtifactError(f"coded tensor {key!r} holds an integer beyond int32")
            codes[key] = QuantizedTensor(float(step), torch.from_numpy(from_plane_order(ints, shape).astype(np.int32)))
        elif how.get("predicted"):
            if key not in represented or represented[key].shape != shape:
                raise ArtifactError(f"tensor {key!r} is marked predicted but its layer is not in the layer table")
        else:
            raw[key] = _decode_raw(reader, key, dtype_name, how.get("stored"), shape, state)
    missing = sorted(set(represented) - set(key_order))
    if missing:
        raise ArtifactError(f"represented layer {missing[0]!r} is not in the tensor table")
    return key_order, codes, raw


def _check_row(row: Any) -> tuple[int, ...]:
    if not (isinstance(row, list) and len(row) == 4 and isinstance(row[0], str) and row[1] in _DTYPES
            and isinstance(row[2], list) and isinstance(row[3], dict)):  # fmt: skip
        raise ArtifactError(f"tensor table row {str(row)[:80]} is invalid")
    shape = row[2]
    if len(shape) > 8 or not all(type(size) is int and 0 <= size < 2**31 for size in shape):
        raise ArtifactError(f"tensor {row[0]!r} has an invalid shape {shape}")
    return tuple(shape)


def _decode_raw(
    reader: _Reader, key: str, dtype_name: str, stored_name: Any, shape: tuple[int, ...], state: dict[str, Any]
) -> Tensor:
    dtype = _DTYPES[dtype_name]
    stored = _DTYPES.get(stored_name) if isinstance(stored_name, str) else None
    if stored is None or (stored != dtype and not (stored == torch.float16 and dtype == torch.float32)):
        raise ArtifactError(f"raw tensor {key!r} is stored as {stored_name!r}, which cannot hold {dtype_name}")
    count = int(np.prod(shape))
    name = f"raw/{key}"
    if stored in _NUMPY_FLOATS:
        value = _finite(reader.floats(name, count, stored), name)
    elif stored == torch.bfloat16:
        ints = reader.ints(name, count)
        if ints.size and (ints.min() < -(2**15) or ints.max() >= 2**15):
            raise ArtifactError(f"stream {name!r} holds values beyond 16 bits")
        value = _finite(torch.from_numpy(ints.astype(np.int16)).view(torch.bfloat16), name)
    else:
        ints = reader.ints(name, count)
        info = torch.iinfo(stored) if stored != torch.bool else None
        low, high = (0, 1) if info is None else (info.min, info.max)
        if ints.size and (ints.min() < low or ints.max() > high):
            raise ArtifactError(f"stream {name!r} holds values beyond {dtype_name}")
        value = torch.from_numpy(ints).to(stored)
    return value.to(dtype).view(shape)
