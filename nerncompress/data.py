"""Image datasets: loading them from disk, normalising them and serving them in batches.

Every loader returns an :class:`ImageData` holding uint8 images ``(N, H, W, C)`` and int64 labels ``(N,)``;
the conversion to normalised float32 ``(N, C, H, W)`` happens per batch, on the target device, so a dataset
costs one byte per pixel in memory.

ImageFolder trees are always streamed, whatever their size (as torchvision's ``ImageFolder`` is): only the file
list is read when they are loaded, and each batch is decoded from its files when it is drawn, by ``workers``
threads (see :mod:`nerncompress.image_folder`), so a tree of a million JPEGs costs its file list in memory. The
other sources are held in memory. Held-out shares, which are scored many times, are decoded once
(:meth:`ImageData.in_memory`); nothing decodes a whole training set.

Supported sources (see :func:`load_data`):

* a ``.npz`` file with arrays ``x`` (images) and ``y`` (labels);
* a CIFAR-10 / CIFAR-100 "python version" folder (``cifar-10-batches-py`` or ``cifar-100-python``), or the folder
  that contains one of them;
* an ImageFolder tree: one subfolder per class holding ``.png`` / ``.jpg`` files, of any sizes: every image
  comes out at ``image_size`` (default: the first image's size, so a tree of one size is read as it is), resized
  and center-cropped as torchvision evaluates ImageNet;
* the string ``"digits"``: scikit-learn's embedded 8x8 handwritten digits, split 80/20 into train/test.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .devices import resolve_device
from .errors import DataError, UsageError
from .image_folder import DEFAULT_WORKERS, FolderImages, read_size, scan_image_folder

NORMALIZATION_PRESETS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    # The digits images are stored as uint8 0..255 like every other source, so this maps them to [-1, 1].
    "digits": ((0.5,), (0.5,)),
    # One value per statistic broadcasts to any channel count: images are only scaled to [0, 1].
    "none": ((0.0,), (1.0,)),
}

SPLITS = ("train", "test")
DIGITS_SPEC = "digits"
DIGITS_TEST_FRACTION = 0.2
DIGITS_SEED = 0

_CIFAR10_DIR = "cifar-10-batches-py"
_CIFAR100_DIR = "cifar-100-python"
_CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))


def preset_stats(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Look up a normalisation preset.

    Args:
        name: a key of :data:`NORMALIZATION_PRESETS`.

    Returns:
        ``(mean, std)``, one value per channel (or a single value that applies to every channel).

    Raises:
        UsageError: for an unknown preset name; the message lists the known ones.
    """
    try:
        return NORMALIZATION_PRESETS[name]
    except KeyError:
        known = ", ".join(sorted(NORMALIZATION_PRESETS))
        raise UsageError(f"unknown normalisation preset {name!r}: use one of {known}") from None


