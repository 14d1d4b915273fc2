"""Fuzzing: mutated .nern and checkpoint files through ``inspect``, ``expand`` and ``eval``.

Every mutant (byte flips, truncations, header edits, random bytes, all seeded) must give either a valid result (exit
0 with one JSON document) or a clean error: exit 1 or 2, one ``Error:`` line on stderr, no traceback, and not the
"unexpected ... please report it" line the CLI prints for an exception that is not a ``NernError``.
"""

from __future__ import annotations

import json
import random
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_fit, tiny_resnet_state_dict
from safetensors.torch import save_file
from typer.testing import CliRunner

from nerncompress.artifact import save_artifact
from nerncompress.cli import app
from nerncompress.artifact.v1 import save_v1
from nerncompress.compression import PruneConfig, QuantizeConfig, compress

NERN_MUTANTS = 225
CHECKPOINT_MUTANTS = 110


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> dict[str, Path]:
    """Valid files to mutate: three .nern layouts, a torch.save checkpoint, a safetensors checkpoint; and images."""
    folder = tmp_path_factory.mktemp("fuzz-seeds")
    state_dict = tiny_resnet_state_dict()
    files = {}
    files["plain.nern"] = folder / "plain.nern"
    save_artifact(tiny_fit(state_dict, iters=3), files["plain.nern"])
    files["scaled.nern"] = folder / "scaled.nern"
    save_artifact(tiny_fit(state_dict, iters=3, permute="none", filter_scales=True), files["scaled.nern"])
    pruned = compress(tiny_fit(state_dict, iters=3), PruneConfig(sparsity=0.5, finetune_iters=0), device="cpu")
    quantized = QuantizeConfig(bits=4, group_size=8, qat_iters=0, rounding="nearest", raw_fp16=True)
    files["compressed.nern"] = folder / "compressed.nern"  # sparse, 4-bit packed, raw float16
    save_artifact(compress(pruned, quantized, device="cpu"), files["compressed.nern"])
    files["legacy.nern"] = folder / "legacy.nern"  # format 1, still read
    save_v1(compress(pruned, quantized, device="cpu"), files["legacy.nern"])
    files["tiny.pt"] = folder / "tiny.pt"
    torch.save(state_dict, files["tiny.pt"])
    files["tiny.safetensors"] = folder / "tiny.safetensors"
    save_file(state_dict, str(files["tiny.safetensors"]))
    rng = np.random.default_rng(0)
    files["images"] = folder / "images.npz"
    np.savez(files["images"], x=rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8), y=rng.integers(0, 10, 4))
    return files


# ------------------------------------------------------------------------------------------------- mutations
def _split_header(data: bytes) -> tuple[dict, bytes]:
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def _join_header(header: dict, body: bytes) -> bytes:
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    return struct.pack("<Q", len(encoded)) + encoded + body


def _odd_value(rng: random.Random, value):
    """A plausible-but-wrong replacement for a JSON value."""
    choices = [None, True, -1, 0, 1, 2**40, 1.5, "", "x", [], {}, [1, 2], {"a": 1}, "nan", "[]", "{}"]
    if isinstance(value, int) and not isinstance(value, bool):
        choices += [value + 1, value - 1, -value, value * 2]
    if isinstance(value, list) and value:
        choices += [value[:-1], value + value[-1:], list(reversed(value))]
    if isinstance(value, str):
        choices += [value[::-1], value + "x", value.upper()]
    return rng.choice(choices)


def _edit_json(rng: random.Random, document):
    """Replace, delete or retype one randomly chosen value somewhere inside a JSON document."""
    if isinstance(document, dict) and document:
        key = rng.choice(sorted(document))
        roll = rng.random()
        if roll < 0.15:
            return {k: v for k, v in document.items() if k != key}
        if roll < 0.6 and isinstance(document[key], (dict, list)) and document[key]:
            return {**document, key: _edit_json(rng, document[key])}
        return {**document, key: _odd_value(rng, document[key])}
    if isinstance(document, list) and document:
        index = rng.randrange(len(document))
        copy = list(document)
        if isinstance(copy[index], (dict, list)) and copy[index] and rng.random() < 0.6:
            copy[index] = _edit_json(rng, copy[index])
        else:
            copy[index] = _odd_value(rng, copy[index])
        return copy
    return _odd_value(rng, document)


def header_edit(rng: random.Random, data: bytes) -> bytes:
    """Edit the safetensors header: a tensor entry (dtype, shape, offsets) or a metadata field (JSON inside)."""
    header, body = _split_header(data)
    # Most edits go to the metadata, which our code interprets; tensor entries are mostly checked by safetensors.
    key = "__metadata__" if "__metadata__" in header and rng.random() < 0.6 else rng.choice(sorted(header))
    if key == "__metadata__":
        meta = dict(header[key])
        field = rng.choice(sorted(meta))
        try:
            parsed = json.loads(meta[field])
        except json.JSONDecodeError:
            parsed = meta[field]
        edited = _edit_json(rng, parsed) if rng.random() < 0.8 else _odd_value(rng, parsed)
        meta[field] = edited if isinstance(edited, str) and rng.random() < 0.5 else json.dumps(edited)
        if rng.random() < 0.1:
            meta.pop(field)
        header[key] = meta
    else:
        entry = dict(header[key])
        part = rng.choice(["dtype", "shape", "data_offsets", "drop"])
        if part == "dtype":
            entry["dtype"] = rng.choice(["F16", "BF16", "F64", "I64", "U8", "I8", "BOOL", "F8_E4M3", "Q9"])
        elif part == "shape":
            entry["shape"] = _odd_value(rng, entry["shape"]) if rng.random() < 0.5 else list(reversed(entry["shape"]))
        elif part == "data_offsets":
            start, end = entry["data_offsets"]
            entry["data_offsets"] = [start, end + rng.choice([-8, -1, 1, 8])]
        else:
            header.pop(key)
            return _join_header(header, body)
        header[key] = entry
    return _join_header(header, body)


