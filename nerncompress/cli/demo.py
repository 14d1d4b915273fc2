"""``nerncompress demo``: the whole job on an embedded example, no downloads."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from .. import DEMO_FIT, DEMO_TRAIN_EPOCHS, run_demo
from . import output
from .options import OUTPUT, TRAINING, DeviceOpt, HiddenOpt, ItersOpt, JsonOpt, SeedOpt, examples

WorkdirOpt = Annotated[
    Path, typer.Option("--workdir", help="Folder for the demo's files (created).", rich_help_panel=OUTPUT)
]
TrainEpochsOpt = Annotated[
    int, typer.Option("--train-epochs", min=1, help="Epochs of the original CNN's training.", rich_help_panel=TRAINING)
]
ThreadsOpt = Annotated[
    int, typer.Option("--threads", min=0, help="Torch CPU threads (0: torch's default).", rich_help_panel=TRAINING)
]

EPILOG = examples("nerncompress demo", "nerncompress demo --workdir /tmp/demo --iters 2000 --json")


def demo_command(
    workdir: WorkdirOpt = Path("nerncompress-demo"),
    hidden: HiddenOpt = DEMO_FIT.hidden,
    iters: ItersOpt = DEMO_FIT.iters,
    train_epochs: TrainEpochsOpt = DEMO_TRAIN_EPOCHS,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = 1,
    json_output: JsonOpt = False,
) -> None:
    """The whole job on an embedded example, no downloads: train a small CNN on scikit-learn's digits, fit a
    .nern, expand it to .safetensors and .onnx, and compare accuracy and size before and after.
    """
    out = output.Output(json_output)
    result = run_demo(
        workdir, hidden=hidden, iters=iters, train_epochs=train_epochs, seed=seed, device=device,
        threads=threads or None, reporter=out,
    )  # fmt: skip
    out.result(result, render)


def render(console: Console, data: Mapping[str, Any]) -> None:
    """Before/after table of ``nerncompress demo``."""
    original, expanded, nern = data["original"], data["expanded"], data["nern"]
    table = Table(title="nerncompress demo: digits CNN, before and after", title_justify="left", title_style="bold")
    table.add_column("")
    table.add_column("original", justify="right")
    table.add_column("fit (predictor)", justify="right")
    table.add_column("compress (coded)", justify="right")
    coded = data["coded"]
    table.add_row("test top-1", f"{original['top1']:.2f}%", f"{expanded['top1']:.2f}%", f"{coded['top1']:.2f}%")
    table.add_row("agreement with original", "100.00%", f"{data['agreement']:.2f}%", f"{coded['agreement']:.2f}%")
    table.add_row("bytes on disk", f"{original['bytes']:,} (fp32 .safetensors)", f"{nern['bytes']:,} (.nern)",
                  f"{coded['bytes']:,} (.nern)")  # fmt: skip
    table.add_row("conv ratio", "", f"{output.percent(nern['conv_ratio'])}", "")
    table.add_row("file ratio", "", f"{output.percent(nern['file_ratio'])}", f"{output.percent(coded['file_ratio'])}")
    console.print(table)
    timings = data["timings"]
    console.print(
        output.key_value_table("timings", [(stage, f"{seconds:.1f} s") for stage, seconds in timings.items()])
    )
    console.print(output.key_value_table("files", list(data["files"].items())))
