"""``nerncompress compress``: a checkpoint -> the smallest .nern that keeps its function (the job a user has)."""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .. import ALLOCATIONS, DEFAULT_WORKERS, CodeConfig, enforce_gate, run_compress
from . import output
from .options import (
    TRAINING,
    ArchOpt,
    CheckpointArg,
    DataSplitOpt,
    DeviceOpt,
    HoldoutSeedOpt,
    ImageSizeOpt,
    JsonOpt,
    MaxDropOpt,
    MinAgreementOpt,
    OutputOpt,
    ResumeOpt,
    SeedOpt,
    ThreadsOpt,
    TrustPickleOpt,
    WorkersOpt,
    accuracy_gate,
    examples,
)

CODING = "Coding"
DEFAULTS = CodeConfig()
Allocation = Enum("Allocation", {name: name for name in ALLOCATIONS}, type=str)  # type: ignore[misc]

DataOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--data",
        help="Training images (repeat to combine datasets): they choose each layer's step, fine-tune the stored "
        "integers, and judge the target on a held-out share. None (or 'noise'): the data-free codec at --step.",
        rich_help_panel=TRAINING,
    ),
]
StepOpt = Annotated[
    float | None,
    typer.Option(
        "--step", min=0.0,
        help="Coarseness of the grid (weight units, for a layer of average sensitivity). Default: searched for the "
        "target with --data, else 0.02.",
        rich_help_panel=CODING,
    ),
]  # fmt: skip
AllocationOpt = Annotated[
    Allocation,
    typer.Option(
        "--allocation", help="sensitivity: finer steps where the network is more sensitive (Fisher, needs --data); "
        "uniform: one step for every weight tensor.", rich_help_panel=CODING,
    ),
]  # fmt: skip
RateWeightOpt = Annotated[
    float,
    typer.Option(
        "--rate-weight", min=0.0, help="Rate-distortion rounding: squared steps of distortion traded per bit saved "
        "(0: nearest rounding).", rich_help_panel=CODING,
    ),
]  # fmt: skip
StagesOpt = Annotated[
    int,
    typer.Option("--stages", min=0, help="Most fine-tuning stages of the search, each at a coarser step.",
                 rich_help_panel=TRAINING),
]  # fmt: skip
StageItersOpt = Annotated[
    int,
    typer.Option("--stage-iters", min=0, help="Fine-tuning steps per stage (0: no fine-tuning).",
                 rich_help_panel=TRAINING),
]  # fmt: skip
HoldoutOpt = Annotated[
    float,
    typer.Option("--holdout", min=0.01, max=0.9, help="Share of the training images held out to judge the target.",
                 rich_help_panel=TRAINING),
]  # fmt: skip
HiddenOpt = Annotated[
    int,
    typer.Option(
        "--hidden", min=0, help="Offer a predictor of this width to every conv layer: a layer takes it where its "
        "residual and positions code shorter than its plain integers, and it is kept only when it saves more than "
        "its own bytes (0: no predictor).", rich_help_panel=CODING,
    ),
]  # fmt: skip
FitItersOpt = Annotated[
    int,
    typer.Option("--fit-iters", min=1, help="Fitting steps of the predictor offered by --hidden.",
                 rich_help_panel=CODING),
]  # fmt: skip

EPILOG = examples(
    "nerncompress compress resnet56.th --data train.npz --min-agreement 95 -o resnet56.nern",
    "nerncompress compress resnet56.th --data cifar-10-batches-py --min-agreement 97 --max-drop 0.5 --json",
    "nerncompress compress resnet56.th --step 0.02 -o resnet56.nern    # data-free, about a second per model",
)


