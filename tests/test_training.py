import copy
import math

import pytest
import torch

from helpers import tiny_fit, tiny_resnet_state_dict
from nerncompress.artifact import load_artifact, save_artifact
from nerncompress.data import ImageData
from nerncompress.errors import UsageError
from nerncompress.nern import expand_state_dict
from nerncompress.models import build_model
from nerncompress.distillation import (
    DistillConfig,
    _Regenerator,
    disagreement_probes,
    distill,
    student_model,
    update_average,
    weights_swapped,
)
from nerncompress.optim import lr_at
from nerncompress.reconstruction import reconstruction_error
from nerncompress.training import FitConfig, fit, init_nern
from nerncompress.losses import kd_loss
from torch.func import functional_call


def test_lr_schedule_warmup_peak_and_floor():
    kwargs = dict(total=100, peak=1e-2, warmup=0.1, final_ratio=1e-3)
    assert lr_at(0, **kwargs) == pytest.approx(1e-3)
    assert lr_at(9, **kwargs) == pytest.approx(1e-2)
    assert lr_at(10, **kwargs) == pytest.approx(1e-2)
    assert lr_at(99, **kwargs) == pytest.approx(1e-5, rel=0.05)
    values = [lr_at(s, **kwargs) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_fit_lowers_reconstruction_error_and_records_history():
    state_dict = tiny_resnet_state_dict()
    short = tiny_fit(state_dict, iters=1)
    longer = tiny_fit(state_dict, iters=150, lr=5e-3)
    assert reconstruction_error(longer, state_dict)["rmse"] < reconstruction_error(short, state_dict)["rmse"]
    record = longer.history[-1]
    assert record["stage"] == "fit" and record["config"]["iters"] == 150 and record["config"]["version"] == 1
    assert math.isfinite(record["rmse"])


def test_fit_is_deterministic():
    state_dict = tiny_resnet_state_dict()
    a, b = tiny_fit(state_dict), tiny_fit(state_dict)
    for key, value in a.predictor.state_dict().items():
        assert torch.equal(value, b.predictor.state_dict()[key])


@pytest.mark.parametrize(
    "bad", [dict(permute="zigzag"), dict(hidden=0), dict(iters=0), dict(lr=-1.0), dict(reassign_every=-1)]
)
def test_invalid_fit_config(bad):
    with pytest.raises(UsageError):
        FitConfig(**bad)


def test_reassignment_moves_kernels_and_lowers_the_error(tmp_path):
    state_dict = tiny_resnet_state_dict()
    fixed = tiny_fit(state_dict, iters=120, lr=5e-3, reassign_every=0)
    moving = tiny_fit(state_dict, iters=120, lr=5e-3, reassign_every=15)
    for entry in moving.layers:
        assert sorted(moving.positions[entry.name].tolist()) == list(range(entry.num_kernels))
    moved = sum(int((moving.positions[k] != fixed.positions[k]).sum()) for k in fixed.positions)
    assert moved > 0
    assert reconstruction_error(moving, state_dict)["rmse"] < 0.9 * reconstruction_error(fixed, state_dict)["rmse"]
    assert moving.history[-1]["config"]["reassign_every"] == 15
    # The artifact stores the moved positions: the file regenerates the fitted weights.
    save_artifact(moving, tmp_path / "moved.nern")
    reloaded = expand_state_dict(load_artifact(tmp_path / "moved.nern"))
    for key, value in expand_state_dict(moving).items():
        assert torch.equal(reloaded[key], value)


@pytest.mark.parametrize("permute", ["infilter", "none"])
def test_reassignment_leaves_structured_positions_alone(tmp_path, permute):
    # infilter stores each filter's kernels as one block and none stores no positions: moved kernels would be lost.
    state_dict = tiny_resnet_state_dict()
    nern = tiny_fit(state_dict, iters=40, permute=permute, reassign_every=5)
    start = tiny_fit(state_dict, iters=1, permute=permute)
    for name, positions in nern.positions.items():
        assert torch.equal(positions, start.positions[name])
    save_artifact(nern, tmp_path / "structured.nern")
    reloaded = expand_state_dict(load_artifact(tmp_path / "structured.nern"))
    for key, value in expand_state_dict(nern).items():
        assert torch.equal(reloaded[key], value)


def test_reassignment_runs_between_warmup_and_the_last_steps(monkeypatch):
    import nerncompress.reconstruction as reconstruction

    steps = []
    monkeypatch.setattr(reconstruction, "reassign_positions", lambda nern, groups: steps.append(len(steps)) or 0)
    tiny_fit(iters=100, reassign_every=10, warmup=0.15)
    assert len(steps) == len([s for s in range(10, 100, 10) if 15 <= s <= 95])  # steps 20..90


def test_progressive_rounds_reassign_in_the_first_round_only(monkeypatch):
    import nerncompress.reconstruction as reconstruction

    calls = []
    monkeypatch.setattr(reconstruction, "reassign_positions", lambda nern, groups: calls.append(1) or 0)
    tiny_fit(iters=100, reassign_every=10, warmup=0.15)
    one_round = len(calls)
    calls.clear()
    tiny_fit(iters=100, reassign_every=10, warmup=0.15, rounds=3)
    assert one_round > 0 and len(calls) == one_round


def test_kd_gradients_reach_the_predictor():
    state_dict = tiny_resnet_state_dict()
    nern = tiny_fit(state_dict, iters=5)
    teacher = build_model(nern.arch, state_dict)
    student = student_model(nern, torch.device("cpu"))
    regenerate = _Regenerator(nern, torch.device("cpu"))
    x = torch.randn(4, 3, 32, 32)
    nern.predictor.zero_grad()
    logits = functional_call(student, regenerate(), (x,), strict=False)
    kd_loss(logits, teacher(x).detach()).backward()
    grads = [p.grad for p in nern.predictor.parameters()]
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    assert all(p.grad is None for p in student.parameters())


def test_distill_holds_out_the_same_images_whatever_the_seed(monkeypatch):
    """Runs with different --seed must hold out the same images, or their held-out agreements do not compare."""
    import nerncompress.distillation as distillation_module

    held_out = []
    real_split = distillation_module.split_holdout

    def recording_split(data, *, fraction, seed):
        train, hold = real_split(data, fraction=fraction, seed=seed)
        held_out.append(hold.images)
        return train, hold

    monkeypatch.setattr(distillation_module, "split_holdout", recording_split)
    state_dict = tiny_resnet_state_dict()
    teacher = build_model(tiny_fit(state_dict, iters=1).arch, state_dict)
    data = ImageData(torch.randint(0, 256, (60, 32, 32, 3), dtype=torch.uint8), torch.arange(60) % 10, "random")
    for seed, holdout_seed in [(0, 0), (7, 0), (0, 1)]:
        config = DistillConfig(iters=1, batch_size=8, holdout=0.2, seed=seed, holdout_seed=holdout_seed)
        distill(tiny_fit(state_dict, iters=1), teacher, data, config, device="cpu")
    assert torch.equal(held_out[0], held_out[1])
    assert not torch.equal(held_out[0], held_out[2])


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"mix": "cutmix", "temperature": 4.0},
        {"mix": "mixup", "kd_loss": "mse"},
        {"probe_fraction": 0.5, "probe_eps": 16.0, "fmd_weight": 1.0},
    ],
)
def test_distill_moves_the_student_towards_the_teacher_and_selects_on_holdout(options):
    state_dict = tiny_resnet_state_dict()
    nern = tiny_fit(state_dict, iters=20)
    teacher = build_model(nern.arch, state_dict)
    images = torch.randint(0, 256, (60, 32, 32, 3), dtype=torch.uint8)
    data = ImageData(images, torch.randint(0, 10, (60,)), "random")
    before = {k: v.clone() for k, v in nern.predictor.state_dict().items()}
    config = DistillConfig(iters=6, lr=1e-3, batch_size=8, eval_every=3, holdout=0.2, **options)
    distill(nern, teacher, data, config, device="cpu")
    record = nern.history[-1]
    assert record["stage"] == "distill" and record["data"] == "random"
    assert all(record["config"][key] == value for key, value in options.items())
    assert record["selected_step"] in (0, 3, 6)
    assert record["holdout_agreement"] is not None
    if record["selected_step"]:
        assert any(not torch.equal(v, nern.predictor.state_dict()[k]) for k, v in before.items())


