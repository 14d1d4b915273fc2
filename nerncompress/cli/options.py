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

from ..compression import METHODS, ROUNDINGS, SCHEDULES, SCOPES, PruneConfig, QuantizeConfig
from ..devices import resolve_device
from ..errors import UsageError
from ..permutations import PERMUTATIONS
from ..quantization import BITS
from ..resume import DEFAULT_EVERY_SECONDS, DEFAULT_EVERY_STEPS
from ..training import SCHEMES, DistillConfig, FitConfig

PREDICTOR = "Predictor"
TRAINING = "Training"
OUTPUT = "Output"

FIT_DEFAULTS = FitConfig()
DISTILL_DEFAULTS = DistillConfig()
QUANTIZE_DEFAULTS = QuantizeConfig()
PRUNE_DEFAULTS = PruneConfig()

# Built from the engine's list so that a new permutation shows up in --help without touching the CLI.
Permute = Enum("Permute", {name: name for name in PERMUTATIONS}, type=str)  # type: ignore[misc]
Scheme = Enum("Scheme", {name: name for name in SCHEMES}, type=str)  # type: ignore[misc]
Bits = Enum("Bits", {f"b{bits}": str(bits) for bits in BITS}, type=str)  # type: ignore[misc]
Rounding = Enum("Rounding", {name: name for name in ROUNDINGS}, type=str)  # type: ignore[misc]
Method = Enum("Method", {name: name for name in METHODS}, type=str)  # type: ignore[misc]
Scope = Enum("Scope", {name: name for name in SCOPES}, type=str)  # type: ignore[misc]
Schedule = Enum("Schedule", {name: name for name in SCHEDULES}, type=str)  # type: ignore[misc]


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
CHECKPOINT_EVERY_DEFAULT = DEFAULT_EVERY_STEPS

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
    typer.Option(
        "--permute", help="Smoothing permutation of each layer's kernels: the positions fitting starts from.",
        rich_help_panel=PREDICTOR,
    ),
]
ReassignEveryOpt = Annotated[
    int,
    typer.Option(
        "--reassign-every", min=0,
        help="Every this many steps, move each kernel to the position whose predicted kernel fits it best (an "
        "optimal matching; no extra bytes). 0 keeps the permutation's positions. With --permute crossfilter only; "
        "with --rounds, in the first round only.",
        rich_help_panel=PREDICTOR,
    ),
]

# ------------------------------------------------------------------------------------------------ fit: training
ItersOpt = Annotated[int, typer.Option("--iters", min=1, help="Optimisation steps.", rich_help_panel=TRAINING)]
LrOpt = Annotated[float, typer.Option("--lr", help="Peak learning rate (Adam).", rich_help_panel=TRAINING)]
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
]
KdWeightOpt = Annotated[
    float, typer.Option("--kd-weight", min=0.0, help="KD loss weight (--scheme nern).", rich_help_panel=TRAINING)
]
FmdWeightOpt = Annotated[
    float,
    typer.Option("--fmd-weight", min=0.0, help="Feature-map loss weight (--scheme nern).", rich_help_panel=TRAINING),
]
FitDataOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--data",
        help="Training images for --scheme nern (repeat to combine datasets; 'noise' for data-free).",
        rich_help_panel=TRAINING,
    ),
]
DataSplitOpt = Annotated[
    str,
    typer.Option(
        "--split", help="Split of each --data: train or test (CIFAR folders, digits).", rich_help_panel=TRAINING
    ),
]

