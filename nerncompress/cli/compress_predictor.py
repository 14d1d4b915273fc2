"""``nerncompress quantize`` and ``nerncompress prune``: compress the predictor of a .nern."""

from __future__ import annotations

import json
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from .. import (
    BITS,
    DEFAULT_WORKERS,
    PRUNE_METHODS,
    PRUNE_SCHEDULES,
    PRUNE_SCOPES,
    ROUNDINGS,
    PruneConfig,
    QuantizeConfig,
    run_compress_predictor,
)
from . import output
from .options import (
    TRAINING,
    DataSplitOpt,
    DeviceOpt,
    ImageSizeOpt,
    JsonOpt,
    NernArg,
    OutputOpt,
    SeedOpt,
    TeacherArchOpt,
    ThreadsOpt,
    TrustCodeOpt,
    TrustPickleOpt,
    WorkersOpt,
    examples,
)

COMPRESSION = "Compression"
QUANTIZE_DEFAULTS = QuantizeConfig()
PRUNE_DEFAULTS = PruneConfig()
Bits = Enum("Bits", {f"b{bits}": str(bits) for bits in BITS}, type=str)  # type: ignore[misc]
Rounding = Enum("Rounding", {name: name for name in ROUNDINGS}, type=str)  # type: ignore[misc]
Method = Enum("Method", {name: name for name in PRUNE_METHODS}, type=str)  # type: ignore[misc]
Scope = Enum("Scope", {name: name for name in PRUNE_SCOPES}, type=str)  # type: ignore[misc]
Schedule = Enum("Schedule", {name: name for name in PRUNE_SCHEDULES}, type=str)  # type: ignore[misc]

# ------------------------------------------------------------------------------------------ shared by both
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

# ---------------------------------------------------------------------------------------------- quantize only
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
    int, typer.Option("--rounding-iters", min=1, help="Steps of --rounding learned.", rich_help_panel=TRAINING)
]
QatItersOpt = Annotated[
    int,
    typer.Option(
        "--qat-iters", min=0, help="Quantization-aware reconstruction steps (0: round only).", rich_help_panel=TRAINING
    ),
]

