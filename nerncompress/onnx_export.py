"""Export a PyTorch classifier to one self-contained ONNX file and verify it against PyTorch with onnxruntime.

The file has one input ``input`` of shape ``(batch, C, H, W)`` and one output ``logits`` of shape
``(batch, classes)``; the batch axis is dynamic and every weight is embedded (no external-data file).

Exporter choice (torch 2.14): the ``torch.export``-based exporter (``dynamo=True``, the default since torch 2.9)
is used for opset >= 18. It handles the option-A ResNet shortcut (strided slicing + ``F.pad``), BatchNorm
(folded into the convolutions by its optimiser), adaptive pooling and Linear, and it fails loudly on
data-dependent control flow instead of baking one branch in. It cannot write opsets below 18: asked for one, it
silently keeps 18, so those go to the legacy TorchScript exporter (``dynamo=False``, deprecated but still present).
With ``exporter="auto"`` a model that ``torch.export`` cannot capture is retried with the TorchScript exporter,
unless tracing raised a ``TracerWarning`` (a sign the trace was specialised to the example input).

Both exporters are chatty (progress lines on stdout, graph dumps, logging and warnings on stderr); all of it is
swallowed while exporting. Silencing redirects ``sys.stdout``/``sys.stderr`` and disables ``logging`` for the
duration of the call, which is process-wide: do not export from several threads at once.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import io
import logging
import math
import re
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ._io import PathLike, atomic_path
from .errors import ExportCheckError, UsageError

__all__ = [
    "DEFAULT_OPSET",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "ExportReport",
    "export_onnx",
    "onnx_providers",
]

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 18
BATCH_AXIS_NAME = "batch"

_DYNAMO_MIN_OPSET = 18
_MIN_OPSET = 7
_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
_EXPORTERS = ("auto", "dynamo", "torchscript")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote and how well the file matched PyTorch.

    Attributes:
        path: the written ``.onnx`` file.
        opset: the default-domain (``ai.onnx``) opset of the file.
        bytes: file size.
        max_abs_diff: largest ``|onnxruntime - pytorch|`` over all verification logits (None without verification).
        top1_agreement: percent of verification inputs whose arg-max class agrees (None without verification).
        inputs: number of verification inputs (0 without verification).
        provider: onnxruntime execution provider that ran the verification ("" without verification).
        seconds: wall time of the whole call (export, check and verification).
        exporter: "dynamo" (``torch.export``-based) or "torchscript" (legacy tracer).
    """

    path: str
    opset: int
    bytes: int
    max_abs_diff: float | None
    top1_agreement: float | None
    inputs: int
    provider: str
    seconds: float
    exporter: str = "dynamo"

    def to_dict(self) -> dict[str, Any]:
        """Return the report as a JSON-serialisable dict.

        Returns:
            One key per field.
        """
        return asdict(self)


def onnx_providers() -> list[str]:
    """List the onnxruntime execution providers available in this installation.

    Returns:
        Provider names such as ``["CUDAExecutionProvider", "CPUExecutionProvider"]``; plain (CPU-only)
        onnxruntime gives at least ``"CPUExecutionProvider"``.
    """
    import onnxruntime as ort

    return list(ort.get_available_providers())


