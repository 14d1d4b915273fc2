"""The ``nerncompress`` Typer app: one small function per command, each parse -> library call -> render.

Commands do no maths: numbers come from the library (``training``, ``expand``, ``evaluation``) and from the dict
builders of ``report.py``; ``output.py`` renders them. Errors raised by the library are mapped to exit codes by
``NernGroup`` (see ``output.EXIT_CODES``).

Adding a command (``distill``, ``prune``, ``quantize`` will follow): write one function decorated with
``@app.command("name", epilog=...)`` in the "Compression stages" section below, with its options taken from
``options.py`` (add any shared alias there), call the library, build the result dict in ``report.py`` if it needs
figures, and hand it to ``Output.result`` with a renderer from ``output.py``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from torch import nn
from typer.core import TyperGroup

from .. import __version__, training
from .._io import check_output_path
from ..artifact import load_artifact, save_artifact
from ..checkpoint import check_finite, load_checkpoint, normalize_state_dict
from ..data import load_data, preset_stats
from ..demo import DEMO_FIT, DEMO_TRAIN_EPOCHS, run_demo
from ..errors import UsageError
from ..evaluation import evaluate
from ..expand import expand_model, export
from ..models.registry import ArchSpec, build_model, resolve_arch
from ..report import (
    artifact_report,
    checkpoint_report,
    compare_results,
    environment_report,
    fit_summary,
    is_nern_file,
    source_provenance,
)
from . import output
from .options import (
    FIT_DEFAULTS,
    OUTPUT,
    TRAINING,
    ArchOpt,
    BaseOpt,
    CheckpointArg,
    CompareOpt,
    DataOpt,
    DeviceOpt,
    HiddenOpt,
    ImageBatchOpt,
    ItersOpt,
    JsonOpt,
    KernelBatchOpt,
    LevelsOpt,
    LrOpt,
    ModelArg,
    NernArg,
    OpsetOpt,
    OutputOpt,
    Permute,
    PermuteOpt,
    PresetOpt,
    RequiredOutputOpt,
    RunDeviceOpt,
    SeedOpt,
    SplitOpt,
    TrustPickleOpt,
    VerifyOpt,
)


class NernGroup(TyperGroup):
    """The command group; maps exceptions raised by a command to ``Error: ...`` and an exit code.

    Mapping here rather than only in ``main()`` makes ``typer.testing.CliRunner`` see the same exit codes and
    messages as a real process.
    """

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise  # Typer's own: exits, usage errors (exit 2), --help
        except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - every other error gets one line + a code
            raise typer.Exit(output.report_error(exc)) from exc


app = typer.Typer(
    name="nerncompress",
    cls=NernGroup,
    epilog="Results go to stdout (--json for one JSON document), progress and logs to stderr. "
    "Exit codes: 0 ok, 1 error, 2 usage error, 3 accuracy target missed, 4 export check failed. "
    "Set NERNCOMPRESS_DEBUG=1 for tracebacks.",
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


def _check_output(target: Path, *inputs: Path | None) -> Path:
    """Refuse, before any work, an output over an input or in a folder that does not exist."""
    check_output_path(target, *inputs)
    folder = target.parent
    if not folder.is_dir():
        raise UsageError(f"output folder {folder} does not exist: create it first or choose another -o")
    return target


def _load_weights(path: Path, *, trust_pickle: bool) -> dict:
    state_dict = normalize_state_dict(load_checkpoint(path, trust_pickle=trust_pickle))
    check_finite(state_dict)
    return state_dict


def _load_model(path: Path, *, arch: str | None, trust_pickle: bool, device: str) -> tuple[nn.Module, ArchSpec]:
    """A checkpoint (architecture from ``--arch`` or detected) or a ``.nern`` (expanded in memory)."""
    if is_nern_file(path):
        nern = load_artifact(path)
        return expand_model(nern, device=device), nern.arch
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
    ),
)
def fit_command(
    checkpoint: CheckpointArg,
    arch: ArchOpt = None,
    hidden: HiddenOpt = FIT_DEFAULTS.hidden,
    levels: LevelsOpt = FIT_DEFAULTS.levels,
    base: BaseOpt = FIT_DEFAULTS.base,
    permute: PermuteOpt = Permute(FIT_DEFAULTS.permute),
    iters: ItersOpt = FIT_DEFAULTS.iters,
    lr: LrOpt = FIT_DEFAULTS.lr,
    batch_size: KernelBatchOpt = FIT_DEFAULTS.batch_size,
    seed: SeedOpt = FIT_DEFAULTS.seed,
    device: DeviceOpt = "auto",
    output_path: OutputOpt = None,
    trust_pickle: TrustPickleOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Fit a predictor that regenerates the checkpoint's conv kernels; write it as a .nern artifact.

    The architecture is detected from the checkpoint unless --arch names it. The default output is the
    checkpoint's name with the suffix .nern, in the current folder.
    """
    out = output.Output(json_output)
    target = _check_output(output_path or Path(checkpoint.name).with_suffix(".nern"), checkpoint)
    config = training.FitConfig(
        hidden=hidden, levels=levels, base=base, permute=permute.value, iters=iters, lr=lr,
        batch_size=batch_size, seed=seed,
    )  # fmt: skip
    state_dict = _load_weights(checkpoint, trust_pickle=trust_pickle)
    source = source_provenance(checkpoint, state_dict)
    out.log(f"fitting {checkpoint} ({source['tensors']} tensors) -> {target}")
    started = time.perf_counter()
    with out.progress("fit") as on_step:
        nern = training.fit(state_dict, config, arch=arch, device=device, on_step=on_step, source=source)
    seconds = time.perf_counter() - started
    save_artifact(nern, target)
    out.result(fit_summary(nern, target, seconds=seconds), output.render_fit)


# ---------------------------------------------------------------------------------------- compression stages
# distill, prune and quantize go here: each takes a .nern (NernArg), writes a .nern (OutputOpt), and renders a
# summary dict built in report.py.


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
    json_output: JsonOpt = False,
) -> None:
    """Regenerate the weights of a .nern into a plain .safetensors state_dict or a verified .onnx model.

    An ONNX output is checked against PyTorch with onnxruntime on fixed random inputs; when they disagree, no file
    is written and the exit code is 4.
    """
    out = output.Output(json_output)
    _check_output(output_path, nern_path)
    nern = load_artifact(nern_path)
    out.log(f"expanding {nern_path} -> {output_path}")
    report = export(nern, output_path, device=device, opset=opset, verify=verify)
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
    trust_pickle: TrustPickleOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Top-1 accuracy of a checkpoint or a .nern (expanded in memory) on a labelled dataset.

    Images are normalised with the architecture's preset unless --preset overrides it. With --compare, a second
    model is evaluated on the same images: their agreement and the paired top-1 difference are reported.
    """
    out = output.Output(json_output)
    dataset = load_data(data, split=split)
    model, spec = _load_model(model_path, arch=arch, trust_pickle=trust_pickle, device=device)
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
        other_model, _ = _load_model(compare, arch=arch, trust_pickle=trust_pickle, device=device)
        out.log(f"evaluating {compare} on the same images")
        other = evaluate(other_model, dataset, mean=mean, std=std, device=device, batch_size=batch_size)
        paired = compare_results(result, other, dataset.labels)
        summary["compare"] = {"model": str(compare), "top1": other.top1, **paired}
    out.result(summary, output.render_eval)


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
