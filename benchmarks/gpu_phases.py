"""Seconds and peak memory of every phase on torchvision ResNet-18 and ResNet-50 (random init), for a lent GPU.

    python benchmarks/gpu_phases.py                          # CUDA, the committed recipe, under 8 minutes on an H100
    python benchmarks/gpu_phases.py --device cpu --quick     # a smoke run of the script itself

For each model: ``fit`` (its positions phase, then the training steps), ``distill`` (data-free, on noise images, so
that no dataset is needed), ``expand`` to safetensors and to a checked ONNX model. Every phase's wall seconds come
from the progress reporter (the jobs report each phase's start and end), peak GPU memory from
``torch.cuda.max_memory_allocated`` (reset before each job), peak host memory from the jobs' ``peak_rss_mb``.
Writes ``results/gpu_phases.{json,md}`` (``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import torch
import torchvision

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_common import cpu_device, git_commit  # noqa: E402

from nerncompress import DistillConfig, FitConfig, run_distill, run_expand, run_fit  # noqa: E402

MODELS = ("resnet18", "resnet50")


class PhaseTimer:
    """A reporter that keeps each phase's wall seconds and prints one line per phase."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.seconds: dict[str, float] = {}

    def log(self, message: str) -> None:
        print(f"[{self.model}] {message}", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def phase(self, name: str, total: int | None = None) -> Iterator[Any]:
        started = time.perf_counter()
        try:
            yield lambda step, steps, metrics: None
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started
            self.log(f"{name}: {self.seconds[name]:.1f} s")


def gpu_peak_mb(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    return round(torch.cuda.max_memory_allocated() / 2**20, 1)


def reset_gpu_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def measure(model: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    work = args.out / "work" / "gpu_phases"
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    checkpoint = work / f"{model}.pth"
    torch.save(getattr(torchvision.models, model)(weights=None).state_dict(), checkpoint)
    fit_iters, distill_iters = (5, 2) if args.quick else (args.fit_iters, args.distill_iters)
    jobs = {
        "fit": lambda reporter: run_fit(checkpoint, FitConfig(hidden=args.hidden, iters=fit_iters, seed=args.seed),
                                        output=work / f"{model}.nern", device=args.device, reporter=reporter),
        "distill": lambda reporter: run_distill(work / f"{model}.nern", teacher=checkpoint, data=["noise"],
                                                config=DistillConfig(iters=distill_iters, batch_size=args.batch),
                                                output=work / f"{model}.kd.nern", device=args.device,
                                                reporter=reporter),
        "expand safetensors": lambda reporter: run_expand(work / f"{model}.kd.nern", work / f"{model}.safetensors",
                                                          device=args.device, reporter=reporter),
        "expand onnx": lambda reporter: run_expand(work / f"{model}.kd.nern", work / f"{model}.onnx",
                                                   device=args.device, reporter=reporter),
    }  # fmt: skip
    rows = []
    for job, run in jobs.items():
        reporter = PhaseTimer(model)
        reset_gpu_peak(args.device)
        started = time.perf_counter()
        summary = run(reporter)
        rows.append({
            "model": model, "job": job, "seconds": round(time.perf_counter() - started, 2),
            "phases": {name: round(value, 2) for name, value in reporter.seconds.items()},
            "gpu_peak_mb": gpu_peak_mb(args.device), "peak_rss_mb": summary.get("peak_rss_mb"),
            "iters": {"fit": fit_iters, "distill": distill_iters}.get(job),
        })  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    return rows


def write_results(rows: list[dict[str, Any]], meta: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_phases.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    lines = [
        "# Seconds and memory per phase, torchvision ResNet-18 and ResNet-50 (random init)",
        "",
        f"Measured {meta['date']} on {meta['device']}, torch {meta['torch']}, commit {meta['commit'][:10]}, "
        f"predictor width {meta['hidden']}, distill batch {meta['batch']}, mode {meta['mode']}. "
        f"Command: `{meta['command']}`.",
        "",
        "Host peak RSS is the process's peak so far (the jobs run one after another in one process).",
        "",
        "| model | job | steps | seconds | phases (s) | GPU peak MB | host peak RSS MB |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        phases = ", ".join(f"{name} {seconds}" for name, seconds in row["phases"].items())
        lines.append(f"| {row['model']} | {row['job']} | {row['iters'] or ''} | {row['seconds']} | {phases} | "
                     f"{row['gpu_peak_mb'] or ''} | {row['peak_rss_mb'] or ''} |")  # fmt: skip
    (out / "gpu_phases.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--fit-iters", type=int, default=1000)
    parser.add_argument("--distill-iters", type=int, default=100)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("no CUDA device here: run it on a GPU machine, or pass --device cpu")
    started = time.perf_counter()
    rows = [row for model in args.models for row in measure(model, args)]
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else cpu_device()
    meta = {
        "date": date.today().isoformat(), "device": device, "torch": torch.__version__, "commit": git_commit(),
        "hidden": args.hidden, "batch": args.batch, "mode": "quick" if args.quick else "full",
        "command": " ".join(["python", *sys.argv]), "wall_seconds": round(time.perf_counter() - started, 1),
    }  # fmt: skip
    write_results(rows, meta, args.out)


if __name__ == "__main__":
    main()
