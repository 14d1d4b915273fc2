"""benchmarks/nncodec_sweep.py without NNCodec: its pure parts with a fake codec report, and its whole loop with a
fake codec script on a tiny model. The real codec runs only where its virtualenv and ../shared/data exist."""

import json
import os
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SHARED_DATA, requires_shared_data
from helpers import tiny_resnet_state_dict

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import nncodec_sweep as sweep  # noqa: E402

FAKE_REPORT = {"bytes": 1234, "encode_seconds": 0.5, "decode_seconds": 0.25, "threads": 2,
               "versions": {"nncodec": "2.1.3", "torch": "2.14.1", "numpy": "1.26.4"}}  # fmt: skip
FAKE_FIGURES = {"top1_lossless": 91.1, "top1_jpeg": 80.5, "delta_jpeg": -0.53, "agreement_jpeg": 95.14,
                "agreement_lossless": 97.0}  # fmt: skip


def test_points_cover_each_qp_with_and_without_opt_qp():
    points = sweep.sweep_points([-30, -28])
    assert [(p.qp, p.opt_qp) for p in points] == [(-30, False), (-30, True), (-28, False), (-28, True)]
    points = sweep.sweep_points([-34, -26], opt_qps=[-28, -34])  # in the order given: a coarse grid can go first
    assert [(p.qp, p.opt_qp) for p in points] == [(-34, False), (-34, True), (-26, False), (-28, True)]
    assert all(p.use_dq for p in points)
    quick = sweep.sweep_points(sweep.DEFAULT_QPS, quick=True)
    assert len(quick) == 2 and {p.opt_qp for p in quick} == {False, True}
    assert sweep.DEFAULT_QPS[0] == -38 and sweep.DEFAULT_QPS[-1] == -18


def test_method_names_and_file_names():
    assert sweep.Point(-28, True).method == "NNCodec qp=-28 opt_qp dq"
    assert sweep.Point(-34, False).method == "NNCodec qp=-34 dq"
    assert sweep.Point(-34, False, use_dq=False).method == "NNCodec qp=-34"
    assert sweep.Point(-28, True).slug == "qp-28_optqp_dq"


def test_codec_command_passes_the_setting():
    command = sweep.codec_command(Path("py"), Path("m.th"), sweep.Point(-26, True), Path("b.nnc"), Path("d.st"), 2)
    assert command[:3] == ["py", str(sweep.CODEC_SCRIPT), "m.th"]
    assert command[command.index("--qp") + 1] == "-26"
    assert "--opt-qp" in command and "--use-dq" in command and command[-2:] == ["--threads", "2"]
    plain = sweep.codec_command(Path("py"), Path("m.th"), sweep.Point(-26, False, False), Path("b"), Path("d"), 1)
    assert "--opt-qp" not in plain and "--no-use-dq" in plain


def test_codec_output_is_the_last_json_line():
    stdout = "some chatter\n{\"old\": 1}\n" + json.dumps(FAKE_REPORT) + "\n"
    assert sweep.parse_codec_output(stdout) == FAKE_REPORT
    with pytest.raises(RuntimeError, match="no JSON"):
        sweep.parse_codec_output("nothing here\n")
    with pytest.raises(RuntimeError, match="lacks"):
        sweep.parse_codec_output('{"bytes": 3}\n')


def test_ratio_and_rows():
    assert sweep.file_ratio(1234, 10_000) == 0.1234
    row = sweep.build_row("resnet20", sweep.Point(-28, True), FAKE_REPORT, FAKE_FIGURES, reference_bytes=10_000)
    assert row["method"] == "NNCodec qp=-28 opt_qp dq" and row["qp"] == -28 and row["opt_qp"] is True
    assert row["bytes"] == 1234 and row["file_ratio"] == 0.1234
    assert (row["top1_lossless"], row["delta_jpeg"], row["agreement_jpeg"]) == (91.1, -0.53, 95.14)
    assert (row["encode_seconds"], row["decode_seconds"], row["threads"]) == (0.5, 0.25, 2)
    reference = sweep.reference_row("resnet20", 10_000, {**FAKE_FIGURES, "delta_jpeg": 0.0, "agreement_jpeg": 100.0})
    assert reference["file_ratio"] == 1.0 and reference["bytes"] == 10_000 and reference["qp"] is None


