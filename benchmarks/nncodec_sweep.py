"""NNCodec (MPEG NNC, the standard neural-network codec) as a baseline, measured with the benchmark's own evaluation.

    bash benchmarks/nncodec/setup.sh                                   # once: the codec's own virtualenv
    python benchmarks/nncodec_sweep.py --data-dir ../shared/data       # the committed results
    python benchmarks/nncodec_sweep.py --data-dir ../shared/data --quick   # 2 points per model, a smoke run

For every model and every point of the sweep (each qp, with and without the encoder's per-tensor ``opt_qp``),
benchmarks/nncodec/codec.py runs in the NNCodec virtualenv: it encodes the checkpoint, writes the bitstream,
decodes it from the file and writes the decoded weights. This script (project virtualenv) then evaluates them
with the same code path as benchmarks/run.py: top-1 on test1000_lossless, top-1 agreement and paired delta
against the original (evaluated in the same run) on test10k_jpeg. Sizes are the bitstream's bytes on disk,
ratios against the original saved as a plain fp32 safetensors state_dict.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_common import cpu_device, git_commit, load_test_sets, save_fp32_reference  # noqa: E402
from run import Evaluator  # noqa: E402

from nerncompress.checkpoint import load_checkpoint, normalize_state_dict  # noqa: E402
from nerncompress.data import preset_stats  # noqa: E402
from nerncompress.models import resolve_arch  # noqa: E402

CHECKPOINTS = {"resnet20": "resnet20-12fca82f.th", "resnet56": "resnet56-4bfd9763.th"}
DEFAULT_QPS = list(range(-38, -17, 2))  # -38 .. -18: each +4 doubles the quantization step
QUICK_QPS = {False: -30, True: -28}  # quick mode: one point without opt_qp, one with
CODEC_SCRIPT = ROOT / "benchmarks" / "nncodec" / "codec.py"
DEFAULT_CODEC_PYTHON = ROOT / ".nncodec-venv" / "bin" / "python"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass(frozen=True)
class Point:
    """One encoder setting of the sweep."""

    qp: int
    opt_qp: bool
    use_dq: bool = True

    @property
    def method(self) -> str:
        """The row's name, e.g. ``NNCodec qp=-28 opt_qp dq``."""
        return " ".join(["NNCodec", f"qp={self.qp}", *(["opt_qp"] if self.opt_qp else []), *(["dq"] if self.use_dq else [])])

    @property
    def slug(self) -> str:
        """A file-name-safe form of the setting."""
        return f"qp{self.qp}{'_optqp' if self.opt_qp else ''}{'_dq' if self.use_dq else ''}"


def sweep_points(qps: list[int], *, opt_qps: list[int] | None = None, quick: bool = False, use_dq: bool = True) -> list[Point]:
    """The points in the order they run: qp by qp as given (``qps``, then the ``opt_qps`` not in it), each without
    opt_qp when in ``qps`` and with it when in ``opt_qps`` (default: ``qps``). Giving a coarse grid first lets an
    interrupted sweep (``--resume``) still span the whole range. Quick mode keeps one point of each kind."""
    if quick:
        return [Point(qp, opt_qp, use_dq) for opt_qp, qp in QUICK_QPS.items()]
    opt_qps = qps if opt_qps is None else opt_qps
    order = list(dict.fromkeys([*qps, *opt_qps]))
    return [Point(qp, opt, use_dq) for qp in order for opt in (False, True) if qp in (opt_qps if opt else qps)]


def ordered_rows(rows: list[dict], models: list[str]) -> list[dict]:
    """Rows for the table: model by model, the original first, then the points without opt_qp from the finest qp
    to the coarsest, then those with it."""
    rank = {model: i for i, model in enumerate(models)}

    def key(row: dict) -> tuple:
        reference = row["qp"] is None
        return (rank.get(row["model"], len(rank)), row["model"], not reference, bool(row["opt_qp"]), row["qp"] or 0)

    return sorted(rows, key=key)


