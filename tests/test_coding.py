"""The codec of ``nerncompress compress``: BN simplification, steps, rate-distortion rounding, fine-tuning through
straight-through rounding, the search for a target, the hybrid with a predictor."""

import numpy as np
import pytest
import torch

from helpers import tiny_resnet_state_dict, write_random_images
from nerncompress import AccuracyGate, entropy
from nerncompress.artifact import load_artifact, save_artifact, stream_bytes
from nerncompress.codes import nearest, rate_distortion_round
from nerncompress.coding import (
    CodeConfig,
    code_checkpoint,
    coded_keys,
    finetune,
    layer_steps,
    simplify_batchnorms,
)
from nerncompress.data import load_data, preset_stats, to_float
from nerncompress.errors import UsageError
from nerncompress.hybrid import choose, offer_predictor, with_predictor
from nerncompress.models import ArchSpec, build_model
from nerncompress.nern import expand_state_dict
from nerncompress.progress import silent

SPEC = ArchSpec("cifar_resnet", {"depth": 8, "num_classes": 10}, "cifar10", (3, 32, 32))
FAST = {"search_steps": 3, "stages": 1, "stage_iters": 3, "batch_size": 8, "sensitivity_batches": 1,
        "search_from": 0.01, "holdout": 0.25}  # fmt: skip


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    path = write_random_images(tmp_path_factory.mktemp("coding") / "images.npz", 40)
    return load_data(path, split="train")


@pytest.fixture(scope="module")
def state_dict():
    return tiny_resnet_state_dict()


def _logits(spec, state, x):
    return build_model(spec, state)(x)


def test_simplified_batchnorms_compute_the_same_function(state_dict):
    model = build_model(SPEC, state_dict)
    simplified = simplify_batchnorms(model, state_dict)
    assert torch.all(simplified["bn1.running_mean"] == 0)
    assert not torch.equal(simplified["bn1.weight"], state_dict["bn1.weight"])
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(_logits(SPEC, state_dict, x), _logits(SPEC, simplified, x), atol=1e-4)


def test_coded_keys_split_weights_fine_tensors_and_constants(state_dict):
    simplified = simplify_batchnorms(build_model(SPEC, state_dict), state_dict)
    weights, fine = coded_keys(simplified)
    assert "conv1.weight" in weights and "linear.weight" in weights
    assert "bn1.weight" in fine and "linear.bias" in fine
    assert "bn1.running_mean" not in fine + weights  # constant after simplification: stored raw
    assert not any(key.endswith("num_batches_tracked") for key in weights + fine)


def test_rate_distortion_rounding_trades_distortion_for_bits():
    values = torch.distributions.Laplace(0.0, 1.0).sample((20000,))
    plain = nearest(values, 0.5)
    cheaper = rate_distortion_round(values, 0.5, rate_weight=0.2)
    bits = [entropy.estimate_bits(code.ints.numpy()) for code in (plain, cheaper)]
    errors = [float((code.dequantize() - values).pow(2).mean()) for code in (plain, cheaper)]
    assert bits[1] < 0.99 * bits[0]
    assert errors[0] < errors[1] < 1.2 * errors[0]
    assert torch.equal(rate_distortion_round(values, 0.5, rate_weight=0.0).ints, plain.ints)
    moved = cheaper.ints != plain.ints
    assert bool((cheaper.ints[moved].abs() < plain.ints[moved].abs()).all())  # only ever towards zero


def test_steps_follow_the_sensitivity():
    sizes = {"a": 100, "b": 100}
    assert layer_steps(0.1, ["a", "b"], None, sizes) == {"a": 0.1, "b": 0.1}
    steps = layer_steps(0.1, ["a", "b"], {"a": 4.0, "b": 1.0}, sizes)
    assert steps["a"] == pytest.approx(steps["b"] / 2)  # four times as sensitive: half the step
    assert steps["a"] * steps["b"] == pytest.approx(0.1**2 * 2.5 / 2)  # c / sqrt(s / mean), mean 2.5


def test_finetuning_moves_the_stored_values_towards_the_teacher(state_dict, images):
    teacher = build_model(SPEC, state_dict).eval()
    student = build_model(SPEC, state_dict).eval()
    latents = {key: state_dict[key].clone() for key in ("layer1.0.conv1.weight", "layer2.0.conv2.weight")}
    steps = {key: 0.2 for key in latents}
    config = CodeConfig(batch_size=8, lr_scale=0.05)
    before = {key: value.clone() for key, value in latents.items()}
    loss = finetune(student, teacher, latents, steps, images, config, spec=SPEC, iters=3,
                    generator=torch.Generator().manual_seed(0), device=torch.device("cpu"))  # fmt: skip
    assert loss > 0 and all(not torch.equal(before[key], latents[key]) for key in latents)  # gradients arrived


