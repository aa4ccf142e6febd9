"""Coalesced checkpoint saves: a routine mid-epoch save asked for while an earlier one is still being written
waits as the one pending save instead of stalling training, a newer save replaces it, latest never goes
backwards, epoch and interrupt saves are never skipped, and the training log counts what was coalesced."""

from __future__ import annotations

import json
import os
import sys
import threading
import time

import pytest
import torch

from tiny import train_tiny
from useg.checkpoint import CheckpointManager, load_checkpoint
from useg.checkpoint import manager as manager_module
from useg.checkpoint.writer import LOW_PRIORITY_NICE


class HeldWrites:
    """Replaces publish_state: records which step each write of latest held and holds writes until released."""

    def __init__(self, monkeypatch) -> None:
        self.real = manager_module.publish_state
        self.release = threading.Event()
        self.writing = threading.Event()
        self.latest_steps: list[int] = []
        self.written: list[tuple[str, int]] = []  # (file name, step) of every write
        monkeypatch.setattr(manager_module, "publish_state", self.publish)

    def publish(self, path, state, fields):
        self.writing.set()
        assert self.release.wait(10), "the test never released the write"
        checksum = self.real(path, state, fields)
        self.written.append((path.name, fields["step"]))
        if path.name == "latest_checkpoint.pt":
            self.latest_steps.append(fields["step"])
        return checksum


def state_at(model: torch.nn.Linear, step: int) -> dict:
    with torch.no_grad():
        model.weight.fill_(step)
    return {"model_state_dict": model.state_dict(), "step": step}


def test_routine_saves_during_a_write_coalesce_into_the_newest_and_latest_never_goes_back(tmp_path, monkeypatch):
    writes = HeldWrites(monkeypatch)
    model = torch.nn.Linear(3, 3)
    with CheckpointManager(tmp_path, total_epochs=2) as manager:
        manager.save(state_at(model, 1), epoch=0, kind="interrupt", step=1, routine=True)
        assert writes.writing.wait(10)
        started = time.monotonic()
        for step in (2, 3, 4):  # each would wait for the held write if it could not be coalesced
            manager.save(state_at(model, step), epoch=0, kind="interrupt", step=step, routine=True)
        assert time.monotonic() - started < 5
        assert manager.coalesced_saves == 2  # 2 replaced by 3, 3 by 4
        writes.release.set()
        manager.wait()
        assert writes.latest_steps == [1, 4]
        latest = load_checkpoint(tmp_path / "latest_checkpoint.pt")
        assert latest["step"] == 4 and torch.equal(latest["model_state_dict"]["weight"], torch.full((3, 3), 4.0))
        assert manager.saves_asked == 4


@pytest.mark.parametrize("kind", ["epoch", "interrupt"])
def test_an_epoch_or_interrupt_save_is_never_skipped_and_replaces_a_waiting_routine_save(tmp_path, monkeypatch, kind):
    writes = HeldWrites(monkeypatch)
    model = torch.nn.Linear(3, 3)
    with CheckpointManager(tmp_path, total_epochs=1, periodic_percentages=(100,)) as manager:
        manager.save(state_at(model, 1), epoch=0, kind="interrupt", step=1, routine=True)
        assert writes.writing.wait(10)
        manager.save(state_at(model, 2), epoch=0, kind="interrupt", step=2, routine=True)  # waits as pending
        threading.Timer(0.2, writes.release.set).start()
        epoch = 1 if kind == "epoch" else 0
        manager.save(state_at(model, 3), epoch=epoch, kind=kind, step=3, val_dice=0.5)  # waits for write 1
        manager.wait()
        assert [step for _, step in writes.written] == [1, 3, 3][:2 + (kind == "epoch")]  # never step 2
        assert manager.coalesced_saves == 1
        assert (tmp_path / "epoch_001_checkpoint.pt").exists() == (kind == "epoch")
        assert (tmp_path / "best_model.pt").exists() == (kind == "epoch")
        assert load_checkpoint(tmp_path / "latest_checkpoint.pt")["step"] == 3


