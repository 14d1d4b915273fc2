"""ImageFolder trees read lazily: the file list is held, and an image is decoded only when it is indexed.

A tree has one subfolder per class (labels follow the sorted folder names) holding ``.png`` / ``.jpg`` files.
:class:`FolderImages` indexes like a uint8 ``(N, H, W, 3)`` tensor, but ``images[index]`` decodes just the files it
names, in a pool of worker threads (PIL releases the GIL while it decodes), and :meth:`FolderImages.decode_batches`
decodes the next batch while the caller works on the current one.

Every image comes out at one size ``(H, W)``. An image already of that size is taken as it is; any other has its
shorter side resized to ``max(H, W) / 0.875`` and is then center-cropped, torchvision's ImageNet evaluation
convention (256 then 224 for a size of 224).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .errors import DataError, UsageError

DEFAULT_WORKERS = min(8, os.cpu_count() or 1)
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
CROP_FRACTION = 0.875

Index = int | slice | Tensor | np.ndarray | Sequence[int]


def scan_image_folder(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """The files of an ImageFolder tree and their labels, without opening any of them.

    Returns:
        ``(paths, labels)``: an object array of path strings, files sorted within a class, classes in the order of
        their sorted folder names (hidden folders and files skipped); int64 labels, the class's place in that order.
        Both empty when the tree holds no image.
    """
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    paths: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        with os.scandir(root / name) as entries:
            found = sorted(
                entry.path
                for entry in entries
                if not entry.name.startswith(".")
                and os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES
                and entry.is_file()
            )
        paths.extend(found)
        labels.extend([label] * len(found))
    return np.array(paths, dtype=object), np.array(labels, dtype=np.int64)


def read_size(path: str) -> tuple[int, int]:
    """``(H, W)`` of an image file, read from its header only."""
    try:
        with Image.open(path) as img:
            width, height = img.size
    except Exception as err:  # see decode_image
        raise DataError(f"{path}: cannot read image: {_one_line(err)}") from err
    return height, width


def decode_image(path: str, size: tuple[int, int]) -> np.ndarray:
    """One image file as uint8 ``(H, W, 3)`` RGB at ``size``, resized and cropped as the module docstring says.

    Raises:
        DataError: (one line, naming the file) when the file cannot be read or decoded.
    """
    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
    except Exception as err:  # a damaged file raises many types: OSError, SyntaxError, EOFError, zlib.error...
        raise DataError(f"{path}: cannot read image: {_one_line(err)}") from err
    height, width = size
    if rgb.size != (width, height):
        from torchvision.transforms.v2 import functional as TF  # slow import, only for images of another size

        shorter = round(max(height, width) / CROP_FRACTION)
        rgb = TF.center_crop(TF.resize(rgb, [shorter], antialias=True), [height, width])
    return np.asarray(rgb, dtype=np.uint8)


class FolderImages:
    """The images of ImageFolder files, decoded when indexed; behaves like a uint8 ``(N, H, W, 3)`` tensor for
    ``len``, ``shape`` and ``[index]``.

    Args:
        paths: one path string per image (an object array, or anything ``np.array`` turns into one).
        size: ``(H, W)`` every image is brought to.
        workers: threads that decode the images of one index (>= 1).
    """

    def __init__(self, paths: np.ndarray | Sequence[str], size: tuple[int, int], workers: int = DEFAULT_WORKERS):
        if workers < 1:
            raise UsageError(f"workers must be >= 1, got {workers}")
        height, width = size
        if height < 1 or width < 1:
            raise UsageError(f"image size {height}x{width} must be positive")
        self.paths = np.asarray(paths, dtype=object).reshape(-1)
        self.size = (int(height), int(width))
        self.workers = int(workers)

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return f"FolderImages({len(self)} files, {self.size[0]}x{self.size[1]}, workers={self.workers})"

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), *self.size, 3))

    def take(self, index: Index) -> FolderImages:
        """The images at ``index``, in that order, still undecoded."""
        return FolderImages(self.paths[_numpy_index(index)], self.size, self.workers)

    def __getitem__(self, index: Index) -> Tensor:
        """Decode the images at ``index`` now: ``(B, H, W, 3)``, or ``(H, W, 3)`` for an int."""
        if isinstance(index, Tensor) and index.dim() == 0:
            index = int(index)
        if isinstance(index, (int, np.integer)):
            return torch.from_numpy(decode_image(self.paths[index], self.size).copy())  # PIL's array is read-only
        with closing(self.decode_batches([index])) as batches:
            return next(batches)

    def decode_batches(self, indices: Iterable[Index]) -> Iterator[Tensor]:
        """Decode the images of each index in turn, ``(B, H, W, 3)`` each, the next index's while the caller holds
        the current batch.

        One pool serves the whole iteration; closing the iterator, an unreadable file or Ctrl-C cancels what is
        still queued instead of waiting for it.
        """
        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="decode")
        try:
            pending: list[Future] | None = None
            for index in indices:
                submitted = [pool.submit(decode_image, path, self.size) for path in self.paths[_numpy_index(index)]]
                if pending is not None:
                    yield self._stack(pending)
                pending = submitted
            if pending is not None:
                yield self._stack(pending)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def decode_all(self, batch_size: int = 256) -> Tensor:
        """Every image, decoded into one uint8 ``(N, H, W, 3)`` tensor filled ``batch_size`` images at a time."""
        out = torch.empty(self.shape, dtype=torch.uint8)
        offset = 0
        slices = (slice(start, start + batch_size) for start in range(0, len(self), batch_size))
        with closing(self.decode_batches(slices)) as batches:
            for batch in batches:
                out[offset : offset + len(batch)] = batch
                offset += len(batch)
        return out

    def _stack(self, futures: list[Future]) -> Tensor:
        if not futures:
            return torch.empty((0, *self.size, 3), dtype=torch.uint8)
        return torch.from_numpy(np.stack([future.result() for future in futures]))

    @staticmethod
    def concat(parts: Sequence[FolderImages]) -> FolderImages:
        """The images of ``parts`` one after the other (all of one size); the first part's workers."""
        return FolderImages(np.concatenate([part.paths for part in parts]), parts[0].size, parts[0].workers)


def _numpy_index(index: Index) -> int | slice | np.ndarray:
    if isinstance(index, Tensor):
        return index.cpu().numpy()
    if isinstance(index, (int, slice, np.ndarray)):
        return index
    return np.asarray(index, dtype=np.int64)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__
