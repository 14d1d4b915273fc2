"""``nerncompress distill``: a .nern -> a .nern whose network matches a teacher's outputs."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from .. import DEFAULT_EVERY_STEPS, DEFAULT_WORKERS, DistillConfig, UsageError, enforce_gate, process_rank, run_distill
from . import output
from .options import (
    TRAINING,
    CheckpointEveryOpt,
    DataSplitOpt,
    DeviceOpt,
    HoldoutSeedOpt,
    ImageSizeOpt,
    ItersOpt,
    JsonOpt,
    LrOpt,
    MaxDropOpt,
    MinAgreementOpt,
    NernArg,
    OutputOpt,
    ResumeOpt,
    SeedOpt,
    TeacherArchOpt,
    ThreadsOpt,
    TrustCodeOpt,
    TrustPickleOpt,
    WorkersOpt,
    accuracy_gate,
    examples,
)

DEFAULTS = DistillConfig()

TeacherOpt = Annotated[
    Path | None,
    typer.Option(
        "--teacher",
        help="The teacher: the original network's checkpoint (a .nern does not store it), or a stronger model of the "
        "same task (a checkpoint or a .nern).",
        rich_help_panel=TRAINING,
    ),
]
DataOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--data",
        help="Training images (repeat to combine datasets, e.g. the lossless and the JPEG CIFAR training images), "
        "or 'noise' for data-free distillation.",
        rich_help_panel=TRAINING,
    ),
]
BatchOpt = Annotated[
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
]  # fmt: skip
MixOpt = Annotated[
    str,
    typer.Option(
        "--mix", help="Blend images within each batch: none, mixup or cutmix (KD needs no labels).",
        rich_help_panel=TRAINING,
    ),
]  # fmt: skip
MixFractionOpt = Annotated[
    float, typer.Option("--mix-fraction", help="Share of each batch that --mix blends.", rich_help_panel=TRAINING)
]
FmdWeightOpt = Annotated[
    float,
    typer.Option(
        "--fmd-weight", min=0.0,
        help="Weight of feature-map distillation (maps after every BN and residual sum, L2-normalised); 0 = logits only.",
        rich_help_panel=TRAINING,
    ),
]  # fmt: skip
ProbeFractionOpt = Annotated[
    float,
    typer.Option(
        "--probe-fraction", min=0.0, max=1.0,
        help="Share of each batch moved one gradient step towards where student and teacher disagree.",
        rich_help_panel=TRAINING,
    ),
]  # fmt: skip
ProbeEpsOpt = Annotated[
    float,
    typer.Option(
        "--probe-eps", min=0.0, help="Largest probe step, in 1/255 of the pixel range (each image draws U(0, eps)).",
        rich_help_panel=TRAINING,
    ),
]  # fmt: skip
HoldoutOpt = Annotated[
    float,
    typer.Option(
        "--holdout",
        help="Share of the training images held out to select the best step (0: keep the last step).",
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

NprocOpt = Annotated[
    int,
    typer.Option(
        "--nproc", min=1,
        help="Data-parallel processes on this machine (gloo on the CPU, nccl on CUDA): each takes an equal share of "
        "every batch, so --batch-size must divide by N; the result is the one-process result. The same as "
        "'torchrun --nproc_per_node N -m nerncompress distill ...'. Default: one process.",
    ),
]  # fmt: skip

EPILOG = examples(
    "nerncompress distill resnet20.nern --teacher resnet20.th --data cifar-10-batches-py",
    "nerncompress distill resnet20.nern --teacher resnet20.th --data cifar2k.npz --data cifar5k-jpeg.npz "
    "--iters 600 -o resnet20-kd.nern",
    "nerncompress distill resnet20.nern --teacher resnet20.th --data train.npz --min-agreement 97   # exit 3 below",
    "nerncompress distill resnet20.nern --teacher resnet20.th --data noise --json",
    "nerncompress distill resnet20.nern --teacher resnet20.th --data cifar-10-batches-py --nproc 4 --batch-size 256",
)


def distill_command(
    nern_path: NernArg,
    teacher: TeacherOpt = None,
    data: DataOpt = None,
    split: DataSplitOpt = "train",
    workers: WorkersOpt = DEFAULT_WORKERS,
    image_size: ImageSizeOpt = None,
    teacher_arch: TeacherArchOpt = None,
    iters: ItersOpt = DEFAULTS.iters,
    lr: LrOpt = DEFAULTS.lr,
    batch_size: BatchOpt = DEFAULTS.batch_size,
    temperature: TemperatureOpt = DEFAULTS.temperature,
    kd_loss: KdLossOpt = DEFAULTS.kd_loss,
    mix: MixOpt = DEFAULTS.mix,
    mix_fraction: MixFractionOpt = DEFAULTS.mix_fraction,
    fmd_weight: FmdWeightOpt = DEFAULTS.fmd_weight,
    probe_fraction: ProbeFractionOpt = DEFAULTS.probe_fraction,
    probe_eps: ProbeEpsOpt = DEFAULTS.probe_eps,
    holdout: HoldoutOpt = DEFAULTS.holdout,
    holdout_seed: HoldoutSeedOpt = DEFAULTS.holdout_seed,
    eval_every: EvalEveryOpt = DEFAULTS.eval_every,
    ema: EmaOpt = DEFAULTS.ema_decay,
    min_agreement: MinAgreementOpt = None,
    max_drop: MaxDropOpt = None,
    seed: SeedOpt = DEFAULTS.seed,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    nproc: NprocOpt = 1,
    output_path: OutputOpt = None,
    resume: ResumeOpt = False,
    checkpoint_every: CheckpointEveryOpt = DEFAULT_EVERY_STEPS,
    trust_pickle: TrustPickleOpt = False,
    trust_code: TrustCodeOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Fine-tune a .nern's predictor so that the regenerated network matches a teacher's outputs (KD).

    A .nern does not store the original network: pass it (or a stronger model of the same task, with the same
    classes) as --teacher. --data may be repeated to combine datasets; --data noise distills without data. A share
    of the images (--holdout) is held out to keep the step that agrees best with the teacher; --min-agreement and
    --max-drop judge that step on them. The default output, in the current folder, is the input's name with the
    suffix .distilled.nern. Ctrl-C or SIGTERM saves the progress to OUTPUT.resume and exits 130; the same command
    with --resume continues it. Distill before prune and quantize: a pruned or quantized .nern is refused.
    """
    out = output.Output(json_output, quiet=process_rank() != 0)  # under torchrun, rank 0 alone prints
    if teacher is None:
        raise UsageError(
            "distill needs --teacher CHECKPOINT: a .nern does not store the original network; pass it, or a "
            "stronger model of the same task"
        )
    if not data:
        raise UsageError("distill needs --data SPEC (repeatable), or --data noise for data-free distillation")
    config = DistillConfig(
        iters=iters, lr=lr, batch_size=batch_size, temperature=temperature, kd_loss=kd_loss, mix=mix,
        mix_fraction=mix_fraction, fmd_weight=fmd_weight, probe_fraction=probe_fraction, probe_eps=probe_eps,
        holdout=holdout, holdout_seed=holdout_seed, eval_every=eval_every, ema_decay=ema, seed=seed,
    )  # fmt: skip
    summary = run_distill(
        nern_path, teacher=teacher, data=data, config=config, output=output_path, split=split, workers=workers,
        image_size=image_size, teacher_arch=teacher_arch, gate=accuracy_gate(min_agreement, max_drop), device=device,
        threads=threads, nproc=nproc, resume=resume, checkpoint_every=checkpoint_every, trust_pickle=trust_pickle,
        trust_code=trust_code, reporter=out,
    )  # fmt: skip
    out.result(summary, render)
    enforce_gate(summary)


def render(console: Console, data: Mapping[str, Any]) -> None:
    """Summary of ``nerncompress distill``."""
    teacher = data.get("teacher") or {}
    agreement, top1 = data.get("holdout_agreement"), data.get("holdout_top1")
    rows = [
        ("artifact", data["path"]),
        ("size", output.human_bytes(data["file_bytes"])),
        ("file ratio", f"{output.percent(data['file_ratio'])}  (.nern bytes / fp32 safetensors bytes)"),
        ("teacher", f"{teacher.get('file', '-')} ({teacher.get('arch', '-')})"),
        ("data", data.get("data")),
        ("kept step", f"{data.get('selected_step')} of {data.get('steps')}"),
        ("holdout agreement", "- (no holdout)" if agreement is None else f"{agreement:.2f}% with the teacher"),
    ]
    if top1 is not None:
        rows.append(("holdout top-1", f"{top1:.2f}% ({-data['holdout_drop']:+.2f} points against the teacher)"))
    rows += [
        ("final loss", output.number(data.get("final_loss"))),
        ("distill time", f"{data['seconds']:.1f} s on {data.get('device')}"),
    ]
    console.print(output.key_value_table("distill", rows))
    output.render_gate(console, data.get("gate"))
