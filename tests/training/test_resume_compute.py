"""Settings that change a step's arithmetic (CPU threads, --compile, --precision, --deterministic, the device
type): a resume keeps them from the checkpoint and ends bitwise equal to an uninterrupted run even where this
machine would choose otherwise (and says so); a resume that changes one warns that it continues correctly but
not bit-identically, and the data line and `checkpoints info` stop claiming it is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import useg.compute.device
import useg.training.setup
from tiny import assert_same_training
from tiny import TINY
from useg import faults
from useg.cli import main
from useg.config import build_config
from useg.training.progress import Progress
from useg.training.state import compute_changes

THREADS_AT = TINY.index("--num-threads")
NO_THREADS = TINY[:THREADS_AT] + TINY[THREADS_AT + 2:]  # the machine chooses
FLAGS = ["--epochs", "2", *TINY, "--vis-every", "0", "--quiet"]
NOT_EXACT = "the resumed run continues correctly, not bit-identical to an uninterrupted run"


def latest(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "latest_checkpoint.pt", weights_only=True)


def on_a_machine_with(monkeypatch, cores: int) -> None:
    """What usable_cores() says here: with --data-workers 0 the default is cores - 1 threads."""
    monkeypatch.setattr(useg.compute.device, "usable_cores", lambda: cores)


def ctrl_c_at_step_4(monkeypatch, *args: str) -> None:
    """Train in this process and stop with a Ctrl+C after the 4th step (epoch 2, batch 1 of 3)."""
    monkeypatch.setattr(faults, "_hits", {})
    monkeypatch.setenv("USEG_KILL_AT", "step:4:SIGINT")
    assert main(["train", *args]) == 130
    monkeypatch.delenv("USEG_KILL_AT")


def info(run: Path, capsys) -> str:
    capsys.readouterr()
    assert main(["checkpoints", "info", str(run / "checkpoints" / "latest_checkpoint.pt")]) == 0
    [line] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("deterministic:")]
    return line


# --- CPU threads -------------------------------------------------------------------------------------

def test_a_resume_keeps_the_runs_thread_count_where_this_machine_would_use_more_and_ends_bitwise_equal(
        tmp_path, monkeypatch, capsys):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    args = ["--epochs", "2", *NO_THREADS, "--vis-every", "0", "--quiet", "--data-workers", "0"]
    on_a_machine_with(monkeypatch, 2)
    # what a trial step on a busy 2-core machine finds: 1 thread runs faster than 2
    monkeypatch.setattr(useg.training.setup, "fastest_thread_count", lambda step, counts: (1, {1: 0.2, 2: 0.9}))
    assert main(["train", "--run-dir", str(straight), *args]) == 0
    ctrl_c_at_step_4(monkeypatch, "--run-dir", str(stopped), *args)
    assert latest(stopped)["config"]["num_threads"] == 1  # saved as chosen, not as "0: choose"
    # the machine is quiet again: a trial step runs faster with 2 threads, which compute other weights
    monkeypatch.setattr(useg.training.setup, "fastest_thread_count", lambda step, counts: (2, {1: 0.9, 2: 0.5}))
    capsys.readouterr()
    assert main(["resume", "latest", "--run-dir", str(stopped)]) == 0
    out, err = capsys.readouterr()
    assert ("keeping 1 CPU thread as the run computed with; this machine would use 2, faster in a trial step "
            "(1: 0.90 s, 2: 0.50 s) (--num-threads 2 changes that, and the resume is then not bit-identical)") in out
    [log] = (stopped / "logs").glob("training_*.json")
    resumed = json.loads(log.read_text())["sessions"][-1]["thread_choice"]
    assert resumed == {"kept": 1, "fastest_here": 2, "seconds_per_trial_step": {"1": 0.9, "2": 0.5}}
    assert "not bit-identical" not in err and ", deterministic, 1 CPU threads" in out
    assert_same_training(latest(straight), latest(stopped))
    assert latest(stopped)["config"]["bit_identical"] is True


def test_another_num_threads_on_resume_warns_and_the_run_no_longer_claims_to_be_bit_identical(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), *FLAGS, "--epochs", "1"]) == 0
    capsys.readouterr()
    assert main(["resume", "latest", "--run-dir", str(run), "--epochs", "2", "--num-threads", "2"]) == 0
    out, err = capsys.readouterr()
    assert f"warning: resuming with num_threads 1 -> 2: {NOT_EXACT}" in err
    [data_line] = [line for line in out.splitlines() if line.startswith("Data:")]
    assert "not bit-identical" in data_line and ", deterministic," not in data_line, data_line
    assert latest(run)["config"]["num_threads"] == 2 and latest(run)["config"]["bit_identical"] is False
    assert "yes, but an earlier resume changed how the run computes" in info(run, capsys)
    # A later resume keeps the 2 threads (no new warning) and still does not claim to be exact.
    assert main(["resume", "latest", "--run-dir", str(run), "--epochs", "3"]) == 0
    out, err = capsys.readouterr()
    assert "num_threads" not in err and "not bit-identical" in out
    assert latest(run)["config"]["bit_identical"] is False


# --- --compile -------------------------------------------------------------------------------------------

class CountingCompile(torch.nn.Module):
    """Stands in for torch.compile's wrapper (compiling takes tens of seconds): counts the models it wraps."""

    wrapped = 0

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        CountingCompile.wrapped += 1
        self._orig_mod = model

    def forward(self, *inputs):
        return self._orig_mod(*inputs)


