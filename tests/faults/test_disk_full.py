"""Disk full: a run whose checkpoints stop fitting on a small tmpfs fails with one line naming the
folder and the bytes needed, leaves no temp file, keeps every earlier checkpoint valid, and resumes
to the very same result once there is space again."""

from __future__ import annotations

import re
import subprocess

from faultkit import TINY, assert_every_checkpoint_verifies, assert_same_run, checkpoints, final_state

FLAGS = ["--epochs", "3", *TINY, "--quiet", "--vis-every", "0"]  # ~130 KB per full checkpoint, ~57 KB best


def test_full_disk_mid_run_is_one_clear_error_and_loses_nothing_saved(cli, tmpfs, tmp_path, ledger):
    disk = tmpfs("256k")  # room for epoch 1's files, not for epoch 2's
    run = disk / "run"
    failed = cli("train", "--run-dir", run, *FLAGS)
    ledger.faults["disk full (tmpfs) during training"] += 1
    assert failed.returncode == 2, failed.stderr
    [line] = failed.error_lines
    folder = re.escape(str(checkpoints(run)))
    match = re.fullmatch(rf"error: not enough space in {folder}: writing needs (\d+) bytes, (\d+) are free; .*", line)
    assert match and int(match[1]) > int(match[2]), line
    advice = re.search(r"`useg ([^`]+)`", line)[1].split()
    assert cli(*advice, "--help").returncode == 0, f"the advice names a command that does not exist: {advice}"
    assert not list(checkpoints(run).glob(".*.tmp")), "the temp file of the failed write was left behind"
    assert_every_checkpoint_verifies(run)
    assert final_state(run)["epoch"] == 1  # the last save that fitted is intact

    subprocess.run(["mount", "-o", "remount,size=4m", str(disk)], check=True)
    resumed = cli("resume", "latest", "--run-dir", run)
    assert resumed.returncode == 0, resumed.stderr
    straight = tmp_path / "straight"
    assert cli("train", "--run-dir", straight, *FLAGS).returncode == 0
    assert_same_run(straight, run)


def test_full_disk_before_the_first_checkpoint_fails_cleanly(cli, tmpfs, ledger):
    disk = tmpfs("96k")  # the log fits, not one checkpoint
    run = disk / "run"
    failed = cli("train", "--run-dir", run, *FLAGS)
    ledger.faults["disk full (tmpfs) at the first save"] += 1
    assert failed.returncode == 2, failed.stderr
    [line] = failed.error_lines
    assert f"not enough space in {checkpoints(run)}" in line and "bytes" in line
    assert not list(checkpoints(run).glob(".*.tmp"))
    assert_every_checkpoint_verifies(run)
    assert not (checkpoints(run) / "latest_checkpoint.pt").exists()
    resumed = cli("resume", "latest", "--run-dir", run)  # nothing to resume: said so, not a silent fresh start
    assert resumed.returncode == 2 and resumed.error_lines[0].startswith("error: no checkpoint")


def test_ctrl_c_on_a_full_disk_reports_the_failed_save_and_keeps_the_previous_one(cli, tmpfs, ledger):
    disk = tmpfs("256k")
    run = disk / "run"
    # Ctrl+C in epoch 2: its interrupt checkpoint cannot be written next to epoch 1's files.
    stopped = cli("train", "--run-dir", run, *FLAGS, env={"USEG_KILL_AT": "step:5:SIGINT"})
    ledger.faults["Ctrl+C with a full disk"] += 1
    assert stopped.returncode == 2, stopped.stderr
    assert f"error: not enough space in {checkpoints(run)}" in stopped.stderr
    assert not list(checkpoints(run).glob(".*.tmp"))
    assert_every_checkpoint_verifies(run)
    assert final_state(run)["epoch"] == 1


# --- every other file useg writes: pictures, curves, CSVs, masks ----------------------------------

import errno  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from useg.files import write_file_atomically  # noqa: E402
from useg.data import make_synthetic  # noqa: E402
from useg.errors import UsegError  # noqa: E402

