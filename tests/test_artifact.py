import json
import math
import struct
import zlib

import numpy as np
import pytest
import torch

from conftest import SHARED_DATA, requires_shared_data
from helpers import tiny_fit, tiny_resnet_state_dict
from nerncompress.artifact import (
    byte_breakdown,
    load_artifact,
    read_metadata,
    save_artifact,
    stream_bytes,
)
from nerncompress.artifact.v1 import save_v1
from nerncompress.codes import QuantizedTensor, nearest
from nerncompress.compression import PruneConfig, QuantizeConfig, compress
from nerncompress.errors import ArtifactError
from nerncompress.nern import expand_state_dict


@pytest.fixture(scope="module")
def fitted():
    return tiny_fit(tiny_resnet_state_dict(), iters=10)


def _assert_same(a, b):
    assert a.arch == b.arch and a.embedding == b.embedding and a.permute == b.permute
    assert (a.predictor is None) == (b.predictor is None)
    if a.predictor is not None:
        assert a.predictor.config == b.predictor.config
        for key, value in a.predictor.state_dict().items():
            assert torch.equal(value, b.predictor.state_dict()[key]), key
    assert [e.to_dict() for e in a.layers] == [e.to_dict() for e in b.layers]
    assert a.key_order == b.key_order and a.history == b.history and a.raw_convs == b.raw_convs
    for name in a.positions:
        assert torch.equal(a.positions[name], b.positions[name])
    assert a.scales.keys() == b.scales.keys()
    for name in a.scales:
        assert torch.equal(a.scales[name], b.scales[name])
    assert a.raw.keys() == b.raw.keys()
    for key, value in a.raw.items():
        assert value.dtype == b.raw[key].dtype and torch.equal(value, b.raw[key]), key
    assert a.codes.keys() == b.codes.keys()
    for key, code in a.codes.items():
        assert code.step == b.codes[key].step and torch.equal(code.ints, b.codes[key].ints), key


def _round_trip(nern, path):
    save_artifact(nern, path)
    loaded = load_artifact(path)
    _assert_same(nern, loaded)
    before, after = expand_state_dict(nern, device="cpu"), expand_state_dict(loaded, device="cpu")
    assert all(torch.equal(before[key], after[key]) for key in before)  # bit-identical weights
    return loaded


@pytest.mark.parametrize(
    "permute,filter_scales", [("crossfilter", False), ("infilter", True), ("none", False), ("crossfilter", True)]
)
def test_round_trip_is_bit_identical(tmp_path, permute, filter_scales):
    nern = tiny_fit(tiny_resnet_state_dict(), iters=3, permute=permute, filter_scales=filter_scales)
    assert bool(nern.scales) == filter_scales
    _round_trip(nern, tmp_path / "m.nern")


@pytest.mark.parametrize(
    "config",
    [
        QuantizeConfig(bits=8, qat_iters=0),
        QuantizeConfig(bits=4, group_size=8, qat_iters=0, raw_fp16=True),
        QuantizeConfig(bits="fp16", qat_iters=0),
        PruneConfig(sparsity=0.6, finetune_iters=0),
        PruneConfig(method="structured", sparsity=0.3, finetune_iters=0),
    ],
    ids=["int8", "int4-groups-fp16raw", "fp16", "pruned", "structured"],
)
def test_compressed_predictors_round_trip(tmp_path, fitted, config):
    _round_trip(compress(fitted, config, device="cpu"), tmp_path / "m.nern")


def test_pruned_and_quantized_predictor_round_trips(tmp_path, fitted):
    pruned = compress(fitted, PruneConfig(sparsity=0.5, finetune_iters=0), device="cpu")
    _round_trip(compress(pruned, QuantizeConfig(bits=6, qat_iters=0), device="cpu"), tmp_path / "m.nern")


def test_coded_tensors_and_residuals_round_trip(tmp_path, fitted):
    """Coded tensors replace raw ones (the plain codec) or add a residual to a represented layer (the hybrid)."""
    nern = tiny_fit(tiny_resnet_state_dict(), iters=3)
    represented = nern.layers[0].name
    nern.codes[represented] = nearest(torch.randn(nern.layers[0].shape) * 0.01, 0.002)
    plain = next(key for key in nern.raw if key.endswith("linear.weight"))
    nern.codes[plain] = nearest(nern.raw.pop(plain), 0.01)
    loaded = _round_trip(nern, tmp_path / "m.nern")
    assert loaded.storage(represented) == "predicted+residual" and loaded.storage(plain) == "coded"
    weights = expand_state_dict(loaded, device="cpu")
    assert torch.equal(weights[plain], nern.codes[plain].dequantize())


