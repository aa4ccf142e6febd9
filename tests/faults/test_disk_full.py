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