@dataclass
class ImageData:
    """A labelled image dataset: labels in memory, images in memory or streamed from their files.

    Attributes:
        images: uint8 tensor ``(N, H, W, C)``, values 0..255; or, for an ImageFolder tree, a
            :class:`~nerncompress.image_folder.FolderImages`, which has the same ``len``, ``shape`` and indexing
            but decodes only the images an index names.
        labels: int64 tensor ``(N,)``.
        source: where the data came from (a path, or ``"digits:test"``), for reports and error messages.
    """

    images: Tensor | FolderImages
    labels: Tensor
    source: str

    def __post_init__(self) -> None:
        if not self.streamed and (self.images.dtype != torch.uint8 or self.images.dim() != 4):
            raise DataError(
                f"{self.source}: images must be a uint8 (N, H, W, C) tensor, "
                f"got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.dim() != 1:
            raise DataError(
                f"{self.source}: labels must be an int64 (N,) tensor, "
                f"got {self.labels.dtype} {tuple(self.labels.shape)}"
            )
        if len(self.images) != len(self.labels):
            raise DataError(f"{self.source}: {len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image, the layout models receive."""
        _, h, w, c = self.images.shape
        return (int(c), int(h), int(w))

    @property
    def num_classes(self) -> int:
        """``max(label) + 1`` (0 for an empty dataset)."""
        return int(self.labels.max()) + 1 if len(self) else 0

    @property
    def streamed(self) -> bool:
        """Whether the images are decoded from files when drawn rather than held in memory."""
        return isinstance(self.images, FolderImages)

    def in_memory(self) -> ImageData:
        """This dataset with every image decoded into one tensor; the dataset itself when it already is.

        Meant for held-out shares, which are scored many times; a training set stays streamed.
        """
        if not self.streamed:
            return self
        return ImageData(self.images.decode_all(), self.labels, self.source)

    def subset(self, indices: Tensor | Sequence[int]) -> ImageData:
        """Select samples by index, in the order given.

        Args:
            indices: int indices into this dataset, tensor or sequence.

        Returns:
            A new :class:`ImageData` with the same ``source``; tensors are copies. A streamed dataset's subset is
            streamed too: nothing is decoded.
        """
        index = torch.as_tensor(indices, dtype=torch.long)
        images = self.images.take(index) if self.streamed else self.images[index]
        return ImageData(images, self.labels[index], self.source)


def concat_data(*datasets: ImageData) -> ImageData:
    """Join datasets into one, in the order given (e.g. the lossless and the JPEG CIFAR training images).

    Args:
        datasets: one or more datasets whose images all have the same ``(H, W, C)``; all in memory, or all
            streamed (ImageFolder trees).

    Returns:
        One dataset; its ``source`` joins the sources with " + ". A single dataset is returned as is.

    Raises:
        UsageError: when no dataset is given.
        DataError: when the image sizes differ, or streamed and in-memory datasets are mixed, naming both sources.
    """
    if not datasets:
        raise UsageError("concat_data needs at least one dataset")
    if len(datasets) == 1:
        return datasets[0]
    first = datasets[0]
    for other in datasets[1:]:
        if other.images.shape[1:] != first.images.shape[1:]:
            size = "x".join(str(int(v)) for v in other.images.shape[1:])
            expected = "x".join(str(int(v)) for v in first.images.shape[1:])
            raise DataError(
                f"{other.source} holds {size} (HxWxC) images but {first.source} holds {expected}: "
                "combine only datasets of one image size"
            )
        if other.streamed != first.streamed:
            tree, held = (first, other) if first.streamed else (other, first)
            raise DataError(
                f"{tree.source} is an ImageFolder tree, read from its files batch by batch, and {held.source} is held "
                "in memory: combine ImageFolder trees only with each other (or convert one dataset to the other's form)"
            )
    if first.streamed:
        images = FolderImages.concat([d.images for d in datasets])
    else:
        images = torch.cat([d.images for d in datasets])
    return ImageData(
        images=images,
        labels=torch.cat([d.labels for d in datasets]),
        source=" + ".join(d.source for d in datasets),
    )


# --------------------------------------------------------------------------------------------------- loading


def load_data(
    spec: str | os.PathLike,
    *,
    split: str = "test",
    workers: int = DEFAULT_WORKERS,
    image_size: int | tuple[int, int] | None = None,
) -> ImageData:
    """Load a labelled image dataset.

    Args:
        spec: ``"digits"`` (scikit-learn's embedded dataset; takes precedence over a file of that name), a ``.npz``
            file, a CIFAR-10/100 python folder (or its parent), or an ImageFolder tree.
        split: ``"train"`` or ``"test"``. Chooses the batches of a CIFAR folder and the part of ``digits``;
            ignored for ``.npz`` files and ImageFolder trees, which hold a single split.
        workers: threads that decode the images of an ImageFolder tree (>= 1); unused by the other sources.
        image_size: the size every image of an ImageFolder tree comes out at, ``S`` (square) or ``(H, W)``;
            None takes the first image's size. Unused by the other sources, whose images are kept as stored.

    Returns:
        The dataset; images uint8 ``(N, H, W, C)`` (streamed from the files for an ImageFolder tree), labels
        int64 ``(N,)``.

    Raises:
        UsageError: for a split other than train/test, workers < 1 or a size that is not positive.
        DataError: (one line, naming the path) for a missing path, an unknown format, an ``.npz`` without
            ``x``/``y``, images and labels of different lengths, an empty dataset or negative labels. A damaged
            image of an ImageFolder tree is found when it is decoded: the error names the file.

    Note:
        CIFAR python folders are pickles (the format the dataset is distributed in). They are only read from a
        folder the caller named, and through an unpickler that accepts nothing but plain containers and numpy
        arrays, so a tampered file fails with :class:`DataError` instead of running code.
    """
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}: use train or test")
    if workers < 1:
        raise UsageError(f"workers must be >= 1, got {workers}")
    size = _size_pair(image_size)
    if isinstance(spec, str) and spec == DIGITS_SPEC:
        return _load_digits(split)
    path = Path(spec)
    if not path.exists():
        raise DataError(
            f"dataset path {path} does not exist: give a .npz file, a CIFAR python folder or an ImageFolder tree"
        )
    if path.is_file():
        if path.suffix.lower() == ".npz":
            return _load_npz(path)
        raise DataError(
            f"{path}: unknown dataset format {path.suffix or '(no suffix)'}: "
            "give a .npz file, a CIFAR python folder or an ImageFolder tree"
        )
    if not path.is_dir():
        raise DataError(f"{path} is neither a file nor a folder: give a .npz file or a dataset folder")
    cifar = _find_cifar_folder(path)
    if cifar is not None:
        return _load_cifar(cifar, split)
    return _load_image_folder(path, workers=workers, size=size)


def _size_pair(image_size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if image_size is None:
        return None
    pair = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(pair) != 2 or min(pair) < 1:
        raise UsageError(f"image_size {image_size} must be a positive S or (H, W)")
    return int(pair[0]), int(pair[1])


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _finish(images: np.ndarray, labels: np.ndarray, source: str) -> ImageData:
    """Shared final checks of every loader, then the conversion to tensors."""
    if len(images) != len(labels):
        raise DataError(f"{source}: {len(images)} images but {len(labels)} labels: both must have one entry per sample")
    if len(labels) == 0:
        raise DataError(f"{source}: the dataset is empty: give at least one labelled image")
    if labels.min() < 0:
        raise DataError(f"{source}: labels must be >= 0, found {int(labels.min())}")
    return ImageData(
        images=torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8)),
        labels=torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)),
        source=source,
    )


