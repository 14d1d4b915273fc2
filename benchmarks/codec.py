"""The codec of ``nerncompress compress`` against the standard codec (MPEG NNC as NNCodec implements it), in one run.

    python benchmarks/codec.py --data-dir ../shared/data                       # the committed results
    python benchmarks/codec.py --data-dir ../shared/data --quick               # a smoke run, minutes
    python benchmarks/codec.py --data-dir ../shared/data --nncodec-python .nncodec-venv/bin/python

For each model:

* **NNCodec**, data-free, a sweep of qp with and without ``opt_qp`` (its virtualenv: ``benchmarks/nncodec/setup.sh``),
  run in this process's run when ``--nncodec-python`` is given, else the rows of ``results/nncodec.json`` (the same
  evaluation code, an earlier run: the table says which);
* **ours, data-free** (no image): ``code_checkpoint`` at a sweep of steps, BatchNorm-read sensitivities;
* **ours, with training images**: ``code_checkpoint`` to a target agreement on held-out training images; every
  candidate of its search is written and evaluated, so one run draws the curve, and the file it chose is marked;
* **ours, hybrid**: the same with a predictor offered to every conv (``--hidden``), the per-layer choice recorded.

Every file is evaluated with the same code path as benchmarks/run.py (``Evaluator``): top-1 on test1000_lossless,
agreement and paired delta against the original on test10k_jpeg. The test images are used for these final figures
only; the search sees training images alone.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_common import cpu_device, git_commit, load_test_sets, save_fp32_reference  # noqa: E402
from run import Evaluator  # noqa: E402

from nerncompress import AccuracyGate, CodeConfig, code_checkpoint, load_checkpoint, load_data  # noqa: E402
from nerncompress.artifact import save_artifact  # noqa: E402
from nerncompress.data import concat_data, preset_stats  # noqa: E402
from nerncompress.models import resolve_arch  # noqa: E402
from nerncompress.nern import expand_state_dict  # noqa: E402

CHECKPOINTS = {"resnet20": "resnet20-12fca82f.th", "resnet56": "resnet56-4bfd9763.th"}
DATA_FREE_STEPS = (0.006, 0.009, 0.013, 0.018, 0.025, 0.035, 0.05)
NNCODEC_POINTS = [(qp, opt) for qp in (-36, -32, -30, -28, -26, -24, -22, -20) for opt in (False, True)]


def training_data(data_dir: Path):
    return concat_data(
        load_data(data_dir / "cifar10" / "train2000_lossless.npz", split="train"),
        load_data(data_dir / "cifar10" / "train5000_jpeg.npz", split="train"),
    )


def row_for(model: str, method: str, kind: str, path: Path, reference_bytes: int, figures: dict, **extra) -> dict:
    size = path.stat().st_size
    return {"model": model, "method": method, "kind": kind, "bytes": size, "file_ratio": round(size / reference_bytes, 5),
            **figures, **extra}  # fmt: skip


def nncodec_rows(model: str, args, evaluate_state, reference_bytes: int, work: Path) -> list[dict]:
    """NNCodec's points: measured now when its virtualenv is given, else read from results/nncodec.json."""
    if args.nncodec_python is None:
        saved = json.loads((ROOT / "benchmarks" / "results" / "nncodec.json").read_text())
        rows = [dict(row, source="results/nncodec.json") for row in saved["rows"]
                if row["model"] == model and row["kind"] == "baseline"]  # fmt: skip
        return rows
    from safetensors.torch import load_file

    import nncodec_sweep

    rows = []
    for qp, opt in NNCODEC_POINTS[: 2 if args.quick else None]:
        point = nncodec_sweep.Point(qp, opt)
        report, decoded = nncodec_sweep.run_codec(Path(args.nncodec_python), args.data_dir / "models" /
                                                  CHECKPOINTS[model], point, work, args.threads)  # fmt: skip
        row = nncodec_sweep.build_row(model, point, report, evaluate_state(load_file(str(decoded))), reference_bytes)
        rows.append(dict(row, source="this run"))
        print(json.dumps({k: row[k] for k in ("method", "file_ratio", "agreement_jpeg")}), flush=True)
    return rows


