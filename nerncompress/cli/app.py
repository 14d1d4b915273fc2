"""The ``nerncompress`` Typer app: one small function per command, each parse -> library call -> render.

Commands do no maths: numbers come from the library (``training``, ``expand``, ``evaluation``) and from the dict
builders of ``report.py``; ``output.py`` renders them. Errors raised by the library are mapped to exit codes by
``NernGroup`` (see ``output.EXIT_CODES``).

Adding a command: write one function decorated with ``@app.command("name", epilog=...)`` in its section below,
with its options taken from ``options.py`` (add any shared alias there), call the library, build the result dict
in ``report.py`` if it needs figures, and hand it to ``Output.result`` with a renderer from ``output.py``.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import torch
import typer
from torch import nn
from typer.core import TyperGroup

from .. import __version__, distillation, training
from .._io import atomic_path, check_output_path, check_writable_folder, sha256_file
from ..artifact import load_artifact, save_artifact
from ..checkpoint import check_finite, load_checkpoint, normalize_state_dict
from ..compression import PruneConfig, QuantizeConfig, compress
from ..data import ImageData, concat_data, load_data, preset_stats, split_holdout, to_float
from ..demo import DEMO_FIT, DEMO_TRAIN_EPOCHS, run_demo
from ..errors import UsageError
from ..evaluation import evaluate, most_faithful
from ..expand import check_shapes, expand_model, export
from ..models.registry import ArchSpec, build_model, check_arch, resolve_arch
from ..report import (
    artifact_report,
    checkpoint_report,
    compare_results,
    compress_summary,
    distill_summary,
    environment_report,
    fit_summary,
    is_nern_file,
    source_provenance,
)
from ..resume import Checkpointer, resume_path
from . import output
from .options import (
    CHECKPOINT_EVERY_DEFAULT,
    DISTILL_DEFAULTS,
    FIT_DEFAULTS,
    OUTPUT,
    PRUNE_DEFAULTS,
    QUANTIZE_DEFAULTS,
    TRAINING,
    ArchOpt,
    BaseOpt,
    Bits,
    BitsOpt,
    CheckpointArg,
    CheckpointEveryOpt,
    CompareOpt,
    DataOpt,
    DataSplitOpt,
    DeviceOpt,
    DistillDataOpt,
    DistillFmdOpt,
    EmaOpt,
    EvalEveryOpt,
    FinetuneItersOpt,
    FinetuneLrOpt,
    FitDataOpt,
    FmdWeightOpt,
    GroupSizeOpt,
    HiddenOpt,
    HoldoutOpt,
    HoldoutSeedOpt,
    ImageBatchOpt,
    ImageStepBatchOpt,
    ItersOpt,
    JsonOpt,
    KdDataOpt,
    KdLossOpt,
    KdItersOpt,
    KdLrOpt,
    KdTeacherOpt,
    KdWeightOpt,
    KernelBatchOpt,
    LevelsOpt,
    LrOpt,
    MixFractionOpt,
    MixOpt,
    Method,
    MethodOpt,
    ModelArg,
    NernArg,
    OpsetOpt,
    OriginalOpt,
    OutputOpt,
    Permute,
    PermuteOpt,
    PresetOpt,
    ProbeEpsOpt,
    ProbeFractionOpt,
    PruneReassignOpt,
    QatItersOpt,
    RawFp16Opt,
    ReassignEveryOpt,
    RequiredOutputOpt,
    ResumeOpt,
    Rounding,
    RoundingItersOpt,
    RoundingOpt,
    RoundsOpt,
    RunDeviceOpt,
    RunThreadsOpt,
    Schedule,
    ScheduleOpt,
    Scheme,
    SchemeOpt,
    Scope,
    ScopeOpt,
    SeedOpt,
    SelectDataOpt,
    SelectHoldoutOpt,
    SparsityOpt,
    SplitOpt,
    TeacherArchOpt,
    TeacherOpt,
    TemperatureOpt,
    ThreadsOpt,
    TrustCodeOpt,
    TrustPickleOpt,
    VerifyOpt,
)

try:  # typer >= 0.20 vendors click as typer._click
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - older typer on real click
    from click import exceptions as click_exceptions  # type: ignore[no-redef]
# typer 0.29 defines Abort in typer.exceptions, not in its vendored click: naming a missing attribute in an except
# clause raised AttributeError whenever an exception reached it (e.g. `nerncompress --help | head -1`).
_ABORT: type[BaseException] = getattr(click_exceptions, "Abort", typer.Abort)


class NernGroup(TyperGroup):
    """The command group; maps exceptions raised by a command to ``Error: ...`` and an exit code.

    Mapping here rather than only in ``main()`` makes ``typer.testing.CliRunner`` see the same exit codes and
    messages as a real process. ``main`` runs click without its standalone mode so that parsing errors (unknown
    option, bad value, missing argument) print one ``Error:`` line too, instead of a usage block and a boxed panel.
    """

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click_exceptions.NoArgsIsHelpError as exc:
            sys.exit(exc.exit_code)  # the help is already printed
        except click_exceptions.ClickException as exc:
            ctx = getattr(exc, "ctx", None)
            sys.exit(output.report_usage_error(exc, ctx.command_path if ctx is not None else None))
        except _ABORT:
            sys.exit(output.report_error(KeyboardInterrupt()))
        sys.exit(code if isinstance(code, int) else output.EXIT_OK)

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise  # Typer's own: exits, usage errors (exit 2), --help
        except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - every other error gets one line + a code
            raise typer.Exit(output.report_error(exc)) from exc


def _root_epilog() -> str:
    codes = "\n".join(f"* **{code}**: {meaning}" for code, meaning in output.EXIT_CODE_DOCS)
    return (
        "Results go to stdout (--json: exactly one JSON document), progress and logs to stderr (plain lines when "
        "stderr is not a terminal). NO_COLOR turns colours off. Errors are one line 'Error: ...' on stderr; set "
        f"{output.DEBUG_ENV}=1 for the traceback.\n\nExit codes:\n\n{codes}"
    )


app = typer.Typer(
    name="nerncompress",
    cls=NernGroup,
    epilog=_root_epilog(),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",  # reflows docstring paragraphs written over several source lines
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"nerncompress {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_show_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Compress trained CNN checkpoints into a small predictor network (NeRN) and expand them back."""