def test_a_nern_without_predictor_round_trips(tmp_path):
    """Every weight coded, nothing represented: the plain codec's file."""
    state_dict = tiny_resnet_state_dict()
    nern = tiny_fit(state_dict, iters=1)
    nern.predictor, nern.layers, nern.positions = None, [], {}
    for key, value in state_dict.items():
        if key.endswith("weight") and value.dim() >= 2:
            nern.raw.pop(key, None)
            nern.codes[key] = nearest(value, 0.02)
    _round_trip(nern, tmp_path / "m.nern")
    assert read_metadata(tmp_path / "m.nern")["predictor"] is None


def test_same_nern_gives_same_bytes(tmp_path, fitted):
    save_artifact(fitted, tmp_path / "a.nern")
    save_artifact(fitted, tmp_path / "b.nern")
    assert (tmp_path / "a.nern").read_bytes() == (tmp_path / "b.nern").read_bytes()


def test_metadata_is_readable_and_complete(tmp_path, fitted):
    save_artifact(fitted, tmp_path / "m.nern")
    meta = read_metadata(tmp_path / "m.nern")
    assert meta["format"] == "nern" and meta["schema_version"] == "2"
    assert meta["arch"]["name"] == "cifar_resnet"
    assert meta["history"][0]["stage"] == "fit"
    assert [name for name, _ in meta["streams"]][0].startswith("predictor/")


def test_breakdown_sums_to_the_file_size(tmp_path, fitted):
    path = tmp_path / "m.nern"
    save_artifact(fitted, path)
    groups = byte_breakdown(path)
    assert sum(groups.values()) == path.stat().st_size
    assert groups["predictor"] > 0 and groups["positions"] > 0 and groups["raw"] > 0
    streams = stream_bytes(path)
    assert sum(streams.values()) == path.stat().st_size
    assert all(f"positions/{entry.name}" in streams for entry in fitted.layers)


def test_positions_cost_about_log2_n_factorial(tmp_path, fitted):
    path = tmp_path / "m.nern"
    save_artifact(fitted, path)
    streams = stream_bytes(path)
    for entry in fitted.layers:
        bound = math.lgamma(entry.num_kernels + 1) / math.log(2) / 8
        assert streams[f"positions/{entry.name}"] <= bound * 1.02 + 16, entry.name


def test_quantized_predictor_streams_are_not_above_their_fixed_width(tmp_path, fitted):
    """A barely trained predictor's integers are nearly uniform: coding them costs at most their fixed width
    (real predictors' are peaked and cost less: see the integration test)."""
    path = tmp_path / "m.nern"
    int8 = compress(fitted, QuantizeConfig(bits=8, qat_iters=0), device="cpu")
    save_artifact(int8, path)
    streams = stream_bytes(path)
    for name, parameter in int8.predictor.state_dict().items():
        if parameter.dim() == 2:
            assert streams[f"predictor/{name}"] <= parameter.numel() + 16, name


# ------------------------------------------------------------------------------------------ format 1 still reads
@pytest.mark.parametrize("permute", ["crossfilter", "infilter"])
def test_format_1_files_still_load_and_expand(tmp_path, permute):
    nern = tiny_fit(tiny_resnet_state_dict(), iters=3, permute=permute)
    nern = compress(nern, PruneConfig(sparsity=0.5, finetune_iters=0), device="cpu")
    nern = compress(nern, QuantizeConfig(bits=6, qat_iters=0), device="cpu")
    old = tmp_path / "old.nern"
    save_v1(nern, old)
    assert read_metadata(old)["schema_version"] == "1"
    loaded = load_artifact(old)
    before, after = expand_state_dict(nern, device="cpu"), expand_state_dict(loaded, device="cpu")
    assert all(torch.equal(before[key], after[key]) for key in before)
    resaved = tmp_path / "new.nern"
    save_artifact(loaded, resaved)  # re-saved as format 2: the same weights, fewer bytes
    again = expand_state_dict(load_artifact(resaved), device="cpu")
    assert all(torch.equal(before[key], again[key]) for key in before)
    assert resaved.stat().st_size < old.stat().st_size