def _format_2_parts(data: bytes) -> tuple[dict, bytes, bytes] | None:
    header, body = _split_header(data)
    if "meta" not in header or "streams" not in header:
        return None
    return header, body[slice(*header["meta"]["data_offsets"])], body[slice(*header["streams"]["data_offsets"])]


def _join_format_2(header: dict, meta: bytes, streams: bytes) -> bytes:
    header["meta"] = {"dtype": "U8", "shape": [len(meta)], "data_offsets": [0, len(meta)]}
    header["streams"] = {"dtype": "U8", "shape": [len(streams)], "data_offsets": [len(meta), len(meta) + len(streams)]}
    return _join_header(header, meta + streams)


def document_edit(rng: random.Random, data: bytes) -> bytes:
    """Format 2: edit one value of the compressed JSON document (the structure our code interprets)."""
    parts = _format_2_parts(data)
    if parts is None:
        return header_edit(rng, data)
    header, meta, streams = parts
    document = _edit_json(rng, json.loads(zlib.decompress(meta)))
    return _join_format_2(header, zlib.compress(json.dumps(document).encode()), streams)


def stream_flips(rng: random.Random, data: bytes) -> bytes:
    """Format 2: flip bits inside the entropy-coded streams."""
    parts = _format_2_parts(data)
    if parts is None or not parts[2]:
        return byte_flips(rng, data)
    header, meta, streams = parts
    out = bytearray(streams)
    for _ in range(rng.randint(1, 4)):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return _join_format_2(header, meta, bytes(out))


def byte_flips(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def header_byte_flips(rng: random.Random, data: bytes) -> bytes:
    (length,) = struct.unpack("<Q", data[:8])
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        out[rng.randrange(8 + length)] = rng.randrange(256)
    return bytes(out)


def truncate(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randrange(len(data))]


def random_bytes(rng: random.Random, data: bytes) -> bytes:
    return rng.randbytes(rng.choice([1, 7, 8, 64, 4096, len(data)]))


def append_garbage(rng: random.Random, data: bytes) -> bytes:
    return data + rng.randbytes(rng.randint(1, 64))


SAFETENSORS_MUTATIONS = (header_edit, header_edit, header_edit, byte_flips, header_byte_flips, truncate,
                         random_bytes, append_garbage)  # fmt: skip
NERN_MUTATIONS = SAFETENSORS_MUTATIONS + (document_edit, document_edit, document_edit, stream_flips, stream_flips)
PICKLE_MUTATIONS = (byte_flips, byte_flips, truncate, random_bytes, append_garbage)


# ----------------------------------------------------------------------------------------------------- checks
def assert_clean(result, label: str) -> None:
    """A valid result (one JSON document) or one clean error line."""
    if result.exit_code == 0:
        json.loads(result.stdout)
        return
    context = f"{label}: exit {result.exit_code}\n{result.stderr[-2000:]}"
    assert result.exit_code in (1, 2), context
    assert result.stdout == "", context
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), context
    assert "for the traceback and please report it" not in lines[0], context  # the wording of non-NernErrors


def test_fuzz_nern_and_checkpoints(seeds, tmp_path):
    rng = random.Random(20240611)
    runner = CliRunner()
    started = time.perf_counter()
    count = 0
    outcomes = {"ok": 0, "error": 0}
    nerns = ("plain.nern", "scaled.nern", "compressed.nern", "legacy.nern")
    plan = [(name, NERN_MUTANTS // len(nerns)) for name in nerns]
    plan += [(name, CHECKPOINT_MUTANTS // 2) for name in ("tiny.pt", "tiny.safetensors")]
    for name, mutants in plan:
        original = seeds[name].read_bytes()
        mutations = PICKLE_MUTATIONS if name.endswith(".pt") else SAFETENSORS_MUTATIONS
        if name.endswith(".nern"):
            mutations = NERN_MUTATIONS
        for index in range(mutants):
            mutation = rng.choice(mutations)
            mutant = tmp_path / f"{index}-{name}"
            mutant.write_bytes(mutation(rng, original))
            label = f"{mutation.__name__} of {name} (#{index})"
            inspect = runner.invoke(app, ["inspect", str(mutant), "--json"])
            assert_clean(inspect, f"inspect {label}")
            if name.endswith(".nern"):
                out = tmp_path / f"{index}-{name}.safetensors"
                expanded = runner.invoke(app, ["expand", str(mutant), "-o", str(out), "--device", "cpu", "--json"])
                assert_clean(expanded, f"expand {label}")
                assert out.exists() == (expanded.exit_code == 0), label  # a failed expand writes nothing
                out.unlink(missing_ok=True)
            evaluated = runner.invoke(
                app, ["eval", str(mutant), "--data", str(seeds["images"]), "--device", "cpu", "--json"]
            )
            assert_clean(evaluated, f"eval {label}")
            outcomes["ok" if evaluated.exit_code == 0 else "error"] += 1
            mutant.unlink()
            count += 1
    assert count >= 300
    assert outcomes["ok"] and outcomes["error"]  # the mutations reach both outcomes
    assert time.perf_counter() - started < 120