# ----------------------------------------------------------------------------------------------------- helpers
def _examples(*lines: str) -> str:
    """An epilog listing example invocations, one per line."""
    return "Examples:\n\n" + "\n\n".join(f"  $ {line}" for line in lines)


def _check_output(target: Path, *inputs: Path | str | None) -> Path:
    """Refuse, before any work, an output over an input, a folder as output, or a missing or unwritable folder."""
    check_output_path(target, *inputs)
    if target.is_dir():
        raise UsageError(f"output {target} is a folder: give a file name with -o")
    return check_writable_folder(target)


def _set_threads(threads: int | None) -> None:
    """``--threads``: torch's CPU threads for this run (None leaves torch's default)."""
    if threads is not None:
        torch.set_num_threads(threads)


def _load_datasets(specs: Sequence[str], split: str) -> ImageData | None:
    """The ``--data`` values, concatenated in order; None for ``noise`` (data-free)."""
    if "noise" in specs:
        if len(specs) > 1:
            raise UsageError("--data noise (data-free) cannot be combined with datasets: give one or the other")
        return None
    return concat_data(*(load_data(spec, split=split) for spec in specs))


def _checkpointer(
    target: Path, *, resume: bool, every: int, out: output.Output, identity: dict | None = None
) -> Checkpointer:
    """Snapshots of the run in ``<output>.resume``: every ``every`` steps (and 60 s), and on Ctrl-C/SIGTERM."""
    path = resume_path(target)
    if resume and not path.is_file():
        raise UsageError(f"--resume: no resume file {path}: nothing to continue, run without --resume")
    if not resume and path.is_file():
        out.log(f"note: {path} holds an interrupted run; pass --resume to continue it (this run starts afresh)")
    return Checkpointer(
        path, resume=resume, every_steps=every, every_seconds=60.0 if every else 0.0, identity=identity, log=out.log
    )


def _check_images(model: nn.Module, data: ImageData | None, preset: str) -> None:
    """The teacher must take the ``--data`` images (channels, size) before any training starts."""
    if data is None:
        return
    mean, std = preset_stats(preset)
    try:
        with torch.no_grad():
            model.eval()(to_float(data.images[:1], mean=mean, std=std))
    except (RuntimeError, UsageError) as exc:
        c, h, w = data.image_shape
        detail = " ".join(str(exc).split())[:200]
        images = f"{c}x{h}x{w}, from {data.source}"
        raise UsageError(f"the model cannot take the --data images ({images}): {detail}") from exc


