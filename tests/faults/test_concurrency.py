"""Concurrency: while one trainer holds a run folder, a second trainer and `clean` are refused in
one line and change nothing; readers (list, verify) keep working; the first run
then finishes exactly as if nobody had interfered."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


from faultkit import RUN_FLAGS, assert_same_run, checkpoints, wait_until_stopped


def snapshot(run: Path) -> dict[str, bytes]:
    """Every checkpoint and sidecar by name (hidden temp files of the frozen writer excluded)."""
    return {p.name: p.read_bytes() for p in checkpoints(run).glob("*") if not p.name.startswith(".")}


def test_second_trainer_and_clean_are_refused_while_a_run_trains(cli, reference_run, tmp_path, ledger):
    run = tmp_path / "run"
    # The first trainer freezes itself (SIGSTOP) at step 7, early in epoch 3, holding the run lock.
    first = cli.start("train", "--run-dir", run, *RUN_FLAGS, env={"USEG_KILL_AT": "step:7:SIGSTOP"})
    try:
        wait_until_stopped(first)
        before = snapshot(run)
        assert "epoch_001_checkpoint.pt" in before  # what clean --keep 1 would remove
        refused = {
            "train --resume": ["train", "--resume", "latest", "--run-dir", run],
            "resume": ["resume", "latest", "--run-dir", run],
            "train --overwrite": ["train", "--overwrite", "--run-dir", run, *RUN_FLAGS],
            "train": ["train", "--run-dir", run, *RUN_FLAGS],
            "checkpoints clean": ["checkpoints", "clean", "--keep", "1", "--run-dir", run],
            "checkpoints clean --dry-run": ["checkpoints", "clean", "--keep", "1", "--dry-run", "--run-dir", run],
        }
        for name, args in refused.items():
            result = cli(*args)
            ledger.faults["second writer while a run trains"] += 1
            assert result.returncode == 2, (name, result.stderr)
            [line] = result.error_lines
            assert "being trained" in line or "--resume latest" in line, (name, line)
            assert snapshot(run) == before, f"`useg {name}` changed the run folder"
        menu = cli("menu", "--run-dir", run, stdin="5\n1\ny\nq\n")
        assert "being trained" in menu.stdout and snapshot(run) == before
        ledger.faults["second writer while a run trains"] += 1
        for args in (["checkpoints", "list", "--run-dir", run], ["checkpoints", "verify", "--run-dir", run]):
            assert cli(*args).returncode == 0, args  # reading is fine while it trains
        assert snapshot(run) == before
    finally:
        os.kill(first.pid, signal.SIGCONT)
    finished = first.wait()
    assert finished.returncode == 0, finished.stderr
    assert_same_run(reference_run, run)


def test_two_trainers_started_together_one_trains_one_refuses(cli, reference_run, tmp_path, ledger):
    run = tmp_path / "run"
    # Both start at once; whichever gets the lock freezes at its first step, so the race is
    # decided by the lock alone, not by how fast the winner happens to finish.
    children = [cli.start("train", "--run-dir", run, *RUN_FLAGS, env={"USEG_KILL_AT": "step:1:SIGSTOP"})
                for _ in range(2)]
    ledger.faults["two trainers started at once"] += 1
    deadline = time.monotonic() + 120
    while not any(child.process.exitcode is not None for child in children):
        assert time.monotonic() < deadline, "neither trainer gave way"
        time.sleep(0.01)
    loser, winner = sorted(children, key=lambda child: child.process.exitcode is None)
    refused = loser.wait()
    assert refused.returncode == 2 and "being trained by process" in refused.error_lines[0], refused.stderr
    wait_until_stopped(winner)
    os.kill(winner.pid, signal.SIGCONT)
    finished = winner.wait()
    assert finished.returncode == 0, finished.stderr
    assert_same_run(reference_run, run)


def test_a_trainer_that_waited_past_its_check_does_not_overwrite_a_finished_run(cli, tmp_path, ledger):
    run = tmp_path / "run"
    # B passes "no checkpoints here yet", then pauses before locking; A trains the whole run meanwhile.
    late = cli.start("train", "--run-dir", run, *RUN_FLAGS, "--lr", "0.01", stop_after="useg.training.loop:check_run_dir")
    try:
        wait_until_stopped(late)
        assert cli("train", "--run-dir", run, *RUN_FLAGS).returncode == 0
        finished = snapshot(run)
    finally:
        os.kill(late.pid, signal.SIGCONT)
    result = late.wait()
    ledger.faults["trainer paused between its check and its lock"] += 1
    assert snapshot(run) == finished, "the late trainer overwrote the finished run"
    assert result.returncode == 2