def codec_command(python: Path, checkpoint: Path, point: Point, bitstream: Path, decoded: Path, threads: int) -> list[str]:
    """The command line that runs codec.py in the NNCodec virtualenv for one point."""
    return [
        str(python), str(CODEC_SCRIPT), str(checkpoint), "--qp", str(point.qp),
        "--use-dq" if point.use_dq else "--no-use-dq", *(["--opt-qp"] if point.opt_qp else []),
        "--bitstream", str(bitstream), "--decoded", str(decoded), "--threads", str(threads),
    ]  # fmt: skip


def parse_codec_output(stdout: str) -> dict[str, Any]:
    """The JSON report that codec.py prints as its last line of stdout."""
    lines = [line for line in stdout.splitlines() if line.strip().startswith("{")]
    if not lines:
        raise RuntimeError(f"codec.py printed no JSON report; its stdout ended with: {stdout[-500:]!r}")
    report = json.loads(lines[-1])
    missing = {"bytes", "encode_seconds", "decode_seconds", "threads"} - set(report)
    if missing:
        raise RuntimeError(f"codec.py's report lacks {sorted(missing)}: {report}")
    return report


def run_codec(python: Path, checkpoint: Path, point: Point, work: Path, threads: int) -> tuple[dict[str, Any], Path]:
    """Encode and decode ``checkpoint`` at ``point`` in the NNCodec virtualenv: (its report, the decoded file)."""
    bitstream = work / f"{checkpoint.stem}.{point.slug}.nnc"
    decoded = work / f"{checkpoint.stem}.{point.slug}.safetensors"
    env = {**os.environ, **{name: str(threads) for name in THREAD_VARIABLES}}
    env.pop("PYTHONPATH", None)  # the codec's environment must not see the project's package
    done = subprocess.run(codec_command(python, checkpoint, point, bitstream, decoded, threads), env=env,
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"codec.py failed ({done.returncode}) on {checkpoint.name} {point.method}:\n{done.stderr[-3000:]}")
    report = parse_codec_output(done.stdout)
    if report["bytes"] != bitstream.stat().st_size:
        raise RuntimeError(f"codec.py reported {report['bytes']} bytes, the file has {bitstream.stat().st_size}")
    return report, decoded


def file_ratio(size: int, reference_bytes: int) -> float:
    """Bytes of a file over bytes of the fp32 safetensors state_dict."""
    return round(size / reference_bytes, 5)


def build_row(model: str, point: Point, codec: dict[str, Any], figures: dict[str, Any], reference_bytes: int) -> dict:
    """One result row from the codec's report and the evaluation figures of its decoded weights."""
    return {
        "model": model, "method": point.method, "kind": "baseline",
        "qp": point.qp, "opt_qp": point.opt_qp, "use_dq": point.use_dq,
        "bytes": codec["bytes"], "file_ratio": file_ratio(codec["bytes"], reference_bytes),
        "top1_lossless": figures["top1_lossless"], "delta_jpeg": figures["delta_jpeg"],
        "agreement_jpeg": figures["agreement_jpeg"], "top1_jpeg": figures.get("top1_jpeg"),
        "encode_seconds": codec["encode_seconds"], "decode_seconds": codec["decode_seconds"], "threads": codec["threads"],
    }  # fmt: skip


def reference_row(model: str, reference_bytes: int, figures: dict[str, Any]) -> dict:
    """The original checkpoint's row (fp32 safetensors): the reference of every ratio and paired figure."""
    return {
        "model": model, "method": "original fp32", "kind": "reference", "qp": None, "opt_qp": None, "use_dq": None,
        "bytes": reference_bytes, "file_ratio": 1.0, "top1_lossless": figures["top1_lossless"],
        "delta_jpeg": figures["delta_jpeg"], "agreement_jpeg": figures["agreement_jpeg"],
        "top1_jpeg": figures.get("top1_jpeg"), "encode_seconds": None, "decode_seconds": None, "threads": None,
    }  # fmt: skip


