"""Writing safetensors files ourselves: streamed tensor by tensor, and byte-for-byte deterministic.

The safetensors library writes ``__metadata__`` in hash-map order, which changes from run to run; a header
written here (keys in the given order) makes the same inputs give the same bytes. Any safetensors reader loads
these files: the format only asks for a little-endian u64 header length, a JSON header with dtype, shape and
contiguous data_offsets for every tensor, 8-byte alignment of the data section, then the raw data.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any
from collections.abc import Iterable

import torch
from torch import Tensor

from ._io import atomic_path
from .errors import ArtifactError, UsageError

TensorSpec = tuple[str, torch.dtype, tuple[int, ...]]

# safetensors dtype names (https://github.com/huggingface/safetensors, format spec).
_SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}  # fmt: skip


def _tensor_bytes(tensor: Tensor) -> bytes:
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""


def safetensors_header(
    specs: list[TensorSpec], metadata: dict[str, str] | None = None
) -> bytes:
    """The length-prefixed JSON header of a safetensors file holding tensors of these (key, dtype, shape)."""
    header: dict[str, object] = {}
    offset = 0
    for key, dtype, shape in specs:
        if dtype not in _SAFETENSORS_DTYPES:
            raise UsageError(f"tensor {key!r} has dtype {dtype}, which safetensors cannot store")
        size = torch.empty((), dtype=dtype).element_size() * int(torch.Size(shape).numel())
        header[key] = {"dtype": _SAFETENSORS_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    if metadata:
        header["__metadata__"] = metadata
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data section starts 8-byte aligned
    return struct.pack("<Q", len(encoded)) + encoded


def save_safetensors(
    tensors: Iterable[tuple[str, Tensor]],
    path: str | os.PathLike,
    *,
    specs: list[TensorSpec],
    metadata: dict[str, str] | None = None,
) -> int:
    """Stream tensors into a safetensors file whose header is computed up front from ``specs``.

    Args:
        tensors: (key, tensor) pairs in the order of ``specs``; each must match its spec.
        path: output file (written atomically).
        specs: (key, dtype, shape) of every tensor, in write order.
        metadata: optional string-to-string ``__metadata__``.

    Returns:
        bytes written.
    """
    encoded = safetensors_header(specs, metadata)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(encoded)
            for (key, tensor), (spec_key, dtype, shape) in zip(tensors, specs, strict=True):
                if key != spec_key or tensor.dtype != dtype or tuple(tensor.shape) != tuple(shape):
                    raise RuntimeError(f"tensor {key!r} does not match its announced spec {spec_key} {dtype} {shape}")
                handle.write(_tensor_bytes(tensor))
        written = tmp.stat().st_size
    return written


def read_safetensors_header(path: str | os.PathLike) -> tuple[int, dict[str, Any]]:
    """The header of a safetensors file, without reading any tensor data.

    Args:
        path: a safetensors file (``.nern`` files are safetensors).

    Returns:
        ``(header_bytes, header)``: bytes before the data section (8-byte length prefix + JSON header, padding
        included) and the parsed JSON (tensor entries plus an optional ``__metadata__``).

    Raises:
        ArtifactError: the file is missing, too short or has no valid safetensors header.
    """
    file = Path(path)
    try:
        size = file.stat().st_size
        with open(file, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise ArtifactError(f"{file}: file is empty or truncated, not a safetensors file")
            (length,) = struct.unpack("<Q", prefix)
            if length > size - 8:
                raise ArtifactError(f"{file}: header length {length} exceeds the file size {size}: file truncated")
            header = json.loads(handle.read(length))
    except OSError as exc:
        raise ArtifactError(f"{file}: cannot read ({exc.strerror or type(exc).__name__})") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{file}: not a safetensors file (header is not JSON)") from exc
    if not isinstance(header, dict):
        raise ArtifactError(f"{file}: not a safetensors file (header is not a JSON object)")
    return 8 + length, header
