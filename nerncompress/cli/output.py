"""The one place the CLI writes: results on stdout, logs, progress and errors on stderr.

* Results: rich tables on stdout, or with ``--json`` exactly one JSON document on stdout and nothing else there.
* Logs and progress: stderr only, so ``nerncompress ... --json | jq`` always parses. Progress bars are drawn only
  when stderr is a terminal; otherwise a few plain progress lines are logged.
* Errors: one line ``Error: <message>`` on stderr and an exit code from ``EXIT_CODES``; the full traceback only
  with ``NERNCOMPRESS_DEBUG=1``.
* ``NO_COLOR`` (any value) turns colour off.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ..errors import (
    AccuracyTargetMissed,
    ArchDetectionError,
    ArtifactError,
    CheckpointError,
    DataError,
    ExportCheckError,
    NernError,
    UsageError,
)

DEBUG_ENV = "NERNCOMPRESS_DEBUG"

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_ACCURACY_TARGET_MISSED = 3
EXIT_EXPORT_CHECK_FAILED = 4
EXIT_INTERRUPTED = 130

# What each exit code means, for --help and the README.
EXIT_CODE_DOCS: tuple[tuple[int, str], ...] = (
    (EXIT_OK, "success"),
    (EXIT_ERROR, "error: a missing, unreadable, corrupt or inconsistent input (checkpoint, .nern, dataset), an "
                 "undetectable architecture, NaN/Inf weights, or an unexpected failure"),
    (EXIT_USAGE, "usage error: unknown option or value, missing argument, unavailable --device, -o equal to an "
                 "input, missing or unwritable output folder, a teacher of another task, a --resume that does not "
                 "match"),
    (EXIT_ACCURACY_TARGET_MISSED, "accuracy target missed (the artifact is still written)"),
    (EXIT_EXPORT_CHECK_FAILED, "export check failed (ONNX differs from PyTorch; nothing written)"),
    (EXIT_INTERRUPTED, "interrupted (Ctrl-C or SIGTERM); fit and distill save their progress first: "
                       "rerun with --resume"),
)

# Checked in order, first match wins: subclasses before NernError.
EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (UsageError, EXIT_USAGE),
    (AccuracyTargetMissed, EXIT_ACCURACY_TARGET_MISSED),
    (ExportCheckError, EXIT_EXPORT_CHECK_FAILED),
    (ArchDetectionError, EXIT_ERROR),
    (CheckpointError, EXIT_ERROR),
    (ArtifactError, EXIT_ERROR),
    (DataError, EXIT_ERROR),
    (NernError, EXIT_ERROR),
    (KeyboardInterrupt, EXIT_INTERRUPTED),
)

StepCallback = Callable[[int, int, dict[str, float]], None]


# ------------------------------------------------------------------------------------------------------ errors
def debug_enabled() -> bool:
    """Whether ``NERNCOMPRESS_DEBUG`` asks for full tracebacks."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def exit_code_for(exc: BaseException) -> int:
    """The exit code of an exception: ``EXIT_CODES``, else 1 (an unexpected error)."""
    for kind, code in EXIT_CODES:
        if isinstance(exc, kind):
            return code
    return EXIT_ERROR


def error_message(exc: BaseException) -> str:
    """One line describing ``exc``; unexpected exception types are named, with a hint to get the traceback."""
    if isinstance(exc, KeyboardInterrupt):
        detail = " ".join(str(exc).split())
        return detail if detail.startswith("interrupted") else f"interrupted{': ' + detail if detail else ''}"
    text = " ".join(str(exc).split())
    if isinstance(exc, NernError):
        return text or type(exc).__name__
    detail = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return f"unexpected {detail} (set {DEBUG_ENV}=1 for the traceback and please report it)"


def report_error(exc: BaseException) -> int:
    """Print ``Error: <one line>`` on stderr (after the traceback in debug mode) and return the exit code."""
    if debug_enabled():
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    # Plain write, not rich: messages hold paths and [brackets] that rich would read as markup.
    sys.stderr.write(f"Error: {error_message(exc)}\n")
    sys.stderr.flush()
    return exit_code_for(exc)


