"""Format 2 against format 1 on the benchmark's recipes: the same Nern saved both ways.

    python benchmarks/format_v2.py --data-dir ../shared/data --scale 0.25     # the committed results
    python benchmarks/format_v2.py --data-dir ../shared/data --quick          # a smoke run

Each recipe of benchmarks/run.py's core rows (recon, decoupled, decoupled+int8, decoupled+prune50,
decoupled+prune50+int8) runs with its step counts scaled by ``--scale`` (the format does not depend on them; the
files are smaller than the table's by nothing but how long they trained). Each Nern is written in format 1
(``save_v1``) and format 2 (``save_artifact``), both expanded and compared bit for bit, and measured: bytes by
group, positions against sum(log2(N_l!))/8, the structure (header), the predictor's integer streams against their
fixed width; then evaluated (benchmarks/run.py's ``Evaluator``) and placed against NNCodec's curve from
results/nncodec.json: the bytes NNCodec needs for the same JPEG agreement (interpolated on its better curve).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from datetime import date
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_common import cpu_device, git_commit, load_test_sets  # noqa: E402
from run import Evaluator, _run_recipe, recipes_for  # noqa: E402

from nerncompress import load_checkpoint  # noqa: E402
from nerncompress.artifact import load_artifact, save_artifact, stream_bytes  # noqa: E402
from nerncompress.artifact.v1 import save_v1  # noqa: E402
from nerncompress.data import preset_stats  # noqa: E402
from nerncompress.models import resolve_arch  # noqa: E402
from nerncompress.nern import expand_state_dict, fp32_reference_bytes  # noqa: E402

CHECKPOINTS = {"resnet20": "resnet20-12fca82f.th", "resnet56": "resnet56-4bfd9763.th"}
CORE = ["recon", "decoupled", "decoupled+int8", "decoupled+prune50", "decoupled+prune50+int8"]
HIDDEN = {"resnet20": 180, "resnet56": 280}
STEP_KEYS = ("iters", "qat_iters", "kd_iters", "finetune_iters")


def scaled(stages: list, scale: float) -> list:
    """The recipe's stages with every step count scaled (at least 10 steps)."""
    return [(stage, {k: max(10, int(v * scale)) if k in STEP_KEYS else v for k, v in options.items()})
            for stage, options in stages]  # fmt: skip


def nncodec_bytes_at(model: str, agreement: float) -> float | None:
    """Bytes NNCodec needs for ``agreement`` (JPEG test images), interpolated on the lower envelope of its points."""
    rows = json.loads((ROOT / "benchmarks" / "results" / "nncodec.json").read_text())["rows"]
    points = sorted((row["agreement_jpeg"], row["bytes"]) for row in rows if row["model"] == model
                    and row["kind"] == "baseline")  # fmt: skip
    best = []  # for each agreement, the fewest bytes reaching at least it
    for index, (level, _) in enumerate(points):
        best.append((level, min(size for _, size in points[index:])))
    for (low, low_bytes), (high, high_bytes) in zip(best, best[1:]):
        if low <= agreement <= high:
            share = 0.0 if high == low else (agreement - low) / (high - low)
            return low_bytes + share * (high_bytes - low_bytes)
    return None


def measure(model: str, recipe: str, artifact: Path, work: Path, evaluate_state) -> dict:
    nern = load_artifact(artifact)
    old, new = work / f"{artifact.stem}.v1.nern", work / f"{artifact.stem}.v2.nern"
    save_v1(nern, old)
    save_artifact(nern, new)
    first, second = expand_state_dict(load_artifact(old), device="cpu"), expand_state_dict(load_artifact(new), device="cpu")
    identical = all(torch.equal(first[key], second[key]) for key in first)
    streams_old, streams_new = stream_bytes(old), stream_bytes(new)
    bound = sum(math.lgamma(e.num_kernels + 1) / math.log(2) / 8 for e in nern.layers) if nern.permute == "crossfilter" else None
    positions = sum(size for name, size in streams_new.items() if name.startswith("positions/"))
    fixed = {name: size for name, size in streams_old.items() if name.startswith("predictor/") and name.endswith(".q")}
    coded = {name[: -len(".q")]: streams_new.get(name[: -len(".q")]) for name in fixed}
    figures = evaluate_state(second)
    reference = fp32_reference_bytes(nern)
    size_old, size_new = old.stat().st_size, new.stat().st_size
    nncodec = nncodec_bytes_at(model, figures["agreement_jpeg"])
    return {
        "model": model, "recipe": recipe, "bit_identical": identical,
        "v1_bytes": size_old, "v2_bytes": size_new, "v2_over_v1": round(size_new / size_old, 4),
        "v1_file_ratio": round(size_old / reference, 5), "v2_file_ratio": round(size_new / reference, 5),
        "v1_header": streams_old["header"], "v2_header": streams_new["header"],
        "positions_bytes": positions, "positions_bound_bytes": None if bound is None else round(bound),
        "positions_over_bound": None if not bound else round(positions / bound, 4),
        "predictor_int_streams": {name: {"fixed": size, "coded": coded[name[: -len(".q")]]} for name, size in fixed.items()},
        "groups_v1": _groups(streams_old), "groups_v2": _groups(streams_new),
        **figures,
        "nncodec_bytes_same_agreement": None if nncodec is None else round(nncodec),
        "v1_over_nncodec": None if nncodec is None else round(size_old / nncodec, 3),
        "v2_over_nncodec": None if nncodec is None else round(size_new / nncodec, 3),
    }  # fmt: skip


