"""Fixtures of the fault-injection suite: the forked CLI runner, one uninterrupted reference run, the ledger.

Long mode (300+ kills): `USEG_LONG_FAULTS=1 pytest tests/faults` or `pytest tests/faults --long`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # test_train's helpers (TINY, assert_same_training)
pytest.register_assert_rewrite("faultkit")

import faultkit  # noqa: E402

_LEDGER: dict[str, dict] = {}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "long: long fault-injection runs, skipped unless --long or USEG_LONG_FAULTS=1")


def long_mode(config: pytest.Config) -> bool:
    return bool(os.environ.get("USEG_LONG_FAULTS")) or bool(config.getoption("--long", default=False))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if long_mode(config):
        return
    skip = pytest.mark.skip(reason="long fault-injection mode: run with USEG_LONG_FAULTS=1 or --long")
    for item in items:
        if "long" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def cli(tmp_path_factory) -> faultkit.Cli:
    return faultkit.Cli(tmp_path_factory.mktemp("cli_output"))


@pytest.fixture(scope="session")
def _reference(cli, tmp_path_factory) -> tuple[Path, float]:
    folder = tmp_path_factory.mktemp("reference")
    result = cli("train", "--run-dir", folder / "run", *faultkit.RUN_FLAGS)
    assert result.returncode == 0, result.stderr
    started = time.monotonic()  # the first child is slower (cold caches): time a second, identical run
    result = cli("train", "--run-dir", folder / "again", *faultkit.RUN_FLAGS)
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    faultkit.assert_same_run(folder / "run", folder / "again")
    return folder / "run", seconds


@pytest.fixture(scope="session")
def reference_run(_reference) -> Path:
    """The torture run done once without faults (RUN_FLAGS): what every killed run must end up equal to."""
    return _reference[0]


@pytest.fixture(scope="session")
def run_seconds(_reference) -> float:
    """How long that run took here and now: random faults are timed as fractions of it."""
    return _reference[1]


@pytest.fixture
def finished_run(reference_run, tmp_path) -> Path:
    """A private copy of the finished reference run, to damage freely."""
    copy = tmp_path / "run"
    shutil.copytree(reference_run, copy, symlinks=True)
    _relink_like(reference_run / "checkpoints", copy / "checkpoints")
    return copy


def _relink_like(source: Path, copy: Path) -> None:
    # copytree copies hard links as separate files; restore them so the copy behaves like a run.
    by_inode: dict[int, Path] = {}
    for path in sorted(source.glob("*.pt")):
        first = by_inode.setdefault(path.stat().st_ino, path)
        if first != path:
            (copy / path.name).unlink()
            os.link(copy / first.name, copy / path.name)


@pytest.fixture
def ledger(request) -> faultkit.Ledger:
    """Counts the faults a test injected; the totals are printed after the run (and written to
    $USEG_FAULTS_REPORT as JSON when set), which is where RELIABILITY.md's numbers come from."""
    book = faultkit.Ledger()
    yield book
    _LEDGER[request.node.name] = {
        "faults": dict(book.faults), "total": book.total, "files_verified": book.files_verified,
        "max_lost_steps": max(book.lost_steps, default=0), "runs_finished": book.runs_finished,
        "fresh_starts": book.fresh_starts,
    }


@pytest.fixture
def tmpfs(tmp_path):
    """mount(size) -> a fresh small tmpfs folder (root only), unmounted afterwards; skips where mount fails."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        point = tmp_path / f"tmpfs_{len(mounted)}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN): {done.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in reversed(mounted):
        subprocess.run(["umount", "-l", str(point)], check=False)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """A few lines at the end of the run; the full tables go to a file (and to the screen with
    --fault-tables), the JSON to $USEG_FAULTS_REPORT when set."""
    if not _LEDGER:
        return
    totals: dict[str, int] = {}
    for entry in _LEDGER.values():
        for label, count in entry["faults"].items():
            totals[label] = totals.get(label, 0) + count
    report = os.environ.get("USEG_FAULTS_REPORT")
    if report:
        Path(report).write_text(json.dumps({"tests": _LEDGER, "totals": totals}, indent=2) + "\n")
    tables = fault_tables(totals)
    where = write_tables(config, tables)
    terminalreporter.section("fault injection")
    if config.getoption("--fault-tables", default=False):
        for line in tables:
            terminalreporter.write_line(line)
        return
    verified = sum(entry["files_verified"] for entry in _LEDGER.values())
    lost = max((entry["max_lost_steps"] for entry in _LEDGER.values()), default=0)
    terminalreporter.write_line(f"{counted(sum(totals.values()), 'fault')} of {counted(len(totals), 'kind')} "
                                f"injected in {counted(len(_LEDGER), 'test')}; {counted(verified, 'file')} verified "
                                f"afterwards; at most {counted(lost, 'step')} lost to one fault")
    shown = where.relative_to(config.rootpath) if where and where.is_relative_to(config.rootpath) else where
    terminalreporter.write_line(f"full tables: {shown or 'not written (no pytest cache)'}, or run with --fault-tables")


def counted(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def fault_tables(totals: dict[str, int]) -> list[str]:
    """Each kind of fault with its count, then what each test checked beyond the faults."""
    lines = [f"{count:5d}  {label}" for label, count in sorted(totals.items())]
    lines.append(f"{sum(totals.values()):5d}  total faults injected")
    for name, entry in _LEDGER.items():
        extra = {k: v for k, v in entry.items() if k != "faults" and v}
        if extra:
            lines.append(f"       {name}: {extra}")
    return lines


def write_tables(config: pytest.Config, lines: list[str]) -> Path | None:
    """The tables in pytest's cache folder (.pytest_cache/d/faults/); None when there is no cache."""
    if getattr(config, "cache", None) is None:  # -p no:cacheprovider removes the attribute
        return None
    path = config.cache.mkdir("faults") / "fault_injection.txt"
    path.write_text("\n".join(lines) + "\n")
    return path
