"""The package's layers, read from the source with ``ast`` (docs/architecture.md).

Every module of ``jaxlrp`` has a layer; an import (top-level or inside a function) may
point to the same layer or a lower one, never up, and the module graph has no cycle.
The core (every layer but the top one) never imports torch, matplotlib or
tensorflow-datasets, except the lazy imports listed in ``LAZY_HEAVY``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "jaxlrp"

# Layer of each module, bottom (0) to top (5). A module path matches its longest listed
# prefix, so "jaxlrp._lrp" covers every module of jaxlrp/_lrp/.
LAYERS: dict[str, int] = {
    # 0 base: no jaxlrp imports
    "jaxlrp.errors": 0,
    "jaxlrp._atomic": 0,
    "jaxlrp._cache": 0,  # the one compile-cache layer
    "jaxlrp.registry": 0,  # the registry helper every extension point uses
    "jaxlrp.typing": 0,
    "jaxlrp.compilation_cache": 0,
    # 1 tracing and validation: the model adapter, input checks, image ops
    "jaxlrp._tracing": 1,
    "jaxlrp._validation": 1,
    "jaxlrp._image": 1,
    # 2 methods, architectures, data
    "jaxlrp.cam": 2,
    "jaxlrp._cam_core": 2,  # the CAM core: layer policy, activations/gradients, post-processing
    "jaxlrp._cam_exact": 2,
    "jaxlrp._lrp": 2,
    "jaxlrp.rules": 2,  # public namespaces of jaxlrp._lrp
    "jaxlrp.composites": 2,
    "jaxlrp.canonizers": 2,
    "jaxlrp.models": 4,  # the package's __init__: a lazy facade over models/, default too
    "jaxlrp.models.vgg": 2,
    "jaxlrp.models.resnet": 2,
    "jaxlrp.models.efficientnet": 2,
    "jaxlrp.models.softening": 2,
    "jaxlrp.data": 2,
    "jaxlrp.photos": 2,
    # 3 explainers built on the methods, metrics, training, persistence
    "jaxlrp._hybrid": 3,
    "jaxlrp.explainers": 3,
    "jaxlrp.panels": 3,
    "jaxlrp.metrics": 3,
    "jaxlrp.penalty": 3,
    "jaxlrp.training": 3,
    "jaxlrp.checkpoint": 3,
    # 4 drivers over explainers and metrics; the shipped models (checkpoint + recipe)
    "jaxlrp.evaluation": 4,
    "jaxlrp.distributed": 4,
    "jaxlrp.experiments": 4,
    "jaxlrp.models.default": 4,
    "jaxlrp.models.registry": 4,
    # 5 top: the command line, figures, PyTorch interop, the package facade
    "jaxlrp.cli": 5,
    "jaxlrp.viz": 5,
    "jaxlrp.convert": 5,
    "jaxlrp.twins": 5,
    "jaxlrp.__main__": 5,
    "jaxlrp": 5,
}
TOP = 5

# Upward edges that are allowed, each imported inside a function (never at import time).
ALLOWED_UP = {
    ("jaxlrp.evaluation.results", "jaxlrp.viz"):
        "Results.save draws the optional bar chart; without matplotlib it writes no chart",
}

HEAVY = ("torch", "torchvision", "matplotlib", "tensorflow_datasets")
# Core modules that may import a heavy package lazily (inside a function only).
LAZY_HEAVY = {
    ("jaxlrp.data.loaders", "tensorflow_datasets"): "jaxlrp.data.load('tfds:NAME') only",
}


def _modules() -> dict[str, Path]:
    out = {}
    for f in sorted(PACKAGE.rglob("*.py")):
        parts = list(f.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


MODULES = _modules()


def layer_of(module: str) -> int:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in LAYERS:
            return LAYERS[prefix]
    raise KeyError(module)


def _imports(module: str) -> list[tuple[str, bool]]:
    """``(imported name, at module level)`` for every import in ``module``: jaxlrp modules
    resolved to the submodule when one is imported, other packages to their top name."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    top_level = {id(n) for n in tree.body}
    for node in tree.body:  # imports under a module-level `if`/`try` still run at import
        if isinstance(node, (ast.If, ast.Try)):
            top_level |= {id(n) for n in ast.walk(node)}
    out = []
    for node in ast.walk(tree):
        eager = id(node) in top_level
        if isinstance(node, ast.Import):
            out += [(a.name, eager) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".") if is_pkg else module.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([base] if base else []))
            if base.split(".")[0] != "jaxlrp":
                out.append((base, eager))
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.append((sub if sub in MODULES else base, eager))
    out += [(name, False) for name in _lazy_table(module, tree, is_pkg)]
    return out


