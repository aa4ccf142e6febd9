"""The CPU thread count a new run computes with is measured, not derived: one trial step at each candidate
count, the fastest kept. The trial leaves weights and random streams alone, so the run computes bit for bit
what it computes with --num-threads forced to that count; a forced count is obeyed without a trial; the
choice and its timings are in the log."""

from __future__ import annotations

from types import SimpleNamespace

import json
from pathlib import Path

import pytest
import torch

import useg.compute.device
import useg.training.setup
from tiny import TINY, assert_same_training, rewrite_saved_config
from useg.cli import main
from useg.compute.device import fastest_thread_count, thread_candidates

THREADS_AT = TINY.index("--num-threads")
NO_THREADS = TINY[:THREADS_AT] + TINY[THREADS_AT + 2:]
ARGS = ["--epochs", "2", *NO_THREADS, "--vis-every", "0", "--quiet", "--data-workers", "0"]


def latest(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "latest_checkpoint.pt", weights_only=True)


def session(run: Path) -> dict:
    return json.loads(next((run / "logs").glob("training_*.json")).read_text())["sessions"][-1]


@pytest.mark.parametrize("cores, expected", [(1, [1]), (2, [1, 2]), (6, [1, 2, 4, 6]), (8, [1, 2, 4, 8])])
def test_the_candidates_are_powers_of_two_and_every_core(cores, expected):
    assert thread_candidates(cores) == expected


def test_the_fastest_count_is_kept_near_ties_go_to_fewer_threads_and_the_callers_count_comes_back(monkeypatch):
    before = torch.get_num_threads()
    pause = {1: 0.03, 2: 0.01, 3: 0.0102}  # seconds per step at each count: 2 and 3 tie within 3 %
    clock = [0.0]  # a step takes exactly its pause on this clock (sleeping was at the mercy of the machine's load)
    monkeypatch.setattr(useg.compute.device, "time", SimpleNamespace(perf_counter=lambda: clock[0]))

    def step() -> None:
        clock[0] += pause[torch.get_num_threads()]

    chosen, seconds = fastest_thread_count(step, [1, 2, 3])
    assert chosen == 2 and set(seconds) == {1, 2, 3} and seconds[1] > seconds[2]
    assert torch.get_num_threads() == before


def test_a_new_run_computes_exactly_what_the_measured_count_forced_by_flag_computes(tmp_path, monkeypatch):
    monkeypatch.setattr(useg.compute.device, "usable_cores", lambda: 2)
    measured, forced = tmp_path / "measured", tmp_path / "forced"
    assert main(["train", "--run-dir", str(measured), *ARGS]) == 0
    choice = session(measured)["thread_choice"]
    assert set(choice["seconds_per_trial_step"]) == {"1", "2"} and choice["chosen"] in (1, 2)
    assert latest(measured)["config"]["num_threads"] == choice["chosen"]  # saved as chosen: a resume keeps it
    assert main(["train", "--run-dir", str(forced), *ARGS, "--num-threads", str(choice["chosen"])]) == 0
    assert "thread_choice" not in session(forced)
    assert_same_training(latest(measured), latest(forced))


def test_the_count_the_trial_found_fastest_is_the_one_the_run_uses_and_says(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(useg.compute.device, "usable_cores", lambda: 2)
    monkeypatch.setattr(useg.training.setup, "fastest_thread_count", lambda step, counts: (2, {1: 0.5, 2: 0.25}))
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), *ARGS, "--no-quiet"]) == 0
    out = capsys.readouterr().out
    assert "CPU threads: 2, the fastest here (one trial step with 1: 0.50 s, 2: 0.25 s)" in out
    assert ", 2 CPU threads" in out and latest(run)["config"]["num_threads"] == 2


def test_a_forced_count_is_obeyed_without_a_trial(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(useg.compute.device, "usable_cores", lambda: 2)

    def no_trial(step, counts):
        raise AssertionError("--num-threads was given: nothing to measure")

    monkeypatch.setattr(useg.training.setup, "fastest_thread_count", no_trial)
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), *ARGS, "--num-threads", "2", "--no-quiet"]) == 0
    assert ", 2 CPU threads" in capsys.readouterr().out and latest(run)["config"]["num_threads"] == 2


def test_a_resume_of_a_checkpoint_that_did_not_record_its_count_keeps_the_count_train_sets(tmp_path, monkeypatch):
    monkeypatch.setattr(useg.compute.device, "usable_cores", lambda: 2)
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), *ARGS, "--epochs", "1", "--num-threads", "1"]) == 0
    rewrite_saved_config(run / "checkpoints" / "latest_checkpoint.pt", num_threads=0)  # as saved before counts were

    # A trial step may say what this machine would use; the resume computes with the count it has.
    monkeypatch.setattr(useg.training.setup, "fastest_thread_count", lambda step, counts: (2, {1: 0.9, 2: 0.5}))
    assert main(["resume", "latest", "--run-dir", str(run), "--epochs", "2", "--quiet"]) == 0
    assert session(run)["thread_choice"]["kept"] == latest(run)["config"]["num_threads"]
    assert "chosen" not in session(run)["thread_choice"]  # nothing was chosen by the measurement