def _groups(streams: dict[str, int]) -> dict[str, int]:
    groups: dict[str, int] = {}
    for name, size in streams.items():
        group = name.split("/", 1)[0]
        groups[group] = groups.get(group, 0) + size
    return groups


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--models", nargs="+", default=list(CHECKPOINTS), choices=list(CHECKPOINTS))
    parser.add_argument("--scale", type=float, default=0.25, help="share of run.py's full step counts")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    rows = []
    for model in args.models:
        work = args.out / "work" / "format_v2"
        work.mkdir(parents=True, exist_ok=True)
        checkpoint = args.data_dir / "models" / CHECKPOINTS[model]
        state_dict = load_checkpoint(checkpoint)
        arch = resolve_arch(None, state_dict)
        mean, std = preset_stats(arch.preset)
        evaluate_state = Evaluator(arch, *load_test_sets(args.data_dir, quick=args.quick), mean, std)
        evaluate_state(state_dict)  # the original first: the reference of the paired figures
        for recipe in recipes_for("quick" if args.quick else "full", model, only=CORE):
            artifact = work / f"{model}.{recipe.name.replace('+', '_')}.nern"
            _run_recipe({
                "checkpoint": str(checkpoint), "stages": recipe.stages if args.quick else scaled(recipe.stages, args.scale),
                "hidden": HIDDEN[model], "seed": 0, "threads": args.threads, "artifact": str(artifact),
                "data_dir": str(args.data_dir), "teacher": None, "start_from": None,
            })  # fmt: skip
            rows.append(measure(model, recipe.name, artifact, work, evaluate_state))
            print(json.dumps({k: rows[-1][k] for k in ("model", "recipe", "v2_over_v1", "v2_file_ratio", "agreement_jpeg",
                                                       "v2_over_nncodec")}), flush=True)  # fmt: skip
    meta = {
        "date": date.today().isoformat(), "device": cpu_device(), "threads": args.threads, "torch": torch.__version__,
        "commit": git_commit(), "scale": args.scale, "mode": "quick" if args.quick else "full",
        "command": " ".join(["python", *sys.argv]), "wall_seconds": round(time.perf_counter() - started, 1),
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "format_v2.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    lines = [
        "# Format 2 against format 1: the same Nern saved both ways",
        "",
        f"Measured {meta['date']} on {meta['device']}, {meta['threads']} threads, torch {meta['torch']}, commit "
        f"{meta['commit'][:10]}; recipes of benchmarks/run.py at {args.scale:g} of their full step counts. "
        f"Command: `{meta['command']}`.",
        "",
        "| model | recipe | bit-identical | format 1 | format 2 | 2 / 1 | header 1 -> 2 | positions / log2(N!) | "
        "agreement (jpeg) | NNCodec at that agreement | format 1 / NNCodec | format 2 / NNCodec |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        nnc = r["nncodec_bytes_same_agreement"]
        positions = "" if r["positions_over_bound"] is None else f"{r['positions_over_bound']:.4f}"
        lines.append(
            f"| {r['model']} | {r['recipe']} | {'yes' if r['bit_identical'] else 'NO'} | {r['v1_bytes']:,} "
            f"({100 * r['v1_file_ratio']:.2f}%) | {r['v2_bytes']:,} ({100 * r['v2_file_ratio']:.2f}%) | "
            f"{r['v2_over_v1']:.3f} | {r['v1_header']:,} -> {r['v2_header']:,} | "
            f"{positions} | "
            f"{r['agreement_jpeg']:.2f}% | {'' if nnc is None else f'{nnc:,}'} | "
            f"{'' if r['v1_over_nncodec'] is None else r['v1_over_nncodec']} | "
            f"{'' if r['v2_over_nncodec'] is None else r['v2_over_nncodec']} |"
        )
    (args.out / "format_v2.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
