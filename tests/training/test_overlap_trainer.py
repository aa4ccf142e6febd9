"""useg's own trainer is the one loop allowed overlapped snapshot copies (overlap.py): prove that nothing
in it writes the weights or the optimizer's state between a save and the next optimizer.step().

A real tiny `useg train` runs in this process with a save after every step, validation and pictures.
Every deferred copy is audited: its sources are cloned when save() fences them (the state the file
must hold), the writer leaves the copy to the next step's pre-hook (so the whole window between save()
and that step is exposed), and once it is copied the copy is compared with that clone. A write that
torch does not count (`p.data.mul_()`) would pass the version-counter check and show here only.
"""

from __future__ import annotations

import threading

import torch

import useg.training.setup
import useg.training.loop
from tiny import TINY
from useg.checkpoint import overlap
from useg.checkpoint.overlap import DeferredCopy
from useg.checkpoint.writer import BackgroundWriter
from useg.cli import main

# 6 steps an epoch, a save after each (no budget to defer them), 2 epochs with validation and pictures after each.
FLAGS = ["--epochs", "2", *TINY, "--samples-per-epoch", "12", "--save-every-steps", "1", "--save-budget", "0",
         "--vis-every", "1", "--quiet"]


class FenceAudit:
    """Instruments DeferredCopy: the truth at fence time against what its copy holds."""

    def __init__(self, monkeypatch) -> None:
        self.lock = threading.Lock()
        self.truth: dict[DeferredCopy, tuple] = {}  # copy -> (its targets, clones of its sources, kind of save)
        self.kinds: list[str] = []  # the kind of save each audited copy came from
        self.saving = ""
        self.mismatches: list[str] = []
        self.taken_by_step = 0  # copies the training thread took (the pre-hook of the next step)
        self.waiting = threading.Event()  # set while the training thread waits for the writer
        real_init, real_take, real_copy = DeferredCopy.__init__, DeferredCopy._take, overlap.copy_tensors
        real_writer_take, real_wait, real_save = DeferredCopy.take, BackgroundWriter.wait, useg.training.loop.save_checkpoint

        def saved(run, **save_args):
            self.saving = save_args.get("kind", "epoch")
            real_save(run, **save_args)

        def fenced(copy, targets, sources, optimizers):
            with self.lock:
                self.truth[copy] = (list(targets), [source.clone() for source in sources], self.saving)
            real_init(copy, targets, sources, optimizers)

        def writer_takes(copy):
            # Leave the copy to the next step's pre-hook unless the training thread waits for this
            # write (a save that may not be coalesced, close()): then nothing can change before it.
            while not copy._done.wait(0.002) and not self.waiting.is_set():
                pass
            real_writer_take(copy)

        def taken(copy):
            real_take(copy)  # returns once the copy is whole, whoever took it
            with self.lock:
                targets, truth, kind = self.truth.pop(copy, (None, None, None))  # the first of two threads checks
                if truth is None:
                    return
                self.kinds.append(kind)
            changed = sum(not torch.equal(target, expected) for target, expected in zip(targets, truth))
            if changed or copy._error is not None:
                self.mismatches.append(f"{changed} of {len(truth)} tensors changed; error {copy._error}")

        def counted_copy(targets, sources):
            self.taken_by_step += threading.current_thread() is threading.main_thread()
            real_copy(targets, sources)

        def waited(writer):
            self.waiting.set()
            try:
                real_wait(writer)
            finally:
                self.waiting.clear()

        monkeypatch.setattr(useg.training.loop, "save_checkpoint", saved)
        monkeypatch.setattr(DeferredCopy, "__init__", fenced)
        monkeypatch.setattr(DeferredCopy, "take", writer_takes)
        monkeypatch.setattr(DeferredCopy, "_take", taken)
        monkeypatch.setattr(overlap, "copy_tensors", counted_copy)
        monkeypatch.setattr(BackgroundWriter, "wait", waited)


def train_audited(run, monkeypatch, *flags: str) -> FenceAudit:
    audit = FenceAudit(monkeypatch)
    assert main(["train", "--run-dir", str(run), *FLAGS, *flags]) == 0
    assert not audit.truth, "a fenced copy was never taken"
    return audit


def test_useg_train_never_writes_a_fenced_tensor_between_a_save_and_the_next_step(tmp_path, monkeypatch):
    audit = train_audited(tmp_path / "run", monkeypatch)
    assert audit.mismatches == []
    # Every kind of window was audited: a mid-epoch save to the next step (the first save always
    # overlaps; a routine save asked for while a write is in flight is copied at once instead, so how
    # many more overlap depends on the machine's load), epoch 1's save through its pictures to epoch 2's
    # first step, and the last save through its pictures to the end of the run.
    assert "mid_epoch" in audit.kinds and audit.kinds.count("epoch") == 2, audit.kinds
    assert audit.taken_by_step >= 2  # the first save's and epoch 1's: left open until the next step
    assert sorted(p.name for p in (tmp_path / "run" / "visualizations_training").glob("*.png")) == [
        "epoch_001_batch_000.png", "epoch_002_batch_000.png"]


def test_fp16_steps_the_loss_scaler_skips_write_no_fenced_tensor_either(tmp_path, monkeypatch):
    # At this scale some gradients overflow fp16 (4 of the 12 steps here): a skipped step never runs
    # the pre-hook, so the copy stays open across it and the steps after it.
    monkeypatch.setattr(useg.training.setup, "make_scaler", lambda precision, device: torch.amp.GradScaler(
        device.type, init_scale=2.0 ** 24))
    audit = train_audited(tmp_path / "run", monkeypatch, "--precision", "fp16", "--vis-every", "0")
    state = torch.load(tmp_path / "run" / "checkpoints" / "latest_checkpoint.pt", weights_only=True)
    assert 0 < state["skipped_steps"] < 12, state["skipped_steps"]
    assert audit.mismatches == []
    assert "mid_epoch" in audit.kinds and audit.kinds.count("epoch") == 2, audit.kinds


def test_the_audit_sees_a_write_outside_step_that_torch_does_not_count(tmp_path, monkeypatch):
    real_save = useg.training.loop.save_checkpoint

    def save_then_scale(run, **save_args):
        real_save(run, **save_args)
        next(run.model.parameters()).data.mul_(1.0001)  # what an EMA swap or a hand-made clamp would do

    monkeypatch.setattr(useg.training.loop, "save_checkpoint", save_then_scale)
    audit = train_audited(tmp_path / "run", monkeypatch, "--vis-every", "0")
    assert audit.mismatches, "the audit missed an uncounted write between save() and step()"
