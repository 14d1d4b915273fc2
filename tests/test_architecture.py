"""The layering of docs/ARCHITECTURE.md, checked on the imports themselves: no module imports one above it, and
the CLI imports nothing of the library but its public API."""

from __future__ import annotations

import ast
from pathlib import Path

import nerncompress

PACKAGE = Path(nerncompress.__file__).resolve().parent

# Lowest first. A module may import modules of its own layer or of layers below it (docs/ARCHITECTURE.md).
LAYERS: list[tuple[str, list[str]]] = [
    ("foundation", ["_version", "errors", "_io", "devices", "progress", "gate", "bitpack", "entropy",
                    "safetensors_io", "distributed"]),
    ("models and data", ["models", "checkpoint", "image_folder", "data"]),
    ("representation", ["embeddings", "permutations", "predictor", "layers", "quantization", "codes", "nern"]),
    ("storage", ["artifact"]),
    ("training", ["optim", "losses", "resume", "reconstruction", "distillation", "pruning", "rounding", "training",
                  "compression", "hybrid", "coding"]),
    ("export and evaluation", ["onnx_export", "exporter", "evaluation"]),
    ("jobs", ["report", "demo", "jobs"]),
    ("cli", ["cli", "__main__"]),
]
LAYER_OF = {module: index for index, (_, modules) in enumerate(LAYERS) for module in modules}


def _top_module(path: Path) -> str:
    """The first component below the package: ``models/registry.py`` -> ``models``, ``nern.py`` -> ``nern``."""
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def _internal_imports(path: Path) -> list[tuple[str, list[str]]]:
    """Every import of a nerncompress module anywhere in the file (lazy ones too), as (top module, names)."""
    tree = ast.parse(path.read_text())
    package_parts = path.relative_to(PACKAGE).parent.parts
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package_parts[: len(package_parts) - (node.level - 1)])
                target = base + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == "nerncompress":
                target = node.module.split(".")[1:]
            else:
                continue
            names = [alias.name for alias in node.names]
            if target:
                found.append((target[0], names))
            else:  # "from . import x" / "from .. import x": x names modules, or the package's API
                found += [(name, [name]) if (PACKAGE / name).exists() or (PACKAGE / f"{name}.py").exists()
                          else ("", [name]) for name in names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "nerncompress" and len(parts) > 1:
                    found.append((parts[1], []))
    return found


def _modules() -> list[Path]:
    return sorted(path for path in PACKAGE.rglob("*.py") if path.name != "__init__.py" or path.parent != PACKAGE)


def test_every_module_has_a_layer():
    missing = sorted({_top_module(path) for path in _modules()} - set(LAYER_OF))
    assert not missing, f"modules without a layer in LAYERS (and docs/ARCHITECTURE.md): {missing}"


def test_no_module_imports_one_above_it():
    upward = []
    for path in _modules():
        own = LAYER_OF[_top_module(path)]
        for target, _ in _internal_imports(path):
            if target and LAYER_OF.get(target, -1) > own:
                upward.append(f"{path.relative_to(PACKAGE)} ({LAYERS[own][0]}) imports {target} "
                              f"({LAYERS[LAYER_OF[target]][0]})")
    assert not upward, "\n".join(upward)


def test_cli_imports_only_the_public_api_and_itself():
    public = set(nerncompress.__all__)
    stray = []
    for path in sorted((PACKAGE / "cli").glob("*.py")):
        for target, names in _internal_imports(path):
            if target == "cli":
                continue
            if target == "":  # from .. import names: the package's public API
                stray += [f"{path.name}: {name}" for name in names if name not in public]
            else:
                stray.append(f"{path.name}: nerncompress.{target}")
    assert not stray, f"cli/ imports beyond nerncompress.__all__: {stray}"


def test_the_import_checker_sees_lazy_and_relative_imports(tmp_path):
    lazy = "def f():\n    from ..jobs import run_fit\n    import nerncompress.training\n"
    path = PACKAGE / "models" / "_probe_for_test.py"
    try:
        path.write_text(lazy)
        assert _internal_imports(path) == [("jobs", ["run_fit"]), ("training", [])]
    finally:
        path.unlink()