# ------------------------------------------------------------------------------------------------- prune only
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
ReassignEveryOpt = Annotated[
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

QUANTIZE_EPILOG = examples(
    "nerncompress quantize resnet20.nern    # int8, GPTQ rounding + 1000 QAT steps -> resnet20.int8.nern",
    "nerncompress quantize resnet20.nern --bits 4 --group-size 32 --qat-iters 2000 --raw-fp16",
    "nerncompress quantize resnet20.nern --bits 6 --rounding learned --qat-iters 0 --kd-iters 300 --data train.npz",
    "nerncompress quantize resnet20.nern --original resnet20.th --kd-iters 300 --data cifar-10-batches-py",
    "nerncompress quantize resnet20.pruned.nern --bits fp16 --qat-iters 0 --json",
)
PRUNE_EPILOG = examples(
    "nerncompress prune resnet20.nern    # half the weights, 1000 fine-tuning steps -> resnet20.pruned.nern",
    "nerncompress prune resnet20.nern --sparsity 0.7 --scope layer --finetune-iters 2000",
    "nerncompress prune resnet20.nern --method structured --sparsity 0.3 --original resnet20.th --json",
    "nerncompress prune resnet20.nern && nerncompress quantize resnet20.pruned.nern --bits 8",
)


def quantize_command(
    nern_path: NernArg,
    bits: BitsOpt = Bits(str(QUANTIZE_DEFAULTS.bits)),
    group_size: GroupSizeOpt = None,
    raw_fp16: RawFp16Opt = False,
    rounding: RoundingOpt = Rounding(QUANTIZE_DEFAULTS.rounding),
    rounding_iters: RoundingItersOpt = QUANTIZE_DEFAULTS.rounding_iters,
    qat_iters: QatItersOpt = QUANTIZE_DEFAULTS.qat_iters,
    lr: FinetuneLrOpt = None,
    original: OriginalOpt = None,
    kd_iters: KdItersOpt = 0,
    kd_lr: KdLrOpt = None,
    data: KdDataOpt = None,
    split: DataSplitOpt = "train",
    workers: WorkersOpt = DEFAULT_WORKERS,
    image_size: ImageSizeOpt = None,
    teacher: KdTeacherOpt = None,
    teacher_arch: TeacherArchOpt = None,
    seed: SeedOpt = QUANTIZE_DEFAULTS.seed,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    output_path: OutputOpt = None,
    trust_pickle: TrustPickleOpt = False,
    trust_code: TrustCodeOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Quantize a .nern's predictor (2..8-bit integers or fp16), with quantization-aware fine-tuning.

    The fine-tuning reconstructs the weights the input regenerates (or, with --original, the original checkpoint's)
    through fake-quantized weights; --kd-iters adds a knowledge-distillation phase against the input's own network
    (or --teacher) on --data (noise by default). Stages compose: prune first, then quantize. The default output, in
    the current folder, is the input's name with the suffix .int8.nern, .int4.nern, ... or .fp16.nern.
    """
    out = output.Output(json_output)
    config = QuantizeConfig(
        bits=bits.value, group_size=group_size, raw_fp16=raw_fp16, rounding=rounding.value,
        rounding_iters=rounding_iters, qat_iters=qat_iters, lr=lr, kd_iters=kd_iters, kd_lr=kd_lr, seed=seed,
    )  # fmt: skip
    summary = run_compress_predictor(
        nern_path, config, output=output_path, original=original, data=data, split=split, workers=workers,
        image_size=image_size, teacher=teacher, teacher_arch=teacher_arch, device=device, threads=threads,
        trust_pickle=trust_pickle, trust_code=trust_code, reporter=out,
    )  # fmt: skip
    out.result(summary, render)


def prune_command(
    nern_path: NernArg,
    sparsity: SparsityOpt = PRUNE_DEFAULTS.sparsity,
    method: MethodOpt = Method(PRUNE_DEFAULTS.method),
    scope: ScopeOpt = Scope(PRUNE_DEFAULTS.scope),
    schedule: ScheduleOpt = Schedule(PRUNE_DEFAULTS.schedule),
    finetune_iters: FinetuneItersOpt = PRUNE_DEFAULTS.finetune_iters,
    reassign_every: ReassignEveryOpt = PRUNE_DEFAULTS.reassign_every,
    lr: FinetuneLrOpt = None,
    original: OriginalOpt = None,
    kd_iters: KdItersOpt = 0,
    kd_lr: KdLrOpt = None,
    data: KdDataOpt = None,
    split: DataSplitOpt = "train",
    workers: WorkersOpt = DEFAULT_WORKERS,
    image_size: ImageSizeOpt = None,
    teacher: KdTeacherOpt = None,
    teacher_arch: TeacherArchOpt = None,
    seed: SeedOpt = PRUNE_DEFAULTS.seed,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    output_path: OutputOpt = None,
    trust_pickle: TrustPickleOpt = False,
    trust_code: TrustCodeOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Prune a .nern's predictor by magnitude, then fine-tune it with the pruned weights held at zero.

    Unstructured pruning stores the kept weights sparse; structured pruning removes whole hidden units and leaves a
    smaller dense predictor. The fine-tuning and --kd-iters work as in quantize. The default output, in the current
    folder, is the input's name with the suffix .pruned.nern (model.nern: model.pruned.nern).
    """
    out = output.Output(json_output)
    config = PruneConfig(
        method=method.value, sparsity=sparsity, scope=scope.value, schedule=schedule.value,
        finetune_iters=finetune_iters, reassign_every=reassign_every, lr=lr, kd_iters=kd_iters, kd_lr=kd_lr, seed=seed,
    )  # fmt: skip
    summary = run_compress_predictor(
        nern_path, config, output=output_path, original=original, data=data, split=split, workers=workers,
        image_size=image_size, teacher=teacher, teacher_arch=teacher_arch, device=device, threads=threads,
        trust_pickle=trust_pickle, trust_code=trust_code, reporter=out,
    )  # fmt: skip
    out.result(summary, render)


def compression_text(state: Mapping[str, Any] | None) -> str:
    """A compression state (``Nern.compression``) in words: bits, group size, sparsity, raw fp16."""
    if not state:
        return "none (float32)"
    parts = []
    quantize = state.get("quantize")
    if isinstance(quantize, Mapping):
        bits = quantize.get("bits")
        if bits == "fp16":
            parts.append("quantized: fp16 weights and biases")
        else:
            group = quantize.get("group_size")
            scales = f"one scale per {group} inputs" if group else "one scale per row"
            parts.append(f"quantized: {bits} bits (int{bits}), {scales}, {quantize.get('bias_dtype', '-')} biases")
    prune = state.get("prune")
    if isinstance(prune, Mapping):
        layout = state.get("layout") or {}
        matrices = "matrix" if len(layout) == 1 else "matrices"
        stored = f", {len(layout)} weight {matrices} stored sparse" if layout else ""
        parts.append(f"pruned: sparsity {_share(prune.get('sparsity'))} ({prune.get('scope')}, unstructured{stored})")
    structured = state.get("structured")
    if isinstance(structured, Mapping):
        parts.append(
            f"structured pruning: {_share(structured.get('sparsity'))} of hidden units removed "
            f"({structured.get('scope')}; widths before {structured.get('widths_before')})"
        )
    if state.get("raw_fp16"):
        parts.append("raw tensors stored as float16")
    return "; ".join(parts) or json.dumps(dict(state))


def _share(value: Any) -> str:
    return f"{100 * value:.4g}%" if isinstance(value, (int, float)) else "-"


def _errors(errors: Mapping[str, Any] | None) -> str:
    if not errors or "rmse" not in errors:
        return "-"
    relative = errors.get("relative_rmse")
    return f"{errors['rmse']:.4g}" + ("" if relative is None else f" ({output.percent(relative)} of the weights' std)")


def render(console: Console, data: Mapping[str, Any]) -> None:
    """Summary of ``nerncompress quantize`` and ``nerncompress prune``."""
    percent, human_bytes = output.percent, output.human_bytes
    before, after = data["file_bytes_before"], data["file_bytes_after"]
    errors = data.get("reconstruction", {})
    targets = "--original weights" if data.get("targets") == "given" else "the input's own regenerated weights"
    predictor_before, predictor_after = data.get("predictor_bytes_before"), data.get("predictor_bytes_after")
    rows: list[tuple[str, Any]] = [
        ("artifact", data["path"]),
        ("input", data["input"]),
        ("compression", compression_text(data.get("compression"))),
        ("size", f"{human_bytes(before)} -> {human_bytes(after)}  ({percent(after / before if before else None)} "
                 "of the input)"),
        ("predictor bytes", f"{output.cell(predictor_before)} -> {output.cell(predictor_after)}"),
        ("file ratio", f"{percent(data['file_ratio_before'])} -> {percent(data['file_ratio'])}  (.nern bytes / "
                       f"{data['fp32_reference_bytes']:,} B fp32 safetensors)"),
        ("conv ratio", f"{percent(data['conv_ratio'])}  ({data['predictor_parameters']:,} predictor params / "
                       f"{data['conv_parameters']:,} conv weights)"),
    ]  # fmt: skip
    if "achieved_sparsity" in data:
        rows.append(("achieved sparsity", _share(data["achieved_sparsity"])))
    if "widths_after" in data:
        rows.append(("hidden widths", f"{data.get('widths_before')} -> {data['widths_after']}"))
    rows.append(("RMSE measured against", targets))
    labels = (("before", "RMSE before"), ("naive", "RMSE compressed, no fine-tuning"), ("gptq", "RMSE after GPTQ "
              "rounding"), ("learned", "RMSE after learned rounding"), ("after", "RMSE after"))  # fmt: skip
    rows += [(label, _errors(errors[key])) for key, label in labels if key in errors]
    rows.append(("time", f"{data['seconds']:.1f} s ({data.get('steps')} fine-tuning steps on {data.get('device')})"))
    console.print(output.key_value_table(str(data.get("stage") or "compress"), rows))
