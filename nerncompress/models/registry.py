"""The one map from architecture names to builders and checkpoint detectors.

Each registered entry pairs a builder (``**kwargs -> nn.Module``) with an optional detector
(``state_dict -> kwargs | None``), so that the kwargs a detector reads off a checkpoint are always the kwargs its
builder accepts. Besides registered names, two open-ended forms are understood:

* ``"torchvision:<name>"``: any model of ``torchvision.models.get_model(name, weights=None, **kwargs)``. Every
  classification model is also auto-detected (``torchvision_models.py`` registers that family).
* ``"pkg.module:function"``: a user builder, imported and called with the spec's kwargs (none when resolved from
  ``--arch``). Its preset and input shape default to ``"imagenet"`` and ``(3, 224, 224)``; the function may override
  them with ``function.preset = "cifar10"`` and ``function.input_shape = (3, 32, 32)`` attributes.

Trust: importing a user builder runs its module's code. A spec the caller makes (``resolve_arch`` of the user's own
``--arch``, ``ArchSpec(...)`` in code) is trusted. A spec read from a file (``ArchSpec.from_dict``, which
``load_artifact`` uses) is trusted only when the caller says so once, as it loads the file
(``load_artifact(path, trust_code=True)``, the CLI's ``--trust-code``). Building an untrusted spec
(``get_arch``/``build_model`` and everything built on them) refuses a user builder with a UsageError, and refuses
kwargs outside the
bounds its registered architecture declares (``register_arch(limits=...)``) or an outsized input shape with an
ArchDetectionError, so that a crafted file can neither run code nor make the machine build a gigantic model.
``check_arch`` applies these rules without building anything.

Detection: ``detect_arch`` asks every registered detector and every registered family (``register_family``: one
detector for an open-ended set of names, such as all torchvision models) and accepts exactly one answer.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import re
import sys
import types
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ..checkpoint import SHARED_PREFIXES, WRAPPER_PREFIXES
from ..errors import ArchDetectionError, UsageError

__all__ = [
    "ArchSpec",
    "build_on_meta",
    "build_model",
    "check_arch",
    "detect_arch",
    "get_arch",
    "list_archs",
    "matches_shapes",
    "meta_shapes",
    "register_arch",
    "register_family",
    "resolve_arch",
    "shapes_match",
]

Builder = Callable[..., nn.Module]
Detector = Callable[[Mapping[str, Tensor]], "dict[str, Any] | None"]
Shapes = dict[str, tuple[int, ...]]

TORCHVISION_PREFIX = "torchvision:"
_DEFAULT_PRESET = "imagenet"
_DEFAULT_INPUT_SHAPE = (3, 224, 224)
_BN_COUNTER = "num_batches_tracked"
# Last path segments that name a classifier head in torchvision-style models.
_HEAD_NAMES = {"fc", "classifier", "head", "heads", "linear", "logits", "last_linear"}
_USER_BUILDER = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
# Bounds on what an untrusted spec (read from a file) may ask for. Registered architectures declare their own
# integer kwargs' bounds (``register_arch(limits=...)``); any other kwarg may only be a bool or None.
MAX_NUM_CLASSES = 100_000
TORCHVISION_LIMITS: dict[str, int] = {"num_classes": MAX_NUM_CLASSES}  # torchvision:<name> models not registered
MAX_INPUT_CHANNELS = 64
MAX_INPUT_ELEMENTS = 2**24  # C * H * W of one image: 16.7M values (4096 x 4096 x 1, 2364 x 2364 x 3)


@dataclass(frozen=True)
class ArchSpec:
    """Everything needed to rebuild an untrained model and feed it data.

    Attributes:
        name: registered name, ``"torchvision:<name>"`` or ``"pkg.module:function"``.
        kwargs: JSON-serialisable builder kwargs, e.g. ``{"depth": 56, "num_classes": 10}``.
        preset: normalisation preset name (a key of ``data.NORMALIZATION_PRESETS``).
        input_shape: ``(C, H, W)`` of one input image.
        untrusted: read from an untrusted file (``from_dict``): building it refuses user builders and bounds its
            kwargs (see the module docstring). Not part of equality, hashing or ``to_dict``.
    """

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    preset: str = _DEFAULT_PRESET
    input_shape: tuple[int, int, int] = _DEFAULT_INPUT_SHAPE
    untrusted: bool = field(default=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        # A private copy, so that a caller mutating its dict cannot change a frozen spec.
        object.__setattr__(self, "kwargs", dict(self.kwargs))
        shape = tuple(int(v) for v in self.input_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ArchDetectionError(
                f"arch {self.name!r}: input_shape must be three positive ints (C, H, W), got {self.input_shape!r}"
            )
        object.__setattr__(self, "input_shape", shape)

    def __hash__(self) -> int:
        return hash((self.name, json.dumps(self.kwargs, sort_keys=True, default=repr), self.preset, self.input_shape))

    def trusted(self) -> ArchSpec:
        """The same spec, trusted: the caller vouches for the file it came from (``trust_code=True``)."""
        return dataclasses.replace(self, untrusted=False) if self.untrusted else self

    def is_user_builder(self) -> bool:
        """Whether building this spec imports user code (``pkg.module:function``, not registered)."""
        return self.name not in _REGISTRY and not self.name.startswith(TORCHVISION_PREFIX)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly copy.

        Returns:
            ``{"name", "kwargs", "preset", "input_shape"}`` with ``input_shape`` as a list.
        """
        return {
            "name": self.name,
            "kwargs": dict(self.kwargs),
            "preset": self.preset,
            "input_shape": list(self.input_shape),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, trusted: bool = False) -> ArchSpec:
        """Inverse of :meth:`to_dict`.

        Args:
            data: a mapping with ``name`` (required), ``kwargs``, ``preset`` and ``input_shape``.
            trusted: False (the default) marks the spec ``untrusted``: it comes from a file.

        Returns:
            The spec.

        Raises:
            ArchDetectionError: when ``data`` is not a mapping, lacks ``name`` or has fields of the wrong type.
        """
        if not isinstance(data, Mapping) or not isinstance(data.get("name"), str):
            raise ArchDetectionError(f"arch spec must be a mapping with a string 'name', got {data!r}")
        kwargs = data.get("kwargs", {})
        if not isinstance(kwargs, Mapping):
            raise ArchDetectionError(f"arch spec {data['name']!r}: 'kwargs' must be a mapping, got {kwargs!r}")
        shape = data.get("input_shape", _DEFAULT_INPUT_SHAPE)
        if not isinstance(shape, (list, tuple)):
            raise ArchDetectionError(f"arch spec {data['name']!r}: 'input_shape' must be a list, got {shape!r}")
        return cls(
            name=data["name"],
            kwargs=dict(kwargs),
            preset=str(data.get("preset", _DEFAULT_PRESET)),
            input_shape=tuple(shape),  # type: ignore[arg-type]
            untrusted=not trusted,
        )


