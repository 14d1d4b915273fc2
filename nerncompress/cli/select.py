"""``nerncompress select``: keep the candidate that agrees best with a reference on held-out training images."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .. import DEFAULT_WORKERS, DistillConfig, run_select
from . import output
from .options import (
    ArchOpt,
    DataSplitOpt,
    HoldoutSeedOpt,
    ImageBatchOpt,
    ImageSizeOpt,
    JsonOpt,
    RunDeviceOpt,
    RunThreadsOpt,
    TrustCodeOpt,
    TrustPickleOpt,
    WorkersOpt,
    examples,
)

CandidatesArg = Annotated[list[Path], typer.Argument(help="Two or more .nern files or checkpoints to choose among.")]
ReferenceOpt = Annotated[
    Path, typer.Option("--reference", help="The model the candidates should reproduce (usually the original).")
]
DataOpt = Annotated[
    list[str],
    typer.Option(
        "--data",
        help="Images to score on, given as to distill (repeatable); only their held-out share (--holdout) is used.",
    ),
]
OutputOpt = Annotated[Path, typer.Option("--output", "-o", help="Where to copy the selected file.")]
HoldoutOpt = Annotated[
    float,
    typer.Option(
        "--holdout", min=0.0, max=0.99,
        help="Score on the share of --data that distill holds out with the same --holdout and --holdout-seed "
        "(0: on every image of --data, for a file of images no candidate trained on).",
    ),
]  # fmt: skip

EPILOG = examples(
    "nerncompress select s0.nern s1.nern s2.nern --reference resnet20.th "
    "--data train2000.npz --data train5000.npz -o best.nern",
    "nerncompress select a.nern b.nern --reference resnet20.th --data heldout.npz --holdout 0 --json",
)


def select_command(
    candidates: CandidatesArg,
    reference: ReferenceOpt,
    data: DataOpt,
    output_path: OutputOpt,
    holdout: HoldoutOpt = DistillConfig.holdout,
    holdout_seed: HoldoutSeedOpt = DistillConfig.holdout_seed,
    split: DataSplitOpt = "train",
    workers: WorkersOpt = DEFAULT_WORKERS,
    image_size: ImageSizeOpt = None,
    arch: ArchOpt = None,
    device: RunDeviceOpt = "auto",
    batch_size: ImageBatchOpt = 500,
    threads: RunThreadsOpt = None,
    trust_pickle: TrustPickleOpt = False,
    trust_code: TrustCodeOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Keep the candidate that agrees most with the reference on held-out training images (the first on ties).

    For the best of several runs (e.g. seeds): give the --data that distill was given, and only the share it held
    out is scored (the same split for every seed). Never select on test images. The selected file is copied to -o.
    """
    out = output.Output(json_output)
    summary = run_select(
        candidates, reference=reference, data=data, output=output_path, holdout=holdout, holdout_seed=holdout_seed,
        split=split, workers=workers, image_size=image_size, arch=arch, device=device, batch_size=batch_size,
        threads=threads, trust_pickle=trust_pickle, trust_code=trust_code, reporter=out,
    )  # fmt: skip
    out.result(summary, render)


def render(console: Console, data: Mapping[str, Any]) -> None:
    """Result of ``nerncompress select``."""
    table = Table(
        title=escape(f"agreement with {data['reference']} on {data['data']} ({data['images']:,} images)"),
        title_justify="left", title_style="bold",
    )  # fmt: skip
    for column in ("candidate", "agreement", "top-1", ""):
        table.add_column(column, justify="left" if column == "candidate" else "right")
    for index, row in enumerate(data["candidates"]):
        mark = "selected" if index == data["selected_index"] else ""
        table.add_row(escape(row["path"]), f"{row['agreement']:.2f}%", f"{row['top1']:.2f}%", mark)
    console.print(table)
    console.print(escape(f"copied {data['selected']} to {data['output']}"))