def sweep_model(model: str, checkpoint: Path, *, data_dir: Path, work: Path, points: list[Point], python: Path,
                threads: int, quick: bool, on_row: Callable[[dict, dict | None], None]) -> None:  # fmt: skip
    """Every point of one model, each row handed to ``on_row(row, codec report)`` as soon as it is measured. The
    original is evaluated first, in the same run (its row comes with no report)."""
    from safetensors.torch import load_file

    work.mkdir(parents=True, exist_ok=True)
    state_dict = normalize_state_dict(load_checkpoint(checkpoint))
    arch = resolve_arch(None, state_dict)
    mean, std = preset_stats(arch.preset)
    lossless, jpeg = load_test_sets(data_dir, quick=quick)
    evaluate_state = Evaluator(arch, lossless, jpeg, mean, std)
    reference_bytes = save_fp32_reference(state_dict, work / f"{model}.fp32.safetensors")
    on_row(reference_row(model, reference_bytes, evaluate_state(state_dict)), None)
    for point in points:
        report, decoded = run_codec(python, checkpoint, point, work, threads)
        on_row(build_row(model, point, report, evaluate_state(load_file(str(decoded))), reference_bytes), report)


def write_json(rows: list[dict], meta: dict, path: Path) -> None:
    """``{"meta": ..., "rows": [...]}``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")


def _cell(value: Any, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def markdown_table(rows: list[dict], meta: dict) -> str:
    """The results as Markdown: a line about the run, then one table row per result row."""
    lines = [
        "# NNCodec (MPEG NNC) baseline",
        "",
        f"Measured on {meta['device']} with {meta['threads']} threads, nncodec {meta['nncodec']} "
        f"(torch {meta['nncodec_torch']} in its own virtualenv), evaluation with torch {meta['torch']}, mode {meta['mode']}.",
        "",
        "Runs (a row's `run` in nncodec.json; load averages over 1/5/15 min: other jobs on the same cores slow the "
        "encode and decode times):",
        "",
        *[f"{i}. {run['date']}, commit {run['commit'][:10]}, `{run['command']}`: {run['points']} points in "
          f"{run['wall_seconds']} s, load {run['load_average_start']} at start, {run['load_average_end']} at end."
          for i, run in enumerate(meta.get("runs", [meta]))],  # fmt: skip
        "",
        "File ratio = bitstream bytes / bytes of the fp32 safetensors state_dict. Top-1 on test1000_lossless; "
        "agreement and paired delta against the original on test10k_jpeg. Data-free: no image is used to encode.",
        "",
        "| model | method | qp | opt_qp | bytes | file ratio | top-1 lossless | agreement (jpeg) | delta (jpeg, paired) "
        "| encode s | decode s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        opt = "" if r["opt_qp"] is None else ("yes" if r["opt_qp"] else "no")
        lines.append(
            f"| {r['model']} | {r['method']} | {_cell(r['qp'], 'd')} | {opt} | {r['bytes']:,} | {r['file_ratio']:.2%} "
            f"| {r['top1_lossless']:.1f} | {r['agreement_jpeg']:.2f}% | {r['delta_jpeg']:+.2f} "
            f"| {_cell(r['encode_seconds'], '.2f')} | {_cell(r['decode_seconds'], '.2f')} |"
        )
    return "\n".join(lines) + "\n"


def write_markdown(rows: list[dict], meta: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown_table(rows, meta))


def load_average() -> list[float] | None:
    """The machine's 1/5/15-minute load averages: other jobs on the same cores inflate every timing."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def make_meta(args: argparse.Namespace, reports: list[dict], argv: list[str], *, load_at_start: list[float] | None = None,
              seconds: float | None = None) -> dict:  # fmt: skip
    """What the results file records about its run."""
    versions = reports[0]["versions"] if reports else {}
    return {
        "points": len(reports),
        "date": time.strftime("%Y-%m-%d"), "commit": git_commit(), "torch": torch.__version__,
        "nncodec": versions.get("nncodec", "unknown"), "nncodec_torch": versions.get("torch", "unknown"),
        "nncodec_numpy": versions.get("numpy", "unknown"), "device": cpu_device(), "threads": args.threads,
        "mode": "quick" if args.quick else "full", "jpeg_images": "first 2000" if args.quick else "all 10000",
        "command": " ".join(["nncodec_sweep.py", *argv]),
        "load_average_start": load_at_start, "load_average_end": load_average(),
        "wall_seconds": None if seconds is None else round(seconds, 1),
    }  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--models", nargs="+", choices=sorted(CHECKPOINTS), default=list(CHECKPOINTS))
    parser.add_argument("--qps", nargs="+", type=int, default=DEFAULT_QPS,
                        help="qp values, each run with and without opt_qp")  # fmt: skip
    parser.add_argument("--no-dq", action="store_true", help="plain uniform quantization instead of dependent (trellis)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results",
                        help="folder for nncodec.json and nncodec.md")  # fmt: skip
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "nncodec", help="bitstreams and decoded weights")
    parser.add_argument("--python", type=Path, default=Path(os.environ.get("NNCODEC_PYTHON", DEFAULT_CODEC_PYTHON)),
                        help="python of the NNCodec virtualenv (benchmarks/nncodec/setup.sh)")  # fmt: skip
    parser.add_argument("--opt-qps", nargs="+", type=int, default=None,
                        help="qp values run with opt_qp (default: those of --qps)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="2 points per model and 2000 JPEG images: a smoke run")
    parser.add_argument("--resume", action="store_true",
                        help="keep the rows of an earlier run in OUT/nncodec.json and run only the missing points")  # fmt: skip
    return parser.parse_args(argv)


def load_earlier(path: Path, mode: str) -> tuple[list[dict], list[dict]]:
    """The rows and runs of an earlier results file, for ``--resume`` (none when it does not exist)."""
    if not path.exists():
        return [], []
    earlier = json.loads(path.read_text())
    if earlier["meta"]["mode"] != mode:
        raise SystemExit(f"{path} holds a {earlier['meta']['mode']} run: --resume continues only a run of the same mode")
    return earlier["rows"], earlier["meta"].get("runs", [earlier["meta"]])


def main(argv: list[str] | None = None) -> list[dict]:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if not args.python.exists():
        raise SystemExit(f"no NNCodec virtualenv at {args.python}: run  bash benchmarks/nncodec/setup.sh")
    torch.set_num_threads(args.threads)
    started, load_at_start = time.perf_counter(), load_average()
    mode = "quick" if args.quick else "full"
    earlier_rows, earlier_runs = load_earlier(args.out / "nncodec.json", mode) if args.resume else ([], [])
    rows = {(row["model"], row["method"]): row for row in earlier_rows}
    models = list(dict.fromkeys([*args.models, *(row["model"] for row in earlier_rows)]))
    reports: list[dict] = []

    def record(row: dict, report: dict | None) -> None:
        """Keep one measured row and rewrite both results files (an interrupted sweep keeps what it measured)."""
        rows[(row["model"], row["method"])] = {**row, "run": len(earlier_runs)}
        reports.extend([report] if report else [])
        if report:
            print(json.dumps({k: row[k] for k in ("model", "method", "file_ratio", "top1_lossless", "agreement_jpeg",
                                                  "delta_jpeg")}), flush=True)  # fmt: skip
        run = make_meta(args, reports, argv, load_at_start=load_at_start, seconds=time.perf_counter() - started)
        if not reports and earlier_runs:  # versions of the codec, from the earlier run until this one has its own
            run.update({k: earlier_runs[-1][k] for k in ("nncodec", "nncodec_torch", "nncodec_numpy")})
        meta = {**run, "runs": [*earlier_runs, run]}
        table = ordered_rows(list(rows.values()), models)
        write_json(table, meta, args.out / "nncodec.json")
        write_markdown(table, meta, args.out / "nncodec.md")

    points = sweep_points(args.qps, opt_qps=args.opt_qps, quick=args.quick, use_dq=not args.no_dq)
    for model in args.models:
        checkpoint = args.data_dir / "models" / CHECKPOINTS[model]
        todo = [point for point in points if (model, point.method) not in rows]
        sweep_model(model, checkpoint, data_dir=args.data_dir, work=args.work, points=todo, python=args.python,
                    threads=args.threads, quick=args.quick, on_row=record)  # fmt: skip
    return ordered_rows(list(rows.values()), models)


if __name__ == "__main__":
    main()
