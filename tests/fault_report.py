"""The fault-injection totals: each test's `ledger` (tests/faults/conftest.py) rides on its report, so
the totals add up in the process that prints them, also when pytest-xdist runs tests in workers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

LEDGER_PROPERTY = "useg_fault_ledger"
_LEDGER: dict[str, dict] = {}


def collect(report: pytest.TestReport) -> None:
    """Keep the ledger a test's report carries (its teardown report, after the fixture has counted)."""
    if report.when != "teardown":
        return
    for name, value in report.user_properties:
        if name == LEDGER_PROPERTY:
            _LEDGER[report.nodeid.rsplit("::", 1)[-1]] = value


def summarize(terminalreporter, config: pytest.Config) -> None:
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
