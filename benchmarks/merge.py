"""Merge the results of several benchmark runs (e.g. one per model, run side by side) into one table and plot.

    python benchmarks/merge.py /tmp/bench/r20 /tmp/bench/r56 --out benchmarks/results
    python benchmarks/merge.py /tmp/bench/r20 /tmp/bench/r20-prune-rerun --replace --out benchmarks/results
    python benchmarks/merge.py benchmarks/results /tmp/bench/new-rows --out benchmarks/results   # add rows
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from run import write_results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="output folders of benchmarks/run.py")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--replace", action="store_true",
        help="rows of ours in later runs replace earlier rows of the same model and method, in place (re-runs)",
    )
    parser.add_argument("--note", default="", help="a line printed under the table's header (e.g. machine load)")
    args = parser.parse_args(argv)
    rows, metas, index = [], [], {}
    for folder in args.runs:
        result = json.loads((folder / "results.json").read_text())
        for row in result["rows"]:
            key = (row["model"], row["method"])
            if key not in index:
                index[key] = len(rows)
                rows.append(row)
            elif args.replace and row["kind"] == "ours":  # a re-run row takes the place of the earlier one
                rows[index[key]] = row
            # else: runs of the same model repeat its baselines: keep the first
        metas.extend(result["meta"].get("runs", [result["meta"]]))  # a merged table brings its own runs
    order = {model: i for i, model in reversed(list(enumerate(row["model"] for row in rows)))}
    rows.sort(key=lambda row: order[row["model"]])  # stable: each model's rows together, in their own order
    meta = dict(metas[0])
    meta["runs"] = metas
    meta["threads"] = "/".join(str(m["threads"]) for m in metas)
    meta["command"] = " ; ".join(m["command"] for m in metas)
    meta["note"] = args.note
    write_results(rows, meta, args.out)


if __name__ == "__main__":
    main()
