"""Coverage of the data-free codec on large torchvision models: what share of the parameters is coded, and whether
the .nern comes back exactly (strict state_dict load, bit for bit) and as a verified ONNX model.

    OMP_NUM_THREADS=1 python benchmarks/format_coverage.py --threads 1            # the committed results
    OMP_NUM_THREADS=1 python benchmarks/format_coverage.py --models resnet50 --no-onnx   # a quicker look

For each model (torchvision ViT-B/16, VGG-11, ResNet-50 at random init, ``torch.manual_seed(seed)``; nothing is
downloaded), in a work folder:

1. build: the model, its state_dict saved with ``torch.save`` (the checkpoint) and as a plain fp32 safetensors file
   (the denominator of the file ratio, ``bench_common.save_fp32_reference``).
2. code: ``load_checkpoint`` + ``code_checkpoint`` without data, at the default step (``CodeConfig()``), in this
   process; the Nern's own tensors (``expand_state_dict``) are kept as the reference of the round trip.
3. save: ``save_artifact`` to ``<model>.nern``.
4. inspect: ``nerncompress inspect <model>.nern --json`` (a subprocess): shares of parameters represented / coded /
   raw, bytes by group (checked against ``artifact.byte_breakdown``), every raw tensor with its size.
5. expand: ``nerncompress expand <model>.nern -o <model>.safetensors --threads N --json`` (a subprocess), then the
   round trip: the file loaded into the plain torchvision model with ``load_state_dict(strict=True)``, and every
   tensor equal, bit for bit and in dtype, to the tensors the Nern expanded to before it was saved.
6. onnx: ``nerncompress expand <model>.nern -o <model>.onnx --threads N --json`` (a subprocess), which exports the
   expanded model and checks it against PyTorch with onnxruntime (64 random inputs); a failure or a time-out
   (``--onnx-timeout``) is recorded with its message and measured time, never skipped silently.

Every phase is timed (wall seconds) with the thread count stated; the peak memory (RSS) of each subprocess and of
this process is recorded.
Pass criterion (the issue's): >= 95% of the parameters represented or coded, the strict round trip, ONNX parity.

A ViT's classification head is initialised to zeros by torchvision: its logits are then the constant bias, and an
ONNX parity check on it compares constants. ``--head-init`` (default on) redraws an all-zero ``heads.head.weight``
with a seeded N(0, 0.02) so that the check compares real logits; it is stated in the results.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_common import cpu_device, git_commit, save_fp32_reference  # noqa: E402

from nerncompress import CodeConfig, code_checkpoint, load_checkpoint  # noqa: E402
from nerncompress.artifact import byte_breakdown, load_artifact, save_artifact, stream_bytes  # noqa: E402
from nerncompress.coding.config import DEFAULT_STEP  # noqa: E402
from nerncompress.nern import expand_state_dict  # noqa: E402

MODELS = {"vit_b_16": "ViT-B/16", "vgg11": "VGG-11", "resnet50": "ResNet-50"}
PASS_SHARE = 0.95


def _cli(*args: str, threads: int, timeout: float | None = None) -> dict:
    """Run ``nerncompress ARGS`` in a subprocess with ``threads`` (torch and OpenMP): its JSON, wall seconds, peak
    RSS (MiB: the child's VmHWM, read every 0.1 s; ``wait4``'s ru_maxrss would include this process's own RSS,
    inherited across fork and exec) and, on failure or time-out, the error."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "nerncompress", *args]
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, text=True, env=env, cwd=ROOT)
        timed_out, peak = False, 0
        while True:
            peak = max(peak, _high_water_mib(process.pid))
            pid, status, _ = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if timeout is not None and time.perf_counter() - started > timeout:
                process.kill()
                timed_out = True
                pid, status, _ = os.wait4(process.pid, 0)
                break
            time.sleep(0.1)
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
        seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    result: dict = {"command": " ".join(["nerncompress", *args]), "seconds": round(seconds, 2),
                    "peak_rss_mib": peak, "returncode": process.returncode,
                    "timed_out": timed_out}  # fmt: skip
    if timed_out:
        result["error"] = f"stopped after {seconds:.0f} s (--onnx-timeout)"
    elif process.returncode != 0:
        text = (stderr.strip() or stdout.strip()).splitlines()
        result["error"] = " ".join(text[-3:])[:800] if text else f"exit code {process.returncode}"
    else:
        result["json"] = json.loads(stdout)
    return result


def _high_water_mib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024)
    except OSError:
        pass
    return 0


def build_model(name: str, seed: int, head_init: bool) -> tuple[torch.nn.Module, list[str]]:
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.get_model(name, weights=None).eval()
    changed = []
    if head_init:
        generator = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for key, value in model.state_dict().items():
                if key.startswith("heads.head.weight") and not value.any():
                    value.copy_(torch.randn(value.shape, generator=generator) * 0.02)
                    changed.append(key)
    return model, changed