def compress_command(
    checkpoint: CheckpointArg,
    data: DataOpt = None,
    min_agreement: MinAgreementOpt = None,
    max_drop: MaxDropOpt = None,
    step: StepOpt = None,
    allocation: AllocationOpt = Allocation(DEFAULTS.allocation),
    rate_weight: RateWeightOpt = DEFAULTS.rate_weight,
    hidden: HiddenOpt = DEFAULTS.hidden,
    fit_iters: FitItersOpt = DEFAULTS.fit_iters,
    stages: StagesOpt = DEFAULTS.stages,
    stage_iters: StageItersOpt = DEFAULTS.stage_iters,
    holdout: HoldoutOpt = DEFAULTS.holdout,
    holdout_seed: HoldoutSeedOpt = DEFAULTS.holdout_seed,
    split: DataSplitOpt = "train",
    workers: WorkersOpt = DEFAULT_WORKERS,
    image_size: ImageSizeOpt = None,
    arch: ArchOpt = None,
    seed: SeedOpt = DEFAULTS.seed,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    output_path: OutputOpt = None,
    resume: ResumeOpt = False,
    trust_pickle: TrustPickleOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Compress a checkpoint into the smallest .nern that keeps its function: every weight coded on a grid and
    entropy-coded, the grid chosen per layer, the stored values fine-tuned on the training images.

    With --data and --min-agreement / --max-drop, steps are searched from fine to coarse and the smallest file that
    meets the target on a held-out share of the training images is written; when none does, the closest one is
    written and the exit code is 3. Without --data, the data-free codec at --step. Test images never steer
    anything: evaluate the result with `nerncompress eval`. The search saves its state after every stage: Ctrl-C
    or SIGTERM stop it (exit 130) and the same command with --resume continues from the last stage.
    """
    out = output.Output(json_output)
    config = CodeConfig(
        step=step, allocation=allocation.value, rate_weight=rate_weight, stages=stages, stage_iters=stage_iters,
        holdout=holdout, holdout_seed=holdout_seed, seed=seed, hidden=hidden,
        fit_iters=fit_iters,
    )  # fmt: skip
    summary = run_compress(
        checkpoint, config, output=output_path, arch=arch, data=data, split=split, workers=workers,
        image_size=image_size, gate=accuracy_gate(min_agreement, max_drop), device=device, threads=threads,
        resume=resume, trust_pickle=trust_pickle, reporter=out,
    )  # fmt: skip
    out.result(summary, render)
    enforce_gate(summary)


def render(console: Console, data: Mapping[str, Any]) -> None:
    """Summary of ``nerncompress compress``: the candidates tried and the one written."""
    candidates = data.get("candidates") or []
    if len(candidates) > 1 or candidates and candidates[0]["agreement"] is not None:
        table = Table(title="candidates (held-out training images)", title_justify="left", title_style="bold")
        for column in ("step", "bytes", "file ratio", "agreement", "top-1", "fine-tuning steps"):
            table.add_column(column, justify="right")
        for found in candidates:
            table.add_row(
                f"{found['coarseness']:.4g}", f"{found['bytes']:,}",
                output.percent(found["bytes"] / data["fp32_reference_bytes"]), _percent(found["agreement"]),
                _percent(found["top1"]), str(found["finetuned_steps"]),
            )  # fmt: skip
        console.print(table)
    chosen = data["chosen"]
    rows = [
        ("artifact", data["path"]),
        ("size", output.human_bytes(data["file_bytes"])),
        ("file ratio", f"{output.percent(data['file_ratio'])}  (.nern bytes / fp32 safetensors bytes; "
                       f"{data['bits_per_parameter']:.2f} bits per parameter)"),
        ("step", f"{chosen['coarseness']:.4g}"),
        ("data", data.get("data") or "none (data-free)"),
        ("time", f"{data['seconds']:.1f} s on {data.get('device')}"),
    ]  # fmt: skip
    if chosen["agreement"] is not None:
        rows.insert(4, ("held-out agreement", f"{chosen['agreement']:.2f}% with the original"))
    hybrid = data.get("hybrid")
    if hybrid:
        taken = [name for name, row in hybrid["layers"].items() if row["predictor"]]
        verdict = "kept" if hybrid["predictor_used"] else "dropped: it saved less than its own bytes"
        rows.append(("predictor", f"{output.human_bytes(hybrid['predictor_bytes'])}, taken by {len(taken)} of "
                                  f"{len(hybrid['layers'])} layers, {verdict}"))  # fmt: skip
    console.print(output.key_value_table("compress", rows))
    output.render_gate(console, data.get("gate"))
    if data.get("gate") is None and chosen["agreement"] is None:
        console.print(escape("evaluate it with: nerncompress eval FILE --data TEST --compare ORIGINAL"), style="dim")


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}%"
