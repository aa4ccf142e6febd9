"""--save-budget: routine mid-epoch saves that would cost more than their share of the training time wait,
and the run says how many did; the saves a run needs (epoch ends, Ctrl+C, SIGTERM) never wait."""

from __future__ import annotations

import json
import re

import pytest

from tiny import TINY, assert_same_training, final_state, train_tiny
from useg import faults
from useg.checkpoint import load_checkpoint
from useg.cli import main
from useg.training.setup import RoutineSaves

EVERY_STEP = ["--samples-per-epoch", "24", "--save-every-steps", "1", "--data-workers", "0"]  # 12 steps
# A budget no save fits once one has cost anything: the first starts once 4 steps without a write have shown
# what a step takes (at step 4: nothing spent yet), the rest wait.
TINY_BUDGET = ["--save-budget", "0.0001"]


def session_saves(run) -> dict:
    [log_path] = (run / "logs").glob("training_*.json")
    return json.loads(log_path.read_text())["sessions"][-1]["checkpoint_saves"]


def test_saves_over_the_budget_are_deferred_and_the_epoch_line_and_log_say_how_many(tmp_path, capsys):
    run = train_tiny(tmp_path / "run", 1, *EVERY_STEP, *TINY_BUDGET)
    saves = session_saves(run)
    assert saves["routine_due"] == 11  # none is due after the last step: the epoch's save follows
    assert saves["deferred"] == 10 and saves["asked"] == 2 and saves["budget_percent"] == 0.0001  # the first, the epoch's
    [line] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch   1/1")]
    # Where latest is as the line is printed: the epoch's own save may still be in flight then.
    assert re.search(r"saves: 10 of 11 deferred by the 0\.0001% save budget, latest at step (4 \(8 behind\)|12)$",
                     line), line
    state = load_checkpoint(run / "checkpoints" / "latest_checkpoint.pt")
    assert state["epoch"] == 1 and state["step"] == 12  # the epoch's save is never deferred


def test_without_a_budget_every_due_save_is_taken(tmp_path):
    saves = session_saves(train_tiny(tmp_path / "run", 1, *EVERY_STEP, "--save-budget", "0"))
    assert saves["deferred"] == 0 and saves["asked"] == 12  # each of the 11 handed to the writer, and the epoch's


def test_sigterm_saves_at_once_over_the_budget_and_the_resumed_run_is_bitwise_the_uninterrupted_one(
        tmp_path, monkeypatch):
    whole = train_tiny(tmp_path / "whole", 2, *EVERY_STEP, *TINY_BUDGET)
    run = tmp_path / "stopped"
    monkeypatch.setattr(faults, "_hits", {})
    monkeypatch.setenv("USEG_KILL_AT", "step:5:SIGTERM")
    assert main(["train", "--run-dir", str(run), "--epochs", "2", *TINY, "--quiet", "--vis-every", "0",
                 *EVERY_STEP, *TINY_BUDGET]) == 143
    monkeypatch.delenv("USEG_KILL_AT")
    assert load_checkpoint(run / "checkpoints" / "latest_checkpoint.pt")["step"] == 5  # not the budget's step 4
    assert main(["resume", "latest", "--run-dir", str(run)]) == 0
    assert_same_training(final_state(whole), final_state(run))


def test_a_save_costs_the_steps_time_beyond_a_typical_step_while_it_is_written():
    saves = RoutineSaves(stall_s=0.01)
    saves.weigh_step(0.25, writing=True)  # no step without a write yet: nothing to compare with
    for seconds in (0.10, 0.12, 0.11):
        saves.weigh_step(seconds, writing=False)
    assert not saves.measured  # 3 steps without a write: not yet enough to start the next save
    saves.weigh_step(0.26, writing=True)  # 0.15 s beyond the median step without a write
    saves.weigh_step(0.09, writing=True)  # 0.02 s under it: jitter, which cancels out over a run
    assert saves.slowdown_s == pytest.approx(0.13) and saves.spent_s == pytest.approx(0.14)
    for _ in range(4):
        saves.weigh_step(0.11, writing=False)
    assert saves.measured


def test_saves_due_by_the_minute_are_counted_once_each_and_deferred_like_the_others(tmp_path):
    every_step_by_time = ["--samples-per-epoch", "24", "--save-every-minutes", "0.00001", "--data-workers", "0"]
    saves = session_saves(train_tiny(tmp_path / "run", 1, *every_step_by_time, *TINY_BUDGET))
    assert saves["routine_due"] == 11 and saves["deferred"] == 10  # 0.6 ms: due after every step but the last