def benchmark_model(model: str, args) -> list[dict]:
    torch.set_num_threads(args.threads)
    work = args.out / "work" / "codec"
    work.mkdir(parents=True, exist_ok=True)
    state_dict = load_checkpoint(args.data_dir / "models" / CHECKPOINTS[model])
    arch = resolve_arch(None, state_dict)
    mean, std = preset_stats(arch.preset)
    lossless, jpeg = load_test_sets(args.data_dir, quick=args.quick)
    evaluate_state = Evaluator(arch, lossless, jpeg, mean, std)
    reference_bytes = save_fp32_reference(state_dict, work / f"{model}.fp32.safetensors")
    rows = [{"model": model, "method": "original fp32", "kind": "reference", "bytes": reference_bytes,
             "file_ratio": 1.0, **evaluate_state(state_dict)}]  # fmt: skip
    rows += nncodec_rows(model, args, evaluate_state, reference_bytes, work)

    def measure(nern, name: str, method: str, kind: str, **extra) -> dict:
        path = work / f"{model}.{name}.nern"
        save_artifact(nern, path)
        row = row_for(model, method, kind, path, reference_bytes, evaluate_state(expand_state_dict(nern, device="cpu")),
                      **extra)  # fmt: skip
        print(json.dumps({k: row[k] for k in ("method", "file_ratio", "agreement_jpeg")}), flush=True)
        return row

    for step in DATA_FREE_STEPS[::3] if args.quick else DATA_FREE_STEPS:
        started = time.perf_counter()
        nern, _ = code_checkpoint(state_dict, CodeConfig(step=step, allocation="batchnorm"), arch=arch, device="cpu")
        seconds = time.perf_counter() - started
        rows.append(measure(nern, f"free{step}", f"ours data-free, step {step}", "ours-data-free",
                            compress_seconds=round(seconds, 1)))  # fmt: skip

    data = training_data(args.data_dir)
    quick = {"stages": 1, "stage_iters": 5, "search_steps": 3} if args.quick else {}
    for label, hidden in (("", 0), *((("hybrid ", args.hidden),) if args.hidden else ())):
        candidates: list[tuple[Any, dict]] = []
        config = CodeConfig(hidden=hidden, seed=args.seed, **quick)
        started = time.perf_counter()
        nern, record = code_checkpoint(
            state_dict, config, arch=arch, data=data, target=AccuracyGate(min_agreement=args.target), device="cpu",
            on_candidate=lambda found, described: candidates.append((found, described)),
        )  # fmt: skip
        seconds = time.perf_counter() - started
        chosen = record["chosen"]
        kind = "ours-hybrid" if hidden else "ours-data"
        for index, (found, described) in enumerate(candidates):
            is_chosen = described == chosen
            if not is_chosen and (hidden or args.quick):
                continue  # the hybrid and quick runs: the chosen file only
            method = (f"ours {label}with data, step {described['coarseness']:.4g}, "
                      f"{described['finetuned_steps']} fine-tuning steps")  # fmt: skip
            rows.append(measure(found, f"{label.strip() or 'data'}{index}", method, kind, chosen=is_chosen,
                                holdout_agreement=described["agreement"],
                                compress_seconds=round(seconds, 1) if is_chosen else None,
                                hybrid=record.get("hybrid") if is_chosen else None))  # fmt: skip
    return rows


def nncodec_ratio_at(rows: list[dict], model: str, agreement: float) -> float | None:
    """The file ratio NNCodec needs for ``agreement`` (JPEG): linear between the neighbouring points of each of
    its two curves (with and without opt_qp), the smaller of the two; None outside the measured range."""
    best = None
    for opt in (False, True):
        points = sorted((r["agreement_jpeg"], r["file_ratio"]) for r in rows
                        if r["model"] == model and r["kind"] == "baseline" and bool(r.get("opt_qp")) == opt)  # fmt: skip
        for (a0, r0), (a1, r1) in zip(points, points[1:]):
            if a0 <= agreement <= a1 and a1 > a0:
                ratio = r0 + (r1 - r0) * (agreement - a0) / (a1 - a0)
                best = ratio if best is None else min(best, ratio)
    return best


