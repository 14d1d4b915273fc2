"""Small file helpers shared by every writer: atomic writes, hashing, output-path checks."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import UsageError

PathLike = str | os.PathLike


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    A failed or interrupted write therefore never leaves a half-written file behind.
    """
    target = Path(path)
    tmp = _temporary_file_beside(target, ".tmp")
    try:
        yield tmp
        # mkstemp creates the file 0600; give the output the permissions an ordinary open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def sha256_file(path: PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_output_path(output: PathLike, *inputs: PathLike | None) -> Path:
    """Refuse an output that would overwrite one of the inputs (same file, after resolving links)."""
    out = Path(output)
    for item in inputs:
        if item is None:
            continue
        src = Path(item)
        if out.resolve() == src.resolve():
            raise UsageError(f"output {out} is the same file as input {src}: choose another -o")
    return out


def check_writable_folder(path: PathLike) -> Path:
    """Refuse, before any work, an output whose folder is missing or not writable.

    Writability is probed by creating and deleting a temporary file, which also catches read-only file systems
    and, unlike ``os.access``, does not answer "writable" to root for every folder.

    Raises:
        UsageError: naming the folder and the reason.
    """
    target = Path(path)
    _temporary_file_beside(target, ".probe").unlink()
    return target


def _temporary_file_beside(target: Path, suffix: str) -> Path:
    """Create an empty temporary file in ``target``'s folder; UsageError when the folder is missing or read-only."""
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise UsageError(f"output folder {folder} does not exist: create it first or choose another -o")
    try:
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=folder)
    except OSError as exc:
        raise UsageError(f"output folder {folder} is not writable ({exc.strerror}): choose another -o") from exc
    os.close(fd)
    return Path(name)