@dataclass(frozen=True)
class _Entry:
    builder: Builder
    detector: Detector | None
    preset: str
    input_shape: tuple[int, int, int]
    limits: Mapping[str, int] | None = None


_REGISTRY: dict[str, _Entry] = {}


@dataclass(frozen=True)
class _Family:
    label: str
    detect: Callable[[Mapping[str, Tensor]], "list[ArchSpec]"]
    fit: Callable[[str, Mapping[str, Tensor]], "ArchSpec | None"]


_FAMILIES: dict[str, _Family] = {}  # name prefix (e.g. "torchvision:") -> family


def register_family(
    prefix: str,
    *,
    label: str,
    detect: Callable[[Mapping[str, Tensor]], list[ArchSpec]],
    fit: Callable[[str, Mapping[str, Tensor]], ArchSpec | None],
) -> None:
    """Register auto-detection for an open-ended set of names ``prefix + name`` that are built without entries.

    Args:
        prefix: the names' common prefix; only ``"torchvision:"`` has a builder (see :func:`get_arch`).
        label: how the family is named in the list of detectors tried, e.g. ``"torchvision:<every classification
            model>"``.
        detect: ``state_dict -> specs`` that fit it exactly (empty when none).
        fit: ``(name without prefix, state_dict) -> spec`` of that name fitting the checkpoint exactly, or None.

    Raises:
        ValueError: when ``prefix`` already has a family.
    """
    if prefix in _FAMILIES:
        raise ValueError(f"A family of architectures with prefix {prefix!r} is already registered")
    _FAMILIES[prefix] = _Family(label, detect, fit)