def write_results(model: str, rows: list[dict], meta: dict, out: Path) -> None:
    """Replace ``model``'s rows and run record in results/codec.{json,md,png}, keeping the other models'."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "codec.json"
    saved = json.loads(path.read_text()) if path.exists() else {"runs": {}, "rows": []}
    runs = {**saved.get("runs", {}), model: meta}
    rows = [row for row in saved["rows"] if row["model"] != model] + rows
    path.write_text(json.dumps({"runs": runs, "rows": rows}, indent=1) + "\n")
    render(runs, rows, out)


def render(runs: dict[str, dict], rows: list[dict], out: Path) -> None:
    """results/codec.md and codec.png from every model's run record and rows."""
    run_lines = [f"- {name}: measured {m['date']} on {m['device']}, {m['threads']} threads, torch {m['torch']}, "
                 f"commit {m['commit'][:10]}, seed {m['seed']}, target {m['target']}% agreement on held-out "
                 f"training images, mode {m['mode']}, {m['wall_seconds'] / 60:.0f} min. Command: `{m['command']}`."
                 for name, m in runs.items()]  # fmt: skip
    lines = [
        "# The codec of `nerncompress compress` against NNCodec",
        "",
        *run_lines,
        "",
        "File ratio = bytes of the file, everything counted / bytes of the fp32 safetensors state_dict. Top-1 on "
        "test1000_lossless; agreement and paired delta against the original on test10k_jpeg (final figures only: "
        "the search sees training images alone). NNCodec rows: `source` says whether they ran in this run or come "
        "from results/nncodec.json (the same evaluation code).",
        "",
        "*vs NNCodec*: this file's bytes over the bytes NNCodec needs for the same JPEG agreement (linear between "
        "its neighbouring points, the better of its two curves; blank outside its measured range).",
        "",
        "| model | method | file ratio | bytes | top-1 lossless | agreement (jpeg) | delta (jpeg, paired) | held-out agreement | compress s | vs NNCodec | source |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        mark = " **(chosen)**" if row.get("chosen") else ""
        held = row.get("holdout_agreement")
        seconds = row.get("compress_seconds")
        needed = None if not row["kind"].startswith("ours") else nncodec_ratio_at(rows, row["model"], row["agreement_jpeg"])
        versus = "" if needed is None else f"{row['file_ratio'] / needed:.2f}x"
        lines.append(
            f"| {row['model']} | {row['method']}{mark} | {100 * row['file_ratio']:.2f}% | {row['bytes']:,} | "
            f"{row['top1_lossless']:.1f} | {row['agreement_jpeg']:.2f}% | {row['delta_jpeg']:+.2f} | "
            f"{'' if held is None else f'{held:.2f}%'} | {'' if seconds is None else seconds} | {versus} | "
            f"{row.get('source', '')} |"
        )
    (out / "codec.md").write_text("\n".join(lines) + "\n")
    plot(rows, out / "codec.png")


def plot(rows: list[dict], path: Path) -> None:
    """Agreement with the original (JPEG test images) against file ratio, per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(row["model"] for row in rows))
    figure, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    styles = {
        "NNCodec": dict(marker="o", color="tab:gray"), "NNCodec opt_qp": dict(marker="s", color="black"),
        "ours-data-free": dict(marker="^", color="tab:blue"), "ours-data": dict(marker="D", color="tab:orange"),
        "ours-data, fine-tuned": dict(marker="D", color="tab:red"),
        "ours-hybrid": dict(marker="*", color="tab:green", markersize=12),
    }  # fmt: skip
    for axis, model in zip(axes[0], models):
        mine = [row for row in rows if row["model"] == model]
        groups = {
            "NNCodec": [r for r in mine if r["kind"] == "baseline" and not r.get("opt_qp")],
            "NNCodec opt_qp": [r for r in mine if r["kind"] == "baseline" and r.get("opt_qp")],
            "ours-data-free": [r for r in mine if r["kind"] == "ours-data-free"],
            "ours-data": [r for r in mine if r["kind"] == "ours-data" and " 0 fine-tuning" in r["method"]],
            "ours-data, fine-tuned": [r for r in mine if r["kind"] == "ours-data" and " 0 fine-tuning" not in r["method"]],
            "ours-hybrid": [r for r in mine if r["kind"] == "ours-hybrid"],
        }
        for name, group in groups.items():
            group = sorted(group, key=lambda r: r["file_ratio"])
            if group:
                axis.plot([100 * r["file_ratio"] for r in group], [r["agreement_jpeg"] for r in group], label=name,
                          linestyle="-" if name != "ours-hybrid" else "none", **styles[name])  # fmt: skip
        for row in mine:
            if row.get("chosen"):
                axis.annotate("chosen", (100 * row["file_ratio"], row["agreement_jpeg"]), textcoords="offset points",
                              xytext=(5, -12), fontsize=8)  # fmt: skip
        axis.set_title(model)
        axis.set_xlabel("file ratio, % of fp32 bytes")
        axis.set_ylabel("top-1 agreement with the original, % (JPEG test images)")
        axis.set_ylim(80, 100.5)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--models", nargs="+", default=list(CHECKPOINTS), choices=list(CHECKPOINTS))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target", type=float, default=95.0, help="agreement on held-out training images, percent")
    parser.add_argument("--hidden", type=int, default=64, help="predictor width of the hybrid rows (0: none)")
    parser.add_argument("--nncodec-python", default=None, help="python of the NNCodec virtualenv: run it in this run")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--render", action="store_true", help="rewrite codec.md and codec.png from codec.json")
    args = parser.parse_args(argv)
    if args.render:
        saved = json.loads((args.out / "codec.json").read_text())
        render(saved["runs"], saved["rows"], args.out)
        return
    commit = git_commit()  # the code measured: read before the run, which may outlast a checkout's changes
    for model in args.models:  # one model at a time, so that a long run keeps what it has measured
        started = time.perf_counter()
        rows = benchmark_model(model, args)
        meta = {
            "date": date.today().isoformat(), "device": cpu_device(), "threads": args.threads,
            "torch": torch.__version__, "commit": commit, "seed": args.seed, "target": args.target,
            "mode": "quick" if args.quick else "full", "command": " ".join(["python", *sys.argv]),
            "wall_seconds": round(time.perf_counter() - started, 1),
        }  # fmt: skip
        write_results(model, rows, meta, args.out)

if __name__ == "__main__":
    main()