def run_model(name: str, args: argparse.Namespace) -> dict:
    work = args.work / name
    work.mkdir(parents=True, exist_ok=True)
    row: dict = {"model": name, "label": MODELS[name], "threads": args.threads, "seed": args.seed}
    times: dict[str, float] = {}

    started = time.perf_counter()
    model, changed = build_model(name, args.seed, args.head_init)
    state_dict = model.state_dict()
    checkpoint, reference = work / f"{name}.pth", work / f"{name}.fp32.safetensors"
    torch.save(state_dict, checkpoint)
    row["fp32_bytes"] = save_fp32_reference(state_dict, reference)
    row["parameters"] = sum(p.numel() for p in model.parameters())
    row["state_values"] = sum(v.numel() for v in state_dict.values())
    row["head_redrawn"] = changed
    times["build"] = time.perf_counter() - started

    started = time.perf_counter()
    loaded = load_checkpoint(checkpoint)
    config = CodeConfig()
    nern, record = code_checkpoint(loaded, config, device="cpu", source={"file": checkpoint.name})
    times["code"] = time.perf_counter() - started
    row["step"] = record["chosen"]["coarseness"]
    row["arch"] = nern.arch.name
    before = expand_state_dict(nern, device="cpu")  # the Nern's own tensors, before any file

    started = time.perf_counter()
    artifact = work / f"{name}.nern"
    save_artifact(nern, artifact)
    times["save"] = time.perf_counter() - started
    row["nern_bytes"] = artifact.stat().st_size
    row["ratio"] = row["nern_bytes"] / row["fp32_bytes"]
    del nern, loaded

    inspected = _cli("inspect", str(artifact), "--json", threads=args.threads)
    times["inspect"] = inspected["seconds"]
    row["inspect_peak_rss_mib"] = inspected["peak_rss_mib"]
    report = inspected.get("json") or {}
    breakdown = byte_breakdown(artifact)
    row["bytes_by_group"] = breakdown
    row["bytes_by_group_matches_inspect"] = report.get("bytes") == breakdown
    row["streams"] = len(stream_bytes(artifact))
    shares = report.get("shares", {})
    row["shares"] = shares
    row["represented_or_coded"] = shares.get("represented", 0.0) + shares.get("coded", 0.0)
    row["raw_tensors"] = [
        {"name": t["name"], "values": t["values"], "bytes": t["bytes"], "reason": t["reason"],
         "kind": _raw_kind(state_dict[t["name"]])}
        for t in report.get("tensors", []) if t["storage"] == "raw"
    ]  # fmt: skip
    row["raw_values"] = sum(t["values"] for t in row["raw_tensors"])
    row["inspect_warnings"] = report.get("warnings", [])

    expanded_path = work / f"{name}.safetensors"
    expanded_path.unlink(missing_ok=True)
    expanded = _cli("expand", str(artifact), "-o", str(expanded_path), "--threads", str(args.threads), "--json",
                    threads=args.threads)  # fmt: skip
    times["expand_safetensors"] = expanded["seconds"]
    row["expand"] = {k: v for k, v in expanded.items() if k != "json"}
    started = time.perf_counter()
    row["round_trip"] = round_trip(name, expanded_path, before, state_dict) if "json" in expanded else {
        "strict_load": False, "bit_identical": False, "error": expanded.get("error")}
    times["round_trip_check"] = time.perf_counter() - started
    del before

    if args.onnx:
        onnx_path = work / f"{name}.onnx"
        onnx_path.unlink(missing_ok=True)
        exported = _cli("expand", str(artifact), "-o", str(onnx_path), "--threads", str(args.threads), "--json",
                        threads=args.threads, timeout=args.onnx_timeout)  # fmt: skip
        times["expand_onnx"] = exported["seconds"]
        onnx = (exported.get("json") or {}).get("onnx") or {}
        row["onnx"] = {
            **{k: v for k, v in exported.items() if k != "json"},
            "passed": "json" in exported and onnx.get("top1_agreement") == 100.0,
            **{k: onnx.get(k) for k in ("opset", "bytes", "max_abs_diff", "top1_agreement", "inputs", "provider",
                                        "exporter")},
            "export_and_check_seconds": onnx.get("seconds"),
        }  # fmt: skip
        if not args.keep_onnx:
            onnx_path.unlink(missing_ok=True)
    else:
        row["onnx"] = {"passed": None, "error": "not run (--no-onnx)"}
    row["seconds"] = {k: round(v, 2) for k, v in times.items()}
    row["self_peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    row["passed"] = bool(
        row["represented_or_coded"] >= PASS_SHARE and row["round_trip"]["strict_load"]
        and row["round_trip"]["bit_identical"] and row["onnx"]["passed"]
    )  # fmt: skip
    return row


