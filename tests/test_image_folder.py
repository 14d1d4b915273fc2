"""Tests of nerncompress.image_folder: scanning a tree, decoding only what is indexed, sizes, damaged files."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from nerncompress import image_folder
from nerncompress.errors import DataError, UsageError
from nerncompress.image_folder import FolderImages, decode_image, read_size, scan_image_folder


def _save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _random(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


@pytest.fixture
def counted(monkeypatch) -> list[str]:
    """Every path decode_image is asked for, in call order (the real decoding still runs)."""
    calls: list[str] = []
    real = image_folder.decode_image

    def counting(path, size):
        calls.append(path)
        return real(path, size)

    monkeypatch.setattr(image_folder, "decode_image", counting)
    return calls


def _tree(root: Path, count: int = 6, shape: tuple[int, int, int] = (5, 7, 3)) -> list[np.ndarray]:
    """``count`` images in two classes ``a`` and ``b``, named so that their sorted order is their index."""
    pics = [_random(shape, seed) for seed in range(count)]
    for i, pic in enumerate(pics):
        _save(root / ("a" if i < count // 2 else "b") / f"{i:03d}.png", pic)
    return pics


def test_scan_orders_classes_and_files_and_skips_the_rest(tmp_path):
    _save(tmp_path / "zebra" / "b.JPG", _random((4, 4, 3), 0))
    _save(tmp_path / "zebra" / "a.png", _random((4, 4, 3), 1))
    _save(tmp_path / "cat" / "c.jpeg", _random((4, 4, 3), 2))
    _save(tmp_path / "cat" / ".hidden.png", _random((4, 4, 3), 3))
    _save(tmp_path / ".cache" / "x.png", _random((4, 4, 3), 4))
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "cat" / "sub.png").mkdir()  # a folder named like an image
    paths, labels = scan_image_folder(tmp_path)
    names = [Path(p).relative_to(tmp_path).as_posix() for p in paths]
    assert names == ["cat/c.jpeg", "zebra/a.png", "zebra/b.JPG"]
    assert labels.tolist() == [0, 1, 1] and labels.dtype == np.int64


def test_indexing_decodes_only_what_it_names(tmp_path, counted):
    pics = _tree(tmp_path)
    paths, _ = scan_image_folder(tmp_path)
    images = FolderImages(paths, (5, 7), workers=2)
    subset = images.take(torch.tensor([4, 1, 2]))
    both = FolderImages.concat([subset, images.take([0])])
    assert counted == []  # building, selecting and joining decode nothing
    assert images.shape == (6, 5, 7, 3) and len(subset) == 3 and both.shape == (4, 5, 7, 3)
    batch = both[torch.tensor([3, 0])]
    assert batch.dtype == torch.uint8 and batch.shape == (2, 5, 7, 3)
    assert np.array_equal(batch[0].numpy(), pics[0]) and np.array_equal(batch[1].numpy(), pics[4])
    assert sorted(Path(p).name for p in counted) == ["000.png", "004.png"]
    assert np.array_equal(images[5].numpy(), pics[5])  # an int gives one (H, W, 3) image
    assert np.array_equal(images[1:3].numpy(), np.stack(pics[1:3]))
    assert images[[]].shape == (0, 5, 7, 3)
    assert len(counted) == 5


def test_decode_batches_keeps_order_and_decodes_one_batch_ahead(tmp_path, counted):
    pics = _tree(tmp_path)
    images = FolderImages(scan_image_folder(tmp_path)[0], (5, 7), workers=3)
    batches = images.decode_batches([slice(0, 2), torch.tensor([5, 2]), [3]])
    first = next(batches)
    deadline = time.perf_counter() + 5
    while len(counted) < 4 and time.perf_counter() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    assert len(counted) == 4  # the first batch and the next one, nothing more
    rest = list(batches)
    got = [first, *rest]
    assert [b.shape[0] for b in got] == [2, 2, 1]
    assert np.array_equal(torch.cat(got).numpy(), np.stack([pics[i] for i in (0, 1, 5, 2, 3)]))
    assert np.array_equal(images.decode_all(batch_size=4).numpy(), np.stack(pics))


def test_an_image_of_the_size_is_kept_and_others_resized_and_center_cropped(tmp_path):
    """The torchvision ImageNet evaluation transform: shorter side to S / 0.875, then the central S x S."""
    same = _save(tmp_path / "same.png", _random((7, 7, 3), 0))
    wide = _save(tmp_path / "wide.png", _random((12, 30, 3), 1))
    gray = _save(tmp_path / "gray.png", _random((9, 5), 2))
    assert np.array_equal(decode_image(str(same), (7, 7)), np.asarray(Image.open(same)))
    reference = v2.Compose([v2.Resize(8), v2.CenterCrop(7)])  # round(7 / 0.875) = 8
    for path in (wide, gray):
        out = decode_image(str(path), (7, 7))
        assert out.shape == (7, 7, 3) and out.dtype == np.uint8
        assert np.array_equal(out, np.asarray(reference(Image.open(path).convert("RGB"))))
    assert decode_image(str(wide), (4, 10)).shape == (4, 10, 3)  # (H, W), not square
    assert read_size(str(wide)) == (12, 30)


def test_damaged_files_name_the_file_in_one_line(tmp_path):
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image at all")
    truncated = tmp_path / "truncated.png"
    full = _save(tmp_path / "full.png", _random((32, 32, 3), 0)).read_bytes()
    truncated.write_bytes(full[: len(full) // 2])
    for path in (garbage, truncated, tmp_path / "gone.png"):
        with pytest.raises(DataError) as excinfo:
            FolderImages([str(path)], (32, 32), workers=2)[:]
        message = str(excinfo.value)
        assert message.startswith(f"{path}: cannot read image") and "\n" not in message
    with pytest.raises(DataError, match="garbage.png: cannot read image"):
        read_size(str(garbage))


def _slow_images(tmp_path: Path, monkeypatch, failure: BaseException, count: int = 100) -> tuple[FolderImages, list]:
    """A tree of ``count`` files whose first decode raises ``failure`` and each other takes 20 ms."""
    path = str(_save(tmp_path / "a" / "x.png", _random((4, 4, 3), 0)))
    calls = []

    def decode(path_, size):
        calls.append(path_)
        if len(calls) == 1:
            raise failure
        time.sleep(0.02)
        return np.zeros((*size, 3), np.uint8)

    monkeypatch.setattr(image_folder, "decode_image", decode)
    return FolderImages([path] * count, (4, 4), workers=1), calls


@pytest.mark.parametrize("failure", [DataError("x.png: cannot read image"), KeyboardInterrupt()])
def test_an_error_or_ctrl_c_cancels_the_queued_decodes(tmp_path, monkeypatch, failure):
    images, calls = _slow_images(tmp_path, monkeypatch, failure)
    started = time.perf_counter()
    with pytest.raises(type(failure)):
        images[:]
    assert time.perf_counter() - started < 1.0  # the 99 queued decodes of 20 ms would take 2 s
    time.sleep(0.1)
    assert len(calls) <= 3  # the queued decodes were cancelled, not run
    assert not [t for t in threading.enumerate() if t.name.startswith("decode") and t.is_alive()]


def test_arguments_are_checked():
    with pytest.raises(UsageError, match="workers"):
        FolderImages(["a.png"], (4, 4), workers=0)
    with pytest.raises(UsageError, match="size"):
        FolderImages(["a.png"], (0, 4))
