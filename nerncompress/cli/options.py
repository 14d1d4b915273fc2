"""Option and argument aliases shared by several commands, defined once as ``Annotated`` types.

Options used by one command live in that command's module. Flags mirror the library's keyword names
(``--hidden`` <-> ``FitConfig.hidden``); defaults come from the library's configs, so the CLI and the Python API
cannot drift apart. Panels group ``--help``: "Predictor", "Training", "Output".
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import DEFAULT_EVERY_SECONDS, AccuracyGate, UsageError, resolve_device

PREDICTOR = "Predictor"
TRAINING = "Training"
OUTPUT = "Output"
GATE = "Accuracy gate"


def examples(*lines: str) -> str:
    """A command's epilog listing example invocations, one per line."""
    return "Examples:\n\n" + "\n\n".join(f"  $ {line}" for line in lines)


def _check_device(value: str) -> str:
    """Reject an unknown or unavailable device while parsing, before any work (a usage error, exit 2)."""
    try:
        resolve_device(value)
    except UsageError as exc:
        raise typer.BadParameter(str(exc)) from None
    return value


def _device_option(panel: str | None) -> typer.models.OptionInfo:
    return typer.Option(
        "--device",
        help="Where to run: auto (CUDA when present), cpu, cuda or cuda:N.",
        callback=_check_device,
        rich_help_panel=panel,
    )


def _workers_option(panel: str | None) -> typer.models.OptionInfo:
    return typer.Option(
        "--workers", min=1, metavar="N",
        help="Threads that decode the images of an ImageFolder tree, which is read from its files batch by batch. "
        "Default: min(8, CPU cores).",
        rich_help_panel=panel,
    )  # fmt: skip


def _image_size_option(panel: str | None) -> typer.models.OptionInfo:
    return typer.Option(
        "--image-size", min=1, metavar="S",
        help="Bring every image of an ImageFolder tree to SxS: other sizes are resized (shorter side S/0.875) and "
        "center-cropped, as torchvision evaluates ImageNet. Default: the first image's size (give S for a tree of "
        "mixed sizes).",
        rich_help_panel=panel,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------------- common
DeviceOpt = Annotated[str, _device_option(TRAINING)]
RunDeviceOpt = Annotated[str, _device_option(None)]
SeedOpt = Annotated[
    int, typer.Option("--seed", help="Seed of every random choice; recorded in the artifact.", rich_help_panel=TRAINING)
]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print one JSON document on stdout instead of tables.", rich_help_panel=OUTPUT)
]
OutputOpt = Annotated[
    Path | None,
    typer.Option(
        "-o", "--output", help="Output file (written atomically, never over an input).", rich_help_panel=OUTPUT
    ),
]
ArchOpt = Annotated[
    str | None,
    typer.Option(
        "--arch",
        help="Architecture of a checkpoint: a registered name, torchvision:<name> or pkg.module:function. "
        "Default: detected (a .nern records its own).",
    ),
]
TrustPickleOpt = Annotated[
    bool,
    typer.Option(
        "--trust-pickle",
        help="Also read pickled modules and TorchScript archives. They run code when loaded: trusted files only.",
    ),
]
TrustCodeOpt = Annotated[
    bool,
    typer.Option(
        "--trust-code",
        help="Build a .nern whose architecture is a user builder (pkg.module:function): its module is imported and "
        "runs code. Also lifts the bounds on a file's architecture kwargs. Trusted files only.",
    ),
]
ThreadsOpt = Annotated[
    int | None,
    typer.Option("--threads", min=1, help="Torch CPU threads. Default: torch's own choice.", rich_help_panel=TRAINING),
]
RunThreadsOpt = Annotated[
    int | None, typer.Option("--threads", min=1, help="Torch CPU threads. Default: torch's own choice.")
]
ItersOpt = Annotated[int, typer.Option("--iters", min=1, help="Optimisation steps.", rich_help_panel=TRAINING)]
LrOpt = Annotated[float, typer.Option("--lr", help="Peak learning rate (Adam).", rich_help_panel=TRAINING)]
HiddenOpt = Annotated[int, typer.Option("--hidden", min=1, help="Predictor width h.", rich_help_panel=PREDICTOR)]
DataSplitOpt = Annotated[
    str,
    typer.Option(
        "--split", help="Split of each --data: train or test (CIFAR folders, digits).", rich_help_panel=TRAINING
    ),
]
WorkersOpt = Annotated[int, _workers_option(TRAINING)]
RunWorkersOpt = Annotated[int, _workers_option(None)]
ImageSizeOpt = Annotated[int | None, _image_size_option(TRAINING)]
RunImageSizeOpt = Annotated[int | None, _image_size_option(None)]
TeacherArchOpt = Annotated[
    str | None,
    typer.Option(
        "--teacher-arch", help="Architecture of a checkpoint teacher. Default: detected.", rich_help_panel=TRAINING
    ),
]
HoldoutSeedOpt = Annotated[
    int,
    typer.Option(
        "--holdout-seed",
        help="Seed of the holdout split; independent of --seed, so runs with different seeds hold out the same images.",
        rich_help_panel=TRAINING,
    ),
]
ImageBatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass.")]

# ------------------------------------------------------------------------------------ interrupted runs (resume)
ResumeOpt = Annotated[
    bool,
    typer.Option(
        "--resume",
        help="Continue the run saved in OUTPUT.resume by an interruption (Ctrl-C, SIGTERM) or a periodic save. "
        "Same command, same options: the result has the same bytes as an uninterrupted run.",
        rich_help_panel=OUTPUT,
    ),
]
CheckpointEveryOpt = Annotated[
    int,
    typer.Option(
        "--checkpoint-every",
        min=0,
        help=f"Save progress to OUTPUT.resume every N steps and every {DEFAULT_EVERY_SECONDS:.0f} s "
        "(0: only on Ctrl-C/SIGTERM). Deleted once the output is written.",
        rich_help_panel=OUTPUT,
    ),
]

# -------------------------------------------------------------------------------------------------- arguments
CheckpointArg = Annotated[Path, typer.Argument(help="Checkpoint: .pt/.pth/.th/.bin (state_dict) or .safetensors.")]
NernArg = Annotated[Path, typer.Argument(help="A .nern artifact.")]
ModelArg = Annotated[Path, typer.Argument(help="A checkpoint or a .nern artifact.")]

# --------------------------------------------------------------------------------------------- accuracy gate
MinAgreementOpt = Annotated[
    float | None,
    typer.Option(
        "--min-agreement", min=0.0, max=100.0,
        help="Fail (exit 3) unless the result predicts the reference's class on at least PCT percent of the images.",
        rich_help_panel=GATE,
    ),
]  # fmt: skip
MaxDropOpt = Annotated[
    float | None,
    typer.Option(
        "--max-drop", min=0.0,
        help="Fail (exit 3) if the result's top-1 is more than POINTS below the reference's.",
        rich_help_panel=GATE,
    ),
]  # fmt: skip


def accuracy_gate(min_agreement: float | None, max_drop: float | None) -> AccuracyGate | None:
    """The gate of ``--min-agreement`` / ``--max-drop``, or None when neither is given."""
    if min_agreement is None and max_drop is None:
        return None
    return AccuracyGate(min_agreement=min_agreement, max_drop=max_drop)