PICTURE_FLAGS = ["--epochs", "2", *TINY, "--quiet", "--vis-every", "1"]
# Measured: the files of epoch 1 of PICTURE_FLAGS take 208 KiB of a tmpfs; one picture 34 KB.
ROOM_FOR_CHECKPOINTS_NOT_PICTURES = "232k"


def fill_up(disk: Path, leave: int = 0) -> Path:
    """Fill `disk` with one file, then give `leave` bytes back (rounded up to whole pages)."""
    filler = disk / "filler"
    with open(filler, "wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError as error:
            assert error.errno == errno.ENOSPC, error
    size = filler.stat().st_size
    os.truncate(filler, max(size - leave, 0))
    return filler


def leftovers(folder: Path) -> list[Path]:
    """Temp files and empty files under `folder`: what a torn write leaves."""
    return [p for p in folder.rglob("*") if p.is_file() and (p.name.endswith(".tmp") or p.stat().st_size == 0)
            and p.name != ".lock"]


def assert_whole_pngs(folder: Path) -> None:
    for path in folder.rglob("*.png"):
        with Image.open(path) as image:
            image.load()  # a truncated PNG fails here


@pytest.fixture(scope="module")
def trained_run(cli, tmp_path_factory) -> Path:
    """One tiny finished run (2 epochs, no pictures), to copy onto small disks."""
    run = tmp_path_factory.mktemp("trained") / "run"
    trained = cli("train", "--run-dir", run, "--epochs", "2", *TINY, "--quiet", "--vis-every", "0")
    assert trained.returncode == 0, trained.stderr
    return run


def test_full_disk_while_writing_a_training_picture_is_one_line_and_resumes(cli, tmpfs, tmp_path, ledger):
    disk = tmpfs(ROOM_FOR_CHECKPOINTS_NOT_PICTURES)
    run = disk / "run"
    failed = cli("train", "--run-dir", run, *PICTURE_FLAGS)
    ledger.faults["disk full (tmpfs) while writing a training picture"] += 1
    assert failed.returncode == 2, failed.stderr
    [line] = failed.error_lines
    pictures = run / "visualizations_training"
    assert re.fullmatch(rf"error: cannot write {re.escape(str(pictures))}/epoch_001_batch_\d+\.png: "
                        r"the disk is full .*free some space.*useg resume latest.*", line), line
    assert not leftovers(run), leftovers(run)
    assert_whole_pngs(run)
    assert_every_checkpoint_verifies(run)
    assert final_state(run)["epoch"] == 1  # the epoch's checkpoint was written before its pictures

    subprocess.run(["mount", "-o", "remount,size=4m", str(disk)], check=True)
    resumed = cli("resume", "latest", "--run-dir", run)
    assert resumed.returncode == 0, resumed.stderr
    assert final_state(run)["epoch"] == 2
    assert (pictures / "epoch_002_batch_000.png").is_file()
    assert_whole_pngs(run)


def test_history_on_a_full_disk_prints_the_table_and_one_line(cli, tmpfs, trained_run, ledger):
    disk = tmpfs("1m")
    run = disk / "run"
    shutil.copytree(trained_run, run)
    fill_up(disk, leave=4096)  # the curves take ~40 KB
    shown = cli("history", "--run-dir", run)
    ledger.faults["disk full (tmpfs) in useg history"] += 1
    assert shown.returncode == 2, shown.stderr
    assert "Training history" in shown.stdout and "* best" in shown.stdout
    [line] = shown.error_lines
    assert line.startswith(f"error: cannot write {run / 'training_curves.png'}: the disk is full"), line
    assert not (run / "training_curves.png").exists()
    assert not leftovers(run)
    assert_every_checkpoint_verifies(run)


def test_menu_history_on_a_full_disk_says_so_and_returns_to_the_menu(cli, tmpfs, trained_run, ledger):
    disk = tmpfs("1m")
    run = disk / "run"
    shutil.copytree(trained_run, run)
    fill_up(disk, leave=4096)
    session = cli("menu", "--run-dir", run, stdin="6\nq\n")
    ledger.faults["disk full (tmpfs) in menu option 6"] += 1
    assert session.returncode == 0, session.stderr
    assert "Training history" in session.stdout
    assert f"error: cannot write {run / 'training_curves.png'}: the disk is full" in session.stdout
    assert session.stdout.count("Choose an option: ") == 2  # back at the menu, then q
    assert "Traceback" not in session.stdout + session.stderr
    assert not (run / "training_curves.png").exists() and not leftovers(run)


def test_history_in_a_read_only_run_folder_prints_the_table_and_one_line(cli, tmpfs, trained_run, ledger):
    disk = tmpfs("1m")
    run = disk / "run"
    shutil.copytree(trained_run, run)
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    shown = cli("history", "--run-dir", run)
    ledger.faults["read-only folder in useg history"] += 1
    assert shown.returncode == 2, shown.stderr
    assert "Training history" in shown.stdout
    [line] = shown.error_lines
    assert line.startswith(f"error: cannot write {run / 'training_curves.png'}: Read-only file system"), line


def test_evaluate_on_a_full_disk_prints_the_scores_and_leaves_no_empty_csv(cli, tmpfs, trained_run, ledger):
    disk = tmpfs("256k")
    fill_up(disk, leave=0)
    target = disk / "scores.csv"
    scored = cli("evaluate", "--run-dir", trained_run, "--csv", target)
    ledger.faults["disk full (tmpfs) in useg evaluate"] += 1
    assert scored.returncode == 2, scored.stderr
    assert "mean over classes" in scored.stdout  # the results reach the user although the CSV does not
    [line] = scored.error_lines
    assert line.startswith(f"error: cannot write {target}: the disk is full"), line
    assert not target.exists() and not leftovers(disk)


def test_evaluate_json_into_a_read_only_folder_is_one_line_and_no_output(cli, tmpfs, trained_run, ledger):
    disk = tmpfs("256k")
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    target = disk / "scores.csv"
    scored = cli("evaluate", "--run-dir", trained_run, "--csv", target, "--json")
    ledger.faults["read-only folder in useg evaluate --json"] += 1
    assert scored.returncode == 2, scored.stderr
    assert scored.stdout == ""  # no JSON that names a CSV which was never written
    [line] = scored.error_lines
    assert line.startswith(f"error: cannot write {target}: Read-only file system"), line


def test_predict_on_a_full_disk_leaves_no_empty_mask(cli, tmpfs, trained_run, tmp_path, ledger):
    supports, images = tmp_path / "supports", tmp_path / "images"
    data = make_synthetic(image_size=48, seed=1, n_patients=4, images_per_patient=1, classes=["cyst"])
    for index, (image, mask) in enumerate(zip(data.images, data.masks[:, 0])):
        for folder, array in ((supports / "images", image), (supports / "masks", mask), (images, image)):
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray((array * 255).astype(np.uint8)).save(folder / f"s{index}.png")
    disk = tmpfs("256k")
    out = disk / "masks"
    out.mkdir()
    fill_up(disk, leave=0)
    predicted = cli("predict", "--run-dir", trained_run, "--support", supports, "--images", images, "--out", out)
    ledger.faults["disk full (tmpfs) in useg predict"] += 1
    assert predicted.returncode == 2, predicted.stderr
    [line] = predicted.error_lines
    assert re.fullmatch(rf"error: cannot write {re.escape(str(out))}/s\d\.png: the disk is full .*", line), line
    assert not leftovers(disk), leftovers(disk)


def test_a_vanished_folder_or_a_file_in_the_way_is_one_line_naming_the_file(tmp_path):
    with pytest.raises(UsegError, match=rf"cannot write {re.escape(str(tmp_path))}/gone/x\.png: the folder "
                                        rf"{re.escape(str(tmp_path))}/gone does not exist") as raised:
        write_file_atomically(tmp_path / "gone" / "x.png", b"png")
    assert "\n" not in str(raised.value)
    (tmp_path / "blocker").write_text("a file where a folder should be")
    with pytest.raises(UsegError, match=rf"{re.escape(str(tmp_path))}/blocker is a file, not a folder"):
        write_file_atomically(tmp_path / "blocker" / "pictures" / "x.png", b"png", create_folder=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]