def export_onnx(
    model: nn.Module,
    path: PathLike,
    *,
    input_shape: tuple[int, int, int],
    opset: int = DEFAULT_OPSET,
    verify: bool = True,
    verify_inputs: int = 64,
    seed: int = 0,
    tolerance: float = 1e-4,
    provider: str = "cpu",
    exporter: str = "auto",
) -> ExportReport:
    """Export ``model`` to one self-contained ONNX file with a dynamic batch axis, check and verify it.

    The model is exported from a float32 CPU copy in eval mode (the caller's model is left as it was). The file
    is written to a temporary name next to ``path``, checked with ``onnx.checker``, verified, and only then
    renamed onto ``path``; on any failure no file is left behind.

    Verification runs ``verify_inputs`` standard-normal inputs drawn with ``seed`` through onnxruntime and through
    PyTorch, in two batches of different sizes (so a batch axis that is not really dynamic fails), and compares
    the logits.

    Args:
        model: the classifier; ``forward`` takes one ``(N, C, H, W)`` float tensor and returns ``(N, classes)``.
        path: output file, normally ending in ``.onnx``; its folder must exist.
        input_shape: ``(C, H, W)`` of one input image.
        opset: default-domain ONNX opset to target (>= 18 uses the ``torch.export`` exporter).
        verify: compare onnxruntime against PyTorch; False only checks the file with ``onnx.checker``.
        verify_inputs: number of random inputs used for verification.
        seed: seed of the verification inputs (and of the example input used for export).
        tolerance: largest accepted ``max |delta|`` between the two sets of logits, relative to max(1, largest |logit|).
        provider: onnxruntime provider for verification: "cpu", "cuda" (CUDAExecutionProvider, TF32 off) or
            "auto" (CUDA when onnxruntime has it, else CPU).
        exporter: "auto" (``torch.export`` for opset >= 18 with a TorchScript fallback, TorchScript below 18),
            "dynamo" or "torchscript".

    Returns:
        An :class:`ExportReport` describing the written file.

    Raises:
        UsageError: for a bad argument, an output folder that does not exist or is not writable, a path that
            is a folder, or ``provider="cuda"`` without a CUDA-enabled onnxruntime.
        ExportCheckError: when export fails, ``onnx.checker`` rejects the file, the file lacks the expected
            input/output/batch axis, or verification finds ``max |delta| > tolerance`` or top-1 agreement
            below 100%.
    """
    started = time.perf_counter()
    shape = _check_input_shape(input_shape)
    _check_arguments(opset=opset, verify=verify, verify_inputs=verify_inputs, tolerance=tolerance, exporter=exporter)
    providers = _resolve_providers(provider) if verify else []
    target = Path(path)
    if target.is_dir():
        raise UsageError(f"output {target} is a folder: give a file name such as {target / 'model.onnx'}")

    module = _cpu_float_eval_copy(model)
    example = torch.randn((2, *shape), generator=torch.Generator().manual_seed(seed))

    with atomic_path(target) as tmp:
        used = _export(module, example, tmp, opset=opset, exporter=exporter)
        file_opset = _check_file(tmp, target=target, opset=opset)
        size = tmp.stat().st_size
        max_diff: float | None = None
        agreement: float | None = None
        used_provider = ""
        count = 0
        if verify:
            max_diff, agreement, used_provider, scale = _verify(
                module, tmp, shape=shape, count=verify_inputs, seed=seed, providers=providers
            )
            count = verify_inputs
            # The tolerance is relative to the logits' scale: float32 rounding grows with their magnitude.
            if not (max_diff <= tolerance * max(1.0, scale)) or agreement < 100.0:
                raise ExportCheckError(
                    f"ONNX export {target} does not match PyTorch: max |delta| {max_diff:.3g} "
                    f"(tolerance {tolerance:g} x max(1, largest |logit| {scale:.3g})), top-1 agreement {agreement:.2f}% "
                    f"on {count} inputs "
                    f"with {used_provider}: no file written; check the model for ops that behave differently "
                    "in onnxruntime or pass a larger tolerance"
                )
    return ExportReport(
        path=str(target),
        opset=file_opset,
        bytes=size,
        max_abs_diff=max_diff,
        top1_agreement=agreement,
        inputs=count,
        provider=used_provider,
        seconds=time.perf_counter() - started,
        exporter=used,
    )


# --------------------------------------------------------------------------------------------------- arguments


def _check_input_shape(input_shape: Any) -> tuple[int, int, int]:
    """Validate ``(C, H, W)``.

    Args:
        input_shape: the value given by the caller.

    Returns:
        The shape as a tuple of three ints.

    Raises:
        UsageError: when it is not three positive integers.
    """
    try:
        shape = tuple(int(v) for v in input_shape)
        valid = len(shape) == 3 and all(v > 0 for v in shape) and all(int(v) == v for v in input_shape)
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise UsageError(f"input_shape {input_shape!r} is not (C, H, W) of positive integers: e.g. (3, 32, 32)")
    return shape  # type: ignore[return-value]


def _check_arguments(*, opset: int, verify: bool, verify_inputs: int, tolerance: float, exporter: str) -> None:
    """Validate the scalar options of :func:`export_onnx`.

    Args:
        opset: requested opset.
        verify: whether verification runs.
        verify_inputs: number of verification inputs.
        tolerance: accepted max |delta|.
        exporter: exporter choice.

    Raises:
        UsageError: naming the first bad option.
    """
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not _MIN_OPSET <= opset <= newest:
        raise UsageError(f"opset {opset!r} is not supported: use an integer from {_MIN_OPSET} to {newest}")
    if exporter not in _EXPORTERS:
        raise UsageError(f"exporter {exporter!r} is unknown: use one of {', '.join(_EXPORTERS)}")
    if exporter == "dynamo" and opset < _DYNAMO_MIN_OPSET:
        raise UsageError(
            f"the dynamo exporter writes opset >= {_DYNAMO_MIN_OPSET}, not {opset}: "
            "raise the opset or use exporter='torchscript'"
        )
    if verify and (isinstance(verify_inputs, bool) or not isinstance(verify_inputs, int) or verify_inputs < 1):
        raise UsageError(f"verify_inputs {verify_inputs!r} must be a positive integer: e.g. 64")
    if math.isnan(float(tolerance)):
        raise UsageError("tolerance is NaN: give a number such as 1e-4")


