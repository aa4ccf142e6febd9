"""The package's layout rules, read from the source with `ast` (nothing is imported): no import cycles,
a model module that is only the model, the checkpoint library used through its face, a short top level.

Every import counts, also one inside a function: a lazy import is still a dependency (the cycle
between data/images.py and data/medical.py was one). Run as a script to print the import graph's cycles:
`python tests/test_layout.py`.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path


PACKAGE = Path(__file__).resolve().parents[1] / "src" / "useg"


def module_names() -> dict[str, Path]:
    """Every module of useg by dotted name (a package by its own name, for its __init__.py)."""
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def nearest_module(name: str, known: dict[str, Path]) -> str | None:
    """`name` if it is a useg module, else the package that holds it (`useg.checkpoint.X` for a name X)."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imported_names(name: str, path: Path) -> set[str]:
    """The dotted names a module imports, relative imports resolved, at any depth of its code
    (but not under `if TYPE_CHECKING:`, which never runs)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in run_time_nodes(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package if node.level else ""
            base = ".".join(part for part in (base, node.module or "") if part)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # a submodule, or a name in `base`
    return found


def run_time_nodes(node: ast.AST):
    """Every node below `node`, leaving out the bodies of `if TYPE_CHECKING:` (imports for type hints only)."""
    for child in ast.iter_child_nodes(node):
        yield child
        if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
            for branch in child.orelse:
                yield branch
                yield from run_time_nodes(branch)
        else:
            yield from run_time_nodes(child)


def import_graph() -> dict[str, set[str]]:
    """Module -> the useg modules it imports."""
    known = module_names()
    graph = {}
    for name, path in known.items():
        targets = {nearest_module(imported, known) for imported in imported_names(name, path)}
        graph[name] = {target for target in targets if target and target != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def test_no_import_cycles_among_useg_modules():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle_through_a_lazy_import(tmp_path):
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    lazy = tmp_path / "images.py"
    lazy.write_text("if TYPE_CHECKING:\n    from .labels import Plan\n\n"
                    "def read():\n    from .medical import read_medical\n", encoding="utf-8")
    assert imported_names("useg.data.images", lazy) == {"useg.data.medical.read_medical"}


def test_the_model_module_imports_nothing_from_useg_but_errors():
    assert import_graph()["useg.model"] <= {"useg.errors"}


def test_nothing_outside_the_checkpoint_package_imports_its_submodules():
    graph = import_graph()
    inside = [name for name in graph if name.startswith("useg.checkpoint.")]
    reaching_in = {name: sorted(graph[name] & set(inside)) for name in graph
                   if name != "useg.checkpoint" and not name.startswith("useg.checkpoint.")}
    assert {name: targets for name, targets in reaching_in.items() if targets} == {}


# docs/ARCHITECTURE.md, "What each part may import": a part (a folder or a top-level module) -> the parts
# it may import. apply/ reads a training checkpoint through training.state, the one owner of its keys.
SHARED = {"errors", "files", "faults", "config"}
MAY_IMPORT = {
    "errors": set(), "faults": set(), "files": {"errors"}, "config": {"errors"},
    "checkpoint": {"errors", "files", "faults"},
    "model": {"errors"},
    "weights": {"model", "checkpoint", "config", "errors"},
    "compute": {"config", "errors"},
    "data": {"config", "files", "errors"},
    "run_folder": {"checkpoint", "files", "faults", "errors"},
    "viz": {"data", "files", "errors"},
    "training": {"data", "compute", "checkpoint", "model", "weights", "run_folder", "viz"} | SHARED,
    "apply": {"data", "compute", "checkpoint", "model", "weights", "run_folder", "viz", "training.state"} | SHARED,
}


def part_of(module: str) -> str:
    """`useg.training.loop` -> "training", `useg.weights` -> "weights"; training.state is a part of its own."""
    bits = module.split(".")[1:]
    if bits[:2] == ["training", "state"]:
        return "training.state"
    return bits[0] if bits else "useg"


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Every `module -> module` import that crosses into a part its own part may not import."""
    wrong = []
    for name, targets in graph.items():
        source = "training" if part_of(name) == "training.state" else part_of(name)
        for target in targets:
            allowed = MAY_IMPORT.get(source, {part_of(target)}) | {source, "useg"}  # cli/: everything
            if source == "training":
                allowed = allowed | {"training.state"}
            if part_of(target) not in allowed:
                wrong.append(f"{name} -> {target}")
    return sorted(wrong)


def test_each_part_imports_only_the_parts_the_architecture_allows():
    assert layer_violations(import_graph()) == []


def test_the_layer_check_sees_a_lower_part_importing_a_higher_one():
    assert layer_violations({"useg.compute.device": {"useg.training.losses"}, "useg.weights": {"useg.training.state"},
                             "useg.apply.predict": {"useg.training.state"}, "useg.training.state": {"useg.weights"},
                             "useg.cli.main": {"useg.training.loop"}}) == [
        "useg.compute.device -> useg.training.losses", "useg.weights -> useg.training.state"]


def test_the_data_package_imports_nothing_from_compute():
    # How many threads build batches is decided in compute/device.py and handed to data/prefetch.py.
    graph = import_graph()
    data = {name: sorted(target for target in targets if target.startswith("useg.compute"))
            for name, targets in graph.items() if name.startswith("useg.data")}
    assert {name: targets for name, targets in data.items() if targets} == {}


def test_the_top_level_holds_at_most_8_modules_beside_the_folders():
    top = sorted(path.name for path in PACKAGE.glob("*.py") if not path.name.startswith("__"))
    assert len(top) <= 8, top


if __name__ == "__main__":
    found = cycles(import_graph())
    print("\n".join(" <-> ".join(component) for component in found) or "no import cycles")
    sys.exit(1 if found else 0)