def _load_npz(path: Path) -> ImageData:
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in ("x", "y") if key not in archive.files]
            if missing:
                raise DataError(
                    f"{path}: .npz has no array {' or '.join(missing)} (found {', '.join(archive.files) or 'none'}): "
                    "store images as x and labels as y"
                )
            x = archive["x"]
            y = archive["y"]
    except DataError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise DataError(f"{path}: cannot read .npz file: {_one_line(err)}") from err
    images = _images_from_array(x, path)
    labels = _labels_from_array(y, path)
    return _finish(images, labels, str(path))


def _images_from_array(x: np.ndarray, path: Path) -> np.ndarray:
    """Bring an ``x`` array to uint8 NHWC: accepts NHWC, NCHW (C in 1, 3), NHW, uint8 or float in [0, 1]."""
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise DataError(f"{path}: x has shape {x.shape}: store images as (N, H, W, C)")
    if x.shape[3] not in (1, 3):
        if x.shape[1] in (1, 3):
            x = x.transpose(0, 2, 3, 1)
        else:
            raise DataError(f"{path}: x has shape {x.shape}: store images as (N, H, W, C) with 1 or 3 channels")
    if x.dtype == np.uint8:
        return x
    if np.issubdtype(x.dtype, np.floating):
        if x.size and not (np.isfinite(x).all() and x.min() >= 0.0 and x.max() <= 1.0):
            raise DataError(f"{path}: float images in x must lie in [0, 1]: store uint8 0..255 or floats in [0, 1]")
        return np.rint(x * 255.0).astype(np.uint8)
    raise DataError(f"{path}: x has dtype {x.dtype}: store uint8 0..255 or floats in [0, 1]")


