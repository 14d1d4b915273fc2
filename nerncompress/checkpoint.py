"""Read model checkpoints into plain ``{name: Tensor}`` state_dicts, and clean their keys.

Loading is safe by default: PyTorch files go through ``torch.load(weights_only=True)`` and safetensors files through
``safetensors.torch.load_file``. Full pickled modules and TorchScript archives run code when loaded, so they are
only read with ``trust_pickle=True``. Every failure surfaces as a one-line :class:`CheckpointError` naming the file.
"""

from __future__ import annotations

import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ._io import PathLike
from .errors import CheckpointError

__all__ = ["check_finite", "load_checkpoint", "normalize_state_dict"]

# Keys under which training scripts commonly nest the weights, in order of preference.
CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "ema")
# Prefixes stripped from every key that has them (DataParallel, torch.compile) ...
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# ... and prefixes stripped only when all keys share them: also common attribute names (Lightning's self.model).
SHARED_PREFIXES = ("model.", "net.")
_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")
_TRUST_HINT = "pass --trust-pickle (trust_pickle=True) only if you trust the file's source"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    # torch's weights_only failures bury the actual cause after a long generic preamble.
    cause = text.partition("WeightsUnpickler error: ")[2]
    if cause:
        text = cause.partition(" Check the documentation")[0]
    text = text[:200] + "..." if len(text) > 200 else text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _looks_like_safetensors(path: Path) -> bool:
    # Layout: 8-byte little-endian header length, then a JSON header starting with "{".
    with open(path, "rb") as handle:
        head = handle.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 0 < int.from_bytes(head[:8], "little") <= path.stat().st_size - 8


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("constants.pkl") or "/code/" in name for name in archive.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return False


def _load_safetensors(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own, untyped-for-us errors
        raise CheckpointError(
            f"checkpoint {path} is not a readable safetensors file (truncated or corrupt?): {_one_line(exc)}"
        ) from exc


def _load_torch(path: Path, trust_pickle: bool) -> Any:
    corrupt = f"checkpoint {path} is not a readable PyTorch or safetensors file (truncated or corrupt?)"
    if _is_torchscript(path):
        if not trust_pickle:
            raise CheckpointError(
                f"checkpoint {path} is a TorchScript archive, which runs code when loaded: {_TRUST_HINT}, "
                "or save model.state_dict() instead"
            )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated but still reads archives
                return torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # noqa: BLE001
            raise CheckpointError(f"{corrupt}: {_one_line(exc)}") from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 106" on a corrupt file: the error says it
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load raises anything from EOFError to IndexError on bad bytes
        found = _UNSUPPORTED_GLOBAL.search(str(exc))
        if found is None:
            raise CheckpointError(f"{corrupt}: {_one_line(exc)}") from exc
        if not trust_pickle:
            raise CheckpointError(
                f"checkpoint {path} holds pickled Python objects ({found.group(1)}), e.g. a full nn.Module, "
                f"which safe loading refuses: {_TRUST_HINT}, or re-save it with torch.save(model.state_dict(), path)"
            ) from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's weights_only=False FutureWarning: --trust-pickle is explicit
            return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{corrupt}: {_one_line(exc)}") from exc


def _extract(obj: Any, path: Path, depth: int = 0) -> dict[str, Tensor]:
    """Find the state_dict in what a checkpoint file holds."""
    if isinstance(obj, (nn.Module, torch.jit.ScriptModule)):
        return dict(obj.state_dict())
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(obj).__name__}, not a state_dict: save model.state_dict() instead"
        )
    if depth < 3:
        for key in CONTAINER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, (Mapping, nn.Module)) and inner:
                return _extract(inner, path, depth + 1)
    tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        keys = ", ".join(repr(k) for k in list(obj)[:5]) or "none"
        raise CheckpointError(
            f"checkpoint {path} holds no tensors (top-level keys: {keys}): expected a state_dict, possibly under "
            f"one of {', '.join(CONTAINER_KEYS)}"
        )
    for key, value in obj.items():
        if not isinstance(key, str):
            raise CheckpointError(f"checkpoint {path} has a non-string key {key!r}: save model.state_dict() instead")
        if not isinstance(value, Tensor):
            raise CheckpointError(
                f"checkpoint {path} key {key!r} holds a {type(value).__name__}, not a tensor: "
                "save model.state_dict() only, or nest it under 'state_dict'"
            )
    return dict(obj)