def test_distill_reconstruction_term_holds_the_predictor_to_its_targets():
    state_dict = tiny_resnet_state_dict()
    fitted = tiny_fit(state_dict, iters=20)
    regenerated = expand_state_dict(fitted, device="cpu")
    teacher = build_model(fitted.arch, state_dict)
    data = ImageData(torch.randint(0, 256, (40, 32, 32, 3), dtype=torch.uint8), torch.randint(0, 10, (40,)), "random")
    to_original, to_self = {}, {}
    for name, weight, targets in (("kd only", 0.0, None), ("self", 1e4, None), ("original", 1e4, state_dict)):
        nern = copy.deepcopy(fitted)
        config = DistillConfig(iters=8, lr=1e-2, batch_size=8, holdout=0.0, eval_every=0, recon_weight=weight)
        distill(nern, teacher, data, config, device="cpu", target_weights=targets)
        to_original[name] = reconstruction_error(nern, state_dict)["rmse"]
        to_self[name] = reconstruction_error(nern, regenerated)["rmse"]
    assert to_original["original"] < to_original["kd only"]
    assert to_self["self"] < to_self["kd only"]  # None: held to the weights it regenerated before distilling


def test_update_average_is_an_exponential_moving_average_and_swapping_restores_the_weights():
    layer = torch.nn.Linear(3, 2)
    start = {k: v.clone() for k, v in layer.state_dict().items()}
    average = {k: v.clone() for k, v in start.items()}
    with torch.no_grad():
        layer.weight.add_(1.0)
    update_average(average, layer, 0.75)
    update_average(average, layer, 0.75)
    # two steps at the moved weights: the start keeps 0.75^2 of the weight
    assert torch.allclose(average["weight"], 0.5625 * start["weight"] + 0.4375 * (start["weight"] + 1.0))
    moved = {k: v.clone() for k, v in layer.state_dict().items()}
    with weights_swapped(layer, average):
        assert torch.equal(layer.weight, average["weight"])
    assert all(torch.equal(layer.state_dict()[k], moved[k]) for k in moved)