def _labels_from_array(y: np.ndarray, path: Path) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{path}: y has shape {y.shape}: store one integer label per image, shape (N,)")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: y has dtype {y.dtype}: store integer class labels")
    return y.astype(np.int64)


# --- CIFAR python folders


def _is_cifar10(folder: Path) -> bool:
    return (folder / "test_batch").is_file() or (folder / "data_batch_1").is_file()


def _is_cifar100(folder: Path) -> bool:
    return (folder / "meta").is_file() and ((folder / "train").is_file() or (folder / "test").is_file())


def _find_cifar_folder(folder: Path) -> Path | None:
    """The CIFAR python folder at or directly below ``folder``, or None when it is not one."""
    if _is_cifar10(folder) or _is_cifar100(folder):
        return folder
    found = [
        sub
        for sub in (folder / _CIFAR10_DIR, folder / _CIFAR100_DIR)
        if sub.is_dir() and (_is_cifar10(sub) or _is_cifar100(sub))
    ]
    if len(found) > 1:
        raise DataError(f"{folder} holds both {_CIFAR10_DIR} and {_CIFAR100_DIR}: point at one of them")
    return found[0] if found else None


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild numpy arrays and plain containers, and nothing else."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataError(f"{path} is missing: the CIFAR folder is incomplete, download it again")
    try:
        with open(path, "rb") as handle:
            batch = _CifarUnpickler(handle, encoding="bytes").load()
    except Exception as err:  # any unpickling failure is a bad file, whatever the type
        raise DataError(f"{path}: cannot read CIFAR batch: {_one_line(err)}") from err
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        raise DataError(f"{path}: not a CIFAR batch (needs keys data and {label_key.decode()})")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: CIFAR data must be uint8 (N, 3072), got {data.dtype} {data.shape}")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: CIFAR labels must be a list of integers")
    # Rows are stored channel-major: 1024 red, then 1024 green, then 1024 blue values.
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels.astype(np.int64)


def _load_cifar(folder: Path, split: str) -> ImageData:
    if _is_cifar10(folder):
        names = _CIFAR10_TRAIN_FILES if split == "train" else ("test_batch",)
        label_key = b"labels"
    else:
        names = (split,)
        label_key = b"fine_labels"
    parts = [_read_cifar_batch(folder / name, label_key) for name in names]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return _finish(images, labels, f"{folder}:{split}")


# --- ImageFolder trees


def _load_image_folder(root: Path, *, workers: int, size: tuple[int, int] | None) -> ImageData:
    paths, labels = scan_image_folder(root)
    if not len(paths):
        raise DataError(
            f"{root}: unknown dataset folder: not a CIFAR python folder and no class subfolders with .png/.jpg images"
        )
    images = FolderImages(paths, size or read_size(paths[0]), workers)
    return ImageData(images, torch.from_numpy(labels), str(root))


# --- scikit-learn digits


def _load_digits(split: str) -> ImageData:
    from sklearn.datasets import load_digits  # slow import, only needed here

    bunch = load_digits()
    # Values are 0..16; store them like every other source, as uint8 0..255.
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = bunch.target.astype(np.int64)
    train_idx, test_idx = _split_indices(labels, fraction=DIGITS_TEST_FRACTION, seed=DIGITS_SEED)
    index = train_idx if split == "train" else test_idx
    return _finish(images[index], labels[index], f"{DIGITS_SPEC}:{split}")


# ----------------------------------------------------------------------------------------------- splitting