def test_a_resume_keeps_compile_and_turning_it_on_at_resume_warns(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(useg.training.setup, "compile_model", CountingCompile)
    compiled, plain = tmp_path / "compiled", tmp_path / "plain"
    assert main(["train", "--run-dir", str(compiled), *FLAGS, "--epochs", "1", "--compile"]) == 0
    CountingCompile.wrapped = 0
    capsys.readouterr()
    assert main(["resume", "latest", "--run-dir", str(compiled), "--epochs", "2", "--quiet"]) == 0
    assert CountingCompile.wrapped == 1 and "bit-identical" not in capsys.readouterr().err  # kept
    assert latest(compiled)["config"]["compile"] is True and latest(compiled)["config"]["bit_identical"] is True

    assert main(["train", "--run-dir", str(plain), *FLAGS, "--epochs", "1"]) == 0
    capsys.readouterr()
    assert main(["resume", "latest", "--run-dir", str(plain), "--epochs", "2", "--quiet", "--compile"]) == 0
    assert f"warning: resuming with compile False -> True: {NOT_EXACT}" in capsys.readouterr().err
    assert latest(plain)["config"]["bit_identical"] is False


# --- --precision -----------------------------------------------------------------------------------------

def test_a_resume_keeps_bf16_on_a_cpu_that_would_choose_fp32_and_ends_bitwise_equal(tmp_path, monkeypatch, capsys):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert main(["train", "--run-dir", str(straight), *FLAGS, "--precision", "bf16"]) == 0
    ctrl_c_at_step_4(monkeypatch, "--run-dir", str(stopped), *FLAGS, "--precision", "bf16")
    capsys.readouterr()
    assert main(["resume", "latest", "--run-dir", str(stopped)]) == 0
    out, err = capsys.readouterr()
    assert "keeping precision bf16 as the run computed with; this machine would use fp32" in out
    assert "bit-identical" not in err
    assert_same_training(latest(straight), latest(stopped))


def test_another_precision_on_resume_warns_not_bit_identical(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), *FLAGS, "--epochs", "1"]) == 0
    capsys.readouterr()
    assert main(["resume", "latest", "--run-dir", str(run), "--epochs", "2", "--quiet", "--precision", "bf16"]) == 0
    err = capsys.readouterr().err
    assert f"warning: resuming with precision 'fp32' -> 'bf16': {NOT_EXACT}" in err
    assert "no longer as originally planned" not in err  # not a change of plan, a change of arithmetic
    assert latest(run)["config"]["bit_identical"] is False


# --- --deterministic ----------------------------------------------------------------------------------

def test_turning_deterministic_off_and_on_again_marks_the_run_as_not_bit_identical(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), *FLAGS, "--epochs", "1"]) == 0
    capsys.readouterr()
    assert main(["resume", "latest", "--run-dir", str(run), "--epochs", "2", "--quiet", "--no-deterministic"]) == 0
    err = capsys.readouterr().err
    assert err.count("not bit-identical") == 1 and f"--no-deterministic: {NOT_EXACT}" in err  # one warning
    assert main(["resume", "latest", "--run-dir", str(run), "--epochs", "3", "--quiet", "--deterministic"]) == 0
    assert f"resuming with deterministic False -> True: {NOT_EXACT}" in capsys.readouterr().err
    assert latest(run)["config"]["deterministic"] is True
    assert "yes, but an earlier resume changed how the run computes" in info(run, capsys)


# --- the device type ----------------------------------------------------------------------------------

def test_a_resume_on_another_device_type_warns_and_marks_the_run(capsys):
    cfg = build_config({"precision": "bf16", "num_threads": 1, "device": "cpu"})
    saved = {**cfg.to_dict(), "device": "cuda:0"}  # the checkpoint of a GPU run
    useg.training.setup.say_how_the_resume_computes(cfg, saved, torch.device("cpu"), Progress(quiet=True))
    assert f"warning: resuming with device 'cuda' -> 'cpu': {NOT_EXACT}" in capsys.readouterr().err
    assert cfg.bit_identical is False
    same_type = {**cfg.to_dict(), "device": "cuda:1"}
    assert compute_changes(same_type, cfg, "cuda") == {}  # another GPU of the same kind: not a change


@pytest.mark.parametrize("key, unknown", [("num_threads", 0), ("precision", None), ("device", None)])
def test_a_checkpoint_that_did_not_record_the_chosen_value_is_no_change(key, unknown):
    cfg = build_config({"precision": "fp32", "num_threads": 2, "device": "cpu"})
    assert compute_changes({**cfg.to_dict(), key: unknown}, cfg, "cpu") == {}
