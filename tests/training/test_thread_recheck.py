"""When an epoch runs SLOW, a CPU run whose thread count was measured times the trial step again at each
candidate count, says on the epoch line what it found and what the run keeps, and records it in the log.
The run keeps its count (the count changes a step's result): the re-check changes nothing it computes.
A count set by --num-threads is not re-timed, and a GPU or several processes never are."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import useg.compute.device
import useg.training.loop
import useg.training.setup
from tiny import TINY, assert_same_training
from useg.cli import main
from useg.training.progress import DEFAULT_SLOW_ADVICE, ThreadRecheck, slow_advice, slowdown_note
from useg.training.setup import count_was_measured, recheck_thread_count

THREADS_AT = TINY.index("--num-threads")
NO_THREADS = TINY[:THREADS_AT] + TINY[THREADS_AT + 2:]
ARGS = [*NO_THREADS, "--vis-every", "0", "--quiet", "--data-workers", "0"]
SLOW_LINE = "SLOW: under a third of this run's"


def latest(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "latest_checkpoint.pt", weights_only=True)


def session(run: Path) -> dict:
    return json.loads(next((run / "logs").glob("training_*.json")).read_text())["sessions"][-1]


def epoch_line(out: str, epoch: int) -> str:
    return next(line for line in out.splitlines() if line.startswith(f"epoch {epoch:>3}/"))


@pytest.fixture
def two_cores(monkeypatch):
    monkeypatch.setattr(useg.compute.device, "usable_cores", lambda: 2)


def slow_at(monkeypatch, epoch: int) -> None:
    """Epoch `epoch` is recorded at a hundredth of its real samples/s: the SLOW condition, as when
    another process takes the cores (the tiny epochs are too short to slow down reliably)."""
    real = useg.training.loop.append_epoch

    def append_epoch(history, record):
        real(history, record)
        if len(history["samples_per_s"]) == epoch:
            history["samples_per_s"][-1] /= 100

    monkeypatch.setattr(useg.training.loop, "append_epoch", append_epoch)


def timings(monkeypatch, *answers) -> list:
    """fastest_thread_count answers these (chosen count, seconds per step), the start's first; the calls."""
    calls = []

    def fastest_thread_count(step, counts):
        calls.append(list(counts))
        return answers[len(calls) - 1]

    monkeypatch.setattr(useg.training.setup, "fastest_thread_count", fastest_thread_count)
    return calls


def test_a_slow_epoch_re_times_the_counts_and_the_line_says_another_is_faster_but_the_run_keeps_its_own(
        tmp_path, two_cores, monkeypatch, capsys):
    # The run computes with 1 thread (2 threads on a busy test machine would make the test slow).
    calls = timings(monkeypatch, (1, {1: 0.25, 2: 0.5}), (2, {1: 0.85, 2: 0.21}))
    slow_at(monkeypatch, 3)
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), "--epochs", "3", *ARGS]) == 0
    out = capsys.readouterr().out
    assert SLOW_LINE not in epoch_line(out, 2)
    assert (f"{SLOW_LINE}" in epoch_line(out, 3) and "re-timed a step here: 1 thread 0.85 s, 2 threads 0.21 s. "
            "The run keeps computing with 1 (its results depend on the count); to switch, stop and resume with "
            "--num-threads 2 (the resume then says it is not bit-identical)" in epoch_line(out, 3))
    assert calls == [[1, 2], [1, 2]]  # the start's trial, then one re-check after the slow epoch
    assert session(run)["thread_rechecks"] == [
        {"epoch": 3, "seconds_per_trial_step": {"1": 0.85, "2": 0.21}, "fastest": 2, "kept": 1}]
    assert session(run)["thread_choice"]["chosen"] == 1 and latest(run)["config"]["num_threads"] == 1


def test_when_the_runs_count_is_still_the_fastest_the_line_says_something_else_slows_the_machine(
        tmp_path, two_cores, monkeypatch, capsys):
    timings(monkeypatch, (1, {1: 0.2, 2: 0.3}), (1, {1: 0.9, 2: 2.5}))
    slow_at(monkeypatch, 3)
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), "--epochs", "3", *ARGS]) == 0
    assert ("re-timed a step here: 1 thread 0.90 s, 2 threads 2.50 s; 1 thread is still the fastest here: "
            "something else slows this machine") in epoch_line(capsys.readouterr().out, 3)
    assert session(run)["thread_rechecks"][0]["kept"] == 1


