"""Interrupted runs: SIGINT/SIGTERM save the loop state and exit 130, --resume gives the uninterrupted run's bytes.

Also periodic snapshots (a crash loses at most --checkpoint-every steps) and determinism of the CLI's output.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import invoke, tiny_resnet_state_dict, write_random_images

from nerncompress.artifact import read_metadata, save_artifact
from nerncompress.errors import Interrupted, UsageError
from nerncompress.resume import Checkpointer, read_snapshot, resume_path
from nerncompress import training
from nerncompress.training import FitConfig, fit

ROOT = Path(__file__).resolve().parents[1]
FIT = ["--hidden", "8", "--batch-size", "64", "--device", "cpu", "--seed", "5"]
DISTILL = ["--iters", "9", "--batch-size", "4", "--lr", "0.2", "--holdout", "0.25", "--eval-every", "2",
           "--device", "cpu", "--seed", "2", "--holdout-seed", "2"]  # fmt: skip


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("resume")
    checkpoint = folder / "tiny.pt"
    torch.save(tiny_resnet_state_dict(), checkpoint)
    nern = folder / "tiny.nern"
    save_artifact(fit(tiny_resnet_state_dict(), FitConfig(hidden=8, iters=5, batch_size=64), device="cpu"), nern)
    data = folder / "images.npz"
    write_random_images(data, 24, seed=1)
    return {"checkpoint": checkpoint, "nern": nern, "data": data}


def signal_at(monkeypatch, call: int, signum: int = signal.SIGINT) -> None:
    """Send ``signum`` to this process from inside the ``call``-th ``step_done`` (counted across rounds)."""
    original = Checkpointer.step_done
    calls = {"n": 0}

    def step_done(self, step, total, capture):
        calls["n"] += 1
        if calls["n"] == call:
            # Only with the CLI's handler in place: the default SIGINT handler would stop pytest itself.
            assert signal.getsignal(signum) not in (signal.default_int_handler, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        return original(self, step, total, capture)

    monkeypatch.setattr(Checkpointer, "step_done", step_done)


def interrupted_then_resumed(monkeypatch, argv: list, output: Path, call: int, signum: int) -> bytes:
    """Run ``argv`` with a signal at the ``call``-th step, check the exit, resume, return the output's bytes."""
    with monkeypatch.context() as patch:
        signal_at(patch, call, signum)
        stopped = invoke(*argv, "-o", output)
    name = signal.Signals(signum).name
    assert stopped.exit_code == 130, stopped.stderr
    assert stopped.stdout == ""
    lines = stopped.stderr.strip().splitlines()
    assert lines[-1].startswith(f"Error: interrupted by {name} at step ") and "--resume" in lines[-1]
    assert "Traceback" not in stopped.stderr
    assert not output.exists()
    assert resume_path(output).is_file()
    resumed = invoke(*argv, "-o", output, "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    assert "resuming from" in resumed.stderr
    assert not resume_path(output).exists()  # removed once the output is written
    return output.read_bytes()


# --------------------------------------------------------------------------------------------- byte identity
@pytest.mark.parametrize("reassign", ["0", "4"])
def test_fit_sigint_then_resume_gives_the_uninterrupted_bytes(ws, tmp_path, monkeypatch, reassign):
    # With re-assignment the snapshot must also hold the kernels' positions (moved at steps 4, 8, 12...).
    argv = ["fit", ws["checkpoint"], *FIT, "--iters", "24", "--reassign-every", reassign]
    reference = invoke(*argv, "-o", tmp_path / "reference.nern")
    assert reference.exit_code == 0, reference.stderr
    resumed = interrupted_then_resumed(monkeypatch, argv, tmp_path / "resumed.nern", call=9, signum=signal.SIGINT)
    assert resumed == (tmp_path / "reference.nern").read_bytes()


def test_fit_rounds_sigterm_in_round_two_then_resume_gives_the_same_bytes(ws, tmp_path, monkeypatch):
    # Round two's targets are regenerated from round one's predictor at round one's final positions.
    argv = ["fit", ws["checkpoint"], *FIT, "--iters", "10", "--rounds", "2", "--reassign-every", "2"]
    reference = invoke(*argv, "-o", tmp_path / "reference.nern")
    assert reference.exit_code == 0, reference.stderr
    resumed = interrupted_then_resumed(monkeypatch, argv, tmp_path / "resumed.nern", call=14, signum=signal.SIGTERM)
    assert resumed == (tmp_path / "reference.nern").read_bytes()


def test_fit_nern_scheme_teacher_loop_resumes_to_the_same_bytes(ws, tmp_path, monkeypatch):
    argv = ["fit", ws["checkpoint"], *FIT, "--iters", "6", "--scheme", "nern", "--data", ws["data"]]
    reference = invoke(*argv, "-o", tmp_path / "reference.nern")
    assert reference.exit_code == 0, reference.stderr
    resumed = interrupted_then_resumed(monkeypatch, argv, tmp_path / "resumed.nern", call=3, signum=signal.SIGINT)
    assert resumed == (tmp_path / "reference.nern").read_bytes()


@pytest.mark.parametrize("options", [["--reassign-every", "0"], ["--permute", "infilter"], ["--rounds", "2"]])
def test_resume_takes_the_positions_from_the_snapshot(ws, tmp_path, monkeypatch, options):
    argv = ["fit", ws["checkpoint"], *FIT, "--iters", "8", *options]
    reference = invoke(*argv, "-o", tmp_path / "reference.nern")
    assert reference.exit_code == 0, reference.stderr
    output = tmp_path / "resumed.nern"
    with monkeypatch.context() as patch:
        signal_at(patch, 3 if "--rounds" not in options else 11)
        assert invoke(*argv, "-o", output).exit_code == 130

    def recompute(*args, **kwargs):
        raise AssertionError("a resumed run computed positions again")

    monkeypatch.setattr(training, "compute_positions", recompute)
    resumed = invoke(*argv, "-o", output, "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    assert output.read_bytes() == (tmp_path / "reference.nern").read_bytes()


def test_signal_while_computing_positions_stops_before_the_next_layer(ws, tmp_path, monkeypatch):
    calls = []
    original = training.compute_positions

    def compute_positions(weight, method, *, on_progress=None):
        calls.append(weight.shape)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)  # the CLI's handler only raises a flag: checked at the next report
        return original(weight, method, on_progress=on_progress)

    monkeypatch.setattr(training, "compute_positions", compute_positions)
    output = tmp_path / "x.nern"
    stopped = invoke("fit", ws["checkpoint"], *FIT, "--iters", "4", "-o", output)
    assert stopped.exit_code == 130
    last = stopped.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: interrupted by SIGINT while computing positions"), last
    assert len(calls) == 2  # the second layer finished its block and reported; no third layer was started
    assert not output.exists() and not resume_path(output).exists()


def test_signal_after_the_last_step_stops_before_the_output_is_written(ws, tmp_path, monkeypatch):
    original = training.reconstruction_error

    def reconstruction_error(*args, **kwargs):  # runs after the last step's check
        os.kill(os.getpid(), signal.SIGINT)
        return original(*args, **kwargs)

    monkeypatch.setattr(training, "reconstruction_error", reconstruction_error)
    output = tmp_path / "x.nern"
    stopped = invoke("fit", ws["checkpoint"], *FIT, "--iters", "4", "-o", output)
    assert stopped.exit_code == 130
    last = stopped.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: interrupted by SIGINT after the last step, while measuring"), last
    assert not output.exists()


def test_distill_with_best_so_far_resumes_to_the_same_bytes(ws, tmp_path, monkeypatch):
    argv = ["distill", ws["nern"], "--teacher", ws["checkpoint"], "--data", ws["data"], *DISTILL, "--mix", "none"]
    reference = invoke(*argv, "-o", tmp_path / "reference.nern", "--json")
    assert reference.exit_code == 0, reference.stderr
    # A large step size makes the held-out agreement peak at step 6 (evaluations at 2, 4, 6, 8, 9): stopped after
    # step 7, the run must carry its best-so-far predictor across the interruption to end with the same bytes.
    assert json.loads(reference.stdout)["selected_step"] == 6
    resumed = interrupted_then_resumed(monkeypatch, argv, tmp_path / "resumed.nern", call=7, signum=signal.SIGINT)
    assert resumed == (tmp_path / "reference.nern").read_bytes()


def test_distill_with_a_weight_average_resumes_to_the_same_bytes(ws, tmp_path, monkeypatch):
    argv = ["distill", ws["nern"], "--teacher", ws["checkpoint"], "--data", ws["data"], *DISTILL, "--ema", "0.5"]
    plain = invoke(*argv[:-2], "-o", tmp_path / "plain.nern")
    reference = invoke(*argv, "-o", tmp_path / "reference.nern")
    assert plain.exit_code == 0 and reference.exit_code == 0, reference.stderr
    # The average is part of the loop's state: a resumed run that lost it would score and write other weights.
    resumed = interrupted_then_resumed(monkeypatch, argv, tmp_path / "resumed.nern", call=5, signum=signal.SIGINT)
    assert resumed == (tmp_path / "reference.nern").read_bytes()
    assert resumed != (tmp_path / "plain.nern").read_bytes()


def test_periodic_snapshots_bound_the_loss_of_a_crash(tmp_path, monkeypatch):
    state_dict = tiny_resnet_state_dict()
    config = FitConfig(hidden=8, iters=20, batch_size=64)
    reference = fit(state_dict, config, device="cpu")
    path = tmp_path / "run.resume"
    original = Checkpointer.step_done

    def crash(self, step, total, capture):
        original(self, step, total, capture)
        if step == 13:
            raise RuntimeError("power cut")

    monkeypatch.setattr(Checkpointer, "step_done", crash)
    with pytest.raises(RuntimeError, match="power cut"):
        fit(state_dict, config, device="cpu", checkpointer=Checkpointer(path, every_steps=5, every_seconds=0))
    monkeypatch.setattr(Checkpointer, "step_done", original)
    assert read_snapshot(path).loop.step == 10  # the last periodic snapshot before the crash
    resumed = fit(state_dict, config, device="cpu", checkpointer=Checkpointer(path, resume=True))
    for key, value in reference.predictor.state_dict().items():
        assert torch.equal(value, resumed.predictor.state_dict()[key]), key
    assert resumed.history == reference.history


def test_second_signal_stops_at_once(tmp_path):
    checkpointer = Checkpointer(tmp_path / "x.resume")
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when the tests run as a background job (nohup, cmd &)
    with pytest.raises(Interrupted, match="after the last step"), checkpointer.signals():
        os.kill(os.getpid(), signal.SIGINT)
        assert checkpointer.stop_requested == "SIGINT"
        with pytest.raises(KeyboardInterrupt, match="twice"):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs at the next bytecode boundary
    assert signal.getsignal(signal.SIGINT) is before  # restored, and the pending request ended the block
    assert not (tmp_path / "x.resume").exists()


def test_interrupted_is_a_keyboard_interrupt():
    assert issubclass(Interrupted, KeyboardInterrupt)


# ----------------------------------------------------------------------------------------------- bad resumes
def test_resume_of_a_different_run_is_a_usage_error(ws, tmp_path, monkeypatch):
    argv = ["fit", ws["checkpoint"], *FIT, "--iters", "12", "-o", tmp_path / "x.nern"]
    with monkeypatch.context() as patch:
        signal_at(patch, 4)
        assert invoke(*argv).exit_code == 130
    other = invoke(*argv, "--lr", "0.5", "--resume")
    assert other.exit_code == 2
    assert other.stderr.strip().splitlines()[-1].startswith("Error: --resume: ")
    assert "config.lr" in other.stderr
    assert not (tmp_path / "x.nern").exists()
    fresh = invoke(*argv)  # without --resume: starts afresh, says so, and removes the stale file at the end
    assert fresh.exit_code == 0, fresh.stderr
    assert "holds an interrupted run" in fresh.stderr
    assert not resume_path(tmp_path / "x.nern").exists()


def test_corrupt_resume_file_is_one_error_line(ws, tmp_path):
    output = tmp_path / "x.nern"
    resume_path(output).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    result = invoke("fit", ws["checkpoint"], *FIT, "--iters", "3", "-o", output, "--resume")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1].startswith("Error: resume file ")
    assert "Traceback" not in result.stderr and not output.exists()


