"""The ``.nern`` file: one safetensors container, never pickle. Only this package knows its layout.

``save_artifact`` / ``load_artifact`` write and read a Nern; ``read_metadata`` reads the header alone;
``is_nern_file`` tells a .nern from a checkpoint; ``byte_breakdown`` says where a file's bytes go.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._io import PathLike
from ..errors import ArtifactError
from ..safetensors_io import read_safetensors_header
from .v1 import (
    FORMAT,
    SCHEMA_VERSION,
    encode_predictor,
    load_artifact,
    position_bits,
    predictor_bytes,
    read_metadata,
    save_artifact,
    to_tensors,
)

__all__ = [
    "FORMAT",
    "SCHEMA_VERSION",
    "byte_breakdown",
    "encode_predictor",
    "is_nern_file",
    "load_artifact",
    "position_bits",
    "predictor_bytes",
    "read_metadata",
    "save_artifact",
    "to_tensors",
]

# Tensor key prefix -> byte group of the breakdown.
BYTE_GROUPS = {"predictor/": "predictor", "positions/": "positions", "scales/": "scales", "raw/": "raw"}


def is_nern_file(path: PathLike) -> bool:
    """Whether ``path`` is a ``.nern`` artifact: by suffix, or by a safetensors header whose format is ``nern``."""
    file = Path(path)
    if file.suffix.lower() == ".nern":
        return True
    if not file.is_file():
        return False
    try:
        _, header = read_safetensors_header(file)
    except ArtifactError:
        return False
    meta = header.get("__metadata__")
    return isinstance(meta, dict) and meta.get("format") == FORMAT


def byte_breakdown(path: PathLike) -> dict[str, int]:
    """Bytes of a .nern file by group: ``header`` (length prefix + JSON header with metadata), then the tensor data
    of the predictor, positions, scales, raw tensors and anything else; the groups sum to the file size."""
    header_bytes, header = read_safetensors_header(path)
    return _groups(header_bytes, header)


def _groups(header_bytes: int, header: Mapping[str, Any]) -> dict[str, int]:
    groups = {"header": header_bytes, **{name: 0 for name in BYTE_GROUPS.values()}, "other": 0}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        start, end = entry["data_offsets"]
        group = next((name for prefix, name in BYTE_GROUPS.items() if key.startswith(prefix)), "other")
        groups[group] += int(end) - int(start)
    return groups
