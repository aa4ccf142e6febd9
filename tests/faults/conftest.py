"""Fixtures of the fault-injection suite: the forked CLI runner, one uninterrupted reference run, the ledger.

Long mode (300+ kills): `USEG_LONG_FAULTS=1 pytest tests/faults` or `pytest tests/faults --long`.
"""

from __future__ import annotations

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
from fault_report import LEDGER_PROPERTY  # noqa: E402


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
    # On the test's report, so that the totals add up also across pytest-xdist workers (tests/conftest.py).
    request.node.user_properties.append((LEDGER_PROPERTY, {
        "faults": dict(book.faults), "total": book.total, "files_verified": book.files_verified,
        "max_lost_steps": max(book.lost_steps, default=0), "runs_finished": book.runs_finished,
        "fresh_starts": book.fresh_starts,
    }))


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
