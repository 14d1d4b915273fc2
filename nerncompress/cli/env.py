"""``nerncompress env``: versions and devices, for bug reports."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console

from .. import environment_report
from . import output
from .options import JsonOpt, examples

EPILOG = examples("nerncompress env", "nerncompress env --json > env.json")


def env_command(json_output: JsonOpt = False) -> None:
    """Versions, devices and threads: paste this into bug reports."""
    output.Output(json_output).result(environment_report(), render)


def render(console: Console, data: Mapping[str, Any]) -> None:
    """``nerncompress env``."""
    table = output.key_value_table
    console.print(table("versions", [(k, v or "not installed") for k, v in data["versions"].items()]))
    cuda = data["cuda"]
    devices = ", ".join(
        f"cuda:{d['index']} {d['name']} ({output.human_bytes(d['memory_bytes'])})" for d in cuda["devices"]
    )
    rows = [
        ("CUDA available", cuda["available"]),
        ("torch CUDA version", cuda["torch_cuda"]),
        ("cuDNN", cuda["cudnn"]),
        ("CUDA devices", devices or "none"),
        ("torch threads", data["torch_threads"]),
        ("CPU count", data["cpu_count"]),
        ("onnxruntime providers", ", ".join(data["onnxruntime_providers"] or []) or "-"),
        ("platform", data["platform"]["system"]),
        ("python", data["platform"]["python_executable"]),
    ]
    console.print(table("devices", rows))
