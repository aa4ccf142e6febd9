"""The checkpoint package's face: the product imports `useg.checkpoint` only, never its modules,
and every name the face lists is there."""

import ast
import importlib
import pkgutil
import types
from pathlib import Path

import useg.checkpoint

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "useg" / "checkpoint"
SUBMODULES = {info.name for info in pkgutil.iter_modules([str(PACKAGE)])}


def product_files() -> list[Path]:
    """src/useg outside checkpoint/, and scripts/, examples/, bench/."""
    files = [p for p in (ROOT / "src" / "useg").rglob("*.py") if PACKAGE not in p.parents]
    for folder in ("scripts", "examples", "bench"):
        files += (ROOT / folder).rglob("*.py")
    return files


def imported_modules(path: Path) -> list[str]:
    """Every module `path` imports, `from package import module` included."""
    modules = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            modules += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.append(node.module)
            modules += [f"{node.module}.{alias.name}" for alias in node.names]
    return modules


def test_nothing_outside_the_package_imports_its_modules():
    inside = {f"useg.checkpoint.{name}" for name in SUBMODULES}
    leaks = [f"{path.relative_to(ROOT)}: {module}" for path in product_files()
             for module in imported_modules(path) if module in inside]
    assert leaks == []


def test_every_name_of_the_face_is_there_and_none_is_shadowed_by_a_module():
    # Importing `useg.checkpoint.x` sets the package's attribute `x` to that module, so a face
    # name spelled like one of its modules would turn into the module.
    assert not SUBMODULES & set(useg.checkpoint.__all__)
    for module in SUBMODULES:
        importlib.import_module(f"useg.checkpoint.{module}")
    for name in useg.checkpoint.__all__:
        assert not isinstance(getattr(useg.checkpoint, name), types.ModuleType), name


def test_the_package_imports_from_useg_only_errors_kill_points_and_file_writes():
    allowed = {"useg.errors", "useg.faults", "useg.files"}
    outside = {f"{path.name}: {module}" for path in PACKAGE.glob("*.py") for module in imported_modules(path)
               if module.startswith("useg.") and not module.startswith("useg.checkpoint")
               and module.rsplit(".", 1)[0] not in allowed and module not in allowed}
    assert outside == set()


def test_useg_files_imports_nothing_from_useg_but_its_errors():
    modules = imported_modules(ROOT / "src" / "useg" / "files.py")
    assert {m for m in modules if m.startswith("useg")} <= {"useg.errors", "useg.errors.UsegError"}
