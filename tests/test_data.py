"""Tests of nerncompress.data: loaders (ImageFolder trees streamed), normalisation, batching, augmentation, noise and
holdout splits."""

from __future__ import annotations

import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nerncompress.data import (
    NORMALIZATION_PRESETS,
    ImageData,
    augment_batch,
    concat_data,
    draw_batch,
    iterate_batches,
    mix_batch,
    load_data,
    noise_batch,
    preset_stats,
    split_holdout,
    to_float,
)
from nerncompress.errors import DataError, UsageError

from conftest import SHARED_DATA, requires_shared_data


def _assert_one_line_data_error(excinfo: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(excinfo.value)
    assert excinfo.type is DataError
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def _indexed_data(labels: list[int], size: int = 4, channels: int = 3) -> ImageData:
    """Images whose first pixel holds their index, so subsets can be traced back."""
    n = len(labels)
    images = torch.zeros((n, size, size, channels), dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)
    return ImageData(images, torch.tensor(labels, dtype=torch.int64), "indexed")


# ---------------------------------------------------------------------------------------- presets


def test_presets_hold_the_documented_values() -> None:
    assert NORMALIZATION_PRESETS["imagenet"] == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert NORMALIZATION_PRESETS["cifar10"] == ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    assert preset_stats("digits") == ((0.5,), (0.5,))
    assert preset_stats("none") == ((0.0,), (1.0,))


def test_unknown_preset_lists_known_ones() -> None:
    with pytest.raises(UsageError) as excinfo:
        preset_stats("mnist")
    for name in NORMALIZATION_PRESETS:
        assert name in str(excinfo.value)


# ------------------------------------------------------------------------------------------- npz


def test_npz_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(5, 6, 7, 3), dtype=np.uint8)
    y = np.array([0, 1, 2, 1, 0], dtype=np.int64)
    np.savez_compressed(tmp_path / "d.npz", x=x, y=y)
    data = load_data(tmp_path / "d.npz")
    assert data.images.dtype == torch.uint8 and data.labels.dtype == torch.int64
    assert np.array_equal(data.images.numpy(), x) and np.array_equal(data.labels.numpy(), y)
    assert len(data) == 5 and data.image_shape == (3, 6, 7) and data.num_classes == 3
    assert data.source == str(tmp_path / "d.npz")
    # split is meaningless for a single-split file and ignored.
    assert torch.equal(load_data(str(tmp_path / "d.npz"), split="train").images, data.images)


def test_npz_accepts_nchw_float_and_grayscale(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(4, 5, 5, 3), dtype=np.uint8)
    y = np.arange(4, dtype=np.int32)
    np.savez(tmp_path / "nchw.npz", x=x.transpose(0, 3, 1, 2), y=y)
    np.savez(tmp_path / "float.npz", x=x.astype(np.float32) / 255.0, y=y)
    np.savez(tmp_path / "gray.npz", x=x[..., 0], y=y[:, None])
    assert np.array_equal(load_data(tmp_path / "nchw.npz").images.numpy(), x)
    assert np.array_equal(load_data(tmp_path / "float.npz").images.numpy(), x)
    gray = load_data(tmp_path / "gray.npz")
    assert gray.images.shape == (4, 5, 5, 1) and gray.labels.tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("arrays", "fragment"),
    [
        ({"images": np.zeros((2, 4, 4, 3), np.uint8), "y": np.zeros(2, np.int64)}, "no array x"),
        ({"x": np.zeros((2, 4, 4, 3), np.uint8)}, "no array y"),
        ({"x": np.zeros((3, 4, 4, 3), np.uint8), "y": np.zeros(2, np.int64)}, "3 images but 2 labels"),
        ({"x": np.zeros((0, 4, 4, 3), np.uint8), "y": np.zeros(0, np.int64)}, "empty"),
        ({"x": np.zeros((2, 4, 4, 3), np.uint8), "y": np.array([0, -1])}, "labels must be >= 0"),
        ({"x": np.full((2, 4, 4, 3), 2.0, np.float32), "y": np.zeros(2, np.int64)}, "[0, 1]"),
        ({"x": np.zeros((2, 4, 4, 3), np.int32), "y": np.zeros(2, np.int64)}, "dtype int32"),
        ({"x": np.zeros((2, 4, 4, 3), np.uint8), "y": np.zeros(2, np.float32)}, "integer class labels"),
        ({"x": np.zeros((2, 5, 4, 4), np.uint8), "y": np.zeros(2, np.int64)}, "1 or 3 channels"),
    ],
)
def test_npz_errors(tmp_path: Path, arrays: dict, fragment: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError) as excinfo:
        load_data(path)
    _assert_one_line_data_error(excinfo, str(path), fragment)


