"""The ``.nern`` file: one safetensors container, never pickle. Only this package knows its layout.

``save_artifact`` writes format 2 (``v2.py``: every value entropy-coded); ``load_artifact`` reads formats 1
(``v1.py``: fixed-width tensors) and 2. ``read_metadata`` reads the structure without decoding any stream,
``is_nern_file`` tells a .nern from a checkpoint, and ``stream_bytes`` / ``byte_breakdown`` say where a file's
bytes go.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safetensors import safe_open
from torch import Tensor

from .._io import PathLike
from ..errors import ArtifactError
from ..nern import Nern
from ..safetensors_io import read_safetensors_header, save_safetensors
from . import v1, v2
from .v2 import predictor_bytes

__all__ = [
    "FORMAT",
    "SCHEMA_VERSION",
    "byte_breakdown",
    "group_bytes",
    "is_nern_file",
    "load_artifact",
    "predictor_bytes",
    "read_metadata",
    "save_artifact",
    "stream_bytes",
]

FORMAT = "nern"
SCHEMA_VERSION = v2.SCHEMA_VERSION
SUPPORTED_VERSIONS = ("1", "2")
GROUPS = ("header", "predictor", "positions", "scales", "codes", "raw")


def save_artifact(nern: Nern, path: PathLike) -> None:
    """Write ``nern`` to ``path`` atomically (temporary file, then rename), in the current format.

    Raises:
        UsageError: a compression state or a value the format cannot hold.

    Example:
        >>> save_artifact(nern, "resnet20.nern")
    """
    tensors, metadata = v2.encode(nern)
    specs = [(key, value.dtype, tuple(value.shape)) for key, value in tensors.items()]
    save_safetensors(tensors.items(), path, specs=specs, metadata=metadata)


def load_artifact(path: PathLike, *, trust_code: bool = False) -> Nern:
    """Load and validate a ``.nern`` file (format 1 or 2).

    Args:
        path: the file.
        trust_code: trust the file's architecture spec: build it even when it names a user builder, and without
            the bounds on its kwargs (see ``registry.check_arch``). Trusted files only.

    Raises:
        ArtifactError: naming the key at fault, for any missing, corrupt or inconsistent content.

    Example:
        >>> nern = load_artifact("resnet20.nern")
    """
    tensors, metadata = _open(path)
    version = _version(metadata, path)
    try:
        if version == "1":
            return v1.build(tensors, v1.parse_metadata(metadata, path), trust_code=trust_code)
        return v2.decode(tensors, trust_code=trust_code)
    except ArtifactError as exc:
        raise ArtifactError(f"{path}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - the file is untrusted input: any failure to interpret it is corruption
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ArtifactError(f"{path}: inconsistent artifact ({message})") from exc


def read_metadata(path: PathLike) -> dict[str, Any]:
    """The structure of a ``.nern`` file without decoding any stream: ``format``, ``schema_version``,
    ``tool_version`` and, as stored, ``arch``, ``history``, ``compression``, ``source`` and the rest.

    Raises:
        ArtifactError: missing, unreadable or not a .nern of a supported schema.
    """
    tensors, metadata = _open(path)
    version = _version(metadata, path)
    if version == "1":
        return v1.parse_metadata(metadata, path)
    try:
        document = v2.read_document(tensors.get("meta", Tensor()))
    except ArtifactError as exc:
        raise ArtifactError(f"{path}: {exc}") from exc
    return {**metadata, **document}


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


def stream_bytes(path: PathLike) -> dict[str, int]:
    """Bytes of every stored stream of a .nern, by name (``predictor/...``, ``positions/<layer>``, ``codes/<key>``,
    ``raw/<key>``, ...), plus ``header``: the safetensors header and, in format 2, the compressed structure."""
    header_bytes, header = read_safetensors_header(path)
    metadata = header.get("__metadata__") or {}
    if metadata.get("schema_version") == "1":
        sizes = {"header": header_bytes}
        for key, entry in header.items():
            if key != "__metadata__":
                start, end = entry["data_offsets"]
                sizes[key] = int(end) - int(start)
        return sizes
    document = read_metadata(path)
    start, end = header["meta"]["data_offsets"]
    return {"header": header_bytes + int(end) - int(start), **{name: size for name, size in document["streams"]}}


def byte_breakdown(path: PathLike) -> dict[str, int]:
    """Bytes of a .nern file by group: ``header`` (safetensors header and compressed structure), ``predictor``,
    ``positions``, ``scales``, ``codes``, ``raw`` and ``other``; the groups sum to the file size."""
    return group_bytes(stream_bytes(path))


def group_bytes(streams: Mapping[str, int]) -> dict[str, int]:
    """Stream sizes summed by group (the part of the name before the first ``/``)."""
    groups = {name: 0 for name in GROUPS} | {"other": 0}
    for name, size in streams.items():
        group = name.split("/", 1)[0]
        groups[group if group in groups else "other"] += size
    return groups


def _open(path: PathLike) -> tuple[dict[str, Tensor], dict[str, str]]:
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


def _version(metadata: dict[str, str], path: PathLike) -> str:
    if metadata.get("format") != FORMAT:
        raise ArtifactError(f"{path}: not a .nern artifact (metadata 'format' is {metadata.get('format')!r})")
    version = metadata.get("schema_version")
    if version not in SUPPORTED_VERSIONS:
        raise ArtifactError(
            f"{path}: schema version {version!r} is not supported (this nerncompress reads "
            f"{', '.join(SUPPORTED_VERSIONS)}): upgrade nerncompress or refit"
        )
    return version
