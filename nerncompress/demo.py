"""The embedded demo: train a small CNN on scikit-learn's digits, compress it, expand it, compare before and after.

Needs no outside files: the digits ship with scikit-learn. ``run_demo`` is what ``nerncompress demo`` runs; it
returns a plain dict and reports progress only through the ``Reporter`` it is given.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .artifact import save_artifact
from .coding import CodeConfig, code_checkpoint
from .data import ImageData, iterate_batches, load_data, preset_stats
from .devices import resolve_device
from .evaluation import evaluate
from .gate import AccuracyGate
from .exporter import export
from .models.registry import ArchSpec, build_model, get_arch
from .nern import expand_model, fp32_reference_bytes
from .progress import Reporter, silent
from .report import artifact_report
from .safetensors_io import save_safetensors
from .training import FitConfig, fit

__all__ = ["DEMO_ARCH", "DEMO_FIT", "DEMO_TRAIN_EPOCHS", "run_demo", "train_digits_model"]

DEMO_PRESET = "digits"
DEMO_ARCH = ArchSpec(
    name="digits_cnn", kwargs={"width": 32, "num_classes": 10}, preset=DEMO_PRESET, input_shape=(1, 8, 8)
)
DEMO_TRAIN_EPOCHS = 15
# compress's target on the held-out training digits: as faithful as the fitted predictor, in far fewer bytes
DEMO_TARGET = AccuracyGate(min_agreement=99.0)
# Measured on a 2-core CPU: h = 80 gives a predictor of 44% of the represented conv weights, and 6,000 steps at
# lr 1e-2 (about 35 s) bring the expanded model to 96.7% top-1 against the original's 97.8%, 98% agreement. The
# first conv (32 kernels, 288 weights) stays raw: it is the layer whose errors cost the most accuracy.
DEMO_FIT = FitConfig(hidden=80, iters=6000, lr=1e-2, batch_size=2048, min_kernels=64)


def train_digits_model(
    data: ImageData | None = None,
    *,
    epochs: int = DEMO_TRAIN_EPOCHS,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    device: str = "auto",
) -> dict[str, Tensor]:
    """Train the demo's digits CNN from scratch with Adam: a plain loop, fixed seed.

    Args:
        data: training images (default: ``load_data("digits", split="train")``, 1,437 images 8x8x1).
        epochs: passes over the data.
        batch_size: images per step.
        lr: Adam learning rate (constant).
        seed: seeds the initialisation, the shuffling and the augmentation.
        device: auto | cpu | cuda[:N].

    Returns:
        The trained model's state_dict, CPU tensors.

    Example:
        >>> state_dict = train_digits_model(epochs=1)
    """
    data = data if data is not None else load_data("digits", split="train")
    torch_device = resolve_device(device)
    mean, std = preset_stats(DEMO_PRESET)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = get_arch(DEMO_ARCH).to(torch_device)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        batches = iterate_batches(
            data, batch_size=batch_size, mean=mean, std=std, device=torch_device, shuffle=True, generator=generator
        )
        for x, y in batches:
            loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    model.eval()
    return {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}


def run_demo(
    workdir: str | Path,
    *,
    hidden: int = DEMO_FIT.hidden,
    iters: int = DEMO_FIT.iters,
    train_epochs: int = DEMO_TRAIN_EPOCHS,
    seed: int = 0,
    device: str = "auto",
    threads: int | None = 1,
    reporter: Reporter = silent,
) -> dict[str, Any]:
    """Train, compress, expand and evaluate the digits CNN; write every file into ``workdir``.

    Files: ``digits_cnn.safetensors`` (original, fp32), ``digits_cnn.nern`` (fitted predictor),
    ``digits_cnn_expanded.safetensors`` and ``digits_cnn_expanded.onnx`` (verified against PyTorch with
    onnxruntime), ``digits_cnn.coded.nern`` (``compress``).

    Args:
        workdir: output folder, created if missing.
        hidden: predictor width.
        iters: reconstruction steps.
        train_epochs: epochs of the original model's training.
        seed: seeds training and fitting.
        device: auto | cpu | cuda[:N].
        threads: torch CPU threads while the demo runs (restored afterwards); None keeps torch's setting. One is
            the default because the demo's matrices are tiny: more threads gain nothing, and on a busy machine
            threads competing for cores made training and fitting 10-15x slower (measured on 2 shared cores).
        reporter: one log line per stage, and the fit's progress.

    Returns:
        ``files`` (paths), ``data``, ``original`` and ``expanded`` (test top-1 in percent, bytes of the fp32
        .safetensors), ``agreement`` (percent of equal predictions), ``nern`` (bytes, conv ratio = predictor params
        / represented conv weights, file ratio = .nern bytes / fp32 safetensors bytes, parameter counts), ``onnx``
        (verification figures), ``coded`` (the same network through ``compress``, fine-tuned on the training
        digits: bytes, file ratio, test top-1, agreement, step, fine-tuning steps), ``fit`` (the fit record: steps,
        losses, rmse), ``config`` (the FitConfig used) and ``timings`` (seconds per stage, and in all).

    Example:
        >>> result = run_demo("nerncompress-demo", iters=200)
    """
    resolve_device(device)  # fail before training on an unavailable device
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _run_demo(
            Path(workdir), hidden=hidden, iters=iters, train_epochs=train_epochs, seed=seed, device=device,
            reporter=reporter,
        )  # fmt: skip
    finally:
        torch.set_num_threads(previous_threads)


def _run_demo(
    folder: Path,
    *,
    hidden: int,
    iters: int,
    train_epochs: int,
    seed: int,
    device: str,
    reporter: Reporter,
) -> dict[str, Any]:
    started_all = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "original": folder / "digits_cnn.safetensors",
        "nern": folder / "digits_cnn.nern",
        "safetensors": folder / "digits_cnn_expanded.safetensors",
        "onnx": folder / "digits_cnn_expanded.onnx",
        "coded": folder / "digits_cnn.coded.nern",
    }
    timings: dict[str, float] = {}

    reporter.log("training the digits CNN on scikit-learn's digits (train split)")
    started = time.perf_counter()
    train = load_data("digits", split="train")
    state_dict = train_digits_model(train, epochs=train_epochs, seed=seed, device=device)
    timings["train"] = time.perf_counter() - started
    save_safetensors(
        state_dict.items(),
        files["original"],
        specs=[(key, value.dtype, tuple(value.shape)) for key, value in state_dict.items()],
        metadata={"format": "pt"},
    )

    reporter.log(f"fitting a predictor (hidden {hidden}, {iters} steps)")
    config = replace(DEMO_FIT, hidden=hidden, iters=iters, seed=seed)
    started = time.perf_counter()
    with reporter.phase("fit", total=config.iters) as on_step:
        nern = fit(
            state_dict,
            config,
            arch=DEMO_ARCH,
            device=device,
            on_step=on_step,
            source={"file": files["original"].name, "note": "nerncompress demo"},
        )
    timings["fit"] = time.perf_counter() - started
    save_artifact(nern, files["nern"])

    reporter.log("expanding to .safetensors and .onnx")
    started = time.perf_counter()
    export(nern, files["safetensors"], device=device)
    timings["expand_safetensors"] = time.perf_counter() - started
    started = time.perf_counter()
    onnx_report = export(nern, files["onnx"], device=device, verify=True)
    timings["expand_onnx"] = time.perf_counter() - started

    reporter.log("evaluating original and expanded models on the digits test split")
    started = time.perf_counter()
    test = load_data("digits", split="test")
    mean, std = preset_stats(DEMO_PRESET)
    original = evaluate(build_model(DEMO_ARCH, state_dict), test, mean=mean, std=std, device=device)
    expanded = evaluate(expand_model(nern, device=device), test, mean=mean, std=std, device=device)
    timings["eval"] = time.perf_counter() - started

    reporter.log(f"compress: coding the weights, fine-tuned on the training digits, for "
                 f"{DEMO_TARGET.min_agreement:g}% agreement on held-out ones")
    started = time.perf_counter()
    coded, record = code_checkpoint(
        state_dict, CodeConfig(seed=seed), arch=DEMO_ARCH, data=train,
        target=DEMO_TARGET, device=device, reporter=reporter,
    )  # fmt: skip
    save_artifact(coded, files["coded"])
    coded_result = evaluate(expand_model(coded, device=device), test, mean=mean, std=std, device=device)
    timings["compress"] = time.perf_counter() - started

    report = artifact_report(files["nern"])
    timings["total"] = time.perf_counter() - started_all
    return {
        "files": {name: str(path) for name, path in files.items()},
        "data": {"train": "digits:train", "test": test.source, "test_images": test.labels.numel()},
        "original": {"top1": original.top1, "bytes": files["original"].stat().st_size},
        "expanded": {"top1": expanded.top1, "bytes": files["safetensors"].stat().st_size},
        "agreement": original.agreement(expanded),
        "nern": {
            "bytes": report["file_bytes"],
            "conv_ratio": report["conv_ratio"],
            "file_ratio": report["file_ratio"],
            "predictor_parameters": report["predictor_parameters"],
            "conv_parameters": report["conv_parameters"],
        },
        "onnx": {"bytes": onnx_report.bytes, **(onnx_report.onnx or {})},
        "coded": {
            "bytes": files["coded"].stat().st_size,
            "file_ratio": files["coded"].stat().st_size / fp32_reference_bytes(coded),
            "top1": coded_result.top1,
            "agreement": original.agreement(coded_result),
            "step": record["chosen"]["coarseness"],
            "finetuned_steps": record["chosen"]["finetuned_steps"],
        },
        "fit": {k: v for k, v in nern.history[-1].items() if k not in ("config", "stage", "tool_version")},
        "config": config.to_dict(),
        "timings": timings,
    }
