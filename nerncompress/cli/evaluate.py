"""``nerncompress eval``: top-1 of a checkpoint or a .nern, paired figures against a second model, and the gate."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from .. import DEFAULT_WORKERS, enforce_gate, run_eval
from . import output
from .options import (
    ArchOpt,
    ImageBatchOpt,
    JsonOpt,
    MaxDropOpt,
    MinAgreementOpt,
    ModelArg,
    RunDeviceOpt,
    RunImageSizeOpt,
    RunThreadsOpt,
    RunWorkersOpt,
    TrustCodeOpt,
    TrustPickleOpt,
    accuracy_gate,
    examples,
)

DataOpt = Annotated[
    str,
    typer.Option(
        "--data", help="Dataset: digits, a .npz (x uint8 NHWC, y), a CIFAR python folder or an ImageFolder tree."
    ),
]
SplitOpt = Annotated[str, typer.Option("--split", help="train or test (CIFAR folders and digits).")]
PresetOpt = Annotated[
    str | None,
    typer.Option("--preset", help="Normalisation preset (imagenet, cifar10, digits, none). Default: the arch's."),
]
CompareOpt = Annotated[
    Path | None,
    typer.Option(
        "--compare", help="A reference checkpoint or .nern (usually the original): report agreement and the paired "
        "top-1 delta; --min-agreement and --max-drop judge against it.",
    ),
]  # fmt: skip

EPILOG = examples(
    "nerncompress eval resnet20.th --data cifar-10-batches-py",
    "nerncompress eval model.nern --data test.npz --compare resnet20.th",
    "nerncompress eval model.nern --data test.npz --compare resnet20.th --min-agreement 95 --max-drop 0.5  # CI gate",
    "nerncompress eval model.nern --data digits --split test --json",
)


def eval_command(
    model_path: ModelArg,
    data: DataOpt,
    split: SplitOpt = "test",
    workers: RunWorkersOpt = DEFAULT_WORKERS,
    image_size: RunImageSizeOpt = None,
    arch: ArchOpt = None,
    preset: PresetOpt = None,
    compare: CompareOpt = None,
    min_agreement: MinAgreementOpt = None,
    max_drop: MaxDropOpt = None,
    device: RunDeviceOpt = "auto",
    batch_size: ImageBatchOpt = 500,
    threads: RunThreadsOpt = None,
    trust_pickle: TrustPickleOpt = False,
    trust_code: TrustCodeOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Top-1 accuracy of a checkpoint or a .nern (expanded in memory) on a labelled dataset.

    Images are normalised with the architecture's preset unless --preset overrides it. With --compare, a second
    model is evaluated on the same images: their agreement and the paired top-1 difference are reported, and
    --min-agreement / --max-drop turn them into a pass/fail gate (exit 3 when missed).
    """
    out = output.Output(json_output)
    summary = run_eval(
        model_path, data, split=split, workers=workers, image_size=image_size, arch=arch, preset=preset,
        compare=compare, gate=accuracy_gate(min_agreement, max_drop), device=device, batch_size=batch_size,
        threads=threads, trust_pickle=trust_pickle, trust_code=trust_code, reporter=out,
    )  # fmt: skip
    out.result(summary, render)
    enforce_gate(summary)


def render(console: Console, data: Mapping[str, Any]) -> None:
    """Result of ``nerncompress eval``."""
    rows = [
        ("model", data["model"]),
        ("data", f"{data['data']} ({data['count']:,} images)"),
        ("normalisation", data["preset"]),
        ("top-1", f"{data['top1']:.2f}%"),
    ]
    compare = data.get("compare")
    if compare:
        rows += [
            ("compared with", compare["model"]),
            ("its top-1", f"{compare['top1']:.2f}%"),
            ("agreement", f"{compare['agreement']:.2f}%"),
            ("paired delta", f"{compare['delta_top1']:+.2f} ± {compare['delta_top1_ci95']:.2f} points (95% interval;"
                             f" only this right: {compare['only_first_correct']},"
                             f" only the other right: {compare['only_second_correct']})"),
        ]  # fmt: skip
    console.print(output.key_value_table("eval", rows))
    output.render_gate(console, data.get("gate"))
