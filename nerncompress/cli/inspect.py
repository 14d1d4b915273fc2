"""``nerncompress inspect``: what a .nern or a checkpoint holds."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .. import run_inspect
from . import output
from .compress_predictor import compression_text
from .options import JsonOpt, TrustPickleOpt, examples

PathArg = Annotated[Path, typer.Argument(help="A .nern artifact or a checkpoint.")]

EPILOG = examples("nerncompress inspect model.nern", "nerncompress inspect resnet20.th --json")


def inspect_command(path: PathArg, trust_pickle: TrustPickleOpt = False, json_output: JsonOpt = False) -> None:
    """Layer table, bytes by group, ratios, provenance and history of a .nern; or what a checkpoint holds."""
    out = output.Output(json_output)
    summary = run_inspect(path, trust_pickle=trust_pickle)
    out.result(summary, render_artifact if summary["kind"] == "nern" else render_checkpoint)


def _render_tensors(console: Console, rows: Sequence[Mapping[str, Any]]) -> None:
    table = Table(title="tensors", title_justify="left", title_style="bold")
    for column in ("name", "shape", "stored", "bytes", "bits/value"):
        table.add_column(column, justify="right" if column in ("bytes", "bits/value") else "left")
    for row in rows:
        stored = row["storage"] + (f" (step {row['step']:.3g})" if "step" in row else "")
        if row["reason"]:
            stored += f": {row['reason']}"
        table.add_row(
            escape(row["name"]), "x".join(str(s) for s in row["shape"]) or "scalar", stored, f"{row['bytes']:,}",
            f"{row['bits_per_value']:.2f}",
        )  # fmt: skip
    console.print(table)


def render_artifact(console: Console, data: Mapping[str, Any]) -> None:
    """``nerncompress inspect`` of a ``.nern``: tensors, bytes, ratios, configuration, provenance, history."""
    percent = output.percent
    _render_tensors(console, data["tensors"])
    total = data["file_bytes"]
    sizes = Table(title="bytes on disk", title_justify="left", title_style="bold")
    sizes.add_column("group")
    sizes.add_column("bytes", justify="right")
    sizes.add_column("share", justify="right")
    for group, count in data["bytes"].items():
        if count or group not in ("other", "scales"):
            sizes.add_row(group, f"{count:,}", percent(count / total if total else None))
    sizes.add_row("total", f"{total:,}", "100.00%", style="bold")
    console.print(sizes)
    arch, predictor, embedding, shares = data["arch"], data["predictor"], data["embedding"], data["shares"]
    predictor_text = "none" if predictor is None else (
        f"hidden {predictor['hidden']}, depth {predictor['depth']}, kernel sizes {predictor['kernel_sizes']}; "
        f"embedding levels {embedding['levels']}, base {embedding['base']} ({embedding['dim']} dims); "
        f"permutation {data['permute']}"
    )  # fmt: skip
    rows = [
        ("architecture", f"{arch['name']} {json.dumps(arch['kwargs'])} (preset {arch['preset']})"),
        ("predictor", predictor_text),
        ("compression", compression_text(data["compression"])),
        ("parameters", f"{percent(shares['represented'])} represented, {percent(shares['coded'])} coded, "
                       f"{percent(shares['raw'])} raw"),
        ("conv ratio", f"{percent(data['conv_ratio'])}  ({data['predictor_parameters']:,} predictor params / "
                       f"{data['conv_parameters']:,} represented conv weights)"),
        ("file ratio", f"{percent(data['file_ratio'])}  ({total:,} B / {data['fp32_reference_bytes']:,} B "
                       "fp32 safetensors)"),
        ("tensors", f"{data['represented_layers']} represented, {data['coded_tensors']} coded, "
                    f"{data['raw_tensors']} raw"),
        ("format", f"{data.get('schema_version')} (written by nerncompress {data.get('tool_version')})"),
    ]  # fmt: skip
    console.print(output.key_value_table("summary", rows))
    for warning in data.get("warnings", []):
        console.print(escape(f"warning: {warning}"), style="bold yellow")
    source = data.get("source") or {}
    if source:
        console.print(output.key_value_table("source", list(source.items())))
    history = data.get("history") or []
    if history:
        table = Table(title="history", title_justify="left", title_style="bold")
        for column in ("stage", "steps", "device", "final loss", "rmse", "relative rmse"):
            table.add_column(column)
        for record in history:
            table.add_row(
                str(record.get("stage", "?")), str(record.get("steps", "-")), str(record.get("device", "-")),
                output.number(record.get("final_loss")), output.number(record.get("rmse")),
                percent(record.get("relative_rmse")),
            )  # fmt: skip
        console.print(table)


def render_checkpoint(console: Console, data: Mapping[str, Any]) -> None:
    """``nerncompress inspect`` of a checkpoint."""
    arch = data.get("arch")
    arch_text = f"{arch['name']} {json.dumps(arch['kwargs'])} (preset {arch['preset']})" if arch else "not detected"
    rows = [
        ("checkpoint", data["path"]),
        ("size", output.human_bytes(data["file_bytes"])),
        ("sha256", data["sha256"]),
        ("tensors", f"{data['tensors']:,}"),
        ("parameters", f"{data['parameters']:,}"),
        ("tensor bytes", output.human_bytes(data["tensor_bytes"])),
        ("dtypes", ", ".join(f"{k}: {v}" for k, v in data["dtypes"].items())),
        ("conv weights", f"{data['conv_weights']} ({data['conv_parameters']:,} parameters)"),
        ("architecture", arch_text),
    ]
    if data.get("arch_error"):
        rows.append(("detection", data["arch_error"]))
    console.print(output.key_value_table("checkpoint", rows))