@pytest.mark.parametrize("holdout", [0.0, 0.2])
def test_distill_with_ema_writes_the_average_of_its_trajectory(monkeypatch, holdout: float):
    """The predictor written is the moving average of the weights after every step, not the last raw weights."""
    import nerncompress.distillation as distillation_module

    trajectory = []
    real_update = distillation_module.update_average

    def recording_update(average, module, decay):
        trajectory.append({k: v.detach().clone() for k, v in module.state_dict().items()})
        real_update(average, module, decay)

    monkeypatch.setattr(distillation_module, "update_average", recording_update)
    state_dict = tiny_resnet_state_dict()
    nern = tiny_fit(state_dict, iters=10)
    expected = {k: v.clone() for k, v in nern.predictor.state_dict().items()}
    teacher = build_model(nern.arch, state_dict)
    data = ImageData(torch.randint(0, 256, (40, 32, 32, 3), dtype=torch.uint8), torch.randint(0, 10, (40,)), "random")
    config = DistillConfig(iters=6, lr=1e-2, batch_size=8, holdout=holdout, eval_every=0, ema_decay=0.6)
    distill(nern, teacher, data, config, device="cpu")
    assert len(trajectory) == 6
    for weights in trajectory:
        expected = {k: 0.6 * v + 0.4 * weights[k] for k, v in expected.items()}
    assert nern.history[-1]["selected_step"] == 6  # with a holdout: the average at the end beat the start
    written = nern.predictor.state_dict()
    assert all(torch.allclose(written[k], v, atol=1e-6) for k, v in expected.items())
    assert any(not torch.allclose(written[k], v) for k, v in trajectory[-1].items())  # not the last raw weights


def test_data_free_distill_runs_on_noise():
    state_dict = tiny_resnet_state_dict()
    nern = tiny_fit(state_dict, iters=5)
    teacher = build_model(nern.arch, state_dict)
    distill(nern, teacher, None, DistillConfig(iters=2, batch_size=4), device="cpu")
    assert nern.history[-1]["data"] == "noise"


def test_teacher_with_other_class_count_is_refused():
    nern = tiny_fit(tiny_resnet_state_dict(), iters=2)
    other = build_model(nern.arch.__class__(nern.arch.name, {"depth": 8, "num_classes": 100}, nern.arch.preset, nern.arch.input_shape))
    with pytest.raises(UsageError, match="100 classes"):
        distill(nern, other, None, DistillConfig(iters=1, batch_size=2), device="cpu")


def test_logit_mse_loss_ignores_a_shift_and_is_zero_only_at_equal_logits() -> None:
    from nerncompress.losses import logit_mse_loss

    teacher = torch.randn(4, 10)
    assert float(logit_mse_loss(teacher + 3.0, teacher)) < 1e-10  # softmax ignores a constant shift
    student = teacher.clone().requires_grad_()
    moved = student + torch.eye(10)[:4]
    loss = logit_mse_loss(moved, teacher)
    assert float(loss.detach()) > 0
    loss.backward()
    assert student.grad is not None and float(student.grad.abs().sum()) > 0


@pytest.mark.parametrize(
    ("option", "value", "fragment"),
    [
        ("kd_loss", "hinge", "kd_loss"),
        ("mix", "blend", "mix "),
        ("mix_fraction", 1.5, "mix_fraction"),
        ("probe_fraction", -0.1, "probe_fraction"),
        ("probe_eps", 0.0, "probe_eps"),
        ("ema_decay", 1.0, "ema_decay"),
        ("ema_decay", -0.5, "ema_decay"),
    ],
)
def test_distill_config_rejects_unknown_kd_options(option: str, value, fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment):
        DistillConfig(**{option: value})


