"""Overlapped snapshot copies, useg's own trainer only: save() leaves the copies of the optimizer's
tensors to the writer, the optimizer's next step() waits for them (or takes them itself), so the file
holds the state of the moment save() was called; a counted in-place change outside step() in that window
fails the save instead of writing a state that never existed. Any other loop gets no overlap: asking
for it is refused, and everything is copied before save() returns."""

from __future__ import annotations

import threading

import pytest
import torch

from useg.checkpoint import CheckpointManager, load_checkpoint
from useg.checkpoint import overlap
from useg.checkpoint.manager import CheckpointManager as Manager
from useg.checkpoint.state import snapshot_state_overlapped


def trained(seed: int = 0) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    step(model, optimizer)
    return model, optimizer


def step(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    optimizer.zero_grad()
    model(torch.randn(16, 4)).square().mean().backward()  # also moves BatchNorm's running statistics
    optimizer.step()


def frozen(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """What a correct checkpoint of this moment holds, taken the slow way."""
    return {"model": {k: v.clone() for k, v in model.state_dict().items()},
            "optimizer": {i: {k: v.clone() for k, v in s.items()} for i, s in optimizer.state_dict()["state"].items()}}


def assert_holds(path, expected: dict) -> None:
    saved = load_checkpoint(path)
    for key, value in expected["model"].items():
        assert torch.equal(saved["model_state_dict"][key], value), key
    for index, entry in expected["optimizer"].items():
        for key, value in entry.items():
            assert torch.equal(saved["optimizer_state_dict"]["state"][index][key], value), (index, key)


def trainer_manager(directory, total_epochs: int) -> Manager:
    """A manager as useg's trainer opens it: with its private switch for overlapped copies."""
    return CheckpointManager(directory, total_epochs=total_epochs, _overlap_copies_in_useg_train=True)


class HeldWriter:
    """Holds each background write job before it starts (so before its copies) until released."""

    def __init__(self, monkeypatch) -> None:
        self.release = threading.Event()
        real = Manager._write_and_release

        def held(manager, *args):
            assert self.release.wait(10), "the test never released the write"
            real(manager, *args)

        monkeypatch.setattr(Manager, "_write_and_release", held)


def test_only_what_the_optimizer_changes_is_left_for_later_and_the_rest_is_copied_at_once():
    model, optimizer = trained()
    snapshot, later = snapshot_state_overlapped({"model": model, "optimizer": optimizer, "rng": torch.get_rng_state()})
    running_mean = model[1].running_mean.clone()
    with torch.no_grad():
        model[1].running_mean.add_(1.0)  # a buffer no optimizer owns: copied before save() returned
    assert torch.equal(snapshot["model"]["1.running_mean"], running_mean)
    assert later is not None
    weight = model[0].weight.clone()
    later.take()
    assert torch.equal(snapshot["model"]["0.weight"], weight)
    assert torch.equal(snapshot["optimizer"]["state"][0]["exp_avg"], optimizer.state[model[0].weight]["exp_avg"])
    _, nothing = snapshot_state_overlapped({"model": model, "optimizer": optimizer.state_dict()})
    assert nothing is None  # no optimizer part: nothing is known to be fenced, everything copied at once


def test_a_step_taken_before_the_writer_starts_takes_the_copies_first_and_the_file_holds_the_saved_moment(
        tmp_path, monkeypatch):
    held = HeldWriter(monkeypatch)
    model, optimizer = trained()
    expected = frozen(model, optimizer)
    with trainer_manager(tmp_path, 2) as manager:
        manager.save({"model_state_dict": model, "optimizer_state_dict": optimizer}, epoch=1)
        for _ in range(3):
            step(model, optimizer)  # the writer has not copied anything yet
        assert not torch.equal(model[0].weight, expected["model"]["0.weight"])
        held.release.set()
        manager.wait()
    assert_holds(tmp_path / "latest_checkpoint.pt", expected)


def test_a_step_waits_for_a_copy_the_writer_is_taking(tmp_path, monkeypatch):
    copying, finish = threading.Event(), threading.Event()
    real_copy = overlap.copy_tensors

    def slow_copy(targets, sources):
        if threading.current_thread() is not threading.main_thread():
            copying.set()
            assert finish.wait(10)
        real_copy(targets, sources)

    monkeypatch.setattr(overlap, "copy_tensors", slow_copy)
    model, optimizer = trained()
    expected = frozen(model, optimizer)
    with trainer_manager(tmp_path, 2) as manager:
        manager.save({"model_state_dict": model, "optimizer_state_dict": optimizer}, epoch=1)
        assert copying.wait(10)
        stepper = threading.Thread(target=step, args=(model, optimizer))
        stepper.start()
        stepper.join(0.3)
        assert stepper.is_alive()  # held at step() until the copy is whole
        assert torch.equal(model[0].weight, expected["model"]["0.weight"])
        finish.set()
        stepper.join(10)
        manager.wait()
    assert not torch.equal(model[0].weight, expected["model"]["0.weight"])
    assert_holds(tmp_path / "latest_checkpoint.pt", expected)


def test_a_weight_changed_outside_the_optimizer_before_its_copy_fails_that_save_and_keeps_the_previous(
        tmp_path, monkeypatch):
    model, optimizer = trained()
    parts = {"model_state_dict": model, "optimizer_state_dict": optimizer}
    with trainer_manager(tmp_path, 3) as manager:
        manager.save(parts, epoch=1)
        manager.wait()
        before = (tmp_path / "latest_checkpoint.pt").read_bytes()
        held = HeldWriter(monkeypatch)
        step(model, optimizer)
        manager.save(parts, epoch=2)
        with torch.no_grad():
            model[0].weight.mul_(0.5)  # e.g. a hand-written weight clamp after save(), before the next step
        held.release.set()
        with pytest.raises(RuntimeError, match=r"not saved: 1 tensor\(s\) of the state changed in place .*Adam.step"):
            manager.wait()
    assert (tmp_path / "latest_checkpoint.pt").read_bytes() == before


def test_routine_saves_that_wait_behind_a_write_copy_at_once_so_a_step_never_waits_for_a_write(
        tmp_path, monkeypatch):
    held = HeldWriter(monkeypatch)
    model, optimizer = trained()
    parts = {"model_state_dict": model, "optimizer_state_dict": optimizer}
    with trainer_manager(tmp_path, 3) as manager:
        manager.save(parts, epoch=0, kind="mid_epoch", step=1)  # held before its copies
        step(model, optimizer)  # takes save 1's copies itself
        expected = frozen(model, optimizer)
        manager.save(parts, epoch=0, kind="mid_epoch", step=2)  # pending behind the held write
        stepper = threading.Thread(target=step, args=(model, optimizer))
        stepper.start()
        stepper.join(10)
        assert not stepper.is_alive()  # the held write did not hold this step
        held.release.set()
        manager.wait()
    assert_holds(tmp_path / "latest_checkpoint.pt", expected)


def test_overlap_copies_for_a_users_own_loop_is_refused_in_one_line_before_anything_is_written(tmp_path):
    folder = tmp_path / "checkpoints"
    with pytest.raises(ValueError) as refused:
        CheckpointManager(folder, total_epochs=2, overlap_copies=True)
    message = str(refused.value)
    assert "\n" not in message
    assert "overlap_copies=True" in message and "p.data.mul_()" in message  # what goes wrong
    assert "leave overlap_copies out: save() then copies everything before it returns" in message  # what to do
    assert not folder.exists()  # refused before the folder or its lock was touched
    with CheckpointManager(folder, total_epochs=2, overlap_copies=False) as manager:  # the default still works
        assert not manager.overlap_copies
        with pytest.raises(AttributeError):
            manager.overlap_copies = True  # no way around the refusal after construction either


def test_without_the_trainers_switch_changes_torch_does_not_count_never_reach_the_file(tmp_path, monkeypatch):
    held = HeldWriter(monkeypatch)  # the write, and any copy it might take, waits until after the changes
    model, optimizer = trained()
    expected = frozen(model, optimizer)
    with CheckpointManager(tmp_path, total_epochs=2) as manager:
        manager.save({"model_state_dict": model, "optimizer_state_dict": optimizer}, epoch=1)
        model[0].weight.data.mul_(0.5)  # uncounted: no version-counter bump
        model[2].weight.detach().numpy()[:] = 7.0  # a write through a NumPy view
        optimizer.state[model[0].weight]["exp_avg"].data.zero_()
        held.release.set()
        manager.wait()
        assert manager.verify("latest").ok
    assert_holds(tmp_path / "latest_checkpoint.pt", expected)