def _resolve_providers(provider: str) -> list[Any]:
    """Turn ``"cpu" | "cuda" | "auto"`` into an onnxruntime ``providers`` list.

    Args:
        provider: the caller's choice.

    Returns:
        The list to pass to ``InferenceSession``; CUDA comes with TF32 disabled and CPU as fallback.

    Raises:
        UsageError: for an unknown name or ``"cuda"`` without a CUDA-enabled onnxruntime.
    """
    if provider not in ("cpu", "cuda", "auto"):
        raise UsageError(f"provider {provider!r} is unknown: use cpu, cuda or auto")
    available = onnx_providers()
    cuda = _PROVIDERS["cuda"]
    if provider == "cuda" and cuda not in available:
        raise UsageError(
            f"{cuda} is not available (onnxruntime has {', '.join(available)}): "
            "install onnxruntime-gpu or use provider cpu"
        )
    if provider == "cpu" or cuda not in available:
        return [_PROVIDERS["cpu"]]
    # TF32 would make convolutions differ from float32 PyTorch by ~1e-3, far above the default tolerance.
    return [(cuda, {"use_tf32": "0"}), _PROVIDERS["cpu"]]


def _cpu_float_eval_copy(model: nn.Module) -> nn.Module:
    """Return a float32 CPU copy of ``model`` in eval mode, leaving the caller's model untouched.

    Args:
        model: the model to export.

    Returns:
        The copy (or, if the model cannot be deep-copied, the model itself, moved and switched to eval).

    Raises:
        UsageError: when ``model`` is not an ``nn.Module``.
    """
    if not isinstance(model, nn.Module):
        raise UsageError(f"model is a {type(model).__name__}, not a torch.nn.Module: pass the built model")
    try:
        module = copy.deepcopy(model)
    except Exception:  # noqa: BLE001 - unusual modules (e.g. holding locks); fall back to the original
        module = model
    return module.to(device="cpu", dtype=torch.float32).eval()


# ------------------------------------------------------------------------------------------------------ export


@contextlib.contextmanager
def _quiet() -> Iterator[list[warnings.WarningMessage]]:
    """Swallow stdout, stderr, ``logging`` and warnings for the duration of the block.

    Returns:
        (Yields) the list of warnings recorded inside the block.
    """
    previous_disable = logging.root.manager.disable
    sink = io.StringIO()
    logging.disable(logging.CRITICAL)
    try:
        with (
            warnings.catch_warnings(record=True) as caught,
            contextlib.redirect_stdout(sink),
            contextlib.redirect_stderr(sink),
        ):
            warnings.simplefilter("always")
            yield caught
    finally:
        logging.disable(previous_disable)


class _ExportFailure(Exception):
    """Internal: one exporter failed; ``str()`` is a one-line reason."""


def _export(module: nn.Module, example: torch.Tensor, tmp: Path, *, opset: int, exporter: str) -> str:
    """Run the chosen exporter into ``tmp``.

    Args:
        module: float32 CPU model in eval mode.
        example: example input with batch size 2.
        tmp: file to write.
        opset: target opset.
        exporter: "auto", "dynamo" or "torchscript".

    Returns:
        The exporter that produced the file: "dynamo" or "torchscript".

    Raises:
        ExportCheckError: when export fails, with the reason of each exporter tried.
    """
    name = type(module).__name__
    use_dynamo = exporter == "dynamo" or (exporter == "auto" and opset >= _DYNAMO_MIN_OPSET)
    if not use_dynamo:
        try:
            _export_torchscript(module, example, tmp, opset=opset)
        except _ExportFailure as exc:
            other = f"opset >= {_DYNAMO_MIN_OPSET}" if opset < _DYNAMO_MIN_OPSET else "exporter='dynamo'"
            raise ExportCheckError(
                f"ONNX export of {name} (TorchScript exporter, opset {opset}) failed: {exc}: "
                f"remove data-dependent Python control flow from forward() or use {other}"
            ) from exc.__cause__
        return "torchscript"
    try:
        _export_dynamo(module, example, tmp, opset=opset)
        return "dynamo"
    except _ExportFailure as dynamo_error:
        if exporter == "dynamo" or not _has_torchscript_exporter():
            raise ExportCheckError(
                f"ONNX export of {name} with torch.export failed: {dynamo_error}: "
                "make forward() traceable by torch.export (no data-dependent Python control flow)"
            ) from dynamo_error.__cause__
        try:
            _export_torchscript(module, example, tmp, opset=opset)
        except _ExportFailure as torchscript_error:
            raise ExportCheckError(
                f"ONNX export of {name} failed with torch.export ({dynamo_error}) and with the TorchScript "
                f"fallback ({torchscript_error}): remove data-dependent Python control flow from forward()"
            ) from dynamo_error.__cause__
        return "torchscript"