def _load_weights(path: Path, *, trust_pickle: bool) -> dict:
    state_dict = normalize_state_dict(load_checkpoint(path, trust_pickle=trust_pickle))
    check_finite(state_dict)
    return state_dict


def _load_model(
    path: Path, *, arch: str | None, trust_pickle: bool, device: str, trust_code: bool = False
) -> tuple[nn.Module, ArchSpec]:
    """A checkpoint (architecture from ``--arch`` or detected) or a ``.nern`` (expanded in memory).

    A ``.nern`` naming a user builder is built only with ``trust_code`` (``--trust-code``); ``--arch`` is the user's
    own choice and always trusted.
    """
    if is_nern_file(path):
        nern = load_artifact(path)
        check_shapes(nern, trust_code=trust_code)
        return expand_model(nern, device=device, trust_code=trust_code), nern.arch
    state_dict = _load_weights(path, trust_pickle=trust_pickle)
    spec = resolve_arch(arch, state_dict)
    return build_model(spec, state_dict), spec


# ------------------------------------------------------------------------------------------------------- fit
@app.command(
    "fit",
    epilog=_examples(
        "nerncompress fit resnet56.pt --hidden 280",
        "nerncompress fit resnet20.th --iters 4000 --device cuda -o resnet20-h180.nern",
        "nerncompress fit model.safetensors --arch torchvision:resnet18 --hidden 1256 --json",
        "nerncompress fit resnet20.th --scheme nern --data cifar-10-batches-py --rounds 2",
        "nerncompress fit resnet56.pt --hidden 280 --resume    # after Ctrl-C: continue the same run",
    ),
)
def fit_command(
    checkpoint: CheckpointArg,
    arch: ArchOpt = None,
    hidden: HiddenOpt = FIT_DEFAULTS.hidden,
    levels: LevelsOpt = FIT_DEFAULTS.levels,
    base: BaseOpt = FIT_DEFAULTS.base,
    permute: PermuteOpt = Permute(FIT_DEFAULTS.permute),
    reassign_every: ReassignEveryOpt = FIT_DEFAULTS.reassign_every,
    iters: ItersOpt = FIT_DEFAULTS.iters,
    lr: LrOpt = FIT_DEFAULTS.lr,
    batch_size: KernelBatchOpt = FIT_DEFAULTS.batch_size,
    scheme: SchemeOpt = Scheme(FIT_DEFAULTS.scheme),
    rounds: RoundsOpt = FIT_DEFAULTS.rounds,
    kd_weight: KdWeightOpt = FIT_DEFAULTS.kd_weight,
    fmd_weight: FmdWeightOpt = FIT_DEFAULTS.fmd_weight,
    data: FitDataOpt = None,
    split: DataSplitOpt = "train",
    seed: SeedOpt = FIT_DEFAULTS.seed,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    output_path: OutputOpt = None,
    resume: ResumeOpt = False,
    checkpoint_every: CheckpointEveryOpt = CHECKPOINT_EVERY_DEFAULT,
    trust_pickle: TrustPickleOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Fit a predictor that regenerates the checkpoint's conv kernels; write it as a .nern artifact.

    The architecture is detected from the checkpoint unless --arch names it. The default output is the
    checkpoint's name with the suffix .nern, in the current folder. Ctrl-C or SIGTERM saves the progress to
    OUTPUT.resume and exits 130; the same command with --resume continues it.
    """
    out = output.Output(json_output)
    _set_threads(threads)
    target = _check_output(output_path or Path(checkpoint.name).with_suffix(".nern"), checkpoint, *(data or []))
    config = training.FitConfig(
        hidden=hidden, levels=levels, base=base, permute=permute.value, reassign_every=reassign_every, iters=iters,
        lr=lr, batch_size=batch_size, scheme=scheme.value, rounds=rounds, kd_weight=kd_weight, fmd_weight=fmd_weight,
        seed=seed,
    )  # fmt: skip
    if data and config.scheme != "nern":
        raise UsageError("--data is used by --scheme nern only: add --scheme nern or drop --data")
    state_dict = _load_weights(checkpoint, trust_pickle=trust_pickle)
    spec = resolve_arch(arch, state_dict)
    model = build_model(spec, state_dict)  # keys and shapes fit the architecture: fail now, not after the log
    dataset = _load_datasets(data, split) if data else None
    if config.scheme == "nern":
        _check_images(model, dataset, spec.preset)
    source = source_provenance(checkpoint, state_dict)
    checkpointer = _checkpointer(target, resume=resume, every=checkpoint_every, out=out)
    out.log(f"fitting {checkpoint} ({source['tensors']} tensors, {spec.name}) -> {target}")
    started = time.perf_counter()
    with out.progress("fit") as on_step, checkpointer.signals():
        nern = training.fit(
            state_dict, config, arch=spec, device=device, on_step=on_step, source=source, data=dataset,
            checkpointer=checkpointer,
        )  # fmt: skip
    seconds = time.perf_counter() - started
    save_artifact(nern, target)
    checkpointer.discard()
    out.result(fit_summary(nern, target, seconds=seconds), output.render_fit)


# ---------------------------------------------------------------------------------------- compression stages
# distill, prune and quantize: each takes a .nern (NernArg), writes a .nern (OutputOpt), and renders a summary
# dict built in report.py.


@app.command(
    "distill",
    epilog=_examples(
        "nerncompress distill resnet20.nern --teacher resnet20.th --data cifar-10-batches-py",
        "nerncompress distill resnet20.nern --teacher resnet20.th --data cifar2k.npz --data cifar5k-jpeg.npz "
        "--iters 600 -o resnet20-kd.nern",
        "nerncompress distill resnet20.nern --teacher resnet20.th --data noise --json",
    ),
)
def distill_command(
    nern_path: NernArg,
    teacher: TeacherOpt = None,  # type: ignore[assignment] - required, checked below with a clearer message
    data: DistillDataOpt = None,  # type: ignore[assignment]
    split: DataSplitOpt = "train",
    teacher_arch: TeacherArchOpt = None,
    iters: ItersOpt = DISTILL_DEFAULTS.iters,
    lr: LrOpt = DISTILL_DEFAULTS.lr,
    batch_size: ImageStepBatchOpt = DISTILL_DEFAULTS.batch_size,
    temperature: TemperatureOpt = DISTILL_DEFAULTS.temperature,
    kd_loss: KdLossOpt = DISTILL_DEFAULTS.kd_loss,
    mix: MixOpt = DISTILL_DEFAULTS.mix,
    mix_fraction: MixFractionOpt = DISTILL_DEFAULTS.mix_fraction,
    fmd_weight: DistillFmdOpt = DISTILL_DEFAULTS.fmd_weight,
    probe_fraction: ProbeFractionOpt = DISTILL_DEFAULTS.probe_fraction,
    probe_eps: ProbeEpsOpt = DISTILL_DEFAULTS.probe_eps,
    holdout: HoldoutOpt = DISTILL_DEFAULTS.holdout,
    holdout_seed: HoldoutSeedOpt = DISTILL_DEFAULTS.holdout_seed,
    eval_every: EvalEveryOpt = DISTILL_DEFAULTS.eval_every,
    ema: EmaOpt = DISTILL_DEFAULTS.ema_decay,
    seed: SeedOpt = DISTILL_DEFAULTS.seed,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    output_path: OutputOpt = None,
    resume: ResumeOpt = False,
    checkpoint_every: CheckpointEveryOpt = CHECKPOINT_EVERY_DEFAULT,
    trust_pickle: TrustPickleOpt = False,
    trust_code: TrustCodeOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Fine-tune a .nern's predictor so that the regenerated network matches a teacher's outputs (KD).

    A .nern does not store the original network: pass it (or a stronger model of the same task, with the same
    classes) as --teacher. --data may be repeated to combine datasets; --data noise distills without data. A share
    of the images (--holdout) is held out to keep the step that agrees best with the teacher. The default output,
    in the current folder, is the input's name with the suffix .distilled.nern (model.nern: model.distilled.nern).
    Ctrl-C or SIGTERM saves the progress to OUTPUT.resume and exits 130; the same command with --resume continues it.
    Distill before prune and quantize: a pruned or quantized .nern is refused.
    """
    out = output.Output(json_output)
    _set_threads(threads)
    if teacher is None:
        raise UsageError(
            "distill needs --teacher CHECKPOINT: a .nern does not store the original network; pass it, or a "
            "stronger model of the same task"
        )
    if not data:
        raise UsageError("distill needs --data SPEC (repeatable), or --data noise for data-free distillation")
    target = _check_output(output_path or Path(f"{nern_path.stem}.distilled.nern"), nern_path, teacher, *data)
    config = distillation.DistillConfig(
        iters=iters, lr=lr, batch_size=batch_size, temperature=temperature, kd_loss=kd_loss, mix=mix,
        mix_fraction=mix_fraction, fmd_weight=fmd_weight, probe_fraction=probe_fraction, probe_eps=probe_eps,
        holdout=holdout, holdout_seed=holdout_seed, eval_every=eval_every, ema_decay=ema, seed=seed,
    )  # fmt: skip
    nern = load_artifact(nern_path)
    distillation.check_distillable(nern)  # before loading the teacher and the data
    check_arch(nern.arch, trust_code=trust_code)
    teacher_model, teacher_spec = _load_model(
        teacher, arch=teacher_arch, trust_pickle=trust_pickle, device="cpu", trust_code=trust_code
    )
    distillation.check_teacher(nern, teacher_model)
    dataset = _load_datasets(data, split)
    _check_images(teacher_model, dataset, nern.arch.preset)
    teacher_source = {**source_provenance(teacher, teacher_model.state_dict()), "arch": teacher_spec.name}
    checkpointer = _checkpointer(
        target, resume=resume, every=checkpoint_every, out=out, identity={"input_sha256": sha256_file(nern_path)}
    )
    images = "noise" if dataset is None else f"{dataset.source} ({len(dataset)} images)"
    out.log(f"distilling {nern_path} from teacher {teacher} on {images} -> {target}")
    started = time.perf_counter()
    with out.progress("distill") as on_step, checkpointer.signals():
        nern = distillation.distill(
            nern, teacher_model, dataset, config, device=device, on_step=on_step, teacher_source=teacher_source,
            checkpointer=checkpointer, trust_code=trust_code,
        )  # fmt: skip
    seconds = time.perf_counter() - started
    save_artifact(nern, target)
    checkpointer.discard()
    out.result(distill_summary(nern, target, seconds=seconds), output.render_distill)


def _compress_command(
    out: output.Output,
    nern_path: Path,
    config: QuantizeConfig | PruneConfig,
    *,
    target: Path,
    original: Path | None,
    data: Sequence[str] | None,
    split: str,
    teacher: Path | None,
    teacher_arch: str | None,
    device: str,
    trust_pickle: bool,
    trust_code: bool,
) -> None:
    """quantize and prune: load, check every input before any work, compress, save, print the summary."""
    stage = "quantize" if isinstance(config, QuantizeConfig) else "prune"
    if not config.kd_iters and (data or teacher is not None or teacher_arch is not None):
        raise UsageError("--data and --teacher are used by the KD phase only: add --kd-iters N or drop them")
    nern = load_artifact(nern_path)
    check_shapes(nern, trust_code=trust_code)
    targets = None
    if original is not None:
        targets = _load_weights(original, trust_pickle=trust_pickle)
    teacher_model = None
    dataset = None
    if config.kd_iters:
        check_arch(nern.arch, trust_code=trust_code)  # the KD phase builds the student: refuse before any work
        if teacher is None:
            teacher_model = expand_model(nern, device="cpu", trust_code=trust_code)  # what compress defaults to
        else:
            teacher_model, _ = _load_model(
                teacher, arch=teacher_arch, trust_pickle=trust_pickle, device="cpu", trust_code=trust_code
            )
            distillation.check_teacher(nern, teacher_model)
        dataset = _load_datasets(data, split) if data else None
        _check_images(teacher_model, dataset, nern.arch.preset)
    phases = f"{config.qat_iters if isinstance(config, QuantizeConfig) else config.finetune_iters} recon steps"
    if isinstance(config, QuantizeConfig) and config.learned_rounding_steps():
        phases = f"{config.learned_rounding_steps()} learned-rounding steps + {phases}"
    if config.kd_iters:
        images = "noise" if dataset is None else f"{dataset.source} ({len(dataset)} images)"
        phases += f" + {config.kd_iters} KD steps on {images}"
    out.log(f"{stage}: {nern_path} -> {target} ({phases})")
    started = time.perf_counter()
    with out.progress(stage) as on_step:
        result = compress(
            nern, config, target_weights=targets, data=dataset, teacher=teacher_model, device=device,
            on_step=on_step, trust_code=trust_code,
        )  # fmt: skip
    seconds = time.perf_counter() - started
    save_artifact(result, target)
    out.result(compress_summary(result, nern_path, target, seconds=seconds), output.render_compress)


@app.command(
    "quantize",
    epilog=_examples(
        "nerncompress quantize resnet20.nern    # int8, GPTQ rounding + 1000 QAT steps -> resnet20.int8.nern",
        "nerncompress quantize resnet20.nern --bits 4 --group-size 32 --qat-iters 2000 --raw-fp16",
        "nerncompress quantize resnet20.nern --bits 6 --rounding learned --qat-iters 0 --kd-iters 300 --data train.npz",
        "nerncompress quantize resnet20.nern --original resnet20.th --kd-iters 300 --data cifar-10-batches-py",
        "nerncompress quantize resnet20.pruned.nern --bits fp16 --qat-iters 0 --json",
    ),
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
    _set_threads(threads)
    suffix = "fp16" if bits.value == "fp16" else f"int{bits.value}"
    target = _check_output(
        output_path or Path(f"{nern_path.stem}.{suffix}.nern"), nern_path, original, teacher, *(data or [])
    )
    config = QuantizeConfig(
        bits=bits.value, group_size=group_size, raw_fp16=raw_fp16, rounding=rounding.value,
        rounding_iters=rounding_iters, qat_iters=qat_iters, lr=lr, kd_iters=kd_iters, kd_lr=kd_lr, seed=seed,
    )  # fmt: skip
    _compress_command(
        out, nern_path, config, target=target, original=original, data=data, split=split, teacher=teacher,
        teacher_arch=teacher_arch, device=device, trust_pickle=trust_pickle, trust_code=trust_code,
    )  # fmt: skip


@app.command(
    "prune",
    epilog=_examples(
        "nerncompress prune resnet20.nern    # half the weights, 1000 fine-tuning steps -> resnet20.pruned.nern",
        "nerncompress prune resnet20.nern --sparsity 0.7 --scope layer --finetune-iters 2000",
        "nerncompress prune resnet20.nern --method structured --sparsity 0.3 --original resnet20.th --json",
        "nerncompress prune resnet20.nern && nerncompress quantize resnet20.pruned.nern --bits 8",
    ),
)
def prune_command(
    nern_path: NernArg,
    sparsity: SparsityOpt = PRUNE_DEFAULTS.sparsity,
    method: MethodOpt = Method(PRUNE_DEFAULTS.method),
    scope: ScopeOpt = Scope(PRUNE_DEFAULTS.scope),
    schedule: ScheduleOpt = Schedule(PRUNE_DEFAULTS.schedule),
    finetune_iters: FinetuneItersOpt = PRUNE_DEFAULTS.finetune_iters,
    reassign_every: PruneReassignOpt = PRUNE_DEFAULTS.reassign_every,
    lr: FinetuneLrOpt = None,
    original: OriginalOpt = None,
    kd_iters: KdItersOpt = 0,
    kd_lr: KdLrOpt = None,
    data: KdDataOpt = None,
    split: DataSplitOpt = "train",
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
    _set_threads(threads)
    target = _check_output(
        output_path or Path(f"{nern_path.stem}.pruned.nern"), nern_path, original, teacher, *(data or [])
    )
    config = PruneConfig(
        method=method.value, sparsity=sparsity, scope=scope.value, schedule=schedule.value,
        finetune_iters=finetune_iters, reassign_every=reassign_every, lr=lr, kd_iters=kd_iters, kd_lr=kd_lr, seed=seed,
    )  # fmt: skip
    _compress_command(
        out, nern_path, config, target=target, original=original, data=data, split=split, teacher=teacher,
        teacher_arch=teacher_arch, device=device, trust_pickle=trust_pickle, trust_code=trust_code,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------------- expand
@app.command(
    "expand",
    epilog=_examples(
        "nerncompress expand model.nern -o resnet.onnx",
        "nerncompress expand model.nern -o resnet.safetensors",
        "nerncompress expand model.nern -o resnet.onnx --opset 17 --json",
    ),
)
def expand_command(
    nern_path: NernArg,
    output_path: RequiredOutputOpt,
    device: RunDeviceOpt = "auto",
    opset: OpsetOpt = 18,
    verify: VerifyOpt = True,
    threads: RunThreadsOpt = None,
    trust_code: TrustCodeOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Regenerate the weights of a .nern into a plain .safetensors state_dict or a verified .onnx model.

    An ONNX output is checked against PyTorch with onnxruntime on fixed random inputs; when they disagree, no file
    is written and the exit code is 4. A .safetensors output never builds the architecture; an ONNX output of a
    .nern whose architecture is a user builder (pkg.module:function) needs --trust-code.
    """
    out = output.Output(json_output)
    _set_threads(threads)
    if output_path.suffix.lower() not in (".safetensors", ".onnx"):
        raise UsageError(f"output {output_path} must end in .safetensors or .onnx")
    _check_output(output_path, nern_path)
    nern = load_artifact(nern_path)
    check_shapes(nern, trust_code=trust_code)
    if output_path.suffix.lower() == ".onnx":
        check_arch(nern.arch, trust_code=trust_code)
    out.log(f"expanding {nern_path} -> {output_path}")
    report = export(nern, output_path, device=device, opset=opset, verify=verify, trust_code=trust_code)
    out.result(report.to_dict(), output.render_expand)


# ------------------------------------------------------------------------------------------------------ eval
@app.command(
    "eval",
    epilog=_examples(
        "nerncompress eval resnet20.th --data cifar-10-batches-py",
        "nerncompress eval model.nern --data test.npz --compare resnet20.th",
        "nerncompress eval model.nern --data digits --split test --json",
    ),
)
def eval_command(
    model_path: ModelArg,
    data: DataOpt,
    split: SplitOpt = "test",
    arch: ArchOpt = None,
    preset: PresetOpt = None,
    compare: CompareOpt = None,
    device: RunDeviceOpt = "auto",
    batch_size: ImageBatchOpt = 500,
    threads: RunThreadsOpt = None,
    trust_pickle: TrustPickleOpt = False,
    trust_code: TrustCodeOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Top-1 accuracy of a checkpoint or a .nern (expanded in memory) on a labelled dataset.

    Images are normalised with the architecture's preset unless --preset overrides it. With --compare, a second
    model is evaluated on the same images: their agreement and the paired top-1 difference are reported.
    """
    out = output.Output(json_output)
    _set_threads(threads)
    dataset = load_data(data, split=split)
    model, spec = _load_model(model_path, arch=arch, trust_pickle=trust_pickle, device=device, trust_code=trust_code)
    preset_name = preset or spec.preset
    mean, std = preset_stats(preset_name)
    out.log(f"evaluating {model_path} on {dataset.source} ({len(dataset)} images)")
    result = evaluate(model, dataset, mean=mean, std=std, device=device, batch_size=batch_size)
    summary: dict[str, Any] = {
        "model": str(model_path),
        "arch": spec.to_dict(),
        "data": dataset.source,
        "preset": preset_name,
        "top1": result.top1,
        "count": result.count,
    }
    if compare is not None:
        other_model, _ = _load_model(
            compare, arch=arch, trust_pickle=trust_pickle, device=device, trust_code=trust_code
        )
        out.log(f"evaluating {compare} on the same images")
        other = evaluate(other_model, dataset, mean=mean, std=std, device=device, batch_size=batch_size)
        paired = compare_results(result, other, dataset.labels)
        summary["compare"] = {"model": str(compare), "top1": other.top1, **paired}
    out.result(summary, output.render_eval)


# ---------------------------------------------------------------------------------------------------- select
@app.command(
    "select",
    epilog=_examples(
        "nerncompress select s0.nern s1.nern s2.nern --reference resnet20.th "
        "--data train2000.npz --data train5000.npz -o best.nern",
        "nerncompress select a.nern b.nern --reference resnet20.th --data heldout.npz --holdout 0 --json",
    ),
)
def select_command(
    candidates: Annotated[list[Path], typer.Argument(help="Two or more .nern files or checkpoints to choose among.")],
    reference: Annotated[
        Path, typer.Option("--reference", help="The model the candidates should reproduce (usually the original).")
    ],
    data: SelectDataOpt,
    output_path: Annotated[Path, typer.Option("--output", "-o", help="Where to copy the selected file.")],
    holdout: SelectHoldoutOpt = DISTILL_DEFAULTS.holdout,
    holdout_seed: HoldoutSeedOpt = DISTILL_DEFAULTS.holdout_seed,
    split: DataSplitOpt = "train",
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
    _set_threads(threads)
    if len(candidates) < 2:
        raise UsageError("select needs two or more candidates")
    if "noise" in data:
        raise UsageError("select scores on real images: --data noise cannot be used")
    target = _check_output(output_path, *candidates, reference, *data)
    dataset = _load_datasets(data, split)
    if holdout > 0:
        dataset = split_holdout(dataset, fraction=holdout, seed=holdout_seed)[1]
    out.log(f"scoring {len(candidates)} candidates on {dataset.source} ({len(dataset)} images)")
    results = []
    for path in (reference, *candidates):  # each model normalises the images with its own preset
        model, spec = _load_model(path, arch=arch, trust_pickle=trust_pickle, device=device, trust_code=trust_code)
        _check_images(model, dataset, spec.preset)
        mean, std = preset_stats(spec.preset)
        results.append(evaluate(model, dataset, mean=mean, std=std, device=device, batch_size=batch_size))
    reference_result, *results = results
    best, agreements = most_faithful(results, reference_result)
    with atomic_path(target) as tmp:
        shutil.copyfile(candidates[best], tmp)
    summary = {
        "reference": str(reference),
        "data": dataset.source,
        "images": len(dataset),
        "candidates": [
            {"path": str(path), "agreement": agreement, "top1": result.top1}
            for path, agreement, result in zip(candidates, agreements, results)
        ],
        "selected": str(candidates[best]),
        "selected_index": best,
        "output": str(target),
    }
    out.result(summary, output.render_select)


# --------------------------------------------------------------------------------------------------- inspect
@app.command(
    "inspect",
    epilog=_examples("nerncompress inspect model.nern", "nerncompress inspect resnet20.th --json"),
)
def inspect_command(
    path: Annotated[Path, typer.Argument(help="A .nern artifact or a checkpoint.")],
    trust_pickle: TrustPickleOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Layer table, bytes by group, ratios, provenance and history of a .nern; or what a checkpoint holds."""
    out = output.Output(json_output)
    if is_nern_file(path):
        out.result({"kind": "nern", **artifact_report(path)}, output.render_artifact)
    else:
        report = checkpoint_report(path, trust_pickle=trust_pickle)
        out.result({"kind": "checkpoint", **report}, output.render_checkpoint)


# ------------------------------------------------------------------------------------------------------- env
@app.command("env", epilog=_examples("nerncompress env", "nerncompress env --json > env.json"))
def env_command(json_output: JsonOpt = False) -> None:
    """Versions, devices and threads: paste this into bug reports."""
    output.Output(json_output).result(environment_report(), output.render_env)


# ------------------------------------------------------------------------------------------------------ demo
@app.command(
    "demo",
    epilog=_examples("nerncompress demo", "nerncompress demo --workdir /tmp/demo --iters 2000 --json"),
)
def demo_command(
    workdir: Annotated[
        Path, typer.Option("--workdir", help="Folder for the demo's files (created).", rich_help_panel=OUTPUT)
    ] = Path("nerncompress-demo"),
    hidden: HiddenOpt = DEMO_FIT.hidden,
    iters: ItersOpt = DEMO_FIT.iters,
    train_epochs: Annotated[
        int,
        typer.Option("--train-epochs", min=1, help="Epochs of the original CNN's training.", rich_help_panel=TRAINING),
    ] = DEMO_TRAIN_EPOCHS,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    threads: Annotated[
        int,
        typer.Option("--threads", min=0, help="Torch CPU threads (0: torch's default).", rich_help_panel=TRAINING),
    ] = 1,
    json_output: JsonOpt = False,
) -> None:
    """The whole job on an embedded example, no downloads: train a small CNN on scikit-learn's digits, fit a
    .nern, expand it to .safetensors and .onnx, and compare accuracy and size before and after.
    """
    out = output.Output(json_output)
    with out.progress("fit") as on_step:
        result = run_demo(
            workdir, hidden=hidden, iters=iters, train_epochs=train_epochs, seed=seed, device=device,
            threads=threads or None, on_step=on_step, log=out.log,
        )  # fmt: skip
    out.result(result, output.render_demo)