def test_the_re_check_changes_nothing_the_run_computes(tmp_path, two_cores, monkeypatch):
    """Real trial steps on the run's model at both counts, the last at 2, after epoch 3: epoch 4 must still
    compute with the run's 1 thread (with 2 the weights differ after one step)."""
    real = useg.compute.device.fastest_thread_count
    calls = []

    def start_at_one(step, counts):  # each run's start pinned to 1 (a busy machine may pick either): calls 1, 2
        calls.append(counts)
        return (1, {1: 0.1, 2: 0.2}) if len(calls) <= 2 else real(step, counts)

    monkeypatch.setattr(useg.training.setup, "fastest_thread_count", start_at_one)
    # Which epochs count as SLOW is fixed here: the real rates of tiny epochs on a busy machine are not.
    monkeypatch.setattr(useg.training.loop, "slow_median", lambda rates, *_: None)
    plain = tmp_path / "plain"
    assert main(["train", "--run-dir", str(plain), "--epochs", "4", *ARGS]) == 0
    assert len(calls) == 1 and "thread_rechecks" not in session(plain)
    monkeypatch.setattr(useg.training.loop, "slow_median", lambda rates, *_: 50.0 if len(rates) == 3 else None)
    rechecked = tmp_path / "rechecked"
    assert main(["train", "--run-dir", str(rechecked), "--epochs", "4", *ARGS]) == 0
    assert len(calls) == 3 and session(rechecked)["thread_rechecks"][0]["kept"] == 1
    assert latest(rechecked)["config"]["num_threads"] == 1
    assert_same_training(latest(plain), latest(rechecked))


def test_a_resume_of_a_measured_run_re_times_and_a_forced_count_is_not_re_timed(
        tmp_path, two_cores, monkeypatch, capsys):
    # the start's choice, the resume's trial step (what this machine would use), the SLOW epoch's re-timing
    timings(monkeypatch, (1, {1: 0.25, 2: 0.5}), (1, {1: 0.3, 2: 0.5}), (2, {1: 0.9, 2: 0.2}))
    slow_at(monkeypatch, 3)
    measured = tmp_path / "measured"
    assert main(["train", "--run-dir", str(measured), "--epochs", "2", *ARGS]) == 0
    assert main(["resume", "latest", "--run-dir", str(measured), "--epochs", "3", "--quiet"]) == 0
    assert session(measured)["thread_rechecks"][0]["kept"] == 1  # the resume kept the measured count
    capsys.readouterr()

    def no_trial(step, counts):
        raise AssertionError("--num-threads was given: nothing to time")

    monkeypatch.setattr(useg.training.setup, "fastest_thread_count", no_trial)
    forced = tmp_path / "forced"
    assert main(["train", "--run-dir", str(forced), "--epochs", "3", *ARGS, "--num-threads", "1"]) == 0
    line = epoch_line(capsys.readouterr().out, 3)
    assert f"{SLOW_LINE}" in line and "(this run already computes with 1 thread)" in line
    assert "thread_rechecks" not in session(forced)


def test_a_count_is_re_timed_only_when_a_run_measured_it():
    measured = [{"thread_choice": {"chosen": 2, "seconds_per_trial_step": {"1": 0.5, "2": 0.25}}}, {}]
    assert count_was_measured(measured, 2)
    assert not count_was_measured(measured, 1)  # resumed with --num-threads 1: that count was set, not measured
    assert not count_was_measured([{}], 2)  # a run started with --num-threads


@pytest.mark.parametrize("device, distributed", [("cuda", False), ("cpu", True)])
def test_no_re_timing_on_a_gpu_or_with_several_processes(monkeypatch, device, distributed):
    def no_trial(step, counts):
        raise AssertionError("a GPU step barely uses CPU threads; ranks must not time differently")

    monkeypatch.setattr(useg.training.setup, "fastest_thread_count", no_trial)
    monkeypatch.setattr(useg.training.setup, "usable_cores", lambda: 4)
    run = SimpleNamespace(threads_measured=True, device=torch.device(device), world=SimpleNamespace(enabled=distributed))
    assert recheck_thread_count(run) is None
    assert slow_advice(None, None) == DEFAULT_SLOW_ADVICE  # their SLOW note stays the general advice
    assert slowdown_note([48.0, 50.0, 52.0, 1.4]).endswith(DEFAULT_SLOW_ADVICE)


def test_a_near_tie_is_no_reason_to_give_up_bit_identity():
    near = ThreadRecheck({1: 0.80, 2: 0.85}, fastest=1, kept=2)
    assert "2 threads are within 25 % of the fastest here: something else slows this machine" in slow_advice(near)
    assert ("fewer threads than this run's 2 may be faster: stop and resume with --num-threads 1 (the resume "
            "then says it is not bit-identical)") in slow_advice(None, 2)  # a count set by --num-threads
