"""Killed while saves are being coalesced (a write in flight, a newer routine save waiting): every file on
disk verifies, latest holds a resume point no older than the last finished write, and the resumed run ends
bitwise equal to the uninterrupted one."""

from __future__ import annotations

import signal

from faultkit import RUN_FLAGS, assert_every_checkpoint_verifies, assert_same_run, resume_position


def test_kill_while_a_save_waits_to_be_coalesced_leaves_a_valid_resume_point(cli, reference_run, tmp_path, ledger):
    run = tmp_path / "run"
    flags = [*RUN_FLAGS, "--save-every-steps", "1"]  # the later flag wins: a save after every step
    # Writes 0.2 s slower than a tiny step: from the second step on, saves overlap and coalesce.
    child = cli.start("train", "--run-dir", run, *flags, env={"USEG_KILL_AT": "save-coalesced:3"}, slow_writes=0.2)
    killed = child.wait()
    ledger.faults["kill -9 while a save waits to be coalesced"] += 1
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    ledger.files_verified += assert_every_checkpoint_verifies(run)
    kept = resume_position(run)
    # Every step after the last finished write asked for a save: one of them is the write in flight,
    # each other one was queued behind a write (a coalesce event), and the kill came at the third
    # event of the process, so at most 4 steps are lost. The epoch-1 save waited for the first write.
    assert kept is not None and killed.steps - 4 <= kept < killed.steps
    finished = cli("resume", "latest", "--run-dir", run)
    assert finished.returncode == 0, finished.stderr
    assert_same_run(reference_run, run)
