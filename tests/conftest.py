import shutil
from pathlib import Path

import pytest

import fault_report


def pytest_addoption(parser: pytest.Parser) -> None:
    # The fault-injection suite's options live here, not in tests/faults/conftest.py: pytest reads
    # options only from conftest files it loads before parsing, and a plain `pytest` (make test)
    # loads this one but not the one below it.
    parser.addoption("--long", action="store_true", default=False,
                     help="also run the long fault-injection mode (300+ kills); same as USEG_LONG_FAULTS=1")
    parser.addoption("--fault-tables", action="store_true", default=False,
                     help="print the full fault-injection tables (always written to "
                          ".pytest_cache/d/faults/fault_injection.txt)")


@pytest.fixture
def run(trained, tmp_path) -> Path:
    """A private copy of the module's shared `trained` run, for tests that change files."""
    return Path(shutil.copytree(trained, tmp_path / "run"))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    fault_report.collect(report)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    fault_report.summarize(terminalreporter, config)