def register_arch(
    name: str,
    *,
    detector: Detector | None = None,
    preset: str = _DEFAULT_PRESET,
    input_shape: tuple[int, int, int] = _DEFAULT_INPUT_SHAPE,
    limits: Mapping[str, int] | None = None,
) -> Callable[[Builder], Builder]:
    """Decorator that registers a builder under ``name``.

    Args:
        name: the architecture name used by ``--arch`` and stored in artifacts.
        detector: ``state_dict -> kwargs | None``; returns the builder kwargs when the (normalised) state_dict is
            exactly this architecture, ``None`` otherwise. Entries without a detector are never auto-detected.
        preset: normalisation preset name.
        input_shape: ``(C, H, W)`` of one input image.
        limits: the largest value of each integer kwarg a spec read from a file may ask for (e.g.
            ``{"depth": 1202}``); other kwargs from a file may only be bools or None. None: kwargs are not checked.

    Returns:
        A decorator that returns the builder unchanged.

    Raises:
        ValueError: when ``name`` is already registered.
    """

    def wrap(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"An architecture named {name!r} is already registered")
        shape = tuple(int(v) for v in input_shape)
        bounds = None if limits is None else dict(limits)
        _REGISTRY[name] = _Entry(builder, detector, preset, shape, bounds)  # type: ignore[arg-type]
        return builder

    return wrap


def list_archs() -> list[str]:
    """Registered architecture names, sorted.

    Returns:
        The names; ``torchvision:<name>`` and ``pkg.module:function`` forms are accepted as well.
    """
    return sorted(_REGISTRY)


def _available() -> str:
    return ", ".join(list_archs()) + ", torchvision:<name>, pkg.module:function"


def _import_user_builder(name: str) -> Builder:
    module_name, _, attr = name.partition(":")
    try:
        module = _import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import failure of user code is reported the same way
        hint = ""
        if isinstance(exc, ModuleNotFoundError) and exc.name == module_name.partition(".")[0]:
            hint = f"; put {exc.name}.py (or a package {exc.name}/) in the current folder, or its folder on PYTHONPATH"
        raise ArchDetectionError(
            f"cannot import module {module_name!r} for --arch {name}: {type(exc).__name__}: {_first_line(exc)}{hint}"
        ) from exc
    builder = getattr(module, attr, None)
    if not callable(builder):
        raise ArchDetectionError(f"module {module_name!r} has no callable {attr!r}: check the architecture {name} (--arch)")
    return builder


def _import_module(module_name: str) -> Any:
    """Import ``module_name``; a top-level module found nowhere else is looked for in the current folder.

    The console script's ``sys.path`` lacks the current folder (``python -m`` has it), so ``--arch mymodule:build``
    with ``mymodule.py`` next to the user would not import. The folder is appended to ``sys.path``, after every
    installed package, so it never shadows one.
    """
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        top = module_name.partition(".")[0]
        here = os.path.abspath(os.getcwd())
        local = Path(here, f"{top}.py").is_file() or Path(here, top, "__init__.py").is_file()
        if exc.name != top or not local or here in sys.path:
            raise
    sys.path.append(here)
    importlib.invalidate_caches()
    return importlib.import_module(module_name)


