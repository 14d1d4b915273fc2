"""Bad input never gets a traceback: one ``Error:`` line on stderr, a documented exit code, no file written.

Also the CLI conventions: ``--json`` on every command, logs on stderr only, ``NO_COLOR``, ``--help`` panels with
examples, ``--version``, and the exit-code table in ``--help``.
"""

from __future__ import annotations

import json
import os
import re
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import invoke, tiny_fit, tiny_resnet_state_dict
from safetensors.torch import save_file

from nerncompress.artifact import save_artifact
from nerncompress.artifact.v1 import save_v1
from nerncompress.cli.output import EXIT_CODE_DOCS

FAST_FIT = ["--iters", "4", "--hidden", "8", "--batch-size", "64", "--device", "cpu"]
FAST_DISTILL = ["--iters", "2", "--batch-size", "4", "--device", "cpu", "--holdout", "0"]


def _edit_header(data: bytes, edit) -> bytes:
    """Apply ``edit(header_dict)`` to a safetensors file's JSON header, keeping the data section as is."""
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    edit(header)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    return struct.pack("<Q", len(encoded)) + encoded + data[8 + length :]


def _set_meta(key: str, value: str):
    def edit(header):
        header["__metadata__"][key] = value

    return edit


def _swap_shape(prefix: str):
    """Reverse the shape of the first 2-D tensor whose key starts with ``prefix`` (same size: offsets stay valid)."""

    def edit(header):
        key = next(k for k, v in header.items() if k.startswith(prefix) and len(v.get("shape", [])) == 2)
        header[key]["shape"] = list(reversed(header[key]["shape"]))

    return edit


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> dict[str, Path]:
    """Valid inputs and one file per kind of bad input."""
    folder = tmp_path_factory.mktemp("reliability")
    rng = np.random.default_rng(0)
    state_dict = tiny_resnet_state_dict()
    files: dict[str, Path] = {name: folder / name for name in (
        "tiny.pt", "tiny.nern", "images.npz", "gray.npz", "teacher100.pt", "empty.pt", "empty.nern", "truncated.pt",
        "truncated.nern", "random.pt", "random.nern", "altered.nern", "badjson.nern", "schema.nern",
        "predictor_shape.nern", "raw_shape.nern", "nan.pt", "inf.safetensors", "foreign.safetensors",
        "shape.safetensors", "nan.nern",
    )}  # fmt: skip
    torch.save(state_dict, files["tiny.pt"])
    save_artifact(tiny_fit(state_dict, iters=3, hidden=8), files["tiny.nern"])
    save_v1(tiny_fit(state_dict, iters=3, hidden=8), folder / "tiny_v1.nern")  # format 1: header edits below
    np.savez(files["images.npz"], x=rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8), y=rng.integers(0, 10, 16))
    np.savez(files["gray.npz"], x=rng.integers(0, 256, (16, 8, 8, 1), dtype=np.uint8), y=rng.integers(0, 10, 16))
    torch.save(tiny_resnet_state_dict(num_classes=100), files["teacher100.pt"])
    files["empty.pt"].write_bytes(b"")
    files["empty.nern"].write_bytes(b"")
    checkpoint_bytes = files["tiny.pt"].read_bytes()
    nern_bytes = files["tiny.nern"].read_bytes()
    v1_bytes = (folder / "tiny_v1.nern").read_bytes()
    files["truncated.pt"].write_bytes(checkpoint_bytes[: len(checkpoint_bytes) // 2])
    files["truncated.nern"].write_bytes(nern_bytes[: len(nern_bytes) // 2])
    files["random.pt"].write_bytes(rng.bytes(4096))
    files["random.nern"].write_bytes(rng.bytes(4096))
    files["altered.nern"].write_bytes(_edit_header(nern_bytes, _set_meta("format", "nurn")))
    (length,) = struct.unpack("<Q", nern_bytes[:8])
    files["badjson.nern"].write_bytes(nern_bytes[:8] + b"[" + nern_bytes[9:])  # the header is no JSON object
    files["schema.nern"].write_bytes(_edit_header(nern_bytes, _set_meta("schema_version", "99")))
    files["predictor_shape.nern"].write_bytes(_edit_header(v1_bytes, _swap_shape("predictor/")))
    files["raw_shape.nern"].write_bytes(_edit_header(v1_bytes, _swap_shape("raw/")))
    nan = {k: v.clone() for k, v in state_dict.items()}
    nan["layer1.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(nan, files["nan.pt"])
    inf = {k: v.clone() for k, v in state_dict.items()}
    inf["linear.weight"][0, 0] = float("inf")
    save_file(inf, str(files["inf.safetensors"]))
    save_file({"encoder.w": torch.ones(3, 3), "decoder.b": torch.zeros(2)}, str(files["foreign.safetensors"]))
    shape = {k: v.clone() for k, v in state_dict.items()}
    shape["linear.weight"] = torch.zeros(10, 32)
    save_file(shape, str(files["shape.safetensors"]))
    nern_nan = tiny_fit(state_dict, iters=3, hidden=8)
    nern_nan.raw["bn1.weight"][0] = float("nan")
    save_artifact(nern_nan, files["nan.nern"])
    files["folder"] = folder / "a-folder"
    files["folder"].mkdir()
    files["folder.nern"] = folder / "folder.nern"
    files["folder.nern"].mkdir()
    files["missing.pt"] = folder / "missing.pt"
    files["missing.nern"] = folder / "missing.nern"
    return files


def unwritable_folder(tmp_path: Path) -> Path:
    """A folder this process cannot create files in. Root ignores permission bits, so root gets /sys/kernel
    (sysfs refuses new files even to root); the case is skipped where no such folder can be found."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o500)
        return folder
    candidate = Path("/sys/kernel")
    try:
        handle, probe = tempfile.mkstemp(dir=candidate)
    except OSError:
        return candidate
    os.close(handle)
    os.unlink(probe)
    pytest.skip("running as root and /sys/kernel is writable: no unwritable folder to test with")


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


def case(name: str, argv: list[str], code: int, marks=()):
    return pytest.param(argv, code, id=name, marks=marks)


# (id, argv template, exit code). {name} is a file of the `ws` fixture, {out} an empty folder for outputs (also
# the working directory, so default outputs land there), {unwritable} a folder that refuses new files.
CASES = [
    # missing path, a directory, empty file, truncated checkpoint, random bytes
    case("fit-missing-path", ["fit", "{missing.pt}", *FAST_FIT], 1),
    case("inspect-missing-path", ["inspect", "{missing.nern}"], 1),
    case("expand-missing-path", ["expand", "{missing.nern}", "-o", "{out}/x.safetensors"], 1),
    case("eval-missing-path", ["eval", "{missing.pt}", "--data", "{images.npz}"], 1),
    case("fit-directory", ["fit", "{folder}", *FAST_FIT], 1),
    case("inspect-directory", ["inspect", "{folder}"], 1),
    case("expand-directory", ["expand", "{folder.nern}", "-o", "{out}/x.safetensors"], 1),
    case("fit-empty-file", ["fit", "{empty.pt}", *FAST_FIT], 1),
    case("inspect-empty-nern", ["inspect", "{empty.nern}"], 1),
    case("expand-empty-nern", ["expand", "{empty.nern}", "-o", "{out}/x.safetensors"], 1),
    case("fit-truncated-checkpoint", ["fit", "{truncated.pt}", *FAST_FIT], 1),
    case("eval-truncated-checkpoint", ["eval", "{truncated.pt}", "--data", "{images.npz}"], 1),
    case("expand-truncated-nern", ["expand", "{truncated.nern}", "-o", "{out}/x.safetensors"], 1),
    case("fit-random-bytes", ["fit", "{random.pt}", *FAST_FIT], 1),
    case("inspect-random-bytes", ["inspect", "{random.pt}"], 1),
    case("expand-random-bytes", ["expand", "{random.nern}", "-o", "{out}/x.safetensors"], 1),
    # .nern contents
    case("inspect-altered-header", ["inspect", "{altered.nern}"], 1),
    case("expand-altered-header", ["expand", "{altered.nern}", "-o", "{out}/x.safetensors"], 1),
    case("inspect-header-not-json-object", ["inspect", "{badjson.nern}"], 1),
    case("expand-unknown-schema-version", ["expand", "{schema.nern}", "-o", "{out}/x.safetensors"], 1),
    case("inspect-unknown-schema-version", ["inspect", "{schema.nern}", "--json"], 1),
    case("inspect-mismatched-predictor-shape", ["inspect", "{predictor_shape.nern}"], 1),
    case("expand-mismatched-predictor-shape", ["expand", "{predictor_shape.nern}", "-o", "{out}/x.safetensors"], 1),
    case("eval-mismatched-raw-shape", ["eval", "{raw_shape.nern}", "--data", "{images.npz}"], 1),
    case("expand-onnx-mismatched-raw-shape", ["expand", "{raw_shape.nern}", "-o", "{out}/x.onnx"], 1),
    case("expand-nan-in-nern", ["expand", "{nan.nern}", "-o", "{out}/x.safetensors"], 1),
    # checkpoint contents
    case("fit-nan-weights", ["fit", "{nan.pt}", *FAST_FIT], 1),
    case("fit-inf-weights", ["fit", "{inf.safetensors}", *FAST_FIT], 1),
    case("eval-nan-weights", ["eval", "{nan.pt}", "--data", "{images.npz}"], 1),
    case("fit-undetectable-architecture", ["fit", "{foreign.safetensors}", *FAST_FIT], 1),
    case("fit-mismatched-shapes-for-arch", ["fit", "{shape.safetensors}", "--arch", "cifar_resnet", *FAST_FIT], 1),
    case("eval-unknown-arch", ["eval", "{tiny.pt}", "--data", "{images.npz}", "--arch", "no_such_net"], 1),
    # datasets
    case("eval-missing-data", ["eval", "{tiny.pt}", "--data", "{out}/none.npz"], 1),
    case("distill-images-the-model-cannot-take",
     ["distill", "{tiny.nern}", "--teacher", "{tiny.pt}", "--data", "{gray.npz}", *FAST_DISTILL], 2),
    # teacher
    case("distill-teacher-other-classes",
     ["distill", "{tiny.nern}", "--teacher", "{teacher100.pt}", "--data", "{images.npz}", *FAST_DISTILL], 2),
    case("distill-without-teacher", ["distill", "{tiny.nern}", "--data", "{images.npz}", *FAST_DISTILL], 2),
    case("distill-without-data", ["distill", "{tiny.nern}", "--teacher", "{tiny.pt}", *FAST_DISTILL], 2),
    case("distill-noise-mixed-with-data",
     ["distill", "{tiny.nern}", "--teacher", "{tiny.pt}", "--data", "noise", "--data", "{images.npz}"], 2),
    case("distill-teacher-not-a-checkpoint",
     ["distill", "{tiny.nern}", "--teacher", "{random.pt}", "--data", "noise", *FAST_DISTILL], 1),
    # options
    case("fit-unknown-option-value", ["fit", "{tiny.pt}", "--permute", "sideways"], 2),
    case("fit-unknown-scheme", ["fit", "{tiny.pt}", "--scheme", "magic"], 2),
    case("distill-unknown-mix",
     ["distill", "{tiny.nern}", "--teacher", "{tiny.pt}", "--data", "noise", *FAST_DISTILL, "--mix", "blend"], 2),
    case("distill-unknown-kd-loss",
     ["distill", "{tiny.nern}", "--teacher", "{tiny.pt}", "--data", "noise", *FAST_DISTILL, "--kd-loss", "hinge"], 2),
    case("distill-probe-fraction-out-of-range",
     ["distill", "{tiny.nern}", "--teacher", "{tiny.pt}", "--data", "noise", *FAST_DISTILL, "--probe-fraction", "1.5"], 2),
    case("distill-probe-eps-zero",
     ["distill", "{tiny.nern}", "--teacher", "{tiny.pt}", "--data", "noise", *FAST_DISTILL, "--probe-eps", "0"], 2),
    case("fit-unknown-option", ["fit", "{tiny.pt}", "--no-such-option"], 2),
    case("fit-missing-argument", ["fit"], 2),
    case("fit-option-value-out-of-range", ["fit", "{tiny.pt}", "--hidden", "0"], 2),
    case("fit-not-a-number", ["fit", "{tiny.pt}", "--lr", "fast"], 2),
    case("fit-invalid-config", ["fit", "{tiny.pt}", "--lr", "0", *FAST_FIT[:2]], 2),
    case("fit-data-without-nern-scheme", ["fit", "{tiny.pt}", "--data", "{images.npz}", *FAST_FIT], 2),
    case("eval-unknown-split", ["eval", "{tiny.pt}", "--data", "{images.npz}", "--split", "validation"], 2),
    case("unknown-command", ["compress-harder", "{tiny.pt}"], 2),
    case("fit-resume-without-resume-file", ["fit", "{tiny.pt}", *FAST_FIT, "--resume", "-o", "{out}/x.nern"], 2),
    case("fit-device-cuda-without-gpu", ["fit", "{tiny.pt}", "--device", "cuda"], 2, marks=NO_CUDA),
    case("eval-device-cuda-without-gpu", ["eval", "{tiny.nern}", "--data", "{images.npz}", "--device", "cuda:1"], 2,
         marks=NO_CUDA),
    # outputs
    case("fit-output-equal-to-input", ["fit", "{tiny.pt}", *FAST_FIT, "-o", "{tiny.pt}"], 2),
    case("expand-output-equal-to-input", ["expand", "{tiny.nern}", "-o", "{tiny.nern}"], 2),
    case("distill-output-equal-to-input",
     ["distill", "{tiny.nern}", "--teacher", "{tiny.pt}", "--data", "noise", *FAST_DISTILL, "-o", "{tiny.nern}"], 2),
    case("distill-output-equal-to-teacher",
     ["distill", "{tiny.nern}", "--teacher", "{tiny.pt}", "--data", "noise", *FAST_DISTILL, "-o", "{tiny.pt}"], 2),
    case("fit-output-folder-missing", ["fit", "{tiny.pt}", *FAST_FIT, "-o", "{out}/no/such/folder/x.nern"], 2),
    case("fit-output-is-a-folder", ["fit", "{tiny.pt}", *FAST_FIT, "-o", "{folder}"], 2),
    case("fit-output-folder-unwritable", ["fit", "{tiny.pt}", *FAST_FIT, "-o", "{unwritable}/x.nern"], 2),
    case("expand-output-folder-unwritable", ["expand", "{tiny.nern}", "-o", "{unwritable}/x.safetensors"], 2),
    case("expand-unknown-output-suffix", ["expand", "{tiny.nern}", "-o", "{out}/x.bin"], 2),
]


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.mark.parametrize(("argv", "code"), CASES)
def test_bad_input_gives_one_error_line_and_its_exit_code(ws, tmp_path, monkeypatch, argv, code):
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.chdir(out)
    values = {**{name: str(path) for name, path in ws.items()}, "out": str(out)}
    if any("{unwritable}" in arg for arg in argv):
        values["unwritable"] = str(unwritable_folder(tmp_path))
    before = _files(ws["tiny.pt"].parent)
    for json_flag in ([], ["--json"]):
        result = invoke(*(re.sub(r"\{([^}]+)\}", lambda m: values[m.group(1)], arg) for arg in argv), *json_flag)
        context = f"{argv} {json_flag}: exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}"
        assert result.exit_code == code, context
        assert result.stdout == "", context
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: "), context  # exactly one line
        assert "Traceback" not in result.stderr, context
        assert "please report it" not in result.stderr, context  # a NernError, not an unexpected exception
        assert _files(out) == set(), context  # no output, no temporary file, no resume file
        assert _files(ws["tiny.pt"].parent) == before, context


# ------------------------------------------------------------------------------------------------ conventions
COLOUR = re.compile(r"\x1b\[(?:[0-9;]*;)?(?:3[0-9]|4[0-9]|9[0-7]|10[0-7]|38;5;\d+|38;2;[\d;]+)m")


def test_every_command_prints_exactly_one_json_document(ws, tmp_path):
    nern = tmp_path / "fitted.nern"
    commands = {
        "fit": ["fit", ws["tiny.pt"], *FAST_FIT, "-o", nern],
        "distill": ["distill", nern, "--teacher", ws["tiny.pt"], "--data", ws["images.npz"], *FAST_DISTILL,
                    "-o", tmp_path / "distilled.nern"],
        "expand": ["expand", nern, "-o", tmp_path / "x.safetensors", "--device", "cpu"],
        "eval": ["eval", nern, "--data", ws["images.npz"], "--device", "cpu"],
        "inspect": ["inspect", nern],
        "inspect-checkpoint": ["inspect", ws["tiny.pt"]],
        "env": ["env"],
    }  # fmt: skip
    for name, argv in commands.items():
        result = invoke(*argv, "--json")
        assert result.exit_code == 0, (name, result.stderr)
        document = json.loads(result.stdout)  # raises on anything but exactly one document
        assert isinstance(document, dict) and document, name
        assert "{" not in result.stderr, name  # results never leak to stderr
    distilled = json.loads(invoke(*commands["distill"], "--json").stdout)
    assert distilled["teacher"]["file"] == "tiny.pt" and len(distilled["teacher"]["sha256"]) == 64
    assert distilled["steps"] == 2 and distilled["data"].endswith("images.npz")


def test_progress_is_plain_lines_on_stderr_when_not_a_terminal(ws, tmp_path):
    result = invoke("fit", ws["tiny.pt"], *FAST_FIT, "-o", tmp_path / "x.nern", "--json")
    assert result.exit_code == 0, result.stderr
    assert "\x1b[" not in result.stderr and "━" not in result.stderr  # no bar, no escape codes
    assert "fit: step 4/4" in result.stderr


def test_no_color_is_honoured(ws, tmp_path):
    argv = ["fit", ws["tiny.pt"], *FAST_FIT, "-o", tmp_path / "x.nern"]
    coloured = invoke(*argv, env={"FORCE_COLOR": "1", "TERM": "xterm-256color"})
    assert coloured.exit_code == 0 and COLOUR.search(coloured.stderr)  # the check below can fail
    plain = invoke(*argv, env={"FORCE_COLOR": "1", "TERM": "xterm-256color", "NO_COLOR": "1"})
    assert plain.exit_code == 0, plain.stderr
    assert not COLOUR.search(plain.stderr) and not COLOUR.search(plain.stdout)


@pytest.mark.parametrize("command", ["fit", "distill", "expand", "eval", "inspect", "env", "demo"])
def test_help_has_examples_and_panels(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0
    assert "Examples" in result.stdout and "$ nerncompress " + command in result.stdout
    if command in ("fit", "distill"):
        for panel in ("Training", "Output"):
            assert panel in result.stdout


def test_root_help_documents_every_exit_code():
    result = invoke("--help")
    assert result.exit_code == 0
    for code, meaning in EXIT_CODE_DOCS:
        assert f"{code}: {meaning.split()[0]}" in " ".join(result.stdout.split())
    assert "NERNCOMPRESS_DEBUG" in result.stdout and "NO_COLOR" in result.stdout
    assert [code for code, _ in EXIT_CODE_DOCS] == [0, 1, 2, 3, 4, 130]


def test_version_and_threads(ws):
    assert invoke("--version").stdout.startswith("nerncompress ")
    before = torch.get_num_threads()
    result = invoke("eval", ws["tiny.pt"], "--data", ws["images.npz"], "--threads", "2", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["threads"] == 2  # the job ran with two threads
    assert torch.get_num_threads() == before  # and gave the process its setting back


def test_usage_error_in_a_real_process_is_one_line(ws):
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("NERNCOMPRESS_DEBUG", None)
    process = subprocess.run(
        [sys.executable, "-m", "nerncompress", "fit", str(ws["tiny.pt"]), "--permute", "sideways"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert process.returncode == 2
    assert process.stdout == ""
    assert process.stderr.count("\n") == 1 and process.stderr.startswith("Error: ")
    assert "sideways" in process.stderr and "--help" in process.stderr


def test_concat_data_joins_in_order_and_refuses_other_sizes():
    from nerncompress.data import ImageData, concat_data
    from nerncompress.errors import DataError

    a = ImageData(torch.zeros(2, 4, 4, 3, dtype=torch.uint8), torch.tensor([0, 1]), "a")
    b = ImageData(torch.ones(3, 4, 4, 3, dtype=torch.uint8), torch.tensor([2, 3, 4]), "b")
    joined = concat_data(a, b)
    assert len(joined) == 5 and joined.labels.tolist() == [0, 1, 2, 3, 4] and joined.source == "a + b"
    assert concat_data(a) is a
    with pytest.raises(DataError, match="4x4x3"):
        concat_data(a, ImageData(torch.zeros(1, 8, 8, 3, dtype=torch.uint8), torch.tensor([0]), "c"))


def test_distill_accepts_a_nern_teacher_and_defaults_its_output_name(ws, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["distill", ws["tiny.nern"], "--teacher", ws["tiny.nern"], "--data", "noise", *FAST_DISTILL, "--json"]
    result = invoke(*argv)
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["path"] == "tiny.distilled.nern" and (tmp_path / "tiny.distilled.nern").is_file()
    assert summary["data"] == "noise" and summary["teacher"]["file"] == "tiny.nern"