def split_holdout(data: ImageData, *, fraction: float, seed: int) -> tuple[ImageData, ImageData]:
    """Split a dataset into a training part and a held-out part, deterministically.

    Stratified by label when every class present has at least 2 samples (each class then gives about
    ``fraction`` of its samples, with the total equal to ``round(fraction * N)``); otherwise a plain random split.
    Both parts keep the original sample order.

    Args:
        data: the dataset to split, N >= 2.
        fraction: share of samples held out, 0 < fraction < 1. Each part gets at least one sample.
        seed: seed of the permutation; the same (data, fraction, seed) always gives the same split.

    Returns:
        ``(train_part, holdout_part)``, disjoint and together covering ``data``.

    Raises:
        UsageError: for a fraction outside (0, 1).
        DataError: for a dataset with fewer than 2 samples.
    """
    if not 0.0 < fraction < 1.0:
        raise UsageError(f"holdout fraction {fraction} must lie strictly between 0 and 1")
    if len(data) < 2:
        raise DataError(f"{data.source}: cannot split a dataset of {len(data)} sample(s): give at least 2")
    train_idx, hold_idx = _split_indices(data.labels.cpu().numpy(), fraction=fraction, seed=seed)
    train, hold = data.subset(torch.from_numpy(train_idx)), data.subset(torch.from_numpy(hold_idx))
    train.source, hold.source = f"{data.source}[train part]", f"{data.source}[holdout part]"
    return train, hold