def _torchvision_names() -> list[str]:
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def build_torchvision(tv_name: str, kwargs: dict[str, Any]) -> nn.Module:
    """``torchvision.models.get_model(tv_name, weights=None, **kwargs)``, ready for plain state_dicts (MNASNet).

    Raises:
        ArchDetectionError: for a name that is not a torchvision classification model.
    """
    import torchvision

    if tv_name not in _torchvision_names():
        raise ArchDetectionError(
            f"unknown torchvision model {tv_name!r}: see torchvision.models.list_models() for the names"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # googlenet / inception_v3: "default weight init will change"
        model = torchvision.models.get_model(tv_name, weights=None, **kwargs)
    for module in model.modules():
        if isinstance(module, torchvision.models.MNASNet):
            # An instance attribute: a bound method, so that deepcopy rebinds it to the copy.
            module._load_from_state_dict = types.MethodType(_load_current_version, module)  # type: ignore
    return model


def _load_current_version(module: nn.Module, state_dict: Any, prefix: str, local_metadata: dict, *args: Any) -> None:
    """MNASNet's loader, with the state_dict's version defaulting to the current one.

    MNASNet refuses a state_dict without version metadata, which plain dicts (safetensors files, dict copies) lack.
    Keys and shapes are checked against the current layout before loading, so the current version is the right one.
    """
    local_metadata = {"version": type(module)._version, **local_metadata}
    type(module)._load_from_state_dict(module, state_dict, prefix, local_metadata, *args)


def check_arch(spec: ArchSpec | str, **kwargs: Any) -> None:
    """Refuse, without building or importing anything, an untrusted spec that may not be built.

    Only specs marked ``untrusted`` (read from a file not trusted by its loader) are checked. Names and
    ``ArchSpec`` objects made by the caller are the caller's own choice and pass.

    Args:
        spec: the spec to build.
        **kwargs: builder kwargs that override those of ``spec`` (as in ``get_arch``).

    Raises:
        UsageError: the spec names a user builder (``pkg.module:function``), whose module building would import.
        ArchDetectionError: a kwarg beyond its architecture's bounds, or not allowed from a file, or an input shape
            beyond ``MAX_INPUT_CHANNELS`` / ``MAX_INPUT_ELEMENTS``.
    """
    if not isinstance(spec, ArchSpec) or not spec.untrusted:
        return
    name = spec.name
    if spec.is_user_builder():
        if not _USER_BUILDER.match(name):
            return  # an unknown name: get_arch refuses it without importing anything
        raise UsageError(
            f"the file's architecture {name!r} is a user builder: building it imports module "
            f"{name.partition(':')[0]!r} and runs its code; load the file with trust_code=True (--trust-code) only "
            "if you trust it"
        )
    channels, height, width = spec.input_shape
    if channels > MAX_INPUT_CHANNELS or channels * height * width > MAX_INPUT_ELEMENTS:
        raise ArchDetectionError(
            f"arch {name}: input shape {spec.input_shape} from the file is beyond the bounds ({MAX_INPUT_CHANNELS} "
            f"channels, {MAX_INPUT_ELEMENTS:,} values): corrupt or crafted? load the file with trust_code=True "
            "(--trust-code) only if you trust it"
        )
    limits = _REGISTRY[name].limits if name in _REGISTRY else TORCHVISION_LIMITS
    if limits is None:
        return
    for key, value in {**spec.kwargs, **kwargs}.items():
        bound = limits.get(key)
        if bound is None:
            if value is None or isinstance(value, bool):
                continue
            allowed = ", ".join(sorted(limits)) or "none"
            raise ArchDetectionError(
                f"arch {name}: kwarg {key}={value!r} from the file is not allowed there (integer kwargs: {allowed}); "
                "load the file with trust_code=True (--trust-code) only if you trust it"
            )
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= bound:
            raise ArchDetectionError(
                f"arch {name}: kwarg {key}={value!r} from the file is out of bounds (an int in 1..{bound}): corrupt "
                "or crafted? load the file with trust_code=True (--trust-code) only if you trust it"
            )


def get_arch(spec: ArchSpec | str, **kwargs: Any) -> nn.Module:
    """Build an untrained model.

    Args:
        spec: an :class:`ArchSpec`, or a name (registered, ``torchvision:<name>`` or ``pkg.module:function``).
        **kwargs: builder kwargs; they override those of ``spec``.

    Returns:
        The freshly initialised model.

    Raises:
        UsageError: an untrusted spec names a user builder.
        ArchDetectionError: for an unknown name, an unimportable user builder, kwargs the builder rejects, or an
            untrusted spec beyond the bounds (see :func:`check_arch`).
    """
    check_arch(spec, **kwargs)
    if isinstance(spec, ArchSpec):
        name, merged = spec.name, {**spec.kwargs, **kwargs}
    else:
        name, merged = spec, dict(kwargs)
    if name in _REGISTRY:
        builder: Builder = _REGISTRY[name].builder
    elif name.startswith(TORCHVISION_PREFIX):
        tv_name = name[len(TORCHVISION_PREFIX) :]
        builder = lambda **kw: build_torchvision(tv_name, kw)  # noqa: E731
    elif _USER_BUILDER.match(name):
        builder = _import_user_builder(name)
    else:
        raise ArchDetectionError(f"unknown architecture {name!r}: choose one of {_available()}")
    try:
        model = builder(**merged)
    except TypeError as exc:
        raise ArchDetectionError(
            f"architecture {name!r} rejected kwargs {merged!r}: {_first_line(exc)}"
        ) from exc
    if not isinstance(model, nn.Module):
        raise ArchDetectionError(f"builder for {name!r} returned {type(model).__name__}, not an nn.Module")
    return model


def _spec_for(name: str, kwargs: dict[str, Any]) -> ArchSpec:
    entry = _REGISTRY[name]
    return ArchSpec(name=name, kwargs=kwargs, preset=entry.preset, input_shape=entry.input_shape)


def _run_detectors(state_dict: Mapping[str, Tensor]) -> tuple[list[str], list[ArchSpec]]:
    tried: list[str] = []
    found: list[ArchSpec] = []
    for name in list_archs():
        entry = _REGISTRY[name]
        if entry.detector is None:
            continue
        tried.append(name)
        try:
            kwargs = entry.detector(state_dict)
        except Exception:  # noqa: BLE001 - a detector that chokes on a foreign checkpoint simply does not match
            kwargs = None
        if kwargs is not None:
            found.append(_spec_for(name, dict(kwargs)))
    for family in _FAMILIES.values():
        tried.append(family.label)
        try:
            found.extend(family.detect(state_dict))
        except Exception:  # noqa: BLE001 - same contract as a detector
            continue
    return tried, found


def _common_prefix(keys: list[str]) -> str:
    """The longest dotted prefix (ending in ".") that every key shares and that no key equals."""
    if not keys:
        return ""
    parts = keys[0].split(".")[:-1]
    for key in keys[1:]:
        other = key.split(".")[:-1]
        count = 0
        while count < min(len(parts), len(other)) and parts[count] == other[count]:
            count += 1
        parts = parts[:count]
        if not parts:
            return ""
    return ".".join(parts) + "."


def _prefix_hint(state_dict: Mapping[str, Tensor]) -> str:
    keys = list(state_dict)
    first = keys[0] if keys else ""
    known = WRAPPER_PREFIXES + SHARED_PREFIXES
    for prefix in known:
        if first.startswith(prefix) and all(k.startswith(prefix) for k in keys):
            return f"; keys start with {prefix!r}: normalise them with checkpoint.normalize_state_dict first"
    shared = _common_prefix(keys)
    if len(keys) > 1 and shared:
        return (
            f"; every key starts with {shared!r}, a prefix that is not stripped (only {', '.join(known)} are): "
            f"if it wraps the model, save the inner model's state_dict (or remove {shared!r} from the keys)"
        )
    return ""


def detect_arch(state_dict: Mapping[str, Tensor]) -> ArchSpec:
    """Find the one registered architecture whose detector accepts ``state_dict``.

    Args:
        state_dict: a normalised state_dict (see ``checkpoint.normalize_state_dict``).

    Returns:
        The spec with the detected kwargs.

    Raises:
        ArchDetectionError: when no detector or more than one matches; the message names the detectors tried.
    """
    tried, found = _run_detectors(state_dict)
    if len(found) == 1:
        return found[0]
    if found:
        names = ", ".join(spec.name for spec in found)
        raise ArchDetectionError(
            f"checkpoint fits several architectures exactly ({names}): name the right one (arch=...), "
            f"e.g. --arch {found[0].name}"
        )
    first = next(iter(state_dict), None)
    raise ArchDetectionError(
        f"no registered architecture matches the checkpoint ({len(state_dict)} tensors, first key {first!r}); "
        f"tried {', '.join(tried) or 'no detectors'}: pass --arch NAME, --arch torchvision:<name> "
        f"or --arch pkg.module:function{_prefix_hint(state_dict)}"
    )


def _classifier_rows(state_dict: Mapping[str, Tensor]) -> int | None:
    """Rows of the last 2-D weight of a classifier-named module, else of the last 2-D weight."""
    matrices = [k for k, v in state_dict.items() if k.endswith(".weight") and getattr(v, "ndim", 0) == 2]
    heads = [k for k in matrices if _HEAD_NAMES.intersection(k.split(".")[:-1])]
    chosen = (heads or matrices or [None])[-1]
    return None if chosen is None else int(state_dict[chosen].shape[0])


def resolve_arch(arch: str | None, state_dict: Mapping[str, Tensor]) -> ArchSpec:
    """Turn an ``--arch`` value (or its absence) into a spec that fits ``state_dict``.

    Args:
        arch: ``None`` to auto-detect; a registered name; ``"torchvision:<name>"`` (kwargs such as ``num_classes``
            read from the checkpoint as auto-detection reads them; when it does not fit exactly, ``num_classes`` is
            the rows of its last classifier weight and :func:`build_model` reports the difference); or
            ``"pkg.module:function"`` (a user builder called with no arguments; preset and input shape from its
            ``preset`` / ``input_shape`` attributes when present).
        state_dict: the normalised checkpoint.

    Returns:
        The spec. Whether the weights really fit is checked by :func:`build_model`.

    Raises:
        ArchDetectionError: when detection fails, a registered arch does not fit the checkpoint, or the name is
            unknown or cannot be imported.
    """
    if arch is None:
        return detect_arch(state_dict)
    if arch in _REGISTRY:
        entry = _REGISTRY[arch]
        kwargs = None
        if entry.detector is not None:
            try:
                kwargs = entry.detector(state_dict)
            except Exception:  # noqa: BLE001 - same contract as in detect_arch
                kwargs = None
        if kwargs is not None:
            return _spec_for(arch, dict(kwargs))
        if entry.detector is None:
            return _spec_for(arch, {})
        if not arch.startswith(TORCHVISION_PREFIX):
            _, found = _run_detectors(state_dict)
            hint = f" (it looks like {', '.join(s.name for s in found)})" if found else ""
            raise ArchDetectionError(
                f"checkpoint does not fit --arch {arch}: its keys or shapes differ from every {arch} "
                f"configuration{hint}; omit --arch to auto-detect{_prefix_hint(state_dict)}"
            )
    if arch.startswith(TORCHVISION_PREFIX):
        tv_name = arch[len(TORCHVISION_PREFIX) :]
        if tv_name not in _torchvision_names():
            raise ArchDetectionError(
                f"unknown torchvision model {tv_name!r} in --arch {arch}: see torchvision.models.list_models()"
            )
        family = _FAMILIES.get(TORCHVISION_PREFIX)
        fitted = None if family is None else family.fit(tv_name, state_dict)
        if fitted is not None:
            return fitted
        rows = _classifier_rows(state_dict)  # a guess: build_model names the first key that does not fit
        kwargs = {} if rows is None else {"num_classes": rows}
        return ArchSpec(name=arch, kwargs=kwargs, preset=_DEFAULT_PRESET, input_shape=_DEFAULT_INPUT_SHAPE)
    if _USER_BUILDER.match(arch):
        builder = _import_user_builder(arch)
        return ArchSpec(
            name=arch,
            kwargs={},
            preset=str(getattr(builder, "preset", _DEFAULT_PRESET)),
            input_shape=tuple(getattr(builder, "input_shape", _DEFAULT_INPUT_SHAPE)),  # type: ignore[arg-type]
        )
    raise ArchDetectionError(f"unknown architecture {arch!r}: choose one of {_available()}")


class _MetaAllocations(TorchFunctionMode):
    """Puts tensor allocations (empty, zeros, ones, full, rand*) on the meta device and leaves tensors built from
    values (arange, tensor, linspace) on the CPU, for builders that compute layer widths with torch (RegNet)."""

    _ALLOCATORS = frozenset(
        {torch.empty, torch.empty_strided, torch.zeros, torch.ones, torch.full, torch.rand, torch.randn, torch.eye}
    )

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = dict(kwargs or {})
        if func in self._ALLOCATORS and kwargs.get("device") is None:
            kwargs["device"] = "meta"
        return func(*args, **kwargs)


def build_on_meta(build: Callable[[], nn.Module]) -> nn.Module:
    """The model ``build()`` returns, built on the meta device: shapes only, no memory, no initialisation.

    Builders that read values of tensors they create (RegNet computes its widths with torch) fail on the meta
    device; they are built again with only their allocations on it.

    Args:
        build: a no-argument callable building the model.

    Returns:
        The model, its parameters and buffers on the meta device (small index buffers may stay on the CPU).
    """
    try:
        with torch.device("meta"):
            return build()
    except NotImplementedError:  # "Cannot copy out of meta tensor": the builder computes with tensor values
        with _MetaAllocations():
            return build()


def meta_shapes(build: Callable[[], nn.Module]) -> Shapes:
    """The state_dict shapes of the model ``build()`` returns, built with :func:`build_on_meta`.

    Args:
        build: a no-argument callable building the model.

    Returns:
        ``{key: shape}`` in state_dict order.
    """
    return {key: tuple(value.shape) for key, value in build_on_meta(build).state_dict().items()}


def shapes_match(state_dict: Mapping[str, Tensor], shapes: Mapping[str, tuple[int, ...]]) -> bool:
    """Whether ``state_dict`` has exactly the keys and shapes ``shapes``; ``num_batches_tracked`` may be absent."""
    wanted = {k for k in shapes if not k.endswith(_BN_COUNTER) or k in state_dict}
    if len(wanted) != len(state_dict) or not wanted.issuperset(state_dict):
        return False
    return all(tuple(state_dict[k].shape) == shapes[k] for k in wanted)


def matches_shapes(state_dict: Mapping[str, Tensor], build: Callable[[], nn.Module]) -> bool:
    """Whether ``state_dict`` has exactly the keys and shapes of the model ``build()`` returns.

    The model is built on the meta device, so this is cheap even for large models. ``num_batches_tracked`` keys
    may be absent from ``state_dict`` (older checkpoints lack them). Meant for detectors.

    Args:
        state_dict: the normalised checkpoint.
        build: a no-argument callable building the candidate model.

    Returns:
        True on an exact match.
    """
    return shapes_match(state_dict, meta_shapes(build))


def _restore_shared_prefix(state_dict: Mapping[str, Tensor], own: Mapping[str, Tensor]) -> Mapping[str, Tensor]:
    """Put back the wrapper prefixes that ``normalize_state_dict`` stripped but the model itself has.

    A user builder may return the wrapper (e.g. a Lightning module whose weights are all under ``model.``).
    """
    if not state_dict or any(key in own for key in state_dict):
        return state_dict
    keys, prefix, known = list(own), "", WRAPPER_PREFIXES + SHARED_PREFIXES
    while True:
        step = next((p for p in known if all(k.startswith(prefix + p) for k in keys)), None)
        if step is None:
            return state_dict
        prefix += step
        if all(prefix + key in own for key in state_dict):
            return {prefix + key: value for key, value in state_dict.items()}


def _shape(t: Tensor) -> str:
    return "(" + ", ".join(str(d) for d in t.shape) + ")"


def build_model(spec: ArchSpec, state_dict: Mapping[str, Tensor] | None = None) -> nn.Module:
    """Build the model of ``spec`` and load ``state_dict`` strictly.

    Missing ``num_batches_tracked`` buffers are the only tolerated difference: they keep the model's own value.

    Args:
        spec: the architecture.
        state_dict: normalised weights, or ``None`` for an untrained model.

    Returns:
        The model, in eval mode, on the CPU.

    Raises:
        UsageError: an untrusted spec names a user builder.
        ArchDetectionError: for an unknown arch, an untrusted spec beyond the bounds, or a missing key, unexpected
            key or shape mismatch (the message names the first offending key).
    """
    model = get_arch(spec)
    if state_dict is not None:
        own = model.state_dict()
        state_dict = _restore_shared_prefix(state_dict, own)
        for key, ref in own.items():
            if key not in state_dict:
                if key.endswith(_BN_COUNTER):
                    continue
                missing = sum(1 for k in own if k not in state_dict and not k.endswith(_BN_COUNTER))
                raise ArchDetectionError(
                    f"checkpoint lacks key {key!r} that arch {spec.name} expects ({missing} missing in all): "
                    f"check --arch and its kwargs {spec.kwargs}{_prefix_hint(state_dict)}"
                )
            if tuple(state_dict[key].shape) != tuple(ref.shape):
                raise ArchDetectionError(
                    f"key {key!r} has shape {_shape(state_dict[key])} in the checkpoint but {_shape(ref)} in arch "
                    f"{spec.name} {spec.kwargs}: check --arch and its kwargs"
                )
        extra = [k for k in state_dict if k not in own]
        if extra:
            raise ArchDetectionError(
                f"checkpoint key {extra[0]!r} is not part of arch {spec.name} {spec.kwargs} ({len(extra)} unexpected "
                f"in all): check --arch{_prefix_hint(state_dict)}"
            )
        full = dict(state_dict)
        for key, ref in own.items():
            full.setdefault(key, ref)
        try:
            model.load_state_dict(full, strict=True)
        except RuntimeError as exc:
            detail = " ".join(str(exc).split())
            raise ArchDetectionError(f"cannot load checkpoint into arch {spec.name}: {detail}") from exc
    return model.eval()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