def test_library_resume_without_file_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="no resume file"):
        fit(tiny_resnet_state_dict(), FitConfig(hidden=8, iters=2, batch_size=64), device="cpu",
            checkpointer=Checkpointer(tmp_path / "none.resume", resume=True))  # fmt: skip


# ------------------------------------------------------------------------------------------------ determinism
def test_cli_fit_is_byte_identical_across_runs(ws, tmp_path):
    outputs = [tmp_path / "a.nern", tmp_path / "b.nern"]
    for output in outputs:
        result = invoke("fit", ws["checkpoint"], *FIT, "--iters", "15", "-o", output)
        assert result.exit_code == 0, result.stderr
    assert outputs[0].read_bytes() == outputs[1].read_bytes()


# ------------------------------------------------------------------------------------------ a real process
def test_sigterm_to_a_real_process_saves_and_exits_130(ws, tmp_path):
    output = tmp_path / "long.nern"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("NERNCOMPRESS_DEBUG", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "nerncompress", "fit", str(ws["checkpoint"]), *FIT, "--iters", "1000000",
         "--checkpoint-every", "20", "--threads", "1", "-o", str(output)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not resume_path(output).exists():  # the first periodic snapshot: the loop is running
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr
    assert stdout == ""
    assert stderr.strip().splitlines()[-1].startswith("Error: interrupted by SIGTERM at step ")
    assert "Traceback" not in stderr
    assert not output.exists()
    assert read_snapshot(resume_path(output)).loop.step >= 20


def test_distill_with_cutmix_and_probes_records_the_options_and_resumes_to_the_same_bytes(ws, tmp_path, monkeypatch):
    argv = ["distill", ws["nern"], "--teacher", ws["checkpoint"], "--data", ws["data"], *DISTILL,
            "--mix", "cutmix", "--mix-fraction", "1", "--kd-loss", "mse",
            "--probe-fraction", "0.5", "--probe-eps", "12", "--fmd-weight", "0.5"]  # fmt: skip
    reference = invoke(*argv, "-o", tmp_path / "reference.nern", "--json")
    assert reference.exit_code == 0, reference.stderr
    config = read_metadata(tmp_path / "reference.nern")["history"][-1]["config"]
    assert (config["mix"], config["mix_fraction"], config["kd_loss"]) == ("cutmix", 1.0, "mse")
    assert (config["probe_fraction"], config["probe_eps"], config["fmd_weight"]) == (0.5, 12.0, 0.5)
    resumed = interrupted_then_resumed(monkeypatch, argv, tmp_path / "resumed.nern", call=5, signum=signal.SIGTERM)
    assert resumed == (tmp_path / "reference.nern").read_bytes()