def _raw_kind(value: torch.Tensor) -> str:
    """Why the codec leaves a tensor raw (``coding.steps.coded_keys``): an integer buffer, a single value, a
    constant (e.g. BatchNorm at initialisation), or none of these (a coverage gap)."""
    if not value.is_floating_point():
        return "integer buffer"
    if value.numel() < 2:
        return "single value"
    if bool((value == value.reshape(-1)[0]).all()):
        return "constant"
    return "other"


def round_trip(name: str, path: Path, before: dict[str, torch.Tensor], original: dict[str, torch.Tensor]) -> dict:
    """The expanded file into the plain torchvision model (strict), and bit for bit against the Nern's tensors."""
    import safetensors.torch
    import torchvision

    after = safetensors.torch.load_file(str(path))
    plain = torchvision.models.get_model(name, weights=None)
    result: dict = {"keys_equal": list(after) == list(before) or set(after) == set(before)}
    try:
        plain.load_state_dict(after, strict=True)
        result["strict_load"] = True
    except RuntimeError as exc:
        result["strict_load"] = False
        result["error"] = str(exc).splitlines()[0][:500]
    mismatched = [k for k in before if k not in after or after[k].dtype != before[k].dtype
                  or after[k].shape != before[k].shape or not torch.equal(after[k], before[k])]  # fmt: skip
    result["bit_identical"] = not mismatched and set(after) == set(before)
    result["mismatched"] = mismatched[:10]
    # how far the coded weights are from the original (context, not a criterion): RMS error relative to the
    # weights' RMS, over all floating-point values
    error = total = 0.0
    for key, value in original.items():
        if value.is_floating_point():
            error += float((after[key].double() - value.double()).pow(2).sum())
            total += float(value.double().pow(2).sum())
    result["relative_rms_error"] = (error / total) ** 0.5 if total else 0.0
    return result


