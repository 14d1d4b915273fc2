"""``nerncompress fit``: a checkpoint -> a .nern."""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Annotated, Any

import typer
from rich.console import Console

from .. import DEFAULT_EVERY_STEPS, DEFAULT_WORKERS, PERMUTATIONS, SCHEMES, FitConfig, run_fit
from . import output
from .options import (
    PREDICTOR,
    TRAINING,
    ArchOpt,
    CheckpointArg,
    CheckpointEveryOpt,
    DataSplitOpt,
    DeviceOpt,
    HiddenOpt,
    ImageSizeOpt,
    ItersOpt,
    JsonOpt,
    LrOpt,
    OutputOpt,
    ResumeOpt,
    SeedOpt,
    ThreadsOpt,
    TrustPickleOpt,
    WorkersOpt,
    examples,
)

DEFAULTS = FitConfig()
Permute = Enum("Permute", {name: name for name in PERMUTATIONS}, type=str)  # type: ignore[misc]
Scheme = Enum("Scheme", {name: name for name in SCHEMES}, type=str)  # type: ignore[misc]

LevelsOpt = Annotated[
    int, typer.Option("--levels", min=1, help="Positional embedding levels L.", rich_help_panel=PREDICTOR)
]
BaseOpt = Annotated[
    float, typer.Option("--base", help="Embedding frequency base b (frequencies pi * b^k).", rich_help_panel=PREDICTOR)
]
PermuteOpt = Annotated[
    Permute,
    typer.Option(
        "--permute", help="Smoothing permutation of each layer's kernels: the positions fitting starts from.",
        rich_help_panel=PREDICTOR,
    ),
]  # fmt: skip
ReassignEveryOpt = Annotated[
    int,
    typer.Option(
        "--reassign-every", min=0,
        help="Every this many steps, move each kernel to the position whose predicted kernel fits it best (an "
        "optimal matching; no extra bytes). 0 keeps the permutation's positions. With --permute crossfilter only; "
        "with --rounds, in the first round only.",
        rich_help_panel=PREDICTOR,
    ),
]  # fmt: skip
KernelBatchOpt = Annotated[
    int, typer.Option("--batch-size", min=1, help="Kernels per optimisation step.", rich_help_panel=TRAINING)
]
SchemeOpt = Annotated[
    Scheme,
    typer.Option(
        "--scheme",
        help="recon: reconstruct the kernels (no data). nern: NeRN's joint reconstruction + KD + feature-map "
        "objective against the original network, on --data (noise when absent).",
        rich_help_panel=TRAINING,
    ),
]
RoundsOpt = Annotated[
    int,
    typer.Option(
        "--rounds", min=1, help="Progressive reconstruction rounds (each refits the previous round's weights).",
        rich_help_panel=TRAINING,
    ),
]  # fmt: skip
KdWeightOpt = Annotated[
    float, typer.Option("--kd-weight", min=0.0, help="KD loss weight (--scheme nern).", rich_help_panel=TRAINING)
]
FmdWeightOpt = Annotated[
    float,
    typer.Option("--fmd-weight", min=0.0, help="Feature-map loss weight (--scheme nern).", rich_help_panel=TRAINING),
]
DataOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--data",
        help="Training images for --scheme nern (repeat to combine datasets; 'noise' for data-free).",
        rich_help_panel=TRAINING,
    ),
]

EPILOG = examples(
    "nerncompress fit resnet56.pt --hidden 280",
    "nerncompress fit resnet20.th --iters 4000 --device cuda -o resnet20-h180.nern",
    "nerncompress fit model.safetensors --arch torchvision:resnet18 --hidden 1256 --json",
    "nerncompress fit resnet20.th --scheme nern --data cifar-10-batches-py --rounds 2",
    "nerncompress fit resnet56.pt --hidden 280 --resume    # after Ctrl-C: continue the same run",
)


def fit_command(
    checkpoint: CheckpointArg,
    arch: ArchOpt = None,
    hidden: HiddenOpt = DEFAULTS.hidden,
    levels: LevelsOpt = DEFAULTS.levels,
    base: BaseOpt = DEFAULTS.base,
    permute: PermuteOpt = Permute(DEFAULTS.permute),
    reassign_every: ReassignEveryOpt = DEFAULTS.reassign_every,
    iters: ItersOpt = DEFAULTS.iters,
    lr: LrOpt = DEFAULTS.lr,
    batch_size: KernelBatchOpt = DEFAULTS.batch_size,
    scheme: SchemeOpt = Scheme(DEFAULTS.scheme),
    rounds: RoundsOpt = DEFAULTS.rounds,
    kd_weight: KdWeightOpt = DEFAULTS.kd_weight,
    fmd_weight: FmdWeightOpt = DEFAULTS.fmd_weight,
    data: DataOpt = None,
    split: DataSplitOpt = "train",
    workers: WorkersOpt = DEFAULT_WORKERS,
    image_size: ImageSizeOpt = None,
    seed: SeedOpt = DEFAULTS.seed,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    output_path: OutputOpt = None,
    resume: ResumeOpt = False,
    checkpoint_every: CheckpointEveryOpt = DEFAULT_EVERY_STEPS,
    trust_pickle: TrustPickleOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Fit a predictor that regenerates the checkpoint's conv kernels; write it as a .nern artifact.

    The architecture is detected from the checkpoint unless --arch names it. The default output is the
    checkpoint's name with the suffix .nern, in the current folder. Ctrl-C or SIGTERM saves the progress to
    OUTPUT.resume and exits 130; the same command with --resume continues it.
    """
    out = output.Output(json_output)
    config = FitConfig(
        hidden=hidden, levels=levels, base=base, permute=permute.value, reassign_every=reassign_every, iters=iters,
        lr=lr, batch_size=batch_size, scheme=scheme.value, rounds=rounds, kd_weight=kd_weight, fmd_weight=fmd_weight,
        seed=seed,
    )  # fmt: skip
    summary = run_fit(
        checkpoint, config, output=output_path, arch=arch, data=data, split=split, workers=workers,
        image_size=image_size, device=device, threads=threads, resume=resume, checkpoint_every=checkpoint_every,
        trust_pickle=trust_pickle, reporter=out,
    )  # fmt: skip
    out.result(summary, render)


def render(console: Console, data: Mapping[str, Any]) -> None:
    """Summary of ``nerncompress fit``."""
    errors = data.get("reconstruction", {})
    percent = output.percent
    rows = [
        ("artifact", data["path"]),
        ("size", output.human_bytes(data["file_bytes"])),
        ("fp32 reference", output.human_bytes(data["fp32_reference_bytes"])),
        ("conv ratio", f"{percent(data['conv_ratio'])}  ({data['predictor_parameters']:,} predictor params / "
                       f"{data['conv_parameters']:,} conv weights)"),
        ("file ratio", f"{percent(data['file_ratio'])}  (.nern bytes / fp32 safetensors bytes)"),
        ("represented layers", f"{data['represented_layers']} (+{len(data['raw_convs'])} conv stored raw)"),
        ("fit time", f"{data['seconds']:.1f} s ({data['steps']} steps on {data['device']})"),
    ]  # fmt: skip
    if "rmse" in errors:
        rows.append(("reconstruction RMSE", f"{errors['rmse']:.4g} ({percent(errors.get('relative_rmse'))} of the "
                                            "weights' std)"))  # fmt: skip
    console.print(output.key_value_table("fit", rows))
