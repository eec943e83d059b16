"""Issue 21: the import structure a newcomer can rely on, checked on the source with `ast`.

* no import cycle among the modules of `transforms/` and `pipeline/` (function-level imports count);
* no module imports a `_private` name from another module (`from m import _x`, or `m._x`);
* imports point one way: records/errors/progress/quiet (top) <- io <- state <- embed <- sinks;
  `results` (reading a finished run) sits beside the sinks: it may read through io.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("transforms", "pipeline")
# A module may import from its own layer and the layers before it, never from a later one.
LAYERS = ["transforms.io", "transforms.state", "transforms.embed", "transforms.sinks"]
TOP = ("transforms.records", "transforms.errors", "transforms.progress", "transforms.quiet")


def _modules() -> dict[str, ast.Module]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return found


MODULES = _modules()


def _imports(tree: ast.Module) -> list[tuple[str, list[str]]]:
    """(module imported, names taken from it) for every import in the module, at any depth."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [alias.name for alias in node.names]
            submodules = [f"{node.module}.{n}" for n in names if f"{node.module}.{n}" in MODULES]
            out.append((node.module, [n for n in names if f"{node.module}.{n}" not in MODULES]))
            out += [(m, []) for m in submodules]
    return out


def _project(name: str) -> bool:
    return name.split(".")[0] in PACKAGES


def _graph() -> dict[str, set[str]]:
    return {m: {i for i, _ in _imports(tree) if _project(i) and i in MODULES and i != m} for m, tree in MODULES.items()}


def test_there_is_no_import_cycle_in_transforms_or_pipeline():
    graph = _graph()
    assert "transforms.state.keys" in graph and "transforms.state.keys" in graph["transforms.state.dedup"]
    state: dict[str, int] = {}  # 1: on the path, 2: done
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for other in sorted(graph[module]):
            if other.split(".")[0] != module.split(".")[0]:  # cycles inside transforms/ or pipeline/
                continue
            if state.get(other) == 1:
                cycles.append(path[path.index(other) :] + [other])
            elif other not in state:
                visit(other, path + [other])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == [], " ; ".join(" -> ".join(c) for c in cycles)


def test_no_module_imports_a_private_name_of_another():
    offences = []
    for module, tree in MODULES.items():
        imported_modules = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and _project(node.module):
                offences += [
                    f"{module}: from {node.module} import {a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
                for a in node.names:
                    if f"{node.module}.{a.name}" in MODULES:
                        imported_modules[a.asname or a.name] = f"{node.module}.{a.name}"
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if _project(a.name) and a.asname:
                        imported_modules[a.asname] = a.name
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in imported_modules
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                offences.append(f"{module}: {imported_modules[node.value.id]}.{node.attr}")
    assert offences == [], offences


def _layer(module: str) -> int:
    """The module's place in LAYERS; `results` beside the sinks; other top-level modules before every layer."""
    if module == "transforms.results":
        return LAYERS.index("transforms.sinks")
    for k, prefix in enumerate(LAYERS):
        if module == prefix or module.startswith(prefix + "."):
            return k
    return -1


def test_imports_point_one_way_from_records_to_sinks():
    offences = []
    for module, tree in MODULES.items():
        if not module.startswith("transforms"):
            continue
        for imported, _ in _imports(tree):
            if not imported.startswith("transforms.") or imported not in MODULES:
                continue
            if module in TOP:
                if _layer(imported) >= 0:
                    offences.append(f"{module} (top) imports {imported}")
            elif _layer(imported) > _layer(module):
                offences.append(f"{module} imports the later {imported}")
    assert offences == [], offences