def test_disagreement_probes_raise_the_divergence_and_leave_both_networks_untouched() -> None:
    state_dict = tiny_resnet_state_dict()
    nern = tiny_fit(state_dict, iters=5)
    teacher = build_model(nern.arch, state_dict).eval()
    student = student_model(nern, torch.device("cpu"))
    weights = _Regenerator(nern, torch.device("cpu"))()
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    def divergence(images: torch.Tensor) -> torch.Tensor:  # per image
        with torch.no_grad():
            s = functional_call(student, weights, (images,), strict=False).log_softmax(1)
            t = teacher(images).log_softmax(1)
        return (t.exp() * (t - s)).sum(1)

    eps = torch.full((6,), 1e-3)
    nern.predictor.zero_grad(set_to_none=True)
    probes = disagreement_probes(x, student, weights, teacher, eps=eps)
    assert probes.shape == x.shape and not probes.requires_grad
    step = (probes - x).abs()
    assert bool((step <= 1e-3 + 1e-6).all()) and float(step.amax()) == pytest.approx(1e-3, rel=1e-3)
    assert float(divergence(probes).sum()) > float(divergence(x).sum())  # a small step goes uphill
    assert all(p.grad is None for p in nern.predictor.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    per_channel = disagreement_probes(x, student, weights, teacher, eps=torch.tensor([[1e-3, 2e-3, 3e-3]]).expand(6, 3))
    assert torch.allclose((per_channel - x)[:, 2].abs().amax(), torch.tensor(3e-3))


def test_distill_with_probes_is_deterministic() -> None:
    state_dict = tiny_resnet_state_dict()
    teacher = build_model(tiny_fit(state_dict, iters=1).arch, state_dict)
    images = torch.randint(0, 256, (40, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    data = ImageData(images, torch.randint(0, 10, (40,)), "random")
    config = DistillConfig(iters=4, lr=1e-3, batch_size=8, holdout=0.0, probe_fraction=0.5)
    runs = [distill(tiny_fit(state_dict, iters=5), teacher, data, config, device="cpu") for _ in range(2)]
    plain = distill(tiny_fit(state_dict, iters=5), teacher, data, DistillConfig(iters=4, lr=1e-3, batch_size=8, holdout=0.0), device="cpu")
    for key, value in runs[0].predictor.state_dict().items():
        assert torch.equal(value, runs[1].predictor.state_dict()[key])
    assert any(not torch.equal(v, plain.predictor.state_dict()[k]) for k, v in runs[0].predictor.state_dict().items())


def test_fit_reports_the_positions_phase_and_takes_given_positions():
    state_dict = tiny_resnet_state_dict()
    config = FitConfig(hidden=8, iters=2, batch_size=64)
    calls = []
    fitted = fit(state_dict, config, device="cpu", on_positions=lambda done, total, _: calls.append((done, total)))
    total = sum(entry.num_kernels for entry in fitted.layers)
    assert calls[0] == (0, total) and calls[-1] == (total, total)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    given = {name: torch.flip(p, [0]) for name, p in fitted.positions.items()}
    nern = init_nern(state_dict, config, positions=given, on_positions=lambda *args: calls.append(args))
    assert all(torch.equal(nern.positions[name], given[name]) for name in given)
    assert calls[-1] == (total, total)  # nothing computed, nothing reported



def test_one_by_one_layers_keep_their_index_and_store_no_positions(tmp_path):
    """A 1x1 kernel is one value: a position would cost more bits than it saves, so it keeps its index and the
    file stores no permutation for it; 3x3 layers are still permuted."""
    import torchvision

    from nerncompress.artifact import stream_bytes

    torch.manual_seed(0)
    state_dict = torchvision.models.squeezenet1_1(num_classes=10).state_dict()
    nern = fit(state_dict, FitConfig(hidden=8, iters=2, batch_size=256, reassign_every=1), device="cpu")
    by_size = {size: [e for e in nern.layers if e.kernel_size == size] for size in (1, 3)}
    assert by_size[1] and by_size[3]
    for entry in by_size[1]:
        assert torch.equal(nern.positions[entry.name], torch.arange(entry.num_kernels))
    assert any(not torch.equal(nern.positions[e.name], torch.arange(e.num_kernels)) for e in by_size[3])
    save_artifact(nern, tmp_path / "s.nern")
    streams = stream_bytes(tmp_path / "s.nern")
    assert not [name for name in streams if any(name == f"positions/{e.name}" for e in by_size[1])]
    assert [name for name in streams if name.startswith("positions/")]
    loaded = load_artifact(tmp_path / "s.nern")
    assert all(torch.equal(loaded.positions[k], nern.positions[k]) for k in nern.positions)
