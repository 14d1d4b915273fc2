"""``nerncompress expand``: a .nern -> a plain .safetensors state_dict or a verified .onnx model."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from .. import run_expand
from . import output
from .options import OUTPUT, JsonOpt, NernArg, RunDeviceOpt, RunThreadsOpt, TrustCodeOpt, examples

OutputOpt = Annotated[
    Path,
    typer.Option("-o", "--output", help="Output file: .safetensors or .onnx (by suffix).", rich_help_panel=OUTPUT),
]
OpsetOpt = Annotated[int, typer.Option("--opset", help="ONNX opset (ONNX output only).")]
VerifyOpt = Annotated[
    bool, typer.Option("--verify/--no-verify", help="Check the ONNX model against PyTorch with onnxruntime.")
]

EPILOG = examples(
    "nerncompress expand model.nern -o resnet.onnx",
    "nerncompress expand model.nern -o resnet.safetensors",
    "nerncompress expand model.nern -o resnet.onnx --opset 17 --json",
)


def expand_command(
    nern_path: NernArg,
    output_path: OutputOpt,
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
    summary = run_expand(
        nern_path, output_path, device=device, opset=opset, verify=verify, threads=threads, trust_code=trust_code,
        reporter=out,
    )  # fmt: skip
    out.result(summary, render)


def render(console: Console, data: Mapping[str, Any]) -> None:
    """Summary of ``nerncompress expand``."""
    rows = [
        ("output", data["path"]),
        ("format", data["format"]),
        ("size", output.human_bytes(data["bytes"])),
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
    console.print(output.key_value_table("expand", rows))