def test_arguments():
    args = sweep.parse_args([])
    assert args.models == ["resnet20", "resnet56"] and args.qps == sweep.DEFAULT_QPS and not args.quick
    assert args.out == ROOT / "benchmarks" / "results"
    args = sweep.parse_args(["--models", "resnet56", "--qps", "-30", "-20", "--threads", "1", "--quick", "--out", "x"])
    assert args.models == ["resnet56"] and args.qps == [-30, -20] and args.threads == 1 and args.quick
    assert args.out == Path("x")
    with pytest.raises(SystemExit):
        sweep.parse_args(["--models", "vgg"])


def test_writers(tmp_path):
    rows = [
        sweep.reference_row("resnet20", 10_000, {**FAKE_FIGURES, "delta_jpeg": 0.0, "agreement_jpeg": 100.0}),
        sweep.build_row("resnet20", sweep.Point(-28, True), FAKE_REPORT, FAKE_FIGURES, 10_000),
    ]
    args = sweep.parse_args(["--threads", "2"])
    meta = sweep.make_meta(args, [FAKE_REPORT], ["--threads", "2"])
    assert meta["nncodec"] == "2.1.3" and meta["threads"] == 2 and meta["device"].startswith("CPU")
    assert meta["command"] == "nncodec_sweep.py --threads 2" and meta["mode"] == "full"
    assert len(meta["load_average_end"]) == 3
    sweep.write_json(rows, meta, tmp_path / "nncodec.json")
    sweep.write_markdown(rows, meta, tmp_path / "nncodec.md")
    assert json.loads((tmp_path / "nncodec.json").read_text()) == {"meta": meta, "rows": rows}
    table = (tmp_path / "nncodec.md").read_text()
    assert "| resnet20 | NNCodec qp=-28 opt_qp dq | -28 | yes | 1,234 | 12.34% | 91.1 | 95.14% | -0.53 |" in table
    assert "| resnet20 | original fp32 |  |  | 10,000 | 100.00% |" in table
    assert "2 threads" in table and "nncodec 2.1.3" in table


FAKE_CODEC = '''
import argparse, json, sys
import torch
from safetensors.torch import save_file
p = argparse.ArgumentParser()
p.add_argument("script"); p.add_argument("checkpoint"); p.add_argument("--qp", type=int)
p.add_argument("--use-dq", action="store_true"); p.add_argument("--no-use-dq", action="store_true")
p.add_argument("--opt-qp", action="store_true"); p.add_argument("--bitstream"); p.add_argument("--decoded")
p.add_argument("--threads", type=int)
a = p.parse_args()
sd = torch.load(a.checkpoint, weights_only=True)["state_dict"]
step = 2.0 ** (a.qp / 4)
save_file({k: (v / step).round() * step for k, v in sd.items()}, a.decoded)
open(a.bitstream, "wb").write(b"x" * (1000 + a.qp))
print("encoder chatter")
print(json.dumps({"bytes": 1000 + a.qp, "encode_seconds": 0.1, "decode_seconds": 0.1, "threads": a.threads,
                  "versions": {"nncodec": "fake", "torch": torch.__version__, "numpy": "fake"}}))
'''