# -------------------------------------------------------------------------------------------- corrupt files
def _rewrite(path, edit_document=None, edit_header=None, edit_streams=None):
    """Rewrite a format-2 file: its JSON document, its safetensors header, or its stream bytes."""
    data = path.read_bytes()
    length = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + length])
    body = data[8 + length :]
    meta_start, meta_end = header["meta"]["data_offsets"]
    data_start, data_end = header["streams"]["data_offsets"]
    meta, streams = body[meta_start:meta_end], body[data_start:data_end]
    if edit_document is not None:
        document = json.loads(zlib.decompress(meta))
        edit_document(document)
        meta = zlib.compress(json.dumps(document).encode())
    if edit_streams is not None:
        streams = edit_streams(streams)
    header["meta"] = {"dtype": "U8", "shape": [len(meta)], "data_offsets": [0, len(meta)]}
    header["streams"] = {"dtype": "U8", "shape": [len(streams)], "data_offsets": [len(meta), len(meta) + len(streams)]}
    if edit_header is not None:
        edit_header(header)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + meta + streams)


def _flip_middle(streams: bytes) -> bytes:
    middle = len(streams) // 2
    return streams[:middle] + bytes([streams[middle] ^ 0x40]) + streams[middle + 1 :]


@pytest.mark.parametrize(
    "edits,match",
    [
        ({"edit_header": lambda h: h["__metadata__"].update(format="other")}, "not a .nern"),
        ({"edit_header": lambda h: h["__metadata__"].update(schema_version="99")}, "schema version"),
        ({"edit_document": lambda d: d.pop("layers")}, "keys of format 2"),
        ({"edit_document": lambda d: d.update(layers="x")}, "wrong JSON type"),
        ({"edit_document": lambda d: d["layers"][0]["shape"].__setitem__(0, 999)}, None),
        ({"edit_document": lambda d: d["streams"][0].__setitem__(1, 10**9)}, "streams take"),
        ({"edit_document": lambda d: d["tensors"][-1][2].__setitem__(0, 2**30)}, None),
        ({"edit_document": lambda d: d["streams"].append(["raw/ghost", 0])}, "ghost"),
        ({"edit_streams": _flip_middle}, "corrupt"),
        ({"edit_streams": lambda s: s[:-50]}, None),
    ],
    ids=["format", "version", "missing-key", "wrong-type", "layer-shape", "stream-length", "huge-shape",
         "extra-stream", "flipped-byte", "truncated-streams"],
)
def test_corrupt_format_2_is_one_line_artifact_error(tmp_path, fitted, edits, match):
    path = tmp_path / "m.nern"
    save_artifact(fitted, path)
    _rewrite(path, **edits)
    with pytest.raises(ArtifactError, match=match) as info:
        load_artifact(path)
    assert "\n" not in str(info.value)


def test_zlib_bomb_in_the_document_is_refused(tmp_path, fitted):
    path = tmp_path / "m.nern"
    save_artifact(fitted, path)

    def bomb(document):
        document["source"] = {"padding": "x" * (20 << 20)}  # 20 MB of JSON, a few KB compressed

    _rewrite(path, edit_document=bomb)
    assert path.stat().st_size < 200_000
    with pytest.raises(ArtifactError, match="16 MB"):
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


# ------------------------------------------------------------------------------------- real checkpoints
@requires_shared_data
@pytest.mark.integration
def test_resnet20_sizes_in_format_2(tmp_path):
    """On the real ResNet-20: positions within 2% of log2(N!)/8 bytes, a structure of a few KB."""
    from nerncompress import FitConfig, fit, load_checkpoint

    state_dict = load_checkpoint(SHARED_DATA / "models" / "resnet20-12fca82f.th")
    nern = fit(state_dict, FitConfig(hidden=16, iters=2, reassign_every=0), device="cpu")
    path = tmp_path / "r20.nern"
    save_artifact(nern, path)
    streams = stream_bytes(path)
    bound = sum(math.lgamma(entry.num_kernels + 1) / math.log(2) / 8 for entry in nern.layers)
    positions = sum(size for name, size in streams.items() if name.startswith("positions/"))
    assert bound <= positions <= 1.02 * bound
    assert streams["header"] < 4096
    assert np.isclose(sum(streams.values()), path.stat().st_size)
