import copy
import dataclasses
import json
import struct

import pytest
import torch
from torch import nn
from safetensors.torch import load_file

from helpers import rewrite_nern, tiny_fit, tiny_resnet_state_dict
from nerncompress.artifact import load_artifact, save_artifact
from nerncompress.compression import PruneConfig, QuantizeConfig, compress
from nerncompress.errors import ArtifactError, UsageError
from nerncompress.exporter import export
from nerncompress.nern import expand_state_dict
from nerncompress.models import cifar_resnet
from nerncompress.predictor import PredictorConfig, build_predictor, linear_layers
from nerncompress.pruning import gradual_masks, magnitude_masks
from nerncompress.artifact import byte_breakdown, predictor_bytes
from nerncompress.artifact.v1 import decode_predictor, encode_predictor, pack_ints, unpack_ints
from nerncompress.quantization import dequantize_weight, num_groups, quantize_weight, round_weight
from nerncompress.rounding import SoftRounding


@pytest.fixture(scope="module")
def fitted():
    return tiny_fit(tiny_resnet_state_dict(), iters=30)


def _same_predictor(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


# ------------------------------------------------------------------------------------------- number formats


@pytest.mark.parametrize("bits", [8, 6, 4, 3])
@pytest.mark.parametrize("group_size", [None, 32, 7])
def test_quantization_error_is_at_most_half_a_step(bits, group_size):
    weight = torch.randn(24, 70, generator=torch.Generator().manual_seed(bits)) * 0.05
    weight[3] = 0.0  # an all-zero row
    q, scales = quantize_weight(weight, bits, group_size)
    assert scales.dtype == torch.float16 and scales.shape == (24, num_groups(70, group_size))
    assert int(q.abs().max()) <= 2 ** (bits - 1) - 1
    step = scales.float().repeat_interleave(group_size or 70, dim=1)[:, :70]
    dequantized = dequantize_weight(q, scales, group_size)
    assert bool(((weight - dequantized).abs() <= step / 2).all())
    # Re-quantizing the dequantized weight gives the same integers and scales: saving twice changes nothing.
    q2, scales2 = quantize_weight(dequantized, bits, group_size)
    assert torch.equal(q, q2) and torch.equal(scales, scales2)
    assert torch.equal(unpack_ints(pack_ints(q, bits), bits, q.numel()).view_as(q), q)


def test_packed_storage_size():
    q = torch.randint(-7, 8, (10, 33))
    assert pack_ints(q, 4).numel() == (330 * 4 + 7) // 8
    assert pack_ints(q, 8).dtype == torch.int8


# ------------------------------------------------------------------------------------------------ quantize


def test_int8_artifact_round_trips_bit_identically_and_shrinks(tmp_path, fitted):
    quantized = compress(fitted, QuantizeConfig(bits=8, qat_iters=5), device="cpu")
    save_artifact(fitted, tmp_path / "float.nern")
    save_artifact(quantized, tmp_path / "int8.nern")
    loaded = load_artifact(tmp_path / "int8.nern")
    assert _same_predictor(quantized.predictor, loaded.predictor)
    assert loaded.compression == quantized.compression
    assert quantized.compression["quantize"]["bits"] == 8
    float_bytes = predictor_bytes(fitted.predictor, {})
    int8_bytes = predictor_bytes(quantized.predictor, quantized.compression)
    assert int8_bytes / float_bytes < 0.35  # about a quarter, plus fp16 scales and biases
    assert byte_breakdown(tmp_path / "int8.nern")["predictor"] == int8_bytes
    assert (tmp_path / "int8.nern").stat().st_size < (tmp_path / "float.nern").stat().st_size
    assert fitted.compression == {}  # the input is left alone


def test_stored_integers_are_int8_or_packed(fitted):
    for bits, dtype in [(8, torch.int8), (6, torch.uint8), (4, torch.uint8)]:
        config = QuantizeConfig(bits=bits, group_size=32, rounding="nearest", qat_iters=0)
        quantized = compress(fitted, config, device="cpu")
        tensors, _ = encode_predictor(quantized.predictor, quantized.compression)
        assert tensors["body.2.weight.q"].dtype == dtype
        assert tensors["body.2.weight.scale"].dtype == torch.float16
        assert tensors["body.0.weight.scale"].shape == (16, num_groups(120, 32))
        assert tensors["body.2.bias"].dtype == torch.float16


def test_qat_lowers_reconstruction_error_against_naive_rounding(fitted):
    naive = compress(fitted, QuantizeConfig(bits=4, rounding="nearest", qat_iters=0), device="cpu")
    config = QuantizeConfig(bits=4, rounding="nearest", qat_iters=120, batch_size=1024, lr=1e-3)
    learned = compress(fitted, config, device="cpu")
    assert naive.history[-1]["relative_rmse"] == naive.history[-1]["naive"]["relative_rmse"]
    assert learned.history[-1]["relative_rmse"] < 0.5 * naive.history[-1]["relative_rmse"]
    record = learned.history[-1]
    assert record["stage"] == "quantize" and record["config"]["bits"] == 4 and record["targets"] == "self"
    assert record["before"]["rmse"] == 0.0 and record["steps"] == 120 and record["lr"] == 1e-3


def test_gptq_rounding_beats_nearest_rounding(fitted):
    record = compress(fitted, QuantizeConfig(bits=4, qat_iters=0), device="cpu").history[-1]
    assert record["relative_rmse"] == record["gptq"]["relative_rmse"] < 0.8 * record["naive"]["relative_rmse"]


def test_soft_rounding_starts_at_the_float_weight_and_its_hard_choice_is_nearest():
    weight = torch.randn(12, 40, generator=torch.Generator().manual_seed(0)) * 0.1
    mask = torch.rand(12, 40, generator=torch.Generator().manual_seed(1)) > 0.3
    for bits, group_size in [(8, 32), (4, None)]:
        rounding = SoftRounding(weight, bits, group_size, mask)
        nearest = round_weight(weight * mask, bits, group_size)
        scales = quantize_weight(weight * mask, bits, group_size)[1]
        step = dequantize_weight(torch.ones_like(weight), scales, group_size)
        relaxed = rounding(weight)
        free = rounding.free
        assert torch.allclose(relaxed[free], (weight * mask)[free], atol=1e-3 * float(step.max()))
        rounding.hard = True
        assert torch.equal(rounding(weight), nearest)  # v >= 0 exactly where the fraction is >= 1/2
        assert not bool(rounding(weight)[~mask].any())


def test_learned_rounding_beats_nearest_and_stores_what_it_learned(tmp_path, fitted):
    config = QuantizeConfig(bits=4, rounding="learned", rounding_iters=300, qat_iters=0, batch_size=1024)
    learned = compress(fitted, config, device="cpu")
    record = learned.history[-1]
    assert record["relative_rmse"] == record["learned"]["relative_rmse"] < 0.8 * record["naive"]["relative_rmse"]
    assert record["rounding_final_loss"] >= 0 and record["config"]["rounding_iters"] == 300
    for module in linear_layers(learned.predictor).values():  # on the grid: re-quantizing changes nothing
        assert torch.equal(round_weight(module.weight.detach(), 4), module.weight.detach())
    save_artifact(learned, tmp_path / "learned.nern")
    assert _same_predictor(learned.predictor, load_artifact(tmp_path / "learned.nern").predictor)
    assert list(learned.predictor.state_dict()) == list(fitted.predictor.state_dict())
    again = compress(fitted, config, device="cpu")
    assert _same_predictor(learned.predictor, again.predictor)  # same seed, same bytes


def test_learned_rounding_keeps_pruned_weights_at_zero(fitted):
    pruned = compress(fitted, PruneConfig(sparsity=0.5, finetune_iters=0), device="cpu")
    config = QuantizeConfig(bits=6, group_size=8, rounding="learned", rounding_iters=40, qat_iters=0)
    both = compress(pruned, config, device="cpu")
    rounded = linear_layers(both.predictor)
    for name, module in linear_layers(pruned.predictor).items():
        zeros = module.weight == 0
        assert not bool(rounded[name].weight[zeros].any())


def test_default_learning_rates_follow_the_quantization_step():
    assert QuantizeConfig(bits=8).recon_lr() == 3e-6 and QuantizeConfig(bits=6).recon_lr() == 1.2e-5
    assert QuantizeConfig(bits=8).distill_lr() == 3e-6 and QuantizeConfig(bits=4).distill_lr() == 1e-5
    assert PruneConfig(lr=5e-4, kd_lr=2e-6).recon_lr() == 5e-4 and PruneConfig(kd_lr=2e-6).distill_lr() == 2e-6


def test_fp16_and_raw_fp16(tmp_path, fitted):
    half = compress(fitted, QuantizeConfig(bits="fp16", raw_fp16=True, qat_iters=0), device="cpu")
    save_artifact(fitted, tmp_path / "float.nern")
    save_artifact(half, tmp_path / "half.nern")
    raw_stored = load_file(tmp_path / "half.nern")
    assert all(v.dtype != torch.float32 for k, v in raw_stored.items() if k.startswith(("raw/", "predictor/")))
    loaded = load_artifact(tmp_path / "half.nern")
    assert _same_predictor(half.predictor, loaded.predictor)
    for key, value in half.raw.items():
        assert loaded.raw[key].dtype == value.dtype == fitted.raw[key].dtype and torch.equal(loaded.raw[key], value)
    assert (tmp_path / "half.nern").stat().st_size < (tmp_path / "float.nern").stat().st_size


def test_kd_phase_runs_data_free(fitted):
    quantized = compress(
        fitted, QuantizeConfig(bits=8, qat_iters=0, kd_iters=2, kd_batch_size=4), device="cpu"
    )
    record = quantized.history[-1]
    assert record["data"] == "noise" and record["steps"] == 2 and "kd_final_loss" in record


# --------------------------------------------------------------------------------------------------- prune


def test_pruned_artifact_is_smaller_and_keeps_its_zeros(tmp_path, fitted):
    pruned = compress(fitted, PruneConfig(sparsity=0.5, finetune_iters=10, lr=1e-3), device="cpu")
    weights = [p for p in pruned.predictor.parameters() if p.dim() == 2]
    zeros = sum(int((w == 0).sum()) for w in weights)
    assert zeros >= 0.5 * sum(w.numel() for w in weights) - 1  # fine-tuning did not revive pruned weights
    save_artifact(fitted, tmp_path / "dense.nern")
    save_artifact(pruned, tmp_path / "sparse.nern")
    assert (tmp_path / "sparse.nern").stat().st_size < (tmp_path / "dense.nern").stat().st_size
    assert predictor_bytes(pruned.predictor, pruned.compression) < 0.7 * predictor_bytes(fitted.predictor, {})
    assert _same_predictor(pruned.predictor, load_artifact(tmp_path / "sparse.nern").predictor)


def test_gradual_schedule_ramps_cubically_then_holds():
    config = PruneConfig(sparsity=0.6, finetune_iters=1000, schedule="gradual")
    schedule = [config.sparsity_at(step) for step in range(1000)]
    assert 0.0 < schedule[0] < 0.1
    assert all(a <= b for a, b in zip(schedule, schedule[1:]))
    assert schedule[499] == pytest.approx(0.6) and schedule[-1] == pytest.approx(0.6)  # ramp: first half
    assert schedule[250] > 0.6 * 0.8  # cubic: most of the pruning early, while the learning rate is high
    assert len(set(schedule)) == 20  # compress.GRADUAL_UPDATES mask updates
    oneshot = PruneConfig(sparsity=0.6, finetune_iters=1000)
    assert {oneshot.sparsity_at(step) for step in range(0, 1000, 7)} == {0.6}


def test_gradual_masks_only_ever_drop_weights(fitted):
    predictor = copy.deepcopy(fitted.predictor)
    config = PruneConfig(sparsity=0.5, finetune_iters=100, schedule="gradual")
    masks = {name: torch.ones_like(m.weight, dtype=torch.bool) for name, m in linear_layers(predictor).items()}
    update = gradual_masks(predictor, config.sparsity_at, config.scope, masks)
    previous, total = None, sum(m.numel() for m in masks.values())
    for step in range(100):
        update(step)
        with torch.no_grad():  # stands in for the FixedMask parametrization of a real fine-tuning run
            for name, module in linear_layers(predictor).items():
                module.weight.mul_(masks[name])
                module.weight.add_(0.01 * torch.randn_like(module.weight) * masks[name])
        kept = {name: m.clone() for name, m in masks.items()}
        pruned = 1 - sum(int(m.sum()) for m in kept.values()) / total
        assert pruned == pytest.approx(config.sparsity_at(step), abs=2 / total)
        if previous is not None:
            assert all(bool((kept[n] <= previous[n]).all()) for n in kept)
        previous = kept


def test_gradual_pruning_end_to_end(tmp_path, fitted):
    config = PruneConfig(sparsity=0.5, finetune_iters=20, lr=1e-3, schedule="gradual")
    pruned = compress(fitted, config, device="cpu")
    again = compress(fitted, config, device="cpu")
    oneshot = compress(fitted, dataclasses.replace(config, schedule="oneshot"), device="cpu")
    assert _same_predictor(pruned.predictor, again.predictor)  # reproducible
    assert not _same_predictor(pruned.predictor, oneshot.predictor)
    weights = [p for p in pruned.predictor.parameters() if p.dim() == 2]
    zeros = sum(int((w == 0).sum()) for w in weights)
    assert zeros >= 0.5 * sum(w.numel() for w in weights) - 1
    assert pruned.history[-1]["achieved_sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert pruned.history[-1]["config"]["schedule"] == "gradual"
    save_artifact(pruned, tmp_path / "m.nern")
    assert _same_predictor(pruned.predictor, load_artifact(tmp_path / "m.nern").predictor)


def test_pruning_refit_can_reassign_positions_and_stores_them(tmp_path, fitted):
    stored = {name: position.clone() for name, position in fitted.positions.items()}
    config = PruneConfig(sparsity=0.5, finetune_iters=40, lr=1e-3, reassign_every=10)
    moved = compress(fitted, config, device="cpu")
    kept = compress(fitted, dataclasses.replace(config, reassign_every=0), device="cpu")
    assert all(torch.equal(fitted.positions[name], stored[name]) for name in stored)  # the input is left unchanged
    assert all(torch.equal(kept.positions[name], stored[name]) for name in stored)
    assert any(not torch.equal(moved.positions[name], stored[name]) for name in stored)
    save_artifact(moved, tmp_path / "m.nern")
    loaded = load_artifact(tmp_path / "m.nern")
    assert all(torch.equal(loaded.positions[name], moved.positions[name]) for name in stored)
    regenerated, expected = expand_state_dict(loaded), expand_state_dict(moved)
    assert all(torch.equal(regenerated[key], expected[key]) for key in expected)


def test_delta_coded_indices_at_high_sparsity():
    predictor = build_predictor(PredictorConfig(input_dim=64, hidden=96, depth=1), seed=0)
    with torch.no_grad():
        for parameter in predictor.parameters():
            if parameter.dim() == 2:
                parameter.mul_(torch.rand(parameter.shape, generator=torch.Generator().manual_seed(1)) < 0.03)
    state = {"version": 1, "prune": {"sparsity": 0.97, "scope": "layer"}}
    tensors, metadata = encode_predictor(predictor, state)
    assert metadata["layout"]["body.0.weight"]["encoding"] == "delta"
    assert _same_predictor(predictor, decode_predictor(tensors, predictor.config, metadata))


def test_prune_then_quantize_then_expand_round_trips(tmp_path, fitted):
    pruned = compress(fitted, PruneConfig(sparsity=0.5, scope="layer", finetune_iters=5), device="cpu")
    both = compress(pruned, QuantizeConfig(bits=4, group_size=8, qat_iters=5), device="cpu")
    assert {"prune", "quantize"} <= set(both.compression)
    for before, after in zip(pruned.predictor.parameters(), both.predictor.parameters()):
        assert bool((after[before == 0] == 0).all())  # GPTQ and QAT keep pruned weights at zero
    save_artifact(both, tmp_path / "m.nern")
    loaded = load_artifact(tmp_path / "m.nern")
    assert _same_predictor(both.predictor, loaded.predictor)
    export(loaded, tmp_path / "out.safetensors", device="cpu")
    state_dict = load_file(tmp_path / "out.safetensors")
    cifar_resnet.cifar_resnet(depth=8, num_classes=10).load_state_dict(state_dict, strict=True)
    reference = expand_state_dict(both, device="cpu")
    assert all(torch.equal(state_dict[k], reference[k]) for k in reference)
    assert predictor_bytes(both.predictor, both.compression) < predictor_bytes(pruned.predictor, pruned.compression)


def test_structured_pruning_gives_a_smaller_dense_mlp(tmp_path, fitted):
    pruned = compress(fitted, PruneConfig(method="structured", sparsity=0.25, scope="layer", finetune_iters=5), device="cpu")
    config = pruned.predictor.config
    assert config.widths == (12, 12, 12, 12) and config.hidden == 16
    assert pruned.predictor.body[0].weight.shape == (12, 120) and pruned.predictor.heads["k3"].weight.shape == (9, 12)
    assert pruned.predictor_parameters() < fitted.predictor_parameters()
    assert pruned.history[-1]["widths_after"] == [12, 12, 12, 12]
    save_artifact(pruned, tmp_path / "m.nern")
    loaded = load_artifact(tmp_path / "m.nern")
    assert loaded.predictor.config == config and _same_predictor(pruned.predictor, loaded.predictor)
    merged = compress(fitted, PruneConfig(method="structured", sparsity=0.5, finetune_iters=0), device="cpu")
    assert sum(merged.predictor.config.widths) == 32


# ------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "make",
    [
        lambda: QuantizeConfig(bits=5.5),
        lambda: QuantizeConfig(bits=16),
        lambda: QuantizeConfig(bits="int8"),
        lambda: QuantizeConfig(group_size=0),
        lambda: QuantizeConfig(bits="fp16", group_size=32),
        lambda: QuantizeConfig(bias_dtype="bfloat16"),
        lambda: QuantizeConfig(qat_iters=-1),
        lambda: QuantizeConfig(lr=0),
        lambda: QuantizeConfig(kd_weight=0, recon_weight=0),
        lambda: PruneConfig(sparsity=1.0),
        lambda: PruneConfig(sparsity=-0.1),
        lambda: PruneConfig(scope="row"),
        lambda: PruneConfig(method="random"),
        lambda: PruneConfig(finetune_iters=-5),
        lambda: PruneConfig(precision="fp8"),
        lambda: PruneConfig(schedule="linear"),
        lambda: PruneConfig(schedule="gradual", method="structured"),
        lambda: PruneConfig(schedule="gradual", finetune_iters=0),
        lambda: PruneConfig(schedule="gradual", ramp=0),
        lambda: PruneConfig(reassign_every=-1),
        lambda: PruneConfig.from_dict({"sparsity": 0.5, "typo": 1}),
    ],
)
def test_invalid_configs_raise_usage_error(make):
    with pytest.raises(UsageError):
        make()


def test_configs_round_trip_through_dicts():
    config = QuantizeConfig(bits="6", group_size=64)
    assert config.bits == 6 and QuantizeConfig.from_dict(config.to_dict()) == config
    assert PruneConfig.from_dict(PruneConfig(sparsity=0.3).to_dict()) == PruneConfig(sparsity=0.3)


def test_compress_rejects_other_configs_and_bad_targets(fitted):
    with pytest.raises(UsageError, match="QuantizeConfig or PruneConfig"):
        compress(fitted, object(), device="cpu")
    with pytest.raises(UsageError, match="lack the represented layer"):
        compress(fitted, QuantizeConfig(qat_iters=0), target_weights={}, device="cpu")


@pytest.fixture(scope="module")
def encoded(fitted):
    both = compress(
        compress(fitted, PruneConfig(sparsity=0.3, finetune_iters=0), device="cpu"),
        QuantizeConfig(bits=6, qat_iters=0),
        device="cpu",
    )
    tensors, metadata = encode_predictor(both.predictor, both.compression)
    return both.predictor.config, tensors, metadata


def _nan_scale(t, m):
    t["body.2.weight.scale"] = t["body.2.weight.scale"].clone().fill_(float("nan"))


def _int8_out_of_range(t, m):
    m["quantize"]["bits"] = 8
    for key in [k for k in t if k.endswith(".q")]:
        count = t[key].numel() * 8 // 6
        t[key] = torch.full((count,), -128, dtype=torch.int8)


@pytest.mark.parametrize(
    "corrupt,match",
    [
        (lambda t, m: t.pop("body.2.weight.scale"), "'predictor/body.2.weight.scale' is missing"),
        (lambda t, m: t.update({"body.2.weight.scale": t["body.2.weight.scale"].float()}), "body.2.weight.scale"),
        (lambda t, m: t.update({"body.4.weight.q": t["body.4.weight.q"][:-1]}), "body.4.weight.q"),
        (lambda t, m: t.update({"body.0.weight.q": t["body.0.weight.q"].to(torch.int8)}), "body.0.weight.q"),
        (_nan_scale, "body.2.weight.scale"),
        (lambda t, m: t.update({"body.2.weight.scale": -t["body.2.weight.scale"]}), "body.2.weight.scale"),
        (_int8_out_of_range, r"\.q"),
        (lambda t, m: t.update({"stray": torch.zeros(1)}), "unexpected tensor 'predictor/stray'"),
        (lambda t, m: m.update({"sparsity": 0.5}), "unknown compression state key 'sparsity'"),
        (lambda t, m: m.update({"version": 2}), "version"),
        (lambda t, m: m["quantize"].update({"bits": 9}), "'quantize' is invalid"),
        (lambda t, m: m["layout"]["body.0.weight"].update({"nnz": 1}), "body.0.weight"),
        (lambda t, m: m["layout"].update({"body.1.weight": {"encoding": "bitmask", "nnz": 1}}), "body.1.weight"),
    ],
)
def test_corrupt_quantized_tensors_raise_artifact_error(encoded, corrupt, match):
    config, tensors, metadata = encoded
    tensors, metadata = dict(tensors), json.loads(json.dumps(metadata))
    corrupt(tensors, metadata)
    with pytest.raises(ArtifactError, match=match) as info:
        decode_predictor(tensors, config, metadata)
    assert "\n" not in str(info.value)


def test_unknown_state_in_a_file_is_an_artifact_error(tmp_path, fitted):
    path = tmp_path / "m.nern"
    save_artifact(compress(fitted, QuantizeConfig(bits=8, qat_iters=0), device="cpu"), path)
    rewrite_nern(path, path, lambda document: document.update(compression={"version": 1, "codebook": {}}))
    with pytest.raises(ArtifactError, match="codebook"):
        load_artifact(path)


def test_global_pruning_ranks_weights_against_their_own_layer():
    """A layer of small weights (like the output heads) keeps its share instead of being emptied."""
    predictor = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 9))
    with torch.no_grad():
        predictor[1].weight.mul_(0.01)
    masks = magnitude_masks(predictor, 0.5, "global")
    for name, mask in masks.items():
        assert 0.35 < float(mask.float().mean()) < 0.65, name
    assert sum(int(m.sum()) for m in masks.values()) == round(0.5 * (64 * 64 + 9 * 64))
