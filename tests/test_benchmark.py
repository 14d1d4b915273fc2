"""Smoke test of the benchmark's quick mode on a tiny model and tiny fake data laid out like ../shared/data."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import tiny_resnet_state_dict

ROOT = Path(__file__).resolve().parents[1]
SEEDS = ROOT / "experiments" / "2026-11-27-resnet20-seeds"  # seeds_table.py and r20_seeds.sh
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(SEEDS))


def _fake_data_dir(root: Path) -> Path:
    (root / "models").mkdir(parents=True)
    (root / "cifar10").mkdir()
    torch.save({"state_dict": tiny_resnet_state_dict()}, root / "models" / "resnet20-12fca82f.th")
    rng = np.random.default_rng(0)
    for name, count in [("test1000_lossless", 40), ("test10k_jpeg", 60), ("train2000_lossless", 40), ("train5000_jpeg", 40)]:
        x = rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
        np.savez(root / "cifar10" / f"{name}.npz", x=x, y=rng.integers(0, 10, count))
    return root


def test_quick_benchmark_writes_json_markdown_and_plot(tmp_path):
    import run

    data_dir = _fake_data_dir(tmp_path / "data")
    out = tmp_path / "out"
    run.main(["--data-dir", str(data_dir), "--mode", "quick", "--models", "resnet20", "--out", str(out),
              "--threads", "1", "--recipes", "decoupled", "decoupled+int8"])  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    methods = [row["method"] for row in results["rows"]]
    assert "original fp32" in methods and "int8 per-channel" in methods and "fp16" in methods
    assert "int3 group 32" in methods and "int3 per-channel" in methods
    int3 = next(row for row in results["rows"] if row["method"] == "int3 per-channel")
    int4 = next(row for row in results["rows"] if row["method"] == "int4 per-channel")
    assert int3["bytes"] < int4["bytes"]
    ours = [row for row in results["rows"] if row["kind"] == "ours"]
    assert len(ours) == 2
    for row in ours:
        assert 0 < row["file_ratio"] < 2 and row["bytes"] > 0 and 0 <= row["agreement_jpeg"] <= 100
        assert row["expand_onnx_seconds"] > 0 and row["fit_peak_rss_mb"] > 0
    assert "quantize" in ours[1]["stage_seconds"] and "fit" in ours[1]["stage_seconds"]
    # The compressed row is compared with the float predictor it starts from, not only with the original.
    vs_float = ours[1]["vs_float"]
    assert 0 <= vs_float["agreement_jpeg"] <= 100 and 0 <= vs_float["agreement_lossless"] <= 100
    assert "vs_float" not in ours[0]
    assert results["meta"]["threads"] == 1 and results["meta"]["mode"] == "quick"
    assert (out / "results.md").read_text().count("\n|") >= 6

    only_ours = tmp_path / "only-ours"
    run.main(["--data-dir", str(data_dir), "--mode", "quick", "--models", "resnet20", "--out", str(only_ours),
              "--threads", "1", "--recipes", "recon", "--no-baselines"])  # fmt: skip
    rows = json.loads((only_ours / "results.json").read_text())["rows"]
    assert [row["method"] for row in rows][0] == "original fp32" and len(rows) == 2
    assert rows[1]["method"].startswith("nern recon")

    import merge

    merged = tmp_path / "merged"
    merge.main([str(out), str(only_ours), "--out", str(merged)])
    methods = [row["method"] for row in json.loads((merged / "results.json").read_text())["rows"]]
    assert methods.count("original fp32") == 1 and any(m.startswith("nern recon") for m in methods)

    rerun = tmp_path / "rerun"  # a re-run of one row replaces it in place with --replace, and only then
    rerun.mkdir()
    result = json.loads((out / "results.json").read_text())
    changed = next(row for row in result["rows"] if row["method"].startswith("nern decoupled+int8"))
    changed["top1_lossless"] = -1.0
    (rerun / "results.json").write_text(json.dumps(result))
    for flags, expected in (([], ours[1]["top1_lossless"]), (["--replace"], -1.0)):
        merge.main([str(out), str(rerun), *flags, "--out", str(merged)])
        rows = json.loads((merged / "results.json").read_text())["rows"]
        assert [row["method"] for row in rows] == [row["method"] for row in results["rows"]]
        assert next(row for row in rows if row["method"] == changed["method"])["top1_lossless"] == expected


def test_merge_keeps_each_models_rows_together_and_flattens_merged_runs(tmp_path):
    import merge

    def run_folder(name: str, rows: list[tuple[str, str]]) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        meta = {"date": "2026-11-26", "device": "CPU", "threads": 1, "torch": "x", "commit": "0" * 40, "seed": 0,
                "mode": "full", "command": f"run {name}"}  # fmt: skip
        table = [{"model": model, "method": method, "kind": "ours", "bytes": 1, "file_ratio": 0.5, "top1_lossless": 90.0,
                  "delta_jpeg": 0.0, "agreement_jpeg": 95.0} for model, method in rows]  # fmt: skip
        (folder / "results.json").write_text(json.dumps({"meta": meta, "rows": table}))
        return folder

    merge.main([str(run_folder("a", [("r20", "x")])), str(run_folder("b", [("r56", "x")])),
                "--out", str(tmp_path / "table")])  # fmt: skip
    merge.main([str(tmp_path / "table"), str(run_folder("c", [("r56", "y"), ("r20", "y")])),
                "--out", str(tmp_path / "table")])  # fmt: skip
    result = json.loads((tmp_path / "table" / "results.json").read_text())
    assert [(row["model"], row["method"]) for row in result["rows"]] == [
        ("r20", "x"), ("r20", "y"), ("r56", "x"), ("r56", "y")
    ]
    assert [run["command"] for run in result["meta"]["runs"]] == ["run a", "run b", "run c"]
    assert result["meta"]["threads"] == "1/1/1"


def test_the_long_recipes_run_only_when_named():
    import run

    table = {recipe.name for recipe in run.recipes_for("full", "resnet20")}
    assert "decoupled" in table and not any(name.startswith("decoupled, long") for name in table)
    named = run.recipes_for("full", "resnet20", ["decoupled, long", "decoupled, long, fmd"])
    stages = {recipe.name: dict(recipe.stages) for recipe in named}
    assert set(stages) == {"decoupled, long", "decoupled, long, fmd"}
    assert stages["decoupled, long, fmd"]["fit"]["iters"] == stages["decoupled, long"]["fit"]["iters"] == 12000
    assert stages["decoupled, long, fmd"]["distill"]["fmd_weight"] == 1.0
    assert "fmd_weight" not in stages["decoupled, long"]["distill"]


def test_seeds_table_marks_the_selected_seed_of_each_pair(tmp_path):
    import subprocess

    import seeds_table

    def write(name, data):
        (tmp_path / name).write_text(json.dumps(data))

    for seed, agreement in [(4, 97.4), (5, 97.3)]:
        write(f"fit_s{seed}.json", {"seconds": 400.2})
        write(f"kd_s{seed}.json", {"seconds": 1190.0, "selected_step": 1400, "holdout_agreement": agreement})
        for test, delta in [("test1000_lossless", -0.1), ("test10k_jpeg", 0.25)]:
            compare = {"agreement": 95.5, "delta_top1": delta, "delta_top1_ci95": 0.4, "count": 1000,
                       "only_first_correct": 2, "only_second_correct": 2}  # fmt: skip
            write(f"eval_kd_s{seed}_{test}.json", {"top1": 91.4, "compare": compare})
    write("select_s4_s5.json", {"selected": str(tmp_path / "kd_s4.nern")})
    lines = seeds_table.rows(tmp_path)
    assert len(lines) == 4
    assert lines[2].startswith("| **4** | 400 + 1190 | 1,400 | 97.40% | 91.4 (-0.1 +- 0.40) | 95.5% | 95.50% (+0.25")
    assert lines[3].startswith("| 5 |") and lines[3].endswith("| 94% |")  # 4 discordant images: 15 of 16 pass
    script = SEEDS / "r20_seeds.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0


def test_chance_without_loss_counts_the_ways_the_discordant_images_can_fall():
    import seeds_table

    def chance(first, second, count=1000):
        return seeds_table.chance_without_loss(
            {"only_first_correct": first, "only_second_correct": second, "count": count}
        )

    assert chance(0, 0) == 1.0  # identical predictions: the delta is 0
    assert chance(1, 3) == chance(2, 2) == 15 / 16  # only 4 wins of 4 for the original (a -0.4 delta) fail
    assert chance(10, 10) == pytest.approx(0.7483, abs=1e-4)  # 20 images: the original may win by at most 3
    assert chance(10, 10, count=10000) == 1.0  # 0.3 points of 10,000 images is 30: 20 discordant cannot fail
    assert chance(50, 50) < chance(10, 10)  # more disagreement, less chance to confirm a fine target


def test_seeds_table_pairs_two_arms_of_the_same_fits_and_judges_the_target(tmp_path):
    import seeds_table

    def write(name, data):
        (tmp_path / name).write_text(json.dumps(data))

    # seed 1: plain misses the agreement part, the average meets both; seed 2: the average misses top-1 at -0.4
    figures = {(1, "kd"): (-0.1, 94.9), (1, "ema"): (-0.3, 95.3), (2, "kd"): (0.0, 95.5), (2, "ema"): (-0.4, 95.9)}
    for (seed, arm), (delta, agreement) in figures.items():
        write(f"{arm}_s{seed}.json", {"selected_step": 3000, "holdout_agreement": 98.0})
        write(f"eval_{arm}_s{seed}_test1000_lossless.json", {"compare": {"delta_top1": delta}})
        write(f"eval_{arm}_s{seed}_test10k_jpeg.json", {"compare": {"agreement": agreement}})
    write("kd_s3.json", {"selected_step": 1, "holdout_agreement": 1.0})  # no second arm: left out
    lines = seeds_table.paired_rows(tmp_path, "kd", "ema")
    assert len(lines) == 5
    assert lines[2] == "| 1 | 3,000 / 3,000 | 98.00 / 98.00% | -0.1 / -0.3 | 94.90 / 95.30% | +0.40 | no / yes |"
    assert lines[3].endswith("| 95.50 / 95.90% | +0.40 | yes / no |")
    assert lines[4].startswith("| mean of 2 | | 98.00 / 98.00% | -0.05 / -0.35 | 95.20 / 95.60% | +0.40 |")
