"""--save-budget: routine mid-epoch saves that would cost more than their share of the training time wait,
and the run says how many did; the saves a run needs (epoch ends, Ctrl+C, SIGTERM) never wait."""

from __future__ import annotations

import json
import time

from tiny import TINY, assert_same_training, final_state, train_tiny
from useg import faults
from useg.checkpoint import load_checkpoint
from useg.checkpoint import manager as manager_module
from useg.cli import main

EVERY_STEP = ["--samples-per-epoch", "24", "--save-every-steps", "1", "--data-workers", "0"]  # 12 steps


def costly_writes(monkeypatch, seconds: float) -> None:
    """Each checkpoint write burns `seconds` of CPU (a sleep would cost the cores nothing)."""
    real = manager_module.publish_state

    def costly(path, state, fields):
        end = time.thread_time() + seconds
        while time.thread_time() < end:
            pass
        return real(path, state, fields)

    monkeypatch.setattr(manager_module, "publish_state", costly)


def session_saves(run) -> dict:
    [log_path] = (run / "logs").glob("training_*.json")
    return json.loads(log_path.read_text())["sessions"][-1]["checkpoint_saves"]


def test_saves_over_the_budget_are_deferred_and_the_epoch_line_and_log_say_how_many(tmp_path, monkeypatch, capsys):
    costly_writes(monkeypatch, 0.1)  # at the default 1%, one such write is paid for by 10 s of training
    run = train_tiny(tmp_path / "run", 1, *EVERY_STEP)
    saves = session_saves(run)
    assert saves["routine_due"] == 11 and saves["budget_percent"] == 1.0  # none is due after the last step
    assert saves["deferred"] >= 9  # the first starts at once (nothing spent yet); 12 tiny steps take far less than 10 s
    assert saves["asked"] == 11 - saves["deferred"] - saves["coalesced"] + 1  # those taken, and the epoch's
    [line] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch   1/1")]
    assert f"saves: {saves['deferred']} of 11 deferred by the 1% save budget" in line, line
    state = load_checkpoint(run / "checkpoints" / "latest_checkpoint.pt")
    assert state["epoch"] == 1 and state["step"] == 12  # the epoch's save is never deferred


def test_without_a_budget_every_due_save_is_taken(tmp_path, monkeypatch):
    costly_writes(monkeypatch, 0.02)
    saves = session_saves(train_tiny(tmp_path / "run", 1, *EVERY_STEP, "--save-budget", "0"))
    assert saves["deferred"] == 0 and saves["asked"] == 12  # each of the 11 handed to the writer, and the epoch's


def test_sigterm_saves_at_once_over_the_budget_and_the_resumed_run_is_bitwise_the_uninterrupted_one(
        tmp_path, monkeypatch):
    costly_writes(monkeypatch, 0.1)
    whole = train_tiny(tmp_path / "whole", 2, *EVERY_STEP)
    run = tmp_path / "stopped"
    monkeypatch.setattr(faults, "_hits", {})
    monkeypatch.setenv("USEG_KILL_AT", "step:5:SIGTERM")
    assert main(["train", "--run-dir", str(run), "--epochs", "2", *TINY, "--quiet", "--vis-every", "0",
                 *EVERY_STEP]) == 143
    monkeypatch.delenv("USEG_KILL_AT")
    assert load_checkpoint(run / "checkpoints" / "latest_checkpoint.pt")["step"] == 5  # not the budget's last
    assert main(["resume", "latest", "--run-dir", str(run)]) == 0
    assert_same_training(final_state(whole), final_state(run))
