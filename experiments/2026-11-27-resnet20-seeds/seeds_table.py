"""Tables of a ``r20_seeds.sh`` run (or of ``run_ema.sh``'s files, evaluated the same way).

``rows``: one row per seed of one arm (``kd`` or ``ema`` files), the selected seed of each pair in bold.
``paired_rows``: two arms distilled from the same fits, side by side per seed, with the mean of each column.

Usage (from the repository root):
    python experiments/2026-11-27-resnet20-seeds/seeds_table.py OUT [ARM]
    python experiments/2026-11-27-resnet20-seeds/seeds_table.py OUT ARM_A ARM_B
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

TOP1_LIMIT = 0.3  # issue 3's ResNet-20 target: top-1 within 0.3 points of the original's on test1000


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _seeds(out: Path, arm: str) -> list[int]:
    matches = (re.fullmatch(rf"{arm}_s(\d+)\.json", path.name) for path in out.glob(f"{arm}_s*.json"))
    return sorted(int(match.group(1)) for match in matches if match)


def _evals(out: Path, arm: str, seed: int) -> tuple[dict, dict]:
    """The ``eval --compare --json`` results of one file on test1000_lossless and test10k_jpeg."""
    return (
        _load(out / f"eval_{arm}_s{seed}_test1000_lossless.json"),
        _load(out / f"eval_{arm}_s{seed}_test10k_jpeg.json"),
    )


def chance_without_loss(compare: dict, limit: float = TOP1_LIMIT) -> float:
    """The chance that a file with *no* true top-1 loss shows a delta of at least ``-limit`` points on these images.

    Only the images where exactly one of the two models is right move the delta. If the compressed model were as
    accurate as the original, each of those ``n`` images would be the original's win with probability 1/2, so the
    original's surplus of wins is ``n - 2k`` with ``k ~ Binomial(n, 1/2)``; the delta is that surplus over the image
    count, negated. A chance well under 1 says the set cannot confirm a target this fine for such a file.
    """
    n = compare["only_first_correct"] + compare["only_second_correct"]
    allowed = limit * compare["count"] / 100.0 + 1e-9  # the original may win by at most this many images
    passing = sum(math.comb(n, k) for k in range(n + 1) if n - 2 * k <= allowed)
    return passing / 2**n


def rows(out: Path, arm: str = "kd") -> list[str]:
    selected = {Path(_load(path)["selected"]).name for path in out.glob("select_*.json")}
    lines = [
        "| seed | fit + distill s | KD step kept | held-out agreement | top-1 test1000 (delta) | agreement test1000 |"
        " agreement test10k_jpeg (paired delta) | chance of top-1 within 0.3 without loss |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for seed in _seeds(out, arm):
        fit, kd = _load(out / f"fit_s{seed}.json"), _load(out / f"{arm}_s{seed}.json")
        clean, jpeg = _evals(out, arm, seed)
        c, j = clean["compare"], jpeg["compare"]
        label = f"**{seed}**" if f"{arm}_s{seed}.nern" in selected else str(seed)
        lines.append(
            f"| {label} | {fit['seconds']:.0f} + {kd['seconds']:.0f} | {kd['selected_step']:,} |"
            f" {kd['holdout_agreement']:.2f}% | {clean['top1']:.1f} ({c['delta_top1']:+.1f} +- {c['delta_top1_ci95']:.2f}) |"
            f" {c['agreement']:.1f}% | {j['agreement']:.2f}% ({j['delta_top1']:+.2f} +- {j['delta_top1_ci95']:.2f}) |"
            f" {chance_without_loss(c):.0%} |"
        )
    return lines


def _meets(clean: dict, jpeg: dict) -> bool:
    """Issue 3's ResNet-20 target: top-1 within 0.3 points on test1000, >= 95% agreement on test10k_jpeg."""
    return round(clean["compare"]["delta_top1"], 1) >= -0.3 and jpeg["compare"]["agreement"] >= 95.0


def paired_rows(out: Path, first: str = "kd", second: str = "ema") -> list[str]:
    """Per seed, the two arms' held-out agreement, top-1 delta on test1000 and JPEG agreement, then the means."""
    lines = [
        f"| seed | KD step kept ({first} / {second}) | held-out agreement | top-1 delta test1000 |"
        f" agreement test10k_jpeg | {second} - {first} (JPEG agreement) | target met |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    sums = [0.0] * 7
    seeds = [seed for seed in _seeds(out, first) if seed in _seeds(out, second)]
    for seed in seeds:
        runs = [_load(out / f"{arm}_s{seed}.json") for arm in (first, second)]
        (clean_a, jpeg_a), (clean_b, jpeg_b) = _evals(out, first, seed), _evals(out, second, seed)
        figures = [
            runs[0]["holdout_agreement"], runs[1]["holdout_agreement"],
            clean_a["compare"]["delta_top1"], clean_b["compare"]["delta_top1"],
            jpeg_a["compare"]["agreement"], jpeg_b["compare"]["agreement"],
            jpeg_b["compare"]["agreement"] - jpeg_a["compare"]["agreement"],
        ]  # fmt: skip
        sums = [total + value for total, value in zip(sums, figures)]
        met = ["yes" if _meets(c, j) else "no" for c, j in ((clean_a, jpeg_a), (clean_b, jpeg_b))]
        lines.append(
            f"| {seed} | {runs[0]['selected_step']:,} / {runs[1]['selected_step']:,} |"
            f" {figures[0]:.2f} / {figures[1]:.2f}% | {figures[2]:+.1f} / {figures[3]:+.1f} |"
            f" {figures[4]:.2f} / {figures[5]:.2f}% | {figures[6]:+.2f} | {met[0]} / {met[1]} |"
        )
    if seeds:
        mean = [total / len(seeds) for total in sums]
        lines.append(
            f"| mean of {len(seeds)} | | {mean[0]:.2f} / {mean[1]:.2f}% | {mean[2]:+.2f} / {mean[3]:+.2f} |"
            f" {mean[4]:.2f} / {mean[5]:.2f}% | {mean[6]:+.2f} | |"
        )
    return lines


if __name__ == "__main__":
    arms = sys.argv[2:]
    table = paired_rows(Path(sys.argv[1]), *arms) if len(arms) == 2 else rows(Path(sys.argv[1]), *arms)
    print("\n".join(table))
