"""The publish protocol (publish.py) and the order of an epoch's files: a SIGKILL at any step leaves a verifiable latest that is never ahead of its periodic and best files."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from checkpoint_kit import BEST, LATEST, manager, periodic_on_disk, train
from useg.checkpoint import load_checkpoint, publish, read_metadata, verify_checkpoint


def _kill_after(step: str) -> None:
    """In a forked child: wrap one protocol step so the process SIGKILLs itself right after it."""
    def killing(real, when=lambda *args: True):
        def wrapper(*args, **kwargs):
            result = real(*args, **kwargs)
            if when(*args):
                os.kill(os.getpid(), signal.SIGKILL)
            return result
        return wrapper

    if step == "temp-written":
        publish.write_state_temp = killing(publish.write_state_temp)
    elif step == "pending-written":
        publish.atomic_write_json = killing(publish.atomic_write_json)
    elif step == "checkpoint-renamed":
        publish.replace_durably = killing(publish.replace_durably, lambda src, dst: dst.suffix == ".pt")
    elif step == "sidecar-renamed":
        publish.replace_durably = killing(publish.replace_durably, lambda src, dst: dst.suffix == ".json")


def _save_in_child_killed(prepare_kill, save) -> None:
    """Fork; the child arms its kill with `prepare_kill()` and runs `save()`; assert it died of SIGKILL."""
    pid = os.fork()
    if pid == 0:
        try:
            prepare_kill()
            save()
        finally:
            os._exit(3)  # reached only if the kill point was never hit
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


@pytest.mark.parametrize(
    ("step", "epoch_on_disk"),
    [("temp-written", 1), ("pending-written", 1), ("checkpoint-renamed", 3), ("sidecar-renamed", 3)],
)
def test_kill_at_each_step_of_a_save_leaves_a_verifiable_latest(tmp_path, step, epoch_on_disk):
    trainer = train(tmp_path, 1, total=10)
    # Epoch 3 of 10 has no periodic file and no val_dice (no best): the save writes latest alone.
    _save_in_child_killed(lambda: _kill_after(step), lambda: manager(tmp_path, 10).save(trainer.state(3), epoch=3))

    result = verify_checkpoint(tmp_path / LATEST)  # readers without the lock, e.g. `useg list`
    assert result.status == "ok" and result.metadata["epoch"] == epoch_on_disk
    assert read_metadata(tmp_path / LATEST)["epoch"] == epoch_on_disk
    assert load_checkpoint(tmp_path / LATEST)["epoch"] == epoch_on_disk

    warnings: list[str] = []
    with manager(tmp_path, 10, warnings=warnings) as mgr:  # start-up under the lock tidies up
        assert any("no longer running" in w for w in warnings)  # the killed child's lock
        assert mgr.load("latest")["epoch"] == epoch_on_disk
    assert not list(tmp_path.glob(".*.tmp")) and not list(tmp_path.glob("*.pending"))
    assert json.loads((tmp_path / (LATEST + ".json")).read_text())["epoch"] == epoch_on_disk


def _kill_at_rename(number: int) -> None:
    """In a forked child: SIGKILL right after the `number`-th rename of the publish protocol."""
    real, renames = publish.replace_durably, []

    def counting(src, dst):
        real(src, dst)
        renames.append(dst)
        if len(renames) == number:
            os.kill(os.getpid(), signal.SIGKILL)

    publish.replace_durably = counting


@pytest.mark.parametrize("renames_done", range(1, 7))
def test_a_kill_during_an_epoch_save_never_leaves_latest_ahead_of_its_periodic_and_best(tmp_path, renames_done):
    # Were latest written first, a kill right after it would lose epoch 2's periodic and best files
    # for good: resume continues from latest (epoch 2) and never writes them again.
    trainer = train(tmp_path, 1, total=10, dice=lambda e: 0.5)
    epoch_2 = trainer.state(2)  # a periodic epoch with a better val_dice: best, periodic and latest, 2 renames each
    _save_in_child_killed(lambda: _kill_at_rename(renames_done),
                          lambda: manager(tmp_path, 10).save(epoch_2, epoch=2, val_dice=0.9))

    assert all(verify_checkpoint(path).ok for path in tmp_path.glob("*.pt"))
    latest_epoch = load_checkpoint(tmp_path / LATEST)["epoch"]
    assert latest_epoch == (2 if renames_done >= 5 else 1)  # latest's own rename is the 5th
    if latest_epoch == 2:
        assert load_checkpoint(tmp_path / "epoch_002_checkpoint.pt")["epoch"] == 2
        assert load_checkpoint(tmp_path / BEST)["val_dice"] == 0.9
    with manager(tmp_path, 10) as mgr:  # what a resumed run does next: redo epoch 2 unless latest has it
        if latest_epoch == 1:
            mgr.save(epoch_2, epoch=2, val_dice=0.9)
    assert periodic_on_disk(tmp_path) == {2}
    assert read_metadata(tmp_path / BEST)["val_dice"] == 0.9 and read_metadata(tmp_path / BEST)["epoch"] == 2
    assert torch.equal(load_checkpoint(tmp_path / BEST)["model_state_dict"]["weight"], trainer.model.weight.detach())