def test_path_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError) as excinfo:
        load_data(tmp_path / "absent.npz")
    _assert_one_line_data_error(excinfo, "absent.npz", "does not exist")
    (tmp_path / "d.csv").write_text("1,2\n")
    with pytest.raises(DataError) as excinfo:
        load_data(tmp_path / "d.csv")
    _assert_one_line_data_error(excinfo, "d.csv", "unknown dataset format")
    (tmp_path / "broken.npz").write_bytes(b"not a zip\nat all")
    with pytest.raises(DataError) as excinfo:
        load_data(tmp_path / "broken.npz")
    _assert_one_line_data_error(excinfo, "broken.npz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as excinfo:
        load_data(tmp_path / "empty")
    _assert_one_line_data_error(excinfo, "empty", "unknown dataset folder")
    with pytest.raises(UsageError):
        load_data(tmp_path / "d.csv", split="val")


# ----------------------------------------------------------------------------------------- CIFAR


def _cifar_rows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random HWC images and their CIFAR row encoding (1024 R, 1024 G, 1024 B values)."""
    hwc = np.random.default_rng(seed).integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    return hwc, hwc.transpose(0, 3, 1, 2).reshape(n, 3072)


def _write_pickle(path: Path, obj: object, protocol: int) -> None:
    with open(path, "wb") as handle:
        pickle.dump(obj, handle, protocol=protocol)


def _fake_cifar10(root: Path, protocol: int = 2) -> tuple[np.ndarray, np.ndarray]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train = []
    for i in range(1, 6):
        hwc, rows = _cifar_rows(2, seed=i)
        train.append(hwc)
        _write_pickle(folder / f"data_batch_{i}", {b"data": rows, b"labels": [i, 9 - i]}, protocol)
    test_hwc, test_rows = _cifar_rows(3, seed=10)
    _write_pickle(folder / "test_batch", {b"data": test_rows, b"labels": [3, 1, 4], b"batch_label": b"t"}, protocol)
    _write_pickle(folder / "batches.meta", {b"label_names": [b"a"] * 10}, protocol)
    return np.concatenate(train), test_hwc


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar10_python_folder(tmp_path: Path, protocol: int) -> None:
    train_hwc, test_hwc = _fake_cifar10(tmp_path, protocol)
    test = load_data(tmp_path / "cifar-10-batches-py")
    assert np.array_equal(test.images.numpy(), test_hwc) and test.labels.tolist() == [3, 1, 4]
    train = load_data(tmp_path / "cifar-10-batches-py", split="train")
    assert np.array_equal(train.images.numpy(), train_hwc)
    assert train.labels.tolist() == [1, 8, 2, 7, 3, 6, 4, 5, 5, 4]
    # The parent folder works too.
    assert torch.equal(load_data(tmp_path).images, test.images)


def test_cifar100_python_folder_uses_fine_labels(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    hwc, rows = _cifar_rows(2, seed=3)
    _write_pickle(folder / "test", {b"data": rows, b"fine_labels": [57, 99], b"coarse_labels": [1, 2]}, 2)
    _write_pickle(folder / "train", {b"data": rows[:1], b"fine_labels": [5], b"coarse_labels": [0]}, 2)
    _write_pickle(folder / "meta", {b"fine_label_names": []}, 2)
    data = load_data(tmp_path)
    assert np.array_equal(data.images.numpy(), hwc) and data.labels.tolist() == [57, 99]
    assert load_data(folder, split="train").labels.tolist() == [5]


class _Trap:
    def __reduce__(self):  # a harmless stand-in for a malicious payload
        return (list, ((1, 2),))


def test_cifar_errors(tmp_path: Path) -> None:
    _fake_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    (folder / "data_batch_4").unlink()
    with pytest.raises(DataError) as excinfo:
        load_data(folder, split="train")
    _assert_one_line_data_error(excinfo, "data_batch_4", "missing")
    _write_pickle(folder / "test_batch", {b"data": _Trap(), b"labels": [0]}, 2)
    with pytest.raises(DataError) as excinfo:
        load_data(folder)
    _assert_one_line_data_error(excinfo, "test_batch", "refusing to load")
    _write_pickle(folder / "test_batch", {b"pixels": np.zeros((1, 3072), np.uint8)}, 2)
    with pytest.raises(DataError) as excinfo:
        load_data(folder)
    _assert_one_line_data_error(excinfo, "test_batch", "not a CIFAR batch")


# ------------------------------------------------------------------------------------ ImageFolder


def _png(path: Path, array: np.ndarray) -> None:
    """Save (H, W, 3) as RGB or (H, W) as grayscale PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_image_folder(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    pics = rng.integers(0, 256, size=(3, 4, 5, 3), dtype=np.uint8)  # H=4, W=5
    _png(tmp_path / "zebra" / "a.png", pics[0])
    _png(tmp_path / "cat" / "b.png", pics[1])
    _png(tmp_path / "cat" / "a.png", pics[2])
    _png(tmp_path / "cat" / "gray.png", np.ascontiguousarray(pics[2][..., 0]))
    (tmp_path / "cat" / "notes.txt").write_text("ignored")
    data = load_data(tmp_path)
    assert data.images.shape == (4, 4, 5, 3)
    assert data.labels.tolist() == [0, 0, 0, 1]  # cat < zebra; files sorted within a class
    assert np.array_equal(data.images[0].numpy(), pics[2])
    assert np.array_equal(data.images[1].numpy(), pics[1])
    assert np.array_equal(data.images[2].numpy(), np.repeat(pics[2][..., :1], 3, axis=2))  # gray -> RGB
    assert np.array_equal(data.images[3].numpy(), pics[0])


def _tree(root: Path, sizes: list[tuple[int, int]], classes: int = 2, seed: int = 3) -> list[np.ndarray]:
    """One PNG per size, dealt to ``classes`` class folders in turn, named so that the tree's order is the list's."""
    rng = np.random.default_rng(seed)
    pics = [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in sizes]
    for i, pic in enumerate(pics):
        _png(root / f"class{i * classes // len(pics)}" / f"{i:03d}.png", pic)
    return pics


@pytest.fixture
def decoded(monkeypatch) -> list[str]:
    """The paths decoded so far (the decoding still runs)."""
    from nerncompress import image_folder

    calls: list[str] = []
    real = image_folder.decode_image
    monkeypatch.setattr(image_folder, "decode_image", lambda path, size: calls.append(path) or real(path, size))
    return calls


def test_image_folder_is_streamed_and_decodes_nothing_until_drawn(tmp_path: Path, decoded: list[str]) -> None:
    _tree(tmp_path, [(6, 6)] * 12)
    data = load_data(tmp_path, workers=2)
    train, hold = split_holdout(data, fraction=0.25, seed=0)
    joined = concat_data(train, hold)
    assert data.streamed and train.streamed and joined.streamed
    assert (len(data), data.image_shape, data.num_classes, len(joined)) == (12, (3, 6, 6), 2, 12)
    assert decoded == []
    draw_batch(train, 5, mean=(0.0,), std=(1.0,), shape=(3, 6, 6), generator=torch.Generator().manual_seed(0))
    assert len(decoded) == 5  # the drawn images only
    held = hold.in_memory()
    assert held.images.shape == (3, 6, 6, 3) and not held.streamed and held.in_memory() is held
    assert len(decoded) == 8


def test_streamed_tree_serves_the_batches_of_its_pixels_in_memory(tmp_path: Path) -> None:
    """A uniform tree gives exactly what the same images held in memory give: batches, draws, splits."""
    pics = _tree(tmp_path, [(5, 7)] * 20, classes=3)
    streamed = load_data(tmp_path, workers=3)
    held = ImageData(torch.from_numpy(np.stack(pics)), streamed.labels.clone(), "memory")
    assert torch.equal(streamed.in_memory().images, held.images)
    assert torch.equal(streamed.images[4], held.images[4])
    stats = {"mean": (0.5, 0.4, 0.3), "std": (0.2, 0.3, 0.4)}
    for options in ({}, {"shuffle": True, "augment": True}):
        def batches(data: ImageData) -> list[tuple[torch.Tensor, torch.Tensor]]:
            gen = torch.Generator().manual_seed(1)
            return list(iterate_batches(data, batch_size=6, device="cpu", generator=gen, **stats, **options))

        for (x, y), (x_ref, y_ref) in zip(batches(streamed), batches(held), strict=True):
            assert torch.equal(x, x_ref) and torch.equal(y, y_ref)

    def drawn(data: ImageData) -> torch.Tensor:
        return draw_batch(data, 8, **stats, shape=(3, 5, 7), generator=torch.Generator().manual_seed(2))

    assert torch.equal(drawn(streamed), drawn(held))
    (train, hold), (train_ref, hold_ref) = (split_holdout(d, fraction=0.3, seed=4) for d in (streamed, held))
    assert torch.equal(train.labels, train_ref.labels) and torch.equal(hold.in_memory().images, hold_ref.images)
    assert torch.equal(streamed.subset([7, 2]).images[:], held.subset([7, 2]).images)
    twice = concat_data(streamed, streamed)
    assert twice.source == f"{tmp_path} + {tmp_path}" and torch.equal(twice.images[19:21], held.images[[19, 0]])


def test_image_folder_of_mixed_sizes_comes_out_at_one_size(tmp_path: Path) -> None:
    pics = _tree(tmp_path, [(6, 6), (9, 12), (20, 7), (6, 6)])
    default = load_data(tmp_path)  # the first image's size: images of that size are taken as they are
    assert default.image_shape == (3, 6, 6)
    batch = default.images[:]
    assert batch.shape == (4, 6, 6, 3)
    assert np.array_equal(batch[0].numpy(), pics[0]) and np.array_equal(batch[3].numpy(), pics[3])
    assert load_data(tmp_path, image_size=5).images[:].shape == (4, 5, 5, 3)
    assert load_data(tmp_path, image_size=(4, 8)).image_shape == (3, 4, 8)
    x, _ = next(iterate_batches(load_data(tmp_path, image_size=5), batch_size=4, mean=(0.0,), std=(1.0,),
                                device="cpu"))
    assert x.shape == (4, 3, 5, 5)


def test_a_damaged_image_fails_when_drawn_naming_the_file(tmp_path: Path) -> None:
    _tree(tmp_path, [(6, 6)] * 6)
    bad = tmp_path / "class1" / "004.png"
    bad.write_bytes(b"\x89PNG not really")
    data = load_data(tmp_path, workers=2)  # only the file list is read: loading succeeds
    with pytest.raises(DataError) as excinfo:
        list(iterate_batches(data, batch_size=4, mean=(0.0,), std=(1.0,), device="cpu"))
    _assert_one_line_data_error(excinfo, str(bad), "cannot read image")
    with pytest.raises(DataError) as excinfo:
        data.subset([4]).in_memory()
    _assert_one_line_data_error(excinfo, str(bad))
    first = tmp_path / "class0" / "000.png"
    first.write_bytes(b"")
    with pytest.raises(DataError) as excinfo:
        load_data(tmp_path)  # the first image gives the default size
    _assert_one_line_data_error(excinfo, str(first))


def test_streamed_and_in_memory_data_do_not_mix_and_arguments_are_checked(tmp_path: Path) -> None:
    _tree(tmp_path / "tree", [(4, 4)] * 2)
    tree = load_data(tmp_path / "tree")
    with pytest.raises(DataError) as excinfo:
        concat_data(_indexed_data([0, 1]), tree)
    _assert_one_line_data_error(excinfo, str(tmp_path / "tree"), "indexed", "held in memory")
    for options in ({"workers": 0}, {"image_size": 0}, {"image_size": (4, 4, 4)}):
        with pytest.raises(UsageError):
            load_data(tmp_path / "tree", **options)


# ------------------------------------------------------------------------------------------ digits


@pytest.fixture(scope="module")
def digits() -> tuple[ImageData, ImageData]:
    return load_data("digits", split="train"), load_data("digits", split="test")


def test_digits_split_sizes_and_format(digits: tuple[ImageData, ImageData]) -> None:
    train, test = digits
    assert len(train) + len(test) == 1797
    assert len(test) == round(0.2 * 1797)
    assert train.images.shape[1:] == (8, 8, 1) and train.images.dtype == torch.uint8
    assert int(train.images.max()) == 255 and int(train.images.min()) == 0
    assert (train.source, test.source) == ("digits:train", "digits:test")
    counts_test, counts_all = Counter(test.labels.tolist()), Counter(train.labels.tolist() + test.labels.tolist())
    for label, total in counts_all.items():
        assert abs(counts_test[label] - 0.2 * total) <= 1  # stratified


def test_digits_deterministic_and_disjoint(digits: tuple[ImageData, ImageData]) -> None:
    from sklearn.datasets import load_digits

    train, test = digits
    again = load_data("digits", split="test")
    assert torch.equal(again.images, test.images) and torch.equal(again.labels, test.labels)
    bunch = load_digits()
    full = Counter(
        (np.rint(img * 255 / 16).astype(np.uint8).tobytes(), int(t)) for img, t in zip(bunch.images, bunch.target)
    )
    parts = Counter(
        (img.numpy().tobytes(), int(t))
        for part in (train, test)
        for img, t in zip(part.images[..., 0], part.labels)
    )
    assert parts == full  # together exactly the whole dataset, so no sample is in both


# ------------------------------------------------------------------------------ normalisation, batches


def test_to_float_values_and_layout() -> None:
    images = torch.tensor([[[[0, 255, 51]]]], dtype=torch.uint8).expand(2, 2, 3, 3).contiguous()  # (2, 2, 3, 3)
    x = to_float(images, mean=(0.5, 0.5, 0.2), std=(0.5, 0.25, 0.1))
    assert x.shape == (2, 3, 2, 3) and x.dtype == torch.float32 and x.is_contiguous()
    assert torch.allclose(x[0, :, 0, 0], torch.tensor([-1.0, 2.0, 0.0]), atol=1e-6)
    gray = to_float(torch.full((1, 2, 2, 1), 255, dtype=torch.uint8), mean=(0.5,), std=(0.5,))
    assert torch.allclose(gray, torch.ones(1, 1, 2, 2))
    with pytest.raises(UsageError, match="3 values but the images have 1"):
        to_float(torch.zeros((1, 2, 2, 1), dtype=torch.uint8), mean=(0.1, 0.2, 0.3), std=(1.0,))
    with pytest.raises(UsageError):
        to_float(images, mean=(0.0,), std=(0.0,))


def test_iterate_batches_order_and_shuffle() -> None:
    data = _indexed_data([i % 3 for i in range(10)])
    batches = list(iterate_batches(data, batch_size=4, mean=(0.0,), std=(1.0,), device="cpu"))
    assert [len(y) for _, y in batches] == [4, 4, 2]
    x_all = torch.cat([x for x, _ in batches])
    assert torch.equal(x_all, to_float(data.images, mean=(0.0,), std=(1.0,)))

    def shuffled(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        pairs = list(
            iterate_batches(data, batch_size=3, mean=(0.0,), std=(1.0,), device="cpu", shuffle=True, generator=gen)
        )
        return torch.cat([x for x, _ in pairs]), torch.cat([y for _, y in pairs])

    xs, ys = shuffled(0)
    order = torch.round(xs[:, 0, 0, 0] * 255).long()
    assert sorted(order.tolist()) == list(range(10)) and order.tolist() != list(range(10))
    assert torch.equal(ys, data.labels[order])  # labels travel with their images
    assert torch.equal(shuffled(0)[0], xs)
    with pytest.raises(UsageError):
        iterate_batches(data, batch_size=0, mean=(0.0,), std=(1.0,), device="cpu")  # checked eagerly
    aug = list(iterate_batches(data, batch_size=5, mean=(0.0,), std=(1.0,), device="cpu", augment=True,
                               generator=torch.Generator().manual_seed(0)))
    assert [x.shape for x, _ in aug] == [(5, 3, 4, 4)] * 2


# ---------------------------------------------------------------------------------- augmentation, noise


def _candidates(image: torch.Tensor, pad: int) -> list[torch.Tensor]:
    """Every crop + flip that augmentation may produce from one (C, H, W) image."""
    _, h, w = image.shape
    padded = torch.nn.functional.pad(image, (pad, pad, pad, pad))
    crops = [padded[:, i : i + h, j : j + w] for i in range(2 * pad + 1) for j in range(2 * pad + 1)]
    return crops + [c.flip(2) for c in crops]


@pytest.mark.parametrize(("size", "pad"), [(16, 4), (8, 1)])
def test_augment_batch_is_a_crop_and_flip(size: int, pad: int) -> None:
    x = torch.randn(6, 2, size, size, generator=torch.Generator().manual_seed(0))
    out = augment_batch(x, generator=torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert not torch.equal(out, x)
    for original, augmented in zip(x, out):
        assert any(torch.equal(augmented, c) for c in _candidates(original, pad))
    assert torch.equal(augment_batch(x, generator=torch.Generator().manual_seed(1)), out)
    assert not torch.equal(augment_batch(x, generator=torch.Generator().manual_seed(2)), out)


def test_noise_batch() -> None:
    noise = noise_batch(5, (3, 4, 4), generator=torch.Generator().manual_seed(0), low=-1.0, high=3.0)
    assert noise.shape == (5, 3, 4, 4) and noise.dtype == torch.float32
    assert float(noise.min()) >= -1.0 and float(noise.max()) < 3.0 and float(noise.std()) > 0.5
    assert torch.equal(noise, noise_batch(5, (3, 4, 4), generator=torch.Generator().manual_seed(0), low=-1.0, high=3.0))
    with pytest.raises(UsageError):
        noise_batch(5, (3, 4, 4), generator=None, low=1.0, high=1.0)
    with pytest.raises(UsageError):
        noise_batch(0, (3, 4, 4), generator=None)


# ---------------------------------------------------------------------------------------- holdout, misc


def test_split_holdout_is_disjoint_stratified_and_deterministic() -> None:
    labels = [0] * 50 + [1] * 30 + [2] * 20
    data = _indexed_data(labels)
    train, hold = split_holdout(data, fraction=0.2, seed=0)
    train_ids = train.images[:, 0, 0, 0].tolist()
    hold_ids = hold.images[:, 0, 0, 0].tolist()
    assert len(hold) == 20 and len(train) == 80
    assert set(train_ids).isdisjoint(hold_ids) and sorted(train_ids + hold_ids) == list(range(100))
    assert train_ids == sorted(train_ids)  # original order kept
    assert Counter(hold.labels.tolist()) == {0: 10, 1: 6, 2: 4}
    assert torch.equal(hold.labels, data.labels[hold.images[:, 0, 0, 0].long()])
    again = split_holdout(data, fraction=0.2, seed=0)[1]
    assert torch.equal(again.images, hold.images)
    assert not torch.equal(split_holdout(data, fraction=0.2, seed=1)[1].images, hold.images)


def test_split_holdout_falls_back_to_random_and_checks_arguments() -> None:
    data = _indexed_data([0, 0, 0, 0, 1, 1, 1, 1, 1, 2])  # class 2 has a single sample
    train, hold = split_holdout(data, fraction=0.3, seed=0)
    assert len(hold) == 3 and len(train) == 7
    assert set(train.images[:, 0, 0, 0].tolist()).isdisjoint(hold.images[:, 0, 0, 0].tolist())
    for fraction in (0.0, 1.0, -0.5):
        with pytest.raises(UsageError):
            split_holdout(data, fraction=fraction, seed=0)
    with pytest.raises(DataError):
        split_holdout(data.subset([0]), fraction=0.5, seed=0)


def test_image_data_checks_and_subset() -> None:
    data = _indexed_data([0, 1, 2, 3])
    sub = data.subset([3, 1])
    assert sub.labels.tolist() == [3, 1] and sub.images[:, 0, 0, 0].tolist() == [3, 1]
    with pytest.raises(DataError):
        ImageData(torch.zeros((2, 4, 4, 3)), torch.zeros(2, dtype=torch.int64), "floats")
    with pytest.raises(DataError):
        ImageData(torch.zeros((2, 4, 4, 3), dtype=torch.uint8), torch.zeros(3, dtype=torch.int64), "lengths")


# ------------------------------------------------------------------------------------------ integration


@pytest.mark.integration
@requires_shared_data
def test_real_cifar10_npz_loads() -> None:
    data = load_data(SHARED_DATA / "cifar10" / "test1000_lossless.npz")
    assert data.images.shape == (1000, 32, 32, 3) and data.images.dtype == torch.uint8
    assert data.labels.dtype == torch.int64
    assert int(data.labels.min()) == 0 and int(data.labels.max()) == 9
    assert len(set(data.labels.tolist())) == 10


def _distinct_images(n: int = 8, size: int = 8) -> torch.Tensor:
    """Image i is filled with the value i, so every output pixel tells which image it came from."""
    return torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, size, size).contiguous()


def test_mix_batch_mixup_blends_each_image_with_one_partner() -> None:
    x = _distinct_images()
    out = mix_batch(x, method="mixup", fraction=0.5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[:4], x[:4])  # the first half stays clean
    for image in out[4:]:
        assert torch.all(image == image[0, 0, 0])  # a convex blend of two constant images is constant
        assert 0.0 <= float(image[0, 0, 0]) <= 7.0
    again = mix_batch(x, method="mixup", fraction=0.5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_mix_batch_cutmix_pastes_one_rectangle_of_a_partner() -> None:
    x = _distinct_images(16, 16)
    out = mix_batch(x, method="cutmix", fraction=1.0, generator=torch.Generator().manual_seed(3))
    pasted_any = False
    for i, image in enumerate(out):
        values = image[0].unique()
        assert len(values) <= 2 and torch.all(image == image[0:1])  # same box in every channel
        foreign = image[0] != i
        if foreign.any():
            pasted_any = True
            rows, cols = foreign.nonzero(as_tuple=True)
            box = foreign[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
            assert box.all()  # the foreign pixels form one filled rectangle
    assert pasted_any


def test_mix_batch_none_and_errors() -> None:
    x = _distinct_images()
    assert torch.equal(mix_batch(x, method="none", fraction=1.0, generator=None), x)
    assert torch.equal(mix_batch(x, method="mixup", fraction=0.0, generator=None), x)
    with pytest.raises(ValueError, match="unknown mix method"):
        mix_batch(x, method="blend", fraction=1.0, generator=None)