# ----------------------------------------------------------------------------------------------------- distill
TeacherOpt = Annotated[
    Path,
    typer.Option(
        "--teacher",
        help="The teacher: the original network's checkpoint (a .nern does not store it), or a stronger model of the "
        "same task (a checkpoint or a .nern).",
        rich_help_panel=TRAINING,
    ),
]
TeacherArchOpt = Annotated[
    str | None,
    typer.Option(
        "--teacher-arch", help="Architecture of a checkpoint teacher. Default: detected.", rich_help_panel=TRAINING
    ),
]
DistillDataOpt = Annotated[
    list[str],
    typer.Option(
        "--data",
        help="Training images (repeat to combine datasets, e.g. the lossless and the JPEG CIFAR training images), "
        "or 'noise' for data-free distillation.",
        rich_help_panel=TRAINING,
    ),
]
ImageStepBatchOpt = Annotated[
    int, typer.Option("--batch-size", min=1, help="Images per optimisation step.", rich_help_panel=TRAINING)
]
TemperatureOpt = Annotated[
    float, typer.Option("--temperature", help="Softening of both output distributions in KD.", rich_help_panel=TRAINING)
]
KdLossOpt = Annotated[
    str,
    typer.Option(
        "--kd-loss", help="KD loss: kl (KL at --temperature) or mse (squared difference of centred logits).",
        rich_help_panel=TRAINING,
    ),
]
MixOpt = Annotated[
    str,
    typer.Option(
        "--mix", help="Blend images within each batch: none, mixup or cutmix (KD needs no labels).",
        rich_help_panel=TRAINING,
    ),
]
MixFractionOpt = Annotated[
    float, typer.Option("--mix-fraction", help="Share of each batch that --mix blends.", rich_help_panel=TRAINING)
]
DistillFmdOpt = Annotated[
    float,
    typer.Option(
        "--fmd-weight", min=0.0,
        help="Weight of feature-map distillation (maps after every BN and residual sum, L2-normalised); 0 = logits only.",
        rich_help_panel=TRAINING,
    ),
]
ProbeFractionOpt = Annotated[
    float,
    typer.Option(
        "--probe-fraction", min=0.0, max=1.0,
        help="Share of each batch moved one gradient step towards where student and teacher disagree.",
        rich_help_panel=TRAINING,
    ),
]
ProbeEpsOpt = Annotated[
    float,
    typer.Option(
        "--probe-eps", min=0.0, help="Largest probe step, in 1/255 of the pixel range (each image draws U(0, eps)).",
        rich_help_panel=TRAINING,
    ),
]
HoldoutOpt = Annotated[
    float,
    typer.Option(
        "--holdout",
        help="Share of the training images held out to select the best step (0: keep the last step).",
        rich_help_panel=TRAINING,
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
EmaOpt = Annotated[
    float,
    typer.Option(
        "--ema",
        help="Decay per step of a moving average of the predictor's weights, which is then scored on the holdout "
        "and written (0: off; 0.998 averages over about the last 500 steps).",
        rich_help_panel=TRAINING,
    ),
]
EvalEveryOpt = Annotated[
    int,
    typer.Option(
        "--eval-every", min=0, help="Steps between holdout evaluations (0: only at the end).", rich_help_panel=TRAINING
    ),
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
SelectDataOpt = Annotated[
    list[str],
    typer.Option(
        "--data",
        help="Images to score on, given as to distill (repeatable); only their held-out share (--holdout) is used.",
    ),
]
SelectHoldoutOpt = Annotated[
    float,
    typer.Option(
        "--holdout",
        min=0.0,
        max=0.99,
        help="Score on the share of --data that distill holds out with the same --holdout and --holdout-seed "
        "(0: on every image of --data, for a file of images no candidate trained on).",
    ),
]
OpsetOpt = Annotated[int, typer.Option("--opset", help="ONNX opset (ONNX output only).")]
VerifyOpt = Annotated[
    bool,
    typer.Option("--verify/--no-verify", help="Check the ONNX model against PyTorch with onnxruntime."),
]

# ---------------------------------------------------------------------------------------- quantize and prune
COMPRESSION = "Compression"

BitsOpt = Annotated[
    Bits,
    typer.Option(
        "--bits", help="Integer bits per predictor weight (symmetric, float16 scales), or fp16.",
        rich_help_panel=COMPRESSION,
    ),
]  # fmt: skip
GroupSizeOpt = Annotated[
    int | None,
    typer.Option(
        "--group-size", min=1, help="Inputs sharing one scale. Default: one scale per output row. 32 makes an "
        "int8 file ~3% larger and its regenerated kernels 30% more exact (ResNet-56: 3.6% vs 5.1% error).",
        rich_help_panel=COMPRESSION,
    ),
]  # fmt: skip
RawFp16Opt = Annotated[
    bool,
    typer.Option(
        "--raw-fp16", help="Also store the raw float32 tensors (BatchNorm, classifier, raw convs) as float16.",
        rich_help_panel=COMPRESSION,
    ),
]  # fmt: skip
RoundingOpt = Annotated[
    Rounding,
    typer.Option(
        "--rounding", help="gptq: round each layer with error compensation before fine-tuning; learned: choose "
        "up or down for every weight, all layers optimised together (--rounding-iters steps; lowest kernel error "
        "at 6-8 bits, minutes on a CPU; follow it with --kd-iters); nearest: round every weight to its nearest "
        "level.", rich_help_panel=COMPRESSION,
    ),
]  # fmt: skip
RoundingItersOpt = Annotated[
    int,
    typer.Option("--rounding-iters", min=1, help="Steps of --rounding learned.", rich_help_panel=TRAINING),
]  # fmt: skip
QatItersOpt = Annotated[
    int,
    typer.Option(
        "--qat-iters", min=0, help="Quantization-aware reconstruction steps (0: round only).",
        rich_help_panel=TRAINING,
    ),
]  # fmt: skip
SparsityOpt = Annotated[
    float,
    typer.Option(
        "--sparsity", help="Share of weights (unstructured) or hidden units (structured) removed, in [0, 1).",
        rich_help_panel=COMPRESSION,
    ),
]  # fmt: skip
MethodOpt = Annotated[
    Method,
    typer.Option(
        "--method", help="unstructured: single weights, stored sparse; structured: whole hidden units, a smaller "
        "dense predictor.", rich_help_panel=COMPRESSION,
    ),
]  # fmt: skip
ScopeOpt = Annotated[
    Scope,
    typer.Option(
        "--scope",
        help="global: rank weights across all layers (each relative to its layer's RMS); layer: the same share "
        "from every layer.",
        rich_help_panel=COMPRESSION,
    ),
]  # fmt: skip
ScheduleOpt = Annotated[
    Schedule,
    typer.Option(
        "--schedule",
        help="oneshot: prune everything, then fine-tune; gradual: raise the sparsity along a cubic ramp over the "
        "first half of the fine-tuning steps (unstructured only; needs --finetune-iters >= 1).",
        rich_help_panel=COMPRESSION,
    ),
]  # fmt: skip
PruneReassignOpt = Annotated[
    int,
    typer.Option(
        "--reassign-every", min=0,
        help="Every this many fine-tuning steps, move each kernel to the position whose kernel the pruned predictor "
        "fits best (crossfilter only; no extra bytes). 0 keeps the input's positions.",
        rich_help_panel=TRAINING,
    ),
]  # fmt: skip
FinetuneItersOpt = Annotated[
    int,
    typer.Option(
        "--finetune-iters", min=0, help="Reconstruction steps after pruning (0: none).", rich_help_panel=TRAINING
    ),
]
FinetuneLrOpt = Annotated[
    float | None,
    typer.Option(
        "--lr", help="Peak learning rate of the reconstruction fine-tuning (Adam). Default: the stage's own "
        "(quantize: 3e-6 at 8 bits, x2 per bit less, 1e-6 for fp16; prune: 1e-2).", rich_help_panel=TRAINING,
    ),
]  # fmt: skip
OriginalOpt = Annotated[
    Path | None,
    typer.Option(
        "--original", help="The original checkpoint: reconstruct its weights. Default: the weights the input .nern "
        "regenerates (no checkpoint needed).", rich_help_panel=TRAINING,
    ),
]  # fmt: skip
KdItersOpt = Annotated[
    int,
    typer.Option(
        "--kd-iters", min=0, help="Knowledge-distillation steps after the reconstruction fine-tuning (0: none).",
        rich_help_panel=TRAINING,
    ),
]  # fmt: skip
KdLrOpt = Annotated[
    float | None,
    typer.Option(
        "--kd-lr", help="Peak learning rate of the KD phase. Default: the smaller of 1e-5 and the stage's --lr.",
        rich_help_panel=TRAINING,
    ),
]  # fmt: skip
KdDataOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--data", help="Images of the KD phase (repeat to combine datasets; 'noise', the default, for data-free).",
        rich_help_panel=TRAINING,
    ),
]  # fmt: skip
KdTeacherOpt = Annotated[
    Path | None,
    typer.Option(
        "--teacher", help="Teacher of the KD phase: a checkpoint or a .nern. Default: the input .nern itself.",
        rich_help_panel=TRAINING,
    ),
]  # fmt: skip