def test_a_failed_write_drops_the_waiting_save_and_is_raised_once(tmp_path, monkeypatch):
    from useg.errors import CheckpointError

    writes = HeldWrites(monkeypatch)
    model = torch.nn.Linear(3, 3)

    def failing(path, state, fields):
        writes.writing.set()
        writes.release.wait(10)
        raise CheckpointError("disk full (test)")

    with CheckpointManager(tmp_path, total_epochs=1) as manager:
        monkeypatch.setattr(manager_module, "publish_state", failing)
        manager.save(state_at(model, 1), epoch=0, kind="interrupt", step=1, routine=True)
        assert writes.writing.wait(10)
        manager.save(state_at(model, 2), epoch=0, kind="interrupt", step=2, routine=True)
        writes.release.set()
        with pytest.raises(CheckpointError, match="disk full"):
            manager.wait()
        manager.wait()  # raised once
        monkeypatch.setattr(manager_module, "publish_state", writes.publish)
        manager.save(state_at(model, 3), epoch=0, kind="interrupt", step=3, routine=True)
        manager.wait()
    assert writes.latest_steps == [3]


def test_only_mid_epoch_saves_may_be_routine(tmp_path):
    with CheckpointManager(tmp_path, total_epochs=1) as manager:
        with pytest.raises(ValueError, match="routine"):
            manager.save({"step": 1}, epoch=1, kind="epoch", routine=True)


def test_training_with_slow_writes_coalesces_saves_and_the_log_and_epoch_line_count_them(tmp_path, monkeypatch,
                                                                                        capsys):
    real = manager_module.publish_state

    def slow(path, state, fields):
        time.sleep(0.15)  # a write much slower than a tiny step: later saves must coalesce, not wait
        return real(path, state, fields)

    monkeypatch.setattr(manager_module, "publish_state", slow)
    run = train_tiny(tmp_path / "run", 1, "--samples-per-epoch", "24", "--save-every-steps", "1",
                     "--save-budget", "0", "--data-workers", "0")
    [log_path] = (run / "logs").glob("training_*.json")
    saves = json.loads(log_path.read_text())["sessions"][-1]["checkpoint_saves"]
    assert saves["asked"] == 12  # 11 mid-epoch saves (none after the last step) + the epoch's
    assert 0 < saves["coalesced"] < 11
    state = load_checkpoint(run / "checkpoints" / "latest_checkpoint.pt")
    assert state["epoch"] == 1 and state["step"] == 12 and (run / "checkpoints" / "epoch_001_checkpoint.pt").exists()
    # "Every step" was not happening, and the epoch line says so (--quiet keeps it), with where latest was.
    [line] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch   1/1")]
    assert f"saves: {saves['coalesced']} of 11 coalesced, latest at step " in line, line


def test_the_epoch_line_says_how_far_latest_lags_only_when_saves_were_coalesced():
    from useg.training.progress import SaveCounts, saves_note

    assert saves_note(SaveCounts(asked=40, coalesced=12, step=160, latest_step=123)) == (
        "  saves: 12 of 40 coalesced, latest at step 123 (37 behind)")
    assert saves_note(SaveCounts(asked=40, coalesced=3, step=160, latest_step=160)).endswith("latest at step 160")
    assert saves_note(SaveCounts(asked=4, coalesced=1, step=4)).endswith("no latest written yet")
    assert saves_note(SaveCounts(asked=40, coalesced=0, step=160, latest_step=150)) == ""
    assert saves_note(None) == ""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread CPU priorities are Linux's")
def test_routine_saves_are_written_at_the_lowest_priority_and_other_saves_at_the_processs(tmp_path, monkeypatch):
    real, seen = manager_module.publish_state, {}

    def publish(path, state, fields):
        def priority() -> int:
            return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

        helper = threading.Thread(target=lambda: seen.setdefault((fields["kind"], "helper"), priority()))
        helper.start()  # as the writer starts its hashing thread
        helper.join()
        seen[(fields["kind"], "writer")] = priority()
        return real(path, state, fields)

    monkeypatch.setattr(manager_module, "publish_state", publish)
    own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    state = {"model_state_dict": {"w": torch.ones(3)}}
    with CheckpointManager(tmp_path / "checkpoints", total_epochs=10, periodic_percentages=()) as manager:
        manager.save(state, epoch=0, kind="mid_epoch", step=1)
        manager.wait()
        manager.save(state, epoch=1, val_dice=0.5, step=2)
        manager.save(state, epoch=1, kind="interrupt", step=2)
    low = max(own, LOW_PRIORITY_NICE)  # nice only goes up: a process already at 19 stays there
    assert seen == {("mid_epoch", "writer"): low, ("mid_epoch", "helper"): low,
                    ("best", "writer"): own, ("best", "helper"): own,
                    ("latest", "writer"): own, ("latest", "helper"): own,
                    ("interrupt", "writer"): own, ("interrupt", "helper"): own}
    assert load_checkpoint(tmp_path / "checkpoints" / "latest_checkpoint.pt")["epoch"] == 1

