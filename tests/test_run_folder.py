"""Runs that `useg train --overwrite` set aside: `checkpoints list` shows them, `clean --replaced` removes them,
and nothing of the live run is ever touched."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import pytest

from tiny import train_tiny
from useg.checkpoint.lock import acquire_run_lock
from useg.cli import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny 2-epoch run, overwritten once by another tiny run: one real set-aside folder with pictures."""
    run = train_tiny(tmp_path_factory.mktemp("shared") / "run", 1, "--vis-every", "1")
    assert (run / "visualizations_training").is_dir()
    return train_tiny(run, 2, "--overwrite")


def live_files(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir() if p.is_file()}


def set_aside_folder(run: Path, name: str, size: int) -> Path:
    folder = run / name
    folder.mkdir()
    (folder / "latest_checkpoint.pt").write_bytes(b"x" * size)
    return folder


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_overwrite_moves_the_old_pictures_aside_with_the_old_checkpoints(trained):
    [kept] = trained.glob("checkpoints_replaced_*")
    assert sorted(p.name for p in (kept / "visualizations_training").iterdir()) == ["epoch_001_batch_000.png"]
    assert (kept / "latest_checkpoint.pt").is_file()
    assert not (trained / "visualizations_training").exists()  # the new run has written no pictures


def test_list_names_the_set_aside_folders_and_their_size_and_json_stays_a_list(run, capsys):
    set_aside_folder(run, "checkpoints_replaced_20260101_000000", 2048)
    code, out, _ = run_cli(capsys, "checkpoints", "list", "--run-dir", str(run))
    assert code == 0
    assert "set aside by --overwrite (old runs, not resumable from here): 2 folder(s)" in out
    assert "checkpoints_replaced_20260101_000000/  2.0 KB, 1 file(s)" in out
    assert f"useg checkpoints clean --replaced --run-dir {run}" in out
    code, out, _ = run_cli(capsys, "checkpoints", "list", "--run-dir", str(run), "--json")
    records = json.loads(out)
    assert isinstance(records, list) and {r["name"] for r in records} >= {"latest_checkpoint.pt"}


def test_clean_replaced_dry_run_lists_and_removes_nothing(run, capsys):
    before = sorted(p.name for p in run.iterdir())
    code, out, _ = run_cli(capsys, "checkpoints", "clean", "--replaced", "--dry-run", "--run-dir", str(run), "--json")
    report = json.loads(out)
    assert code == 0 and report["dry_run"] is True and len(report["replaced"]) == 1
    [folder] = report["replaced"]
    assert folder["name"].startswith("checkpoints_replaced_") and folder["files"] >= 3
    assert report["replaced_freed_bytes"] == folder["size_bytes"] > 0
    assert sorted(p.name for p in run.iterdir()) == before


def test_clean_replaced_removes_only_set_aside_folders_and_the_run_still_resumes(run, capsys):
    live = live_files(run)
    decoy = run / "checkpoints_replaced_20260101_000001"
    decoy.symlink_to(run / "checkpoints", target_is_directory=True)  # a link: never followed, never removed
    (run / "checkpoints_replaced_notes").mkdir()  # not the pattern --overwrite writes
    code, out, _ = run_cli(capsys, "checkpoints", "clean", "--replaced", "--run-dir", str(run))
    assert code == 0 and "removed 1 set-aside folder(s), freed" in out
    assert sorted(p.name for p in run.glob("checkpoints_replaced_*")) == [decoy.name, "checkpoints_replaced_notes"]
    assert live_files(run) == live
    assert main(["checkpoints", "verify", "--run-dir", str(run)]) == 0
    code, out, _ = run_cli(capsys, "checkpoints", "clean", "--replaced", "--run-dir", str(run))
    assert code == 0 and "no folders set aside by --overwrite" in out


def test_clean_replaced_with_keep_reports_both_in_one_json_object(run, capsys):
    code, out, _ = run_cli(capsys, "checkpoints", "clean", "--keep", "1", "--replaced", "--dry-run",
                           "--run-dir", str(run), "--json")
    report = json.loads(out)
    assert code == 0 and report["keep"] == 1 and "removed" in report and len(report["replaced"]) == 1


