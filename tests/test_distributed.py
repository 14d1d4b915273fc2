"""Data-parallel distillation (``distill --nproc N``, torchrun): two gloo processes on the CPU write the artifact
one process writes for the same global batch and seed, within float rounding; rank 0 alone writes and prints;
errors end every rank with one line; a resume file is read by every rank.

Each two-process run spawns two interpreters that import torch (about 10 s on two shared cores): the comparison
and the usage error run by default, the rest with the slow tests (``-m slow``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import assert_one_line_error, invoke, tiny_resnet_state_dict, write_random_images

from nerncompress.artifact import load_artifact, save_artifact
from nerncompress.distillation import DistillConfig
from nerncompress.errors import UsageError
from nerncompress.jobs import run_distill
from nerncompress.resume import Checkpointer, resume_path
from nerncompress.training import FitConfig, fit

LR = 1e-3
ITERS = 6
# Batches of 8 on two processes: the 6 probes of each batch (--probe-fraction 0.75) fall in both shards.
DISTILL = ["--iters", str(ITERS), "--batch-size", "8", "--lr", str(LR), "--holdout", "0.25", "--eval-every", "2",
           "--device", "cpu", "--seed", "2", "--holdout-seed", "2", "--threads", "1", "--mix", "cutmix",
           "--probe-fraction", "0.75", "--ema", "0.5"]  # fmt: skip
LAUNCH_TIMEOUT = 120  # seconds: a hang fails the test instead of the CI job


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("ddp")
    checkpoint = folder / "tiny.pt"
    torch.save(tiny_resnet_state_dict(), checkpoint)
    nern = folder / "tiny.nern"
    save_artifact(fit(tiny_resnet_state_dict(), FitConfig(hidden=8, iters=150, batch_size=256), device="cpu"), nern)
    data = folder / "images.npz"
    write_random_images(data, 40, seed=1)
    return {"checkpoint": checkpoint, "nern": nern, "data": data}


def assert_same_predictor(one: Path, other: Path) -> None:
    """The same predictor within float rounding, as Adam sees it.

    The gradients of one process and of two agree to about 1e-7 relative (measured), but Adam divides every
    gradient by its own running magnitude: a weight whose gradient is near zero (around Adam's eps) can move by up
    to ``lr`` per step in either direction on rounding alone; and a probe moves each pixel by the sign of a
    gradient, which rounding flips where that gradient is near zero. So: nearly every weight agrees to 1e-4 (most
    to 1e-6), and none differs by more than Adam's largest move.
    """
    a, b = load_artifact(one), load_artifact(other)
    first, second = a.predictor.state_dict(), b.predictor.state_dict()
    difference = torch.cat([(first[key] - second[key]).abs().flatten() for key in first])
    assert float((difference <= 1e-4).float().mean()) >= 0.99, difference.sort().values[-20:]
    assert float(difference.max()) <= 2 * LR * ITERS
    record_a, record_b = a.history[-1], b.history[-1]
    assert record_a["selected_step"] == record_b["selected_step"]
    assert record_a["holdout_agreement"] == pytest.approx(record_b["holdout_agreement"])
    # The last step's loss carries those moves: 1e-3 relative apart in one environment, within it in another.
    assert record_a["final_loss"] == pytest.approx(record_b["final_loss"], rel=5e-3)
    assert record_a["config"] == record_b["config"]


def test_two_processes_write_the_one_process_artifact(ws, tmp_path):
    argv = ["distill", ws["nern"], "--teacher", ws["checkpoint"], "--data", ws["data"], *DISTILL, "--json"]
    one = invoke(*argv, "-o", tmp_path / "one.nern")
    assert one.exit_code == 0, one.stderr
    two = invoke(*argv, "--nproc", "2", "-o", tmp_path / "two.nern")
    assert two.exit_code == 0, two.stderr
    summary = json.loads(two.stdout)  # exactly one JSON document: rank 0's
    assert summary["processes"] == 2 and json.loads(one.stdout)["processes"] == 1
    assert summary["threads"] == 1
    assert "distill: step 6/6" in two.stderr  # rank 0's progress, forwarded to the launching process
    assert "Traceback" not in two.stderr
    assert not resume_path(tmp_path / "two.nern").exists()
    assert_same_predictor(tmp_path / "one.nern", tmp_path / "two.nern")


def test_a_batch_that_does_not_divide_by_nproc_is_a_usage_error(ws, tmp_path):
    argv = ["distill", ws["nern"], "--teacher", ws["checkpoint"], "--data", ws["data"], "--device", "cpu"]
    result = invoke(*argv, "--batch-size", "9", "--nproc", "2", "-o", tmp_path / "x.nern")
    assert_one_line_error(result, 2)
    assert "--batch-size must be divisible by the number of processes (2), got 9" in result.stderr
    with pytest.raises(UsageError, match=r"^batch_size must be divisible by the number of processes \(2\), got 9"):
        run_distill(
            ws["nern"], teacher=ws["checkpoint"], data=[str(ws["data"])], config=DistillConfig(batch_size=9),
            output=tmp_path / "y.nern", nproc=2,
        )  # fmt: skip
    assert not (tmp_path / "x.nern").exists() and not (tmp_path / "y.nern").exists()


@pytest.mark.slow
def test_an_error_on_the_workers_ends_every_rank_with_one_line(ws, tmp_path):
    """Raised after the launch (a resume file of another run): one line, its exit code, no hang, no traceback."""
    output = tmp_path / "out.nern"
    argv = ["distill", ws["nern"], "--teacher", ws["checkpoint"], "--data", ws["data"], *DISTILL]
    resume_path(output).write_bytes(b"not a resume file")
    result = invoke(*argv, "--nproc", "2", "--resume", "-o", output)
    assert_one_line_error(result, 1)  # a CheckpointError, raised on both ranks, reported once
    assert "resume file" in result.stderr.strip().splitlines()[-1]
    assert not output.exists()


@pytest.mark.slow
def test_a_run_saved_by_one_process_resumes_on_two(ws, tmp_path, monkeypatch):
    """Rank 0 writes the snapshots, every rank reads them: one process is interrupted, two finish the run."""
    argv = ["distill", ws["nern"], "--teacher", ws["checkpoint"], "--data", ws["data"], *DISTILL]
    reference = tmp_path / "reference.nern"
    assert invoke(*argv, "-o", reference).exit_code == 0
    output = tmp_path / "out.nern"
    original = Checkpointer.step_done
    calls = {"n": 0}

    def step_done(self, step, total, capture):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, step, total, capture)

    with monkeypatch.context() as patch:
        patch.setattr(Checkpointer, "step_done", step_done)
        stopped = invoke(*argv, "-o", output)
    assert stopped.exit_code == 130, stopped.stderr
    assert resume_path(output).is_file()
    resumed = invoke(*argv, "--nproc", "2", "--resume", "-o", output)
    assert resumed.exit_code == 0, resumed.stderr
    assert "resuming from" in resumed.stderr
    assert not resume_path(output).exists()  # rank 0 removed it once the output was written
    assert_same_predictor(reference, output)


@pytest.mark.slow
def test_torchrun_runs_the_command_on_every_rank_and_rank_0_alone_prints(ws, tmp_path):
    output = tmp_path / "torchrun.nern"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "nerncompress", "distill", str(ws["nern"]), "--teacher", str(ws["checkpoint"]), "--data",
        str(ws["data"]), *DISTILL, "--json", "-o", str(output),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT, check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["processes"] == 2  # one document: the other rank printed nothing
    reference = tmp_path / "one.nern"
    assert invoke("distill", ws["nern"], "--teacher", ws["checkpoint"], "--data", ws["data"], *DISTILL,
                  "-o", reference).exit_code == 0  # fmt: skip
    assert_same_predictor(reference, output)