def render(meta: dict, rows: list[dict]) -> str:
    lines = [
        "# Data-free codec coverage: ViT-B/16, VGG-11, ResNet-50 (torchvision, random init)",
        "",
        f"Measured {meta['date']} on {meta['device']}, {meta['threads']} thread(s) (torch.set_num_threads and "
        f"OMP_NUM_THREADS, subprocesses too), torch {meta['torch']}, torchvision {meta['torchvision']}, "
        f"onnxruntime {meta['onnxruntime']}, commit {meta['commit'][:10]}. Command: `{meta['command']}`. "
        f"Total wall time {meta['wall_seconds']:.0f} s.",
        "",
        f"Models at random init (`torch.manual_seed({meta['seed']})`, weights=None); data-free codec at its default "
        f"step ({meta['default_step']}). Pass: >= {100 * PASS_SHARE:.0f}% of the state_dict's values represented or "
        "coded, strict round trip (expanded .safetensors loaded with `load_state_dict(strict=True)` into the plain "
        "torchvision model, every tensor bit-identical in value and dtype to the Nern's own expansion before the "
        "save), ONNX parity (`nerncompress expand -o x.onnx`: onnxruntime against PyTorch on 64 random inputs).",
        "",
        "| model | params | fp32 bytes | .nern bytes | ratio | represented | coded | raw | strict load | "
        "bit-identical | ONNX max abs diff | ONNX top-1 agreement | passed |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        s, o, t = r["shares"], r["onnx"], r["round_trip"]
        onnx_diff = "" if o.get("max_abs_diff") is None else f"{o['max_abs_diff']:.3g}"
        onnx_agree = (f"{o['top1_agreement']:.2f}% of {o['inputs']}" if o.get("top1_agreement") is not None
                      else f"FAILED: {o.get('error', '')}")  # fmt: skip
        lines.append(
            f"| {r['label']} | {r['parameters']:,} | {r['fp32_bytes']:,} | {r['nern_bytes']:,} | "
            f"{100 * r['ratio']:.2f}% | {100 * s.get('represented', 0):.2f}% | {100 * s.get('coded', 0):.2f}% | "
            f"{100 * s.get('raw', 0):.3f}% | {'yes' if t['strict_load'] else 'NO'} | "
            f"{'yes' if t['bit_identical'] else 'NO'} | {onnx_diff} | {onnx_agree} | {'yes' if r['passed'] else 'NO'} |"
        )
    lines += [
        "",
        f"Wall seconds per phase ({meta['threads']} thread(s); inspect and expand are `nerncompress` subprocesses, "
        "their time includes the interpreter's start and imports):",
        "",
        "| model | build + save checkpoint | code (`code_checkpoint`) | save .nern | inspect | expand .safetensors | "
        "round-trip check | expand .onnx (export + check) | peak RSS (MiB): inspect / expand .safetensors / "
        "expand .onnx | peak RSS of this process so far (MiB) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        t = r["seconds"]
        onnx = "not run" if "expand_onnx" not in t else f"{t['expand_onnx']:.1f}"
        if r["onnx"].get("timed_out"):
            onnx += " (timed out)"
        lines.append(
            f"| {r['label']} | {t['build']:.1f} | {t['code']:.1f} | {t['save']:.1f} | {t['inspect']:.1f} | "
            f"{t['expand_safetensors']:.1f} | {t['round_trip_check']:.1f} | {onnx} | "
            f"{r['inspect_peak_rss_mib']} / {r['expand'].get('peak_rss_mib')} / {r['onnx'].get('peak_rss_mib', '')} | "
            f"{r['self_peak_rss_mib']} |"
        )
    lines += ["", "Bytes by group (`artifact.byte_breakdown`, equal to `inspect --json`'s `bytes`):", "",
              "| model | header | codes | raw | predictor | positions | other | equal to inspect |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in rows:
        b = r["bytes_by_group"]
        lines.append(f"| {r['label']} | {b['header']:,} | {b['codes']:,} | {b['raw']:,} | {b['predictor']:,} | "
                     f"{b['positions']:,} | {b['other']:,} | {'yes' if r['bytes_by_group_matches_inspect'] else 'NO'} |")  # fmt: skip
    lines += ["", "Tensors stored raw, by why the codec leaves them raw (tensors, values, bytes in the file); "
              "every tensor of kind `other` (a coverage gap) is named:", ""]  # fmt: skip
    for r in rows:
        kinds: dict[str, list[int]] = {}
        for t in r["raw_tensors"]:
            totals = kinds.setdefault(t["kind"], [0, 0, 0])
            totals[0], totals[1], totals[2] = totals[0] + 1, totals[1] + t["values"], totals[2] + t["bytes"]
        parts = [f"{kind}: {n} tensors, {v:,} values, {b:,} B" for kind, (n, v, b) in sorted(kinds.items())]
        others = [f"`{t['name']}` ({t['values']:,}{': ' + t['reason'] if t['reason'] else ''})"
                  for t in r["raw_tensors"] if t["kind"] == "other"]  # fmt: skip
        lines.append(f"- {r['label']}: {'; '.join(parts) or 'none'}" + (f"; other: {', '.join(others)}" if others else ""))
    lines += ["", "Notes:", ""]
    for r in rows:
        if r["head_redrawn"]:
            lines.append(f"- {r['label']}: torchvision initialises {', '.join(r['head_redrawn'])} to zeros; it was "
                         "redrawn from N(0, 0.02) (seeded) so that the ONNX check compares non-constant logits.")  # fmt: skip
        lines.append(f"- {r['label']}: weights after the round trip differ from the originals by a relative RMS "
                     f"error of {r['round_trip']['relative_rms_error']:.3g} (the codec's quantisation at step "
                     f"{r['step']}; random-init weights are small, so the default step is coarse for them).")  # fmt: skip
        for key in ("error",):
            for phase in ("expand", "onnx"):
                if r[phase].get(key):
                    lines.append(f"- {r['label']}: {phase} failed: {r[phase][key]}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--onnx", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--onnx-timeout", type=float, default=1800.0, help="seconds before an ONNX export is stopped")
    parser.add_argument("--head-init", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--keep-onnx", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "format_coverage")
    parser.add_argument("--render", action="store_true", help="only rewrite the .md from the .json in --out")
    args = parser.parse_args(argv)
    if args.render:
        results = json.loads((args.out / "format_coverage.json").read_text())
        (args.out / "format_coverage.md").write_text(render(results["meta"], results["rows"]))
        return
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    rows = []
    for name in args.models:
        rows.append(run_model(name, args))
        r = rows[-1]
        print(json.dumps({"model": name, "ratio": round(r["ratio"], 4), "shares": r["shares"],
                          "round_trip": r["round_trip"]["bit_identical"], "onnx": r["onnx"].get("passed"),
                          "seconds": r["seconds"]}), flush=True)  # fmt: skip
    import onnxruntime
    import torchvision

    meta = {
        "date": date.today().isoformat(), "device": cpu_device(), "threads": args.threads, "torch": torch.__version__,
        "torchvision": torchvision.__version__, "onnxruntime": onnxruntime.__version__, "commit": git_commit(),
        "seed": args.seed, "default_step": CodeConfig().step or DEFAULT_STEP,
        "command": " ".join(["OMP_NUM_THREADS=" + str(args.threads), "python", *sys.argv]),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "format_coverage.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    (args.out / "format_coverage.md").write_text(render(meta, rows))


if __name__ == "__main__":
    main()