def _export_dynamo(module: nn.Module, example: torch.Tensor, tmp: Path, *, opset: int) -> None:
    """Export with the ``torch.export``-based exporter, weights embedded, dynamic batch axis.

    Args:
        module: float32 CPU model in eval mode.
        example: example input with batch size 2 (``torch.export`` specialises sizes 0 and 1).
        tmp: file to write.
        opset: target opset (>= 18).

    Raises:
        _ExportFailure: when this torch lacks the exporter, or ``torch.export`` / the ONNX translation fails.
    """
    params = inspect.signature(torch.onnx.export).parameters
    if "dynamo" not in params:
        raise _ExportFailure(f"torch {torch.__version__} has no torch.export-based ONNX exporter")
    kwargs: dict[str, Any] = {
        "input_names": [INPUT_NAME],
        "output_names": [OUTPUT_NAME],
        "opset_version": opset,
        "dynamo": True,
        "dynamic_shapes": ({0: torch.export.Dim(BATCH_AXIS_NAME, min=1)},),
        "verbose": False,
    }
    if "external_data" in params:
        kwargs["external_data"] = False
    if "report" in params:
        kwargs["report"] = False
    try:
        with _quiet():
            torch.onnx.export(module, (example,), str(tmp), **kwargs)
    except Exception as exc:  # noqa: BLE001 - every exporter failure becomes one line
        raise _ExportFailure(_one_line(exc)) from exc


def _has_torchscript_exporter() -> bool:
    """Whether this torch still ships the legacy TorchScript ONNX exporter.

    Returns:
        True when ``torch.onnx.export(..., dynamo=False)`` can be called.
    """
    params = inspect.signature(torch.onnx.export).parameters
    return "dynamo" not in params or "dynamic_axes" in params


def _export_torchscript(module: nn.Module, example: torch.Tensor, tmp: Path, *, opset: int) -> None:
    """Export with the legacy TorchScript tracer, dynamic batch axis via ``dynamic_axes``.

    Args:
        module: float32 CPU model in eval mode.
        example: example input.
        tmp: file to write.
        opset: target opset.

    Raises:
        _ExportFailure: when this torch lacks the exporter, tracing fails, or tracing raises a ``TracerWarning``
            (the graph would be specialised to the example input).
    """
    if not _has_torchscript_exporter():
        raise _ExportFailure(f"torch {torch.__version__} no longer has the TorchScript ONNX exporter")
    kwargs: dict[str, Any] = {
        "input_names": [INPUT_NAME],
        "output_names": [OUTPUT_NAME],
        "opset_version": opset,
        "dynamic_axes": {INPUT_NAME: {0: BATCH_AXIS_NAME}, OUTPUT_NAME: {0: BATCH_AXIS_NAME}},
        "do_constant_folding": True,
    }
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False
    try:
        with _quiet() as caught:
            torch.onnx.export(module, (example,), str(tmp), **kwargs)
    except Exception as exc:  # noqa: BLE001 - every exporter failure becomes one line
        raise _ExportFailure(_one_line(exc)) from exc
    tracer_warnings = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    if tracer_warnings:
        raise _ExportFailure(f"trace specialised to the example input: {_one_line(tracer_warnings[0].message)}")


def _one_line(exc: BaseException | Warning | str) -> str:
    """Condense an exception (its innermost cause) into one short line.

    Args:
        exc: the exception, warning or message.

    Returns:
        ``"Type: first line"`` without colour codes, at most ~200 characters.
    """
    root: Any = exc
    if isinstance(exc, BaseException):
        while root.__cause__ is not None:
            root = root.__cause__
    lines = [line.strip() for line in _ANSI.sub("", str(root)).splitlines() if line.strip()]
    text = lines[0] if lines else "(no message)"
    if len(text) > 160:
        text = text[:157] + "..."
    return f"{type(root).__name__}: {text}" if isinstance(root, BaseException) else text


# ------------------------------------------------------------------------------------------------ check/verify