def report_usage_error(exc: Exception, command_path: str | None = None) -> int:
    """Print a command-line parsing error (unknown option, bad value, missing argument) as one line; exit 2.

    Click would print the usage line, a hint and a boxed message; a CI log wants one line, with the hint in it.
    """
    message = " ".join(str(getattr(exc, "format_message", lambda: str(exc))()).split()) or type(exc).__name__
    hint = f" (see '{command_path} --help')" if command_path else ""
    sys.stderr.write(f"Error: {message}{hint}\n")
    sys.stderr.flush()
    return int(getattr(exc, "exit_code", EXIT_USAGE))


# ----------------------------------------------------------------------------------------------------- output
def _no_color() -> bool:
    return "NO_COLOR" in os.environ and os.environ["NO_COLOR"] != ""


def stdout_console() -> Console:
    """Console for results. Created per call: tests and pipes swap ``sys.stdout``."""
    return Console(file=sys.stdout, no_color=_no_color(), highlight=False)


def stderr_console() -> Console:
    """Console for logs and progress."""
    return Console(file=sys.stderr, no_color=_no_color(), highlight=False)


def to_json(data: Any) -> str:
    """Serialise a result; paths, tuples and other non-JSON values become strings or lists."""
    return json.dumps(data, indent=2, default=str)


