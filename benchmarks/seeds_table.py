"""The markdown table of a ``benchmarks/r20_seeds.sh`` run: one row per seed, the selected seed of each pair in bold.

Usage: python benchmarks/seeds_table.py OUT
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def rows(out: Path) -> list[str]:
    selected = {Path(_load(path)["selected"]).name for path in out.glob("select_*.json")}
    lines = [
        "| seed | fit + distill s | KD step kept | held-out agreement | top-1 test1000 (delta) | agreement test1000 |"
        " agreement test10k_jpeg (paired delta) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    seeds = sorted(int(re.fullmatch(r"kd_s(\d+)\.json", p.name).group(1)) for p in out.glob("kd_s*.json"))
    for seed in seeds:
        fit, kd = _load(out / f"fit_s{seed}.json"), _load(out / f"kd_s{seed}.json")
        clean = _load(out / f"eval_kd_s{seed}_test1000_lossless.json")
        jpeg = _load(out / f"eval_kd_s{seed}_test10k_jpeg.json")
        c, j = clean["compare"], jpeg["compare"]
        label = f"**{seed}**" if f"kd_s{seed}.nern" in selected else str(seed)
        lines.append(
            f"| {label} | {fit['seconds']:.0f} + {kd['seconds']:.0f} | {kd['selected_step']:,} |"
            f" {kd['holdout_agreement']:.2f}% | {clean['top1']:.1f} ({c['delta_top1']:+.1f} +- {c['delta_top1_ci95']:.2f}) |"
            f" {c['agreement']:.1f}% | {j['agreement']:.2f}% ({j['delta_top1']:+.2f} +- {j['delta_top1_ci95']:.2f}) |"
        )
    return lines


if __name__ == "__main__":
    print("\n".join(rows(Path(sys.argv[1]))))