def _check_file(tmp: Path, *, target: Path, opset: int) -> int:
    """Run ``onnx.checker`` and check names, single output, dynamic batch axis, embedded weights and opset.

    Args:
        tmp: the exported file.
        target: the final path (for messages).
        opset: the requested opset.

    Returns:
        The default-domain opset of the file.

    Raises:
        ExportCheckError: naming the first problem.
    """
    import onnx

    try:
        onnx.checker.check_model(str(tmp))
        proto = onnx.load(str(tmp), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - checker and protobuf errors alike
        raise ExportCheckError(f"onnx.checker rejected the export for {target}: {_one_line(exc)}") from exc
    graph = proto.graph
    if len(graph.input) != 1 or len(graph.output) != 1:
        raise ExportCheckError(
            f"export for {target} has {len(graph.input)} inputs and {len(graph.output)} outputs: "
            "forward() must take one image batch and return one logits tensor"
        )
    names = (graph.input[0].name, graph.output[0].name)
    if names != (INPUT_NAME, OUTPUT_NAME):
        raise ExportCheckError(f"export for {target} names its input/output {names}, not {(INPUT_NAME, OUTPUT_NAME)}")
    for value in (graph.input[0], graph.output[0]):
        dims = value.type.tensor_type.shape.dim
        if not dims or dims[0].HasField("dim_value"):
            raise ExportCheckError(
                f"export for {target} has a fixed batch axis on {value.name!r}: "
                "forward() must not depend on the batch size"
            )
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.initializer):
        raise ExportCheckError(f"export for {target} stores weights in an external file: the model is too large")
    versions = {entry.domain: entry.version for entry in proto.opset_import}
    file_opset = int(versions.get("", versions.get("ai.onnx", 0)))
    if file_opset != opset:
        raise ExportCheckError(f"export for {target} has opset {file_opset}, not the requested {opset}")
    return file_opset


def _batch_sizes(count: int) -> list[int]:
    """Split ``count`` inputs into two batches of different sizes where possible.

    Args:
        count: number of inputs (>= 1).

    Returns:
        Batch sizes summing to ``count``, e.g. ``[33, 31]`` for 64.
    """
    if count == 1:
        return [1]
    if count == 2:
        return [1, 1]
    first = count // 2 + 1
    return [first, count - first]


def _verify(
    module: nn.Module, tmp: Path, *, shape: tuple[int, int, int], count: int, seed: int, providers: list[Any]
) -> tuple[float, float, str, float]:
    """Compare onnxruntime against PyTorch on fixed-seed standard-normal inputs.

    Args:
        module: the float32 CPU model that was exported.
        tmp: the exported file.
        shape: ``(C, H, W)``.
        count: number of inputs.
        seed: generator seed.
        providers: onnxruntime ``providers`` list.

    Returns:
        ``(max_abs_diff, top1_agreement_percent, provider_used, largest_abs_pytorch_logit)``; max_abs_diff is
        ``inf`` when any logit is not finite or shapes differ.

    Raises:
        ExportCheckError: when onnxruntime cannot load or run the file.
    """
    import onnxruntime as ort

    inputs = torch.randn((count, *shape), generator=torch.Generator().manual_seed(seed))
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: no provider-assignment chatter on stderr
    try:
        with _quiet():
            session = ort.InferenceSession(str(tmp), sess_options=options, providers=providers)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several unrelated types
        raise ExportCheckError(f"onnxruntime cannot load the export: {_one_line(exc)}") from exc
    used = session.get_providers()[0]

    max_diff = 0.0
    scale = 0.0
    agree = 0
    start = 0
    for size in _batch_sizes(count):
        chunk = inputs[start : start + size]
        start += size
        try:
            (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: chunk.numpy()})
        except Exception as exc:  # noqa: BLE001
            raise ExportCheckError(
                f"onnxruntime failed to run the export on a batch of {size}: {_one_line(exc)}"
            ) from exc
        with torch.inference_mode():
            ref = module(chunk)
        if not isinstance(ref, torch.Tensor):
            raise ExportCheckError(
                f"{type(module).__name__}.forward returned {type(ref).__name__}, not one logits tensor"
            )
        want = ref.detach().float().numpy()
        got = np.asarray(got, dtype=np.float32)
        if got.shape != want.shape or not (np.isfinite(got).all() and np.isfinite(want).all()):
            max_diff = math.inf
        else:
            max_diff = max(max_diff, float(np.max(np.abs(got - want))) if got.size else 0.0)
            scale = max(scale, float(np.max(np.abs(want))) if want.size else 0.0)
        if got.shape == want.shape and got.size:
            agree += int((got.reshape(size, -1).argmax(1) == want.reshape(size, -1).argmax(1)).sum())
    return max_diff, 100.0 * agree / count, used, scale
