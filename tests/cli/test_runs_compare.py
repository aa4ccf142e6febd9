"""`useg runs compare`: three runs (another lr, another support size, one resumed) side by side."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

from tiny import error_line, evaluate_json, train_tiny

from useg.cli import main

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("runs")
    base = train_tiny(root / "base", 2)
    fast = train_tiny(root / "fast", 2, "--lr", "1e-3")
    wide = train_tiny(root / "wide", 1, "--support-size", "3")
    assert main(["resume", "latest", "--run-dir", str(wide), "--quiet", "--epochs", "2"]) == 0
    return [base, fast, wide]


def compare_json(capsys, *args: str) -> dict:
    capsys.readouterr()
    assert main(["runs", "compare", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def newest_history(run: Path) -> dict:
    return json.loads(sorted((run / "logs").glob("training_*.json"))[-1].read_text())["history"]


def test_compare_names_the_settings_that_differ_and_each_runs_results(runs, tmp_path, capsys):
    base, fast, wide = runs
    scored = evaluate_json(base, capsys)  # base is evaluated: its test Dice shows
    result = compare_json(capsys, *map(str, runs), "--out", str(tmp_path / "compare.png"))
    assert result["differing_settings"] == ["support_size", "lr"]
    rows = {row["run"]: row for row in result["runs"]}
    assert list(rows) == ["base", "fast", "wide"]
    assert [row["settings"] for row in rows.values()] == [{"support_size": 2, "lr": 3e-4}, {"support_size": 2, "lr": 1e-3},
                                                          {"support_size": 3, "lr": 3e-4}]
    for run in runs:
        row, history = rows[run.name], newest_history(run)
        assert (row["best_val_dice"], row["best_epoch"]) == (history["best_val_dice"], history["best_epoch"])
        assert row["val_dice"] == history["val_dice"] and (row["epochs"], row["epochs_planned"]) == (2, 2)
        assert row["time_s"] == pytest.approx(sum(history["epoch_time_s"]), abs=0.1)
        assert row["samples_per_s"] == pytest.approx(12 / sum(history["epoch_time_s"]), rel=0.05)
    assert rows["wide"]["resumed_at"] == [1] and rows["base"]["resumed_at"] == []
    assert rows["base"]["test_dice"] == pytest.approx(scored["mean_dice"])
    assert rows["fast"]["test_dice"] is None and rows["base"]["held_out_dice"] is None
    assert Path(result["picture"]).read_bytes()[:8] == PNG


def test_compare_prints_the_table_then_the_picture(runs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["runs", "compare", *map(str, runs)]) == 0
    out = capsys.readouterr().out
    for text in ("Runs compared", "support_size", "lr", "val Dice", "test", "base", "fast", "wide", "1e-3"):
        assert text in out, text
    [wide_row] = [line for line in out.splitlines() if " wide " in line]
    cells = [cell.strip() for cell in wide_row.strip("│ ").split("│")]
    assert cells[:3] == ["wide", "3", "3e-4"] and cells[7:9] == ["2/2", "1"]  # epochs, resumed at
    assert out.rstrip().endswith("picture saved to compare.png")
    assert (tmp_path / "compare.png").read_bytes()[:8] == PNG


def test_a_folder_without_a_run_is_one_error_line(runs, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["runs", "compare", str(runs[0]), str(empty)]) != 0
    assert error_line(capsys) == f"error: no training history in {empty} (no logs/training_*.json, no checkpoint); train first"
    assert main(["runs", "compare", str(tmp_path / "missing")]) != 0
    assert "is not a folder" in error_line(capsys)
    assert not (tmp_path / "compare.png").exists()


def test_menu_compares_this_run_with_others(runs, monkeypatch, capsys):
    base, fast, wide = runs
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"8\n{fast} {wide}\nq\n"))
    assert main(["menu", "--run-dir", str(base)]) == 0
    out = capsys.readouterr().out
    assert "8  Compare with other runs" in out and "Runs compared" in out
    assert f"picture saved to {base / 'compare.png'}" in out
    assert (base / "compare.png").read_bytes()[:8] == PNG