class Output:
    """Results to stdout (tables or one JSON document), logs and progress to stderr.

    Args:
        json_mode: ``--json`` was given.
    """

    def __init__(self, json_mode: bool = False) -> None:
        self.json_mode = json_mode
        # One stderr console, shared by logs and progress bars, so that logs print above a live bar.
        self.err = stderr_console()

    def result(self, data: Mapping[str, Any], render: Callable[[Console, Mapping[str, Any]], None]) -> None:
        """Emit the command's result: ``render(console, data)`` for people, or ``data`` as JSON."""
        if self.json_mode:
            sys.stdout.write(to_json(data) + "\n")
            sys.stdout.flush()
        else:
            render(stdout_console(), data)

    def log(self, message: str) -> None:
        """One log line on stderr."""
        self.err.print(message, markup=False, style="dim", highlight=False)

    @contextmanager
    def progress(self, description: str) -> Iterator[StepCallback]:
        """Yield an ``on_step(step, total, metrics)`` callback drawing a progress bar on stderr.

        With loss and RMSE when ``metrics`` has them, and an ETA. When stderr is not a terminal (CI, pipes), a
        plain line is logged at each tenth of the run instead.
        """
        console = self.err
        if not console.is_terminal:
            yield self._progress_lines(description)
            return
        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("rmse {task.fields[rmse]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=console, transient=False) as bar:
            tasks: list[Any] = []  # the task starts with the first step, so the bar shows only while it runs

            def on_step(step: int, total: int, metrics: dict[str, float]) -> None:
                if not tasks:
                    tasks.append(bar.add_task(description, total=total, loss="-", rmse="-"))
                fields = {key: f"{metrics[key]:.4g}" for key in ("loss", "rmse") if key in metrics}
                bar.update(tasks[0], completed=step, total=total, **fields)

            yield on_step

    def _progress_lines(self, description: str) -> StepCallback:
        logged: set[int] = set()

        def on_step(step: int, total: int, metrics: dict[str, float]) -> None:
            tenth = (10 * step) // max(total, 1)
            if tenth in logged or "loss" not in metrics:
                return
            logged.add(tenth)
            figures = " ".join(f"{key} {metrics[key]:.4g}" for key in ("loss", "rmse", "kd") if key in metrics)
            self.log(f"{description}: step {step}/{total} {figures}")

        return on_step


# ------------------------------------------------------------------------------------------------- formatting
def human_bytes(count: int | None) -> str:
    """``1234567`` -> ``"1.23 MB (1,234,567 B)"``; decimal units."""
    if count is None:
        return "-"
    if count < 1000:
        return f"{count} B"
    value = float(count)
    for unit in ("kB", "MB", "GB"):
        value /= 1000
        if value < 1000:
            break
    return f"{value:.2f} {unit} ({count:,} B)"


def percent(ratio: float | None) -> str:
    """A ratio as a percentage with two significant decimals: 0.2345 -> ``"23.45%"``."""
    return "-" if ratio is None else f"{100 * ratio:.2f}%"


def key_value_table(title: str, rows: Sequence[tuple[str, Any]]) -> Table:
    """A two-column table of labelled values."""
    table = Table(title=title, show_header=False, title_justify="left", title_style="bold")
    table.add_column("", style="bold")
    table.add_column("", overflow="fold")  # hashes and paths wrap instead of being cut
    for key, value in rows:
        table.add_row(key, _cell(value))
    return table


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return escape(str(value))  # a path or a data source like "x.npz[holdout part]" is text, not rich markup


# -------------------------------------------------------------------------------------------------- renderers
def render_fit(console: Console, data: Mapping[str, Any]) -> None:
    """Summary of ``nerncompress fit``."""
    errors = data.get("reconstruction", {})
    rows = [
        ("artifact", data["path"]),
        ("size", human_bytes(data["file_bytes"])),
        ("fp32 reference", human_bytes(data["fp32_reference_bytes"])),
        ("conv ratio", f"{percent(data['conv_ratio'])}  ({data['predictor_parameters']:,} predictor params / "
                       f"{data['conv_parameters']:,} conv weights)"),
        ("file ratio", f"{percent(data['file_ratio'])}  (.nern bytes / fp32 safetensors bytes)"),
        ("represented layers", f"{data['represented_layers']} (+{len(data['raw_convs'])} conv stored raw)"),
        ("fit time", f"{data['seconds']:.1f} s ({data['steps']} steps on {data['device']})"),
    ]
    if "rmse" in errors:
        rows.append(("reconstruction RMSE", f"{errors['rmse']:.4g} ({percent(errors.get('relative_rmse'))} of the "
                                            "weights' std)"))
    console.print(key_value_table("fit", rows))


def render_distill(console: Console, data: Mapping[str, Any]) -> None:
    """Summary of ``nerncompress distill``."""
    teacher = data.get("teacher") or {}
    agreement = data.get("holdout_agreement")
    rows = [
        ("artifact", data["path"]),
        ("size", human_bytes(data["file_bytes"])),
        ("file ratio", f"{percent(data['file_ratio'])}  (.nern bytes / fp32 safetensors bytes)"),
        ("teacher", f"{teacher.get('file', '-')} ({teacher.get('arch', '-')})"),
        ("data", data.get("data")),
        ("kept step", f"{data.get('selected_step')} of {data.get('steps')}"),
        ("holdout agreement", "- (no holdout)" if agreement is None else f"{agreement:.2f}% with the teacher"),
        ("final loss", _number(data.get("final_loss"))),
        ("distill time", f"{data['seconds']:.1f} s on {data.get('device')}"),
    ]
    console.print(key_value_table("distill", rows))


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
    return f"{errors['rmse']:.4g}" + ("" if relative is None else f" ({percent(relative)} of the weights' std)")


def render_compress(console: Console, data: Mapping[str, Any]) -> None:
    """Summary of ``nerncompress quantize`` and ``nerncompress prune``."""
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
        ("predictor bytes", f"{_cell(predictor_before)} -> {_cell(predictor_after)}"),
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
    console.print(key_value_table(str(data.get("stage") or "compress"), rows))


def render_expand(console: Console, data: Mapping[str, Any]) -> None:
    """Summary of ``nerncompress expand``."""
    rows = [
        ("output", data["path"]),
        ("format", data["format"]),
        ("size", human_bytes(data["bytes"])),
        ("tensors", data["tensors"]),
        ("time", f"{data['seconds']:.1f} s"),
    ]
    onnx = data.get("onnx")
    if onnx:
        rows.append(("opset", onnx.get("opset")))
        if onnx.get("max_abs_diff") is None:
            rows.append(("verification", "skipped (--no-verify)"))
        else:
            rows += [
                ("max |delta| vs PyTorch", f"{onnx['max_abs_diff']:.3g}"),
                ("top-1 agreement", f"{onnx['top1_agreement']:.2f}% of {onnx.get('inputs')} inputs"),
                ("checked with", onnx.get("provider")),
            ]
    console.print(key_value_table("expand", rows))


def render_eval(console: Console, data: Mapping[str, Any]) -> None:
    """Result of ``nerncompress eval``."""
    rows = [
        ("model", data["model"]),
        ("data", f"{data['data']} ({data['count']:,} images)"),
        ("normalisation", data["preset"]),
        ("top-1", f"{data['top1']:.2f}%"),
    ]
    compare = data.get("compare")
    if compare:
        rows += [
            ("compared with", compare["model"]),
            ("its top-1", f"{compare['top1']:.2f}%"),
            ("agreement", f"{compare['agreement']:.2f}%"),
            ("paired delta", f"{compare['delta_top1']:+.2f} ± {compare['delta_top1_ci95']:.2f} points (95% interval;"
                             f" only this right: {compare['only_first_correct']},"
                             f" only the other right: {compare['only_second_correct']})"),
        ]
    console.print(key_value_table("eval", rows))


def render_select(console: Console, data: Mapping[str, Any]) -> None:
    """Result of ``nerncompress select``."""
    table = Table(
        title=escape(f"agreement with {data['reference']} on {data['data']} ({data['images']:,} images)"),
        title_justify="left", title_style="bold",
    )  # fmt: skip
    for column in ("candidate", "agreement", "top-1", ""):
        table.add_column(column, justify="left" if column == "candidate" else "right")
    for index, row in enumerate(data["candidates"]):
        mark = "selected" if index == data["selected_index"] else ""
        table.add_row(escape(row["path"]), f"{row['agreement']:.2f}%", f"{row['top1']:.2f}%", mark)
    console.print(table)
    console.print(escape(f"copied {data['selected']} to {data['output']}"))


def _render_layers(console: Console, layers: Sequence[Mapping[str, Any]]) -> None:
    table = Table(title="layers", title_justify="left", title_style="bold")
    for column in ("name", "shape", "k", "kernels", "stored", "bits"):
        table.add_column(column, justify="right" if column in ("k", "kernels", "bits") else "left")
    for row in layers:
        stored = "predictor" if row["status"] == "represented" else f"raw: {row['reason']}"
        bits = row["position_bits"]
        table.add_row(
            row["name"], "x".join(str(s) for s in row["shape"]), str(row["kernel_size"]),
            f"{row['kernels']:,}" if row["kernels"] is not None else "-", stored, "-" if bits is None else str(bits),
        )  # fmt: skip
    console.print(table)


def render_artifact(console: Console, data: Mapping[str, Any]) -> None:
    """``nerncompress inspect`` of a ``.nern``: layers, bytes, ratios, configuration, provenance, history."""
    _render_layers(console, data["layers"])
    total = data["file_bytes"]
    sizes = Table(title="bytes on disk", title_justify="left", title_style="bold")
    sizes.add_column("group")
    sizes.add_column("bytes", justify="right")
    sizes.add_column("share", justify="right")
    for group, count in data["bytes"].items():
        if count or group != "other":
            sizes.add_row(group, f"{count:,}", percent(count / total if total else None))
    sizes.add_row("total", f"{total:,}", "100.00%", style="bold")
    console.print(sizes)
    arch = data["arch"]
    predictor = data["predictor"]
    embedding = data["embedding"]
    console.print(
        key_value_table(
            "summary",
            [
                ("architecture", f"{arch['name']} {json.dumps(arch['kwargs'])} (preset {arch['preset']})"),
                ("predictor", f"hidden {predictor['hidden']}, depth {predictor['depth']}, "
                              f"kernel sizes {predictor['kernel_sizes']}"),
                ("embedding", f"levels {embedding['levels']}, base {embedding['base']} ({embedding['dim']} dims)"),
                ("permutation", data["permute"]),
                ("compression", compression_text(data["compression"])),
                ("conv ratio", f"{percent(data['conv_ratio'])}  ({data['predictor_parameters']:,} predictor params / "
                               f"{data['conv_parameters']:,} conv weights)"),
                ("file ratio", f"{percent(data['file_ratio'])}  ({total:,} B / {data['fp32_reference_bytes']:,} B "
                               "fp32 safetensors)"),
                ("layers", f"{data['represented_layers']} represented, {data['raw_convs']} conv raw, "
                           f"{data['raw_tensors']} raw tensors"),
                ("tool version", data.get("tool_version")),
            ],
        )  # fmt: skip
    )
    source = data.get("source") or {}
    if source:
        console.print(key_value_table("source", [(key, value) for key, value in source.items()]))
    history = data.get("history") or []
    if history:
        table = Table(title="history", title_justify="left", title_style="bold")
        for column in ("stage", "steps", "device", "final loss", "rmse", "relative rmse"):
            table.add_column(column)
        for record in history:
            table.add_row(
                str(record.get("stage", "?")), str(record.get("steps", "-")), str(record.get("device", "-")),
                _number(record.get("final_loss")), _number(record.get("rmse")), percent(record.get("relative_rmse")),
            )  # fmt: skip
        console.print(table)


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else "-"


def render_checkpoint(console: Console, data: Mapping[str, Any]) -> None:
    """``nerncompress inspect`` of a checkpoint."""
    arch = data.get("arch")
    arch_text = f"{arch['name']} {json.dumps(arch['kwargs'])} (preset {arch['preset']})" if arch else "not detected"
    rows = [
        ("checkpoint", data["path"]),
        ("size", human_bytes(data["file_bytes"])),
        ("sha256", data["sha256"]),
        ("tensors", f"{data['tensors']:,}"),
        ("parameters", f"{data['parameters']:,}"),
        ("tensor bytes", human_bytes(data["tensor_bytes"])),
        ("dtypes", ", ".join(f"{k}: {v}" for k, v in data["dtypes"].items())),
        ("conv weights", f"{data['conv_weights']} ({data['conv_parameters']:,} parameters)"),
        ("architecture", arch_text),
    ]
    if data.get("arch_error"):
        rows.append(("detection", data["arch_error"]))
    console.print(key_value_table("checkpoint", rows))


def render_env(console: Console, data: Mapping[str, Any]) -> None:
    """``nerncompress env``."""
    console.print(key_value_table("versions", [(k, v or "not installed") for k, v in data["versions"].items()]))
    cuda = data["cuda"]
    devices = ", ".join(f"cuda:{d['index']} {d['name']} ({human_bytes(d['memory_bytes'])})" for d in cuda["devices"])
    console.print(
        key_value_table(
            "devices",
            [
                ("CUDA available", cuda["available"]),
                ("torch CUDA version", cuda["torch_cuda"]),
                ("cuDNN", cuda["cudnn"]),
                ("CUDA devices", devices or "none"),
                ("torch threads", data["torch_threads"]),
                ("CPU count", data["cpu_count"]),
                ("onnxruntime providers", ", ".join(data["onnxruntime_providers"] or []) or "-"),
                ("platform", data["platform"]["system"]),
                ("python", data["platform"]["python_executable"]),
            ],
        )
    )


def render_demo(console: Console, data: Mapping[str, Any]) -> None:
    """Before/after table of ``nerncompress demo``."""
    original, expanded, nern = data["original"], data["expanded"], data["nern"]
    table = Table(title="nerncompress demo: digits CNN, before and after", title_justify="left", title_style="bold")
    table.add_column("")
    table.add_column("original", justify="right")
    table.add_column("expanded from .nern", justify="right")
    table.add_row("test top-1", f"{original['top1']:.2f}%", f"{expanded['top1']:.2f}%")
    table.add_row("agreement with original", "100.00%", f"{data['agreement']:.2f}%")
    table.add_row("bytes on disk", f"{original['bytes']:,} (fp32 .safetensors)", f"{nern['bytes']:,} (.nern)")
    table.add_row("conv ratio", "", f"{percent(nern['conv_ratio'])}")
    table.add_row("file ratio", "", f"{percent(nern['file_ratio'])}")
    console.print(table)
    timings = data["timings"]
    console.print(key_value_table("timings", [(stage, f"{seconds:.1f} s") for stage, seconds in timings.items()]))
    console.print(key_value_table("files", list(data["files"].items())))