def test_main_with_a_fake_codec(tmp_path):
    """The whole loop (reference row, codec per point, evaluation of the decoded weights, both writers) on a tiny
    model and random images laid out like ../shared/data, with a stand-in for codec.py."""
    data_dir = tmp_path / "data"
    (data_dir / "models").mkdir(parents=True)
    (data_dir / "cifar10").mkdir()
    torch.save({"state_dict": tiny_resnet_state_dict()}, data_dir / "models" / sweep.CHECKPOINTS["resnet20"])
    rng = np.random.default_rng(0)
    for name, count in [("test1000_lossless", 30), ("test10k_jpeg", 40)]:
        np.savez(data_dir / "cifar10" / f"{name}.npz", x=rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8),
                 y=rng.integers(0, 10, count))  # fmt: skip
    fake_python = tmp_path / "fake-python"
    (tmp_path / "fake_codec.py").write_text(FAKE_CODEC)
    fake_python.write_text(f"#!/bin/sh\nexec {sys.executable} {tmp_path / 'fake_codec.py'} \"$@\"\n")
    fake_python.chmod(fake_python.stat().st_mode | stat.S_IEXEC)
    out = tmp_path / "out"
    rows = sweep.main(["--data-dir", str(data_dir), "--models", "resnet20", "--qps", "-40", "-10", "--threads", "1",
                       "--out", str(out), "--work", str(tmp_path / "work"), "--python", str(fake_python)])  # fmt: skip
    assert [row["method"] for row in rows] == [
        "original fp32", "NNCodec qp=-40 dq", "NNCodec qp=-10 dq", "NNCodec qp=-40 opt_qp dq", "NNCodec qp=-10 opt_qp dq"
    ]  # fmt: skip
    assert {row["run"] for row in rows} == {0}
    reference, fine, coarse = rows[0], rows[1], rows[2]
    assert reference["agreement_jpeg"] == 100.0 and reference["delta_jpeg"] == 0.0
    assert fine["bytes"] == 960 and fine["file_ratio"] == round(960 / reference["bytes"], 5)
    assert fine["agreement_jpeg"] >= coarse["agreement_jpeg"]  # a step of 2^-10 keeps the function, 2^-2.5 does not
    assert fine["agreement_jpeg"] == 100.0
    saved = json.loads((out / "nncodec.json").read_text())
    assert saved["rows"] == rows and saved["meta"]["nncodec"] == "fake" and saved["meta"]["threads"] == 1
    assert (out / "nncodec.md").read_text().count("\n| resnet20 |") == 5
    assert saved["meta"]["runs"][0]["points"] == 4

    # --resume keeps those rows and runs only the missing points; the table stays in qp order.
    more = sweep.main(["--data-dir", str(data_dir), "--models", "resnet20", "--qps", "-20", "-40", "--opt-qps", "-40",
                       "--threads", "1", "--out", str(out), "--work", str(tmp_path / "work"), "--python", str(fake_python),
                       "--resume"])  # fmt: skip
    assert [row["method"] for row in more][:4] == ["original fp32", "NNCodec qp=-40 dq", "NNCodec qp=-20 dq", "NNCodec qp=-10 dq"]
    assert [row["run"] for row in more] == [1, 0, 1, 0, 0, 0]
    assert more[1] == rows[1]
    saved = json.loads((out / "nncodec.json").read_text())
    assert [run["points"] for run in saved["meta"]["runs"]] == [4, 1]
    assert "1. " in (out / "nncodec.md").read_text()


CODEC_PYTHON = Path(os.environ.get("NNCODEC_PYTHON", sweep.DEFAULT_CODEC_PYTHON))


@pytest.mark.integration
@pytest.mark.slow
@requires_shared_data
@pytest.mark.skipif(not CODEC_PYTHON.exists(), reason=f"no NNCodec virtualenv at {CODEC_PYTHON} (benchmarks/nncodec/setup.sh)")
def test_real_codec_quick(tmp_path):
    rows = sweep.main(["--data-dir", str(SHARED_DATA), "--models", "resnet20", "--quick", "--threads", "1",
                       "--out", str(tmp_path), "--work", str(tmp_path / "work")])  # fmt: skip
    assert rows[0]["bytes"] == 1_092_560  # the fp32 safetensors state_dict of ResNet-20
    for row in rows[1:]:
        assert 0.05 < row["file_ratio"] < 0.25 and row["agreement_jpeg"] > 85