def _split_indices(labels: np.ndarray, *, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ``(keep, holdout)`` index arrays; see :func:`split_holdout`."""
    n = len(labels)
    total = min(max(int(round(fraction * n)), 1), n - 1)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    if counts.min() < 2:
        order = rng.permutation(n)
        hold = order[:total]
    else:
        # Largest-remainder allocation: per-class quotas that add up to exactly `total`.
        quota = counts * (total / n)
        take = np.floor(quota).astype(np.int64)
        remainder = quota - take
        for i in np.argsort(-remainder, kind="stable")[: total - int(take.sum())]:
            take[i] += 1
        hold = np.concatenate(
            [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take, strict=True)]
        )
    mask = np.zeros(n, dtype=bool)
    mask[hold] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


# ---------------------------------------------------------------------------------------------- batching


def _stats_tensor(values: Sequence[float], channels: int, what: str, device: torch.device) -> Tensor:
    t = torch.as_tensor(tuple(values), dtype=torch.float32, device=device).flatten()
    if t.numel() not in (1, channels):
        raise UsageError(
            f"normalisation {what} has {t.numel()} values but the images have {channels} channel(s): "
            "choose a preset that matches the data"
        )
    return t.view(1, -1, 1, 1)


def to_float(images: Tensor, *, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Scale uint8 images to [0, 1], normalise per channel, and move channels first.

    Args:
        images: uint8 ``(N, H, W, C)``, on any device (the result stays there).
        mean: per-channel mean, C values or one value for every channel.
        std: per-channel standard deviation, same length rules, all > 0.

    Returns:
        float32 ``(N, C, H, W)``, contiguous: ``(images / 255 - mean) / std``.

    Raises:
        DataError: when ``images`` is not a uint8 4-D tensor.
        UsageError: when mean/std do not match the channel count or a std is not positive.
    """
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise DataError(f"images must be uint8 (N, H, W, C), got {images.dtype} {tuple(images.shape)}")
    channels = int(images.shape[3])
    mean_t = _stats_tensor(mean, channels, "mean", images.device)
    std_t = _stats_tensor(std, channels, "std", images.device)
    if bool((std_t <= 0).any()):
        raise UsageError(f"normalisation std {tuple(std)} must be > 0")
    x = images.permute(0, 3, 1, 2).contiguous().to(torch.float32).div_(255.0)
    return x.sub_(mean_t).div_(std_t)


def iterate_batches(
    data: ImageData,
    *,
    batch_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    device: str | torch.device,
    shuffle: bool = False,
    augment: bool = False,
    generator: torch.Generator | None = None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Serve a dataset as normalised batches on a device.

    Arguments are checked when this is called, not when the first batch is drawn. Only the current batch is
    moved to the device, as uint8, and converted there.

    Args:
        data: the dataset.
        batch_size: samples per batch (> 0); the last batch may be smaller.
        mean: per-channel normalisation mean (see :func:`to_float`).
        std: per-channel normalisation std.
        device: ``"auto"``, ``"cpu"``, ``"cuda[:N]"`` or a ``torch.device``.
        shuffle: visit samples in a random order drawn from ``generator``.
        augment: apply :func:`augment_batch` (random crop + flip) to each batch.
        generator: source of randomness for shuffling and augmentation; None uses torch's global RNG.

    Returns:
        An iterator of ``(x, y)``: x float32 ``(B, C, H, W)`` and y int64 ``(B,)``, both on the device.

    Raises:
        UsageError: for batch_size <= 0, an unavailable device, or mean/std not matching the images.
    """
    if batch_size <= 0:
        raise UsageError(f"batch size {batch_size} must be > 0")
    dev = resolve_device(device)
    channels = data.image_shape[0]
    _stats_tensor(mean, channels, "mean", torch.device("cpu"))
    _stats_tensor(std, channels, "std", torch.device("cpu"))
    return _batches(data, batch_size, mean, std, dev, shuffle, augment, generator)


def _batches(
    data: ImageData,
    batch_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
    shuffle: bool,
    augment: bool,
    generator: torch.Generator | None,
) -> Iterator[tuple[Tensor, Tensor]]:
    n = len(data)
    order = _randperm(n, generator) if shuffle else None
    non_blocking = device.type == "cuda"
    starts = range(0, n, batch_size)
    if order is None:
        indices = [slice(start, start + batch_size) for start in starts]
    else:
        indices = [order[start : start + batch_size] for start in starts]
    if data.streamed:
        batches = data.images.decode_batches(indices)  # the next batch is decoded while this one is used
    else:
        batches = (data.images[index] for index in indices)
    with closing(batches):
        for index, images in zip(indices, batches, strict=True):
            x = to_float(images.to(device, non_blocking=non_blocking), mean=mean, std=std)
            if augment:
                x = augment_batch(x, generator=generator)
            yield x, data.labels[index].to(device, non_blocking=non_blocking)


def _randperm(n: int, generator: torch.Generator | None) -> Tensor:
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.randperm(n, generator=generator, device=device).cpu()


def augment_batch(x: Tensor, *, generator: torch.Generator | None) -> Tensor:
    """CIFAR-style augmentation: random crop from a zero-padded image, then random horizontal flip.

    Padding is 4 pixels (1 for images smaller than 16 pixels); the zeros are added in normalised space, i.e. they
    are mean-coloured pixels. Each image gets its own shift and flip; all images are processed in one gather.

    Args:
        x: float ``(N, C, H, W)``, on any device.
        generator: source of the random shifts and flips (its device may differ from ``x``'s); the same
            generator state always gives the same result. None uses torch's global RNG.

    Returns:
        A new tensor of the same shape, dtype and device as ``x``.
    """
    n, _, h, w = x.shape
    if n == 0:
        return x.clone()
    pad = 4 if min(h, w) >= 16 else 1
    gen_device = generator.device if generator is not None else torch.device("cpu")
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator, device=gen_device).to(x.device)
    flips = (torch.rand(n, generator=generator, device=gen_device) < 0.5).to(x.device)
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = offsets[:, 0:1] + torch.arange(h, device=x.device)  # (N, H) rows of the padded image to read
    cols = offsets[:, 1:2] + torch.arange(w, device=x.device)  # (N, W)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=x.device)[:, None, None]
    # Advanced indices on dims 0, 2, 3 around a slice put the indexed dims first: result is (N, H, W, C).
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def noise_batch(
    batch_size: int,
    shape: tuple[int, int, int],
    *,
    generator: torch.Generator | None,
    low: float = -2.0,
    high: float = 2.0,
    device: str | torch.device | None = None,
) -> Tensor:
    """Uniform noise images, the inputs of data-free distillation.

    Args:
        batch_size: number of images (> 0).
        shape: ``(C, H, W)`` of one image.
        generator: source of randomness (drawn on its own device); None uses torch's global RNG.
        low: lower bound, in normalised units.
        high: upper bound (> low).
        device: where to return the batch; None keeps the generator's device.

    Returns:
        float32 ``(batch_size, C, H, W)`` uniform in ``[low, high)``.

    Raises:
        UsageError: for batch_size <= 0 or low >= high.
    """
    if batch_size <= 0:
        raise UsageError(f"batch size {batch_size} must be > 0")
    if not low < high:
        raise UsageError(f"noise range [{low}, {high}) is empty: low must be below high")
    gen_device = generator.device if generator is not None else torch.device("cpu")
    x = torch.rand((batch_size, *shape), generator=generator, device=gen_device, dtype=torch.float32)
    x = x.mul_(high - low).add_(low)
    return x if device is None else x.to(resolve_device(device))


MIX_METHODS = ("none", "mixup", "cutmix")


def mix_batch(x: Tensor, *, method: str, fraction: float, generator: torch.Generator | None) -> Tensor:
    """Blend images of a batch with partners from the same batch, for distillation inputs.

    Distillation only needs the teacher's answer on the input, never a label, so mixed images are valid
    training points; they cover the space between images, where student and teacher disagree most (Stanton et
    al., "Does knowledge distillation really work?", 2021, found such augmentations raise fidelity).

    Args:
        x: float ``(N, C, H, W)``.
        method: ``mixup`` (per-image convex blend, weight ~ U(0, 1)), ``cutmix`` (a rectangle of the partner
            pasted in, area ~ U(0, 1)) or ``none``.
        fraction: share of the batch that is mixed (the first images stay as they are).
        generator: source of partners, weights and boxes (CPU generator).

    Returns:
        A new tensor like ``x``.
    """
    if method not in MIX_METHODS:
        raise ValueError(f"unknown mix method {method!r}; expected one of {', '.join(MIX_METHODS)}")
    n, _, h, w = x.shape
    mixed = round(n * fraction)
    if method == "none" or mixed == 0 or n < 2:
        return x.clone()
    start = n - mixed
    partners = torch.randint(0, n, (mixed,), generator=generator).to(x.device)
    amount = torch.rand(mixed, generator=generator).to(x.device)
    out = x.clone()
    if method == "mixup":
        weight = amount.view(-1, 1, 1, 1).to(x.dtype)
        out[start:] = (1 - weight) * x[start:] + weight * x[partners]
        return out
    # cutmix: a box of area fraction `amount`, with the image's aspect ratio, placed uniformly at random.
    box_h = (amount.sqrt() * h).round().long()
    box_w = (amount.sqrt() * w).round().long()
    top = (torch.rand(mixed, generator=generator).to(x.device) * (h - box_h + 1)).floor().long()
    left = (torch.rand(mixed, generator=generator).to(x.device) * (w - box_w + 1)).floor().long()
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (
        (rows >= top.view(-1, 1, 1)) & (rows < (top + box_h).view(-1, 1, 1))
        & (cols >= left.view(-1, 1, 1)) & (cols < (left + box_w).view(-1, 1, 1))
    )  # fmt: skip
    out[start:] = torch.where(inside[:, None], x[partners], x[start:])
    return out


def draw_batch(
    data: ImageData | None,
    batch_size: int,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    shape: tuple[int, int, int],
    generator: torch.Generator,
    augment: bool = True,
    mix: str = "mixup",
    mix_fraction: float = 0.5,
    noise_low: float = -2.0,
    noise_high: float = 2.0,
) -> Tensor:
    """One batch of distillation inputs: images drawn with replacement, augmented and partly blended; or, without
    data, uniform noise images of ``shape``.

    Returns:
        float32 ``(batch_size, C, H, W)``, normalised, on the CPU.
    """
    if data is None:
        return noise_batch(batch_size, shape, generator=generator, low=noise_low, high=noise_high)
    index = torch.randint(len(data), (batch_size,), generator=generator)
    x = to_float(data.images[index], mean=mean, std=std)
    if augment:
        x = augment_batch(x, generator=generator)
    if mix != "none":
        x = mix_batch(x, method=mix, fraction=mix_fraction, generator=generator)
    return x
