"""Option and argument aliases shared by the commands, defined once as ``Annotated`` types.

Flags mirror the library's keyword names (``--hidden`` <-> ``FitConfig.hidden``); defaults come from the library's
configs, so the CLI and the Python API cannot drift apart. Panels group ``--help``: "Predictor", "Training",
"Output".
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from ..devices import resolve_device
from ..errors import UsageError
from ..permutations import PERMUTATIONS
from ..training import FitConfig

PREDICTOR = "Predictor"
TRAINING = "Training"
OUTPUT = "Output"

FIT_DEFAULTS = FitConfig()

# Built from the engine's list so that a new permutation shows up in --help without touching the CLI.
Permute = Enum("Permute", {name: name for name in PERMUTATIONS}, type=str)  # type: ignore[misc]


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
RequiredOutputOpt = Annotated[
    Path,
    typer.Option("-o", "--output", help="Output file: .safetensors or .onnx (by suffix).", rich_help_panel=OUTPUT),
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

# -------------------------------------------------------------------------------------------------- arguments
CheckpointArg = Annotated[Path, typer.Argument(help="Checkpoint: .pt/.pth/.th/.bin (state_dict) or .safetensors.")]
NernArg = Annotated[Path, typer.Argument(help="A .nern artifact.")]
ModelArg = Annotated[Path, typer.Argument(help="A checkpoint or a .nern artifact.")]

# ------------------------------------------------------------------------------------------ fit: predictor shape
HiddenOpt = Annotated[int, typer.Option("--hidden", min=1, help="Predictor width h.", rich_help_panel=PREDICTOR)]
LevelsOpt = Annotated[
    int, typer.Option("--levels", min=1, help="Positional embedding levels L.", rich_help_panel=PREDICTOR)
]
BaseOpt = Annotated[
    float, typer.Option("--base", help="Embedding frequency base b (frequencies pi * b^k).", rich_help_panel=PREDICTOR)
]
PermuteOpt = Annotated[
    Permute,
    typer.Option("--permute", help="Smoothing permutation of each layer's kernels.", rich_help_panel=PREDICTOR),
]

# ------------------------------------------------------------------------------------------------ fit: training
ItersOpt = Annotated[int, typer.Option("--iters", min=1, help="Optimisation steps.", rich_help_panel=TRAINING)]
LrOpt = Annotated[float, typer.Option("--lr", help="Peak learning rate (Adam).", rich_help_panel=TRAINING)]
KernelBatchOpt = Annotated[
    int, typer.Option("--batch-size", min=1, help="Kernels per optimisation step.", rich_help_panel=TRAINING)
]

# ---------------------------------------------------------------------------------------------- eval and export
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
ImageBatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass.")]
CompareOpt = Annotated[
    Path | None,
    typer.Option("--compare", help="A second checkpoint or .nern: report agreement and the paired top-1 delta."),
]
OpsetOpt = Annotated[int, typer.Option("--opset", help="ONNX opset (ONNX output only).")]
VerifyOpt = Annotated[
    bool,
    typer.Option("--verify/--no-verify", help="Check the ONNX model against PyTorch with onnxruntime."),
]