def load_checkpoint(path: PathLike, *, trust_pickle: bool = False) -> dict[str, Tensor]:
    """Load the weights of a checkpoint file.

    Accepts ``.pt`` / ``.pth`` / ``.th`` / ``.bin`` (``torch.save``) files holding a state_dict, either directly or
    under ``state_dict``, ``model_state_dict``, ``model`` or ``ema``; and ``.safetensors`` files (recognised by
    content too). Wrapper prefixes are stripped (see :func:`normalize_state_dict`) and every float tensor must be
    finite (see :func:`check_finite`), so the result is ready for ``fit``.

    Args:
        path: the checkpoint file.
        trust_pickle: also accept full pickled ``nn.Module`` objects and TorchScript archives. Loading those can run
            arbitrary code: only for trusted files.

    Returns:
        ``{name: tensor}`` with detached, contiguous CPU tensors in their stored dtype.

    Raises:
        CheckpointError: for a missing path, a directory, an empty, truncated or corrupt file, a pickled module or
            TorchScript archive without ``trust_pickle``, contents without tensors or with non-tensor values, keys
            that collide once their prefixes are stripped, or NaN/Inf values.
    """
    file = Path(path)
    if not file.exists():
        raise CheckpointError(f"checkpoint {file} does not exist: check the path")
    if file.is_dir():
        raise CheckpointError(f"checkpoint {file} is a directory: pass the weights file inside it")
    try:
        size = file.stat().st_size
        if size == 0:
            raise CheckpointError(f"checkpoint {file} is empty (0 bytes): re-download or re-save it")
        if file.suffix.lower() == ".safetensors" or _looks_like_safetensors(file):
            raw = _load_safetensors(file)
        else:
            raw = _load_torch(file, trust_pickle)
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {file}: {_one_line(exc)}") from exc
    state_dict = normalize_state_dict(_extract(raw, file))
    check_finite(state_dict)
    return {key: value.detach().cpu().contiguous() for key, value in state_dict.items()}


def normalize_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Strip the prefixes that training wrappers add to every key, repeatedly and in any combination.

    ``module.`` (DataParallel / DistributedDataParallel) and ``_orig_mod.`` (torch.compile) are stripped from each
    key that has them. ``model.`` (Lightning modules) and ``net.`` are ordinary attribute names too, so they are
    stripped only when every key starts with them. ``num_batches_tracked`` buffers are kept when present
    (``registry.build_model`` tolerates their absence).

    Args:
        state_dict: keys as stored in a checkpoint.

    Returns:
        A new dict with the same tensors in the same order.

    Raises:
        CheckpointError: when two keys become the same after stripping.
    """
    keys = list(state_dict)
    while True:
        stripped = [_strip_wrappers(key) for key in keys]
        shared = next((p for p in SHARED_PREFIXES if stripped and all(k.startswith(p) for k in stripped)), None)
        if shared is not None:
            stripped = [key[len(shared) :] for key in stripped]
        if stripped == keys:
            break
        keys = stripped
    cleaned: dict[str, Tensor] = {}
    for key, new, value in zip(state_dict, keys, state_dict.values()):
        if new in cleaned:
            raise CheckpointError(
                f"checkpoint keys {key!r} and another both become {new!r} after stripping prefixes: "
                "save a single model's state_dict"
            )
        cleaned[new] = value
    return cleaned


def _strip_wrappers(key: str) -> str:
    while key.startswith(WRAPPER_PREFIXES):
        for prefix in WRAPPER_PREFIXES:
            key = key.removeprefix(prefix)
    return key


def check_finite(state_dict: Mapping[str, Tensor]) -> None:
    """Refuse weights containing NaN or Inf.

    Args:
        state_dict: the weights.

    Raises:
        CheckpointError: naming the first key with a NaN or Inf value.
    """
    for key, value in state_dict.items():
        if (value.is_floating_point() or value.is_complex()) and not bool(torch.isfinite(value).all()):
            nans = int(torch.isnan(value).sum())
            infs = int(torch.isinf(value).sum())
            raise CheckpointError(
                f"tensor {key!r} has {nans} NaN and {infs} Inf values: the checkpoint is corrupt or training "
                "diverged; use an earlier checkpoint"
            )