def test_data_free_coding_round_trips_and_regenerates_its_codes(tmp_path, state_dict):
    nern, record = code_checkpoint(state_dict, CodeConfig(step=0.05), arch=SPEC, device="cpu")
    assert nern.predictor is None and not nern.layers
    assert record["candidates"][0]["agreement"] is None and record["target_met"] is None
    path = tmp_path / "coded.nern"
    save_artifact(nern, path)
    # The search's sizes are the file's bytes before this stage's record joins the history.
    assert 0 < path.stat().st_size - record["chosen"]["bytes"] < 1024
    weights = expand_state_dict(load_artifact(path), device="cpu")
    assert torch.equal(weights["conv1.weight"], nern.codes["conv1.weight"].dequantize())
    assert set(weights) == set(state_dict)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert _logits(SPEC, weights, x).shape == (2, 10)
    streams = stream_bytes(path)
    assert streams["codes/layer3.0.conv2.weight"] < state_dict["layer3.0.conv2.weight"].numel()  # < 8 bits each


def test_coarser_steps_make_smaller_files(state_dict):
    sizes = [code_checkpoint(state_dict, CodeConfig(step=step), arch=SPEC, device="cpu")[1]["chosen"]["bytes"]
             for step in (0.01, 0.04, 0.16)]  # fmt: skip
    assert sizes[0] > sizes[1] > sizes[2]


def test_same_seed_gives_the_same_bytes(tmp_path, state_dict, images):
    config = CodeConfig(step=0.05, **{k: v for k, v in FAST.items() if k != "search_from"})
    paths = []
    for name in ("a", "b"):
        nern, _ = code_checkpoint(state_dict, config, arch=SPEC, data=images, device="cpu")
        paths.append(tmp_path / f"{name}.nern")
        save_artifact(nern, paths[-1])
    assert paths[0].read_bytes() == paths[1].read_bytes()


def test_search_keeps_the_smallest_candidate_that_meets_the_target(state_dict, images):
    nern, record = code_checkpoint(state_dict, CodeConfig(**FAST), arch=SPEC, data=images,
                                   target=AccuracyGate(min_agreement=0.0), device="cpu")  # fmt: skip
    assert record["target_met"] is True
    passing = [c for c in record["candidates"] if c["agreement"] >= 0.0]
    assert record["chosen"]["bytes"] == min(c["bytes"] for c in passing)
    assert any(c["finetuned_steps"] for c in record["candidates"])  # the fine-tuned stages ran
    coarseness = [c["coarseness"] for c in record["candidates"]]
    assert coarseness[:3] == sorted(coarseness[:3])  # the search goes from fine to coarse


def test_an_unreachable_target_keeps_the_closest_candidate(state_dict, images):
    coarse = {**FAST, "stages": 0, "search_from": 2.0}  # steps far beyond the weights: every integer is 0
    _, record = code_checkpoint(state_dict, CodeConfig(**coarse), arch=SPEC, data=images,
                                target=AccuracyGate(min_agreement=100.0), device="cpu")  # fmt: skip
    assert record["target_met"] is False
    best = max(c["agreement"] for c in record["candidates"])
    assert record["chosen"]["agreement"] == best


def test_a_target_needs_data(state_dict):
    with pytest.raises(UsageError, match="held-out training images"):
        code_checkpoint(state_dict, arch=SPEC, target=AccuracyGate(min_agreement=90), device="cpu")


# ------------------------------------------------------------------------------------------------------ hybrid
@pytest.fixture(scope="module")
def offer(state_dict):
    base = simplify_batchnorms(build_model(SPEC, state_dict), state_dict)
    return base, offer_predictor(base, SPEC, hidden=8, iters=5, seed=0, device="cpu", reporter=silent)


def test_the_predictor_is_taken_only_where_it_saves_bytes(offer):
    base, predictor = offer
    weights, _ = coded_keys(base)
    steps = layer_steps(0.02, weights, None, {key: base[key].numel() for key in weights})
    codes, choice = choose(predictor, base, steps, rate_weight=0.0)
    assert set(choice.table) == set(predictor.predicted)
    for row in choice.table.values():
        assert row["predictor"] == (choice.predictor_used and row["residual"] < row["plain"])
    # Weights that *are* the predictor's output: every residual is zero, the predictor pays for itself.
    faked = {**base, **predictor.predicted}
    _, fake_choice = choose(predictor, faked, steps, rate_weight=0.0)
    assert fake_choice.predictor_used and sorted(fake_choice.residual) == sorted(predictor.predicted)


