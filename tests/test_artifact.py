import json
import struct

import pytest
import torch

from helpers import tiny_fit, tiny_resnet_state_dict
from nerncompress.artifact import load_artifact, read_metadata, save_artifact
from nerncompress.errors import ArtifactError


@pytest.fixture(scope="module")
def fitted():
    return tiny_fit(tiny_resnet_state_dict(), iters=10)


def _assert_same(a, b):
    assert a.arch == b.arch and a.embedding == b.embedding and a.permute == b.permute
    assert a.predictor.config == b.predictor.config
    assert [e.to_dict() for e in a.layers] == [e.to_dict() for e in b.layers]
    assert a.key_order == b.key_order and a.history == b.history and a.raw_convs == b.raw_convs
    for key, value in a.predictor.state_dict().items():
        assert torch.equal(value, b.predictor.state_dict()[key])
    for name in a.positions:
        assert torch.equal(a.positions[name], b.positions[name])
        assert a.scales.keys() == b.scales.keys()
        if name in a.scales:
            assert torch.equal(a.scales[name], b.scales[name])
    assert a.raw.keys() == b.raw.keys()
    for key, value in a.raw.items():
        assert value.dtype == b.raw[key].dtype and torch.equal(value, b.raw[key])


@pytest.mark.parametrize(
    "permute,filter_scales", [("crossfilter", False), ("infilter", True), ("none", False), ("crossfilter", True)]
)
def test_round_trip_is_bit_identical(tmp_path, permute, filter_scales):
    nern = tiny_fit(tiny_resnet_state_dict(), iters=3, permute=permute, filter_scales=filter_scales)
    assert bool(nern.scales) == filter_scales
    path = tmp_path / "m.nern"
    save_artifact(nern, path)
    _assert_same(nern, load_artifact(path))


def test_same_nern_gives_same_bytes(tmp_path, fitted):
    save_artifact(fitted, tmp_path / "a.nern")
    save_artifact(fitted, tmp_path / "b.nern")
    assert (tmp_path / "a.nern").read_bytes() == (tmp_path / "b.nern").read_bytes()


def test_metadata_is_readable_and_complete(tmp_path, fitted):
    save_artifact(fitted, tmp_path / "m.nern")
    meta = read_metadata(tmp_path / "m.nern")
    assert meta["format"] == "nern" and meta["schema_version"] == "1"
    assert meta["arch"]["name"] == "cifar_resnet"
    assert meta["layers"][0]["position_bits"] >= 1
    assert meta["history"][0]["stage"] == "fit"


def _rewrite_header(path, edit):
    data = path.read_bytes()
    length = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + length])
    edit(header)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data[8 + length :])


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda h: h["__metadata__"].update(format="other"), "not a .nern"),
        (lambda h: h["__metadata__"].update(schema_version="99"), "schema version"),
        (lambda h: h["__metadata__"].pop("layers"), "'layers' is missing"),
        (lambda h: h["__metadata__"].update(layers="{not json"), "not valid JSON"),
    ],
)
def test_bad_metadata_is_one_line_artifact_error(tmp_path, fitted, edit, match):
    path = tmp_path / "m.nern"
    save_artifact(fitted, path)
    _rewrite_header(path, edit)
    with pytest.raises(ArtifactError, match=match) as info:
        load_artifact(path)
    assert "\n" not in str(info.value)


def test_shape_mismatch_in_layer_table(tmp_path, fitted):
    path = tmp_path / "m.nern"
    save_artifact(fitted, path)

    def edit(header):
        layers = json.loads(header["__metadata__"]["layers"])
        layers[0]["shape"][0] += 1
        header["__metadata__"]["layers"] = json.dumps(layers)

    _rewrite_header(path, edit)
    with pytest.raises(ArtifactError):
        load_artifact(path)


@pytest.mark.parametrize("content", [b"", b"\x00" * 4, b"garbage" * 100])
def test_corrupt_files(tmp_path, content):
    path = tmp_path / "bad.nern"
    path.write_bytes(content)
    with pytest.raises(ArtifactError):
        load_artifact(path)


def test_truncated_file(tmp_path, fitted):
    path = tmp_path / "m.nern"
    save_artifact(fitted, path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ArtifactError):
        load_artifact(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ArtifactError, match="no such file"):
        load_artifact(tmp_path / "absent.nern")
    with pytest.raises(ArtifactError, match="directory"):
        load_artifact(tmp_path)