def _lazy_table(module: str, tree: ast.Module, is_pkg: bool) -> list[str]:
    """Modules named by a module-level ``_LAZY`` dict (attributes imported on first use):
    ``name -> "submodule"`` (relative to the package) or ``name -> ("module", attr)``."""
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "_LAZY" for t in targets):
                table = ast.literal_eval(node.value)
                break
    else:
        return []
    out = []
    for value in table.values():
        name = value[0] if isinstance(value, tuple) else value
        if "." not in name and is_pkg:
            name = f"{module}.{name}"
        out.append(name)
    return out


def _edges() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for m in MODULES:
        for name, _ in _imports(m):
            if name.split(".")[0] == "jaxlrp" and name != m:
                graph[m].add(name)
    return graph


def test_every_module_has_a_layer():
    missing = []
    for m in MODULES:
        try:
            layer_of(m)
        except KeyError:
            missing.append(m)
    assert not missing, f"add these modules to LAYERS (and docs/architecture.md): {missing}"


def test_imports_point_down():
    wrong = []
    for m, deps in _edges().items():
        for d in deps:
            if layer_of(d) > layer_of(m) and (m, d) not in ALLOWED_UP:
                wrong.append(f"{m} (layer {layer_of(m)}) imports {d} (layer {layer_of(d)})")
    assert not wrong, "imports pointing up:\n" + "\n".join(sorted(wrong))


def test_allowed_upward_imports_are_lazy():
    for (m, d), why in ALLOWED_UP.items():
        found = [eager for name, eager in _imports(m) if name == d]
        assert found, f"{m} no longer imports {d}: remove it from ALLOWED_UP ({why})"
        assert not any(found), f"{m} imports {d} at module level; it must stay lazy ({why})"


def test_no_import_cycles():
    graph = _edges()
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    cycles = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                cycles.append(" -> ".join(stack[stack.index(d):] + [m, d]) if d in stack
                              else f"{m} -> {d}")
            elif d not in state:
                visit(d, stack + [m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_core_does_not_import_torch_matplotlib_or_tfds():
    wrong = []
    for m in MODULES:
        if layer_of(m) == TOP:
            continue
        for name, eager in _imports(m):
            pkg = name.split(".")[0]
            if pkg not in HEAVY:
                continue
            if (m, pkg) in LAZY_HEAVY and not eager:
                continue
            wrong.append(f"{m} imports {name}{'' if eager else ' (lazily)'}")
    assert not wrong, "the core imports a heavy package:\n" + "\n".join(wrong)


@pytest.mark.parametrize("source, expected", [
    ("import jaxlrp.viz\n", ("jaxlrp.viz", True)),
    ("def f():\n    from jaxlrp import viz\n", ("jaxlrp.viz", False)),
    ("from jaxlrp._lrp import rules\n", ("jaxlrp._lrp.rules", True)),
    ("try:\n    import torch\nexcept ImportError:\n    pass\n", ("torch", True)),
    ("_LAZY = {'evaluate': ('jaxlrp.evaluation', 'evaluate')}\n", ("jaxlrp.evaluation", False)),
])
def test_the_import_reader_itself(source, expected, tmp_path, monkeypatch):
    """The checks above are only as good as the reader: resolve a few known forms."""
    f = tmp_path / "probe.py"
    f.write_text(source)
    monkeypatch.setitem(MODULES, "jaxlrp.probe", f)
    assert _imports("jaxlrp.probe") == [expected]


def test_a_wrong_way_import_would_be_caught(tmp_path, monkeypatch):
    f = tmp_path / "probe.py"
    f.write_text("from jaxlrp import cli\n")
    monkeypatch.setitem(MODULES, "jaxlrp.tracing_probe", f)
    monkeypatch.setitem(LAYERS, "jaxlrp.tracing_probe", 1)
    with pytest.raises(AssertionError, match="tracing_probe"):
        test_imports_point_down()


def test_a_cycle_would_be_caught(tmp_path, monkeypatch):
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("def f():\n    from jaxlrp import probe_b\n")
    b.write_text("from jaxlrp import probe_a\n")
    monkeypatch.setitem(MODULES, "jaxlrp.probe_a", a)
    monkeypatch.setitem(MODULES, "jaxlrp.probe_b", b)
    with pytest.raises(AssertionError, match="probe_a -> jaxlrp.probe_b -> jaxlrp.probe_a"):
        test_no_import_cycles()