def test_a_hybrid_file_round_trips_with_its_residuals(tmp_path, offer):
    base, predictor = offer
    weights, fine = coded_keys(base)
    steps = layer_steps(0.02, weights, None, {key: base[key].numel() for key in weights})
    faked = {**base, **{key: value + 0.01 * torch.randn_like(value) for key, value in predictor.predicted.items()}}
    codes, choice = choose(predictor, faked, steps, rate_weight=0.0)
    assert choice.predictor_used
    from nerncompress.coding import quantize_state
    from nerncompress.coding.search import _template

    template = _template(SPEC, faked, weights + fine, faked, {})
    all_codes = {**quantize_state(faked, steps, fine, 0.0), **codes}
    hybrid = with_predictor(template, predictor, choice)
    import dataclasses

    nern = dataclasses.replace(hybrid, codes=all_codes)
    path = tmp_path / "hybrid.nern"
    save_artifact(nern, path)
    loaded = load_artifact(path)
    assert loaded.coordinate_layers == len(predictor.nern.layers)
    regenerated = expand_state_dict(loaded, device="cpu")
    for key in choice.residual:
        assert loaded.storage(key) == "predicted+residual"
        expected = predictor.predicted[key] + all_codes[key].dequantize()
        assert torch.allclose(regenerated[key], expected, atol=1e-6)
        assert float((regenerated[key] - faked[key]).abs().max()) <= steps[key] / 2 + 1e-5


def test_hybrid_coding_end_to_end(state_dict, images):
    nern, record = code_checkpoint(state_dict, CodeConfig(hidden=8, fit_iters=5, **FAST), arch=SPEC, data=images,
                                   target=AccuracyGate(min_agreement=0.0), device="cpu")  # fmt: skip
    table = record["hybrid"]["layers"]
    assert set(table) and all({"plain", "residual", "predictor"} <= set(row) for row in table.values())
    assert (nern.predictor is not None) == record["hybrid"]["predictor_used"]


# ------------------------------------------------------------------------------------------------------ resume
def test_an_interrupted_search_resumes_to_the_same_file(tmp_path, state_dict, images, monkeypatch):
    """Stopped in its second fine-tuning stage, the search keeps the first; --resume ends with the bytes of an
    uninterrupted run."""
    from nerncompress.coding import Stages, search
    from nerncompress.errors import Interrupted

    config = CodeConfig(**{**FAST, "stages": 3, "stage_iters": 4})
    gate = AccuracyGate(min_agreement=0.0)
    whole, _ = code_checkpoint(state_dict, config, arch=SPEC, data=images, target=gate, device="cpu")
    fingerprint = {"test": 1}
    stages = Stages(tmp_path / "x.resume", fingerprint)
    calls = []
    real = search.finetune

    def stopping(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the second stage: a signal arrives
            stages.signal = "SIGINT"
        return real(*args, **kwargs)

    monkeypatch.setattr(search, "finetune", stopping)
    with pytest.raises(Interrupted, match="--resume"):
        code_checkpoint(state_dict, config, arch=SPEC, data=images, target=gate, device="cpu", resume=stages)
    assert (tmp_path / "x.resume").is_file()
    monkeypatch.setattr(search, "finetune", real)
    resumed, record = code_checkpoint(state_dict, config, arch=SPEC, data=images, target=gate, device="cpu",
                                      resume=Stages(tmp_path / "x.resume", fingerprint, resume=True))  # fmt: skip
    save_artifact(whole, tmp_path / "whole.nern")
    save_artifact(resumed, tmp_path / "resumed.nern")
    assert (tmp_path / "whole.nern").read_bytes() == (tmp_path / "resumed.nern").read_bytes()
    with pytest.raises(UsageError, match="different"):
        Stages(tmp_path / "x.resume", {"test": 2}, resume=True).load()


def test_a_stage_that_misses_is_repeated_once_at_its_step(state_dict, images, monkeypatch):
    from nerncompress.coding import search

    # Fine-tuning stages alternate between missing and passing: a miss is followed by a stage at the same step,
    # and two misses in a row at one step end the search.
    verdicts = iter([False, True, False, False, True, True])
    real = search._Coding.candidate

    def judged(self, coarseness, state, finetuned=0):
        found = real(self, coarseness, state, finetuned)
        if finetuned:
            found.agreement = 100.0 if next(verdicts) else 0.0
        return found

    monkeypatch.setattr(search._Coding, "candidate", judged)
    config = CodeConfig(**{**FAST, "stages": 6, "stage_iters": 2})
    _, record = code_checkpoint(state_dict, config, arch=SPEC, data=images, target=AccuracyGate(min_agreement=50.0),
                                device="cpu")  # fmt: skip
    tuned = [c for c in record["candidates"] if c["finetuned_steps"]]
    steps = [c["coarseness"] for c in tuned]
    assert len(tuned) == 4  # miss, pass (same step), miss, miss (same step): over
    assert steps[0] == steps[1] and steps[2] == steps[3] and steps[2] > steps[1]