def test_clean_replaced_is_refused_while_the_run_is_being_trained(run, capsys):
    folders = sorted(p.name for p in run.glob("checkpoints_replaced_*"))
    lock = acquire_run_lock(run / "checkpoints", warn=lambda message: None)  # as a training process holds it
    try:
        code, _, err = run_cli(capsys, "checkpoints", "clean", "--replaced", "--run-dir", str(run))
    finally:
        lock.release()
    assert code == 2 and err.startswith("error: ") and "being trained" in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in run.glob("checkpoints_replaced_*")) == folders


def test_clean_without_keep_or_replaced_is_one_error_line(run, capsys):
    code, _, err = run_cli(capsys, "checkpoints", "clean", "--run-dir", str(run))
    assert code == 2 and err.startswith("error: checkpoints clean needs --keep N") and len(err.splitlines()) == 1


def test_menu_clean_offers_the_set_aside_folders_and_removes_them_on_yes(run, monkeypatch, capsys):
    # The copied run's latest is no hard link of epoch_002 any more, so --keep 1 removes epoch_001 first.
    monkeypatch.setattr(sys, "stdin", io.StringIO("5\n1\nn\ny\nq\n"))
    assert main(["menu", "--run-dir", str(run)]) == 0
    out = capsys.readouterr().out
    assert "will remove epoch_001_checkpoint.pt" in out and "Nothing removed." in out
    assert "Also remove these 1 folder(s) that --overwrite set aside" in out and "Removed 1 set-aside folder(s)." in out
    assert not list(run.glob("checkpoints_replaced_*")) and (run / "checkpoints" / "latest_checkpoint.pt").is_file()


# --- the set-aside folders themselves (useg.run_folder), without a training run -------------------

def test_set_aside_names_round_trip_and_nothing_else_counts_as_one():
    from useg.run_folder import is_replaced_name, replaced_name

    assert replaced_name("20240102_030405") == "checkpoints_replaced_20240102_030405"
    assert replaced_name("20240102_030405", 2) == "checkpoints_replaced_20240102_030405_2"
    assert all(is_replaced_name(replaced_name("20240102_030405", n)) for n in (1, 2, 10))
    assert not any(map(is_replaced_name, ["checkpoints", "checkpoints_replaced_", "checkpoints_replaced_2024",
                                          "checkpoints_replaced_20240102_030405_x", "old_checkpoints_replaced_"]))


def test_a_set_aside_folder_counts_a_hard_linked_file_once_and_links_are_never_followed(tmp_path):
    from useg.run_folder import replaced_folders

    kept = tmp_path / "checkpoints_replaced_20240102_030405"
    kept.mkdir()
    (kept / "latest_checkpoint.pt").write_bytes(b"x" * 100)
    os.link(kept / "latest_checkpoint.pt", kept / "epoch_002_checkpoint.pt")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "big").write_bytes(b"y" * 1000)
    (tmp_path / "checkpoints_replaced_20240102_030406").symlink_to(tmp_path / "elsewhere")
    (kept / "link").symlink_to(tmp_path / "elsewhere")
    [folder] = replaced_folders(tmp_path)
    assert (folder.path, folder.files) == (kept, 2) and folder.size_bytes == 100  # the link to a folder: not walked


def test_remove_replaced_refuses_anything_not_set_aside_and_removes_nothing(tmp_path):
    from useg.errors import CheckpointError
    from useg.run_folder import ReplacedFolder, remove_replaced

    live, other = tmp_path / "checkpoints", tmp_path / "checkpoints_old"
    live.mkdir()
    other.mkdir()
    linked = tmp_path / "checkpoints_replaced_20240102_030405"
    linked.symlink_to(live)
    for path in (live, other, linked):
        with pytest.raises(CheckpointError, match="nothing was removed"):
            remove_replaced(tmp_path, [ReplacedFolder(path, 0, 0)])
    assert live.is_dir() and other.is_dir() and linked.is_symlink()


@pytest.mark.parametrize("flags", [["--data", "missing"], ["--held-out-data", "missing"],
                                   ["--data", "missing", "--data", "also-missing"]])
def test_overwrite_with_a_data_folder_that_is_not_there_sets_nothing_aside(tmp_path, capsys, flags):
    run = train_tiny(tmp_path / "run", 1)
    before = live_files(run)
    code, _, err = run_cli(capsys, "train", "--run-dir", str(run), "--overwrite",
                           *[str(tmp_path / flag) if not flag.startswith("--") else flag for flag in flags])
    assert code != 0 and err.startswith("error: ") and "missing does not exist" in err and err.count("\n") == 1
    assert not list(run.glob("checkpoints_replaced_*")) and live_files(run) == before  # the old run stays live
