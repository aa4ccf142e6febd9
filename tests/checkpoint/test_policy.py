"""Which epochs get a periodic file (policy.periodic_epochs), and that the files on disk follow it."""

from __future__ import annotations

import pytest

from checkpoint_kit import BEST, LATEST, Trainer, manager, periodic_on_disk, train
from useg.checkpoint import periodic_epochs, within_budget
from useg.errors import CheckpointError


@pytest.mark.parametrize(
    ("total", "expected"),
    [(1, {1}), (3, {1, 2, 3}), (5, {1, 2, 3, 4, 5}), (7, {2, 3, 5, 6, 7}), (10, {2, 4, 6, 8, 10}),
     (50, {10, 20, 30, 40, 50})],
)
def test_periodic_files_exist_for_the_first_epoch_at_or_after_each_percentage(tmp_path, total, expected):
    assert periodic_epochs(total) == expected
    trainer = Trainer()
    with manager(tmp_path, total) as mgr:
        for epoch in range(1, total + 1):
            trainer.step()
            mgr.save(trainer.state(epoch), epoch=epoch, val_dice=0.5)
            if epoch in expected:  # the periodic file is the same bytes as latest at that epoch
                periodic = tmp_path / f"epoch_{epoch:03d}_checkpoint.pt"
                assert periodic.read_bytes() == (tmp_path / LATEST).read_bytes()
    assert periodic_on_disk(tmp_path) == expected
    assert {p.name for p in tmp_path.glob("*.pt")} >= {LATEST, BEST}


def test_periodic_percentages_are_configurable_and_never_give_two_files_per_epoch(tmp_path):
    assert periodic_epochs(10, (50, 100)) == {5, 10}
    assert periodic_epochs(3, (10, 20, 30)) == {1}
    train(tmp_path, 10, periodic_percentages=(50, 100))
    assert periodic_on_disk(tmp_path) == {5, 10}


def test_periodic_file_is_a_hard_link_of_latest_so_its_bytes_are_stored_once(tmp_path):
    train(tmp_path, 2, total=2, periodic_percentages=(100,))
    assert (tmp_path / "epoch_002_checkpoint.pt").stat().st_ino == (tmp_path / LATEST).stat().st_ino


def test_extending_a_run_recomputes_the_periodic_schedule(tmp_path):
    with manager(tmp_path, 50) as mgr:
        assert mgr.scheduled_epochs == {10, 20, 30, 40, 50}
        mgr.total_epochs = 100
        assert mgr.scheduled_epochs == {20, 40, 60, 80, 100}
        with pytest.raises(CheckpointError):
            mgr.total_epochs = 0


def test_a_save_budget_lets_a_routine_save_start_while_the_spending_is_within_its_share_of_the_time():
    assert within_budget(0.0, 0.0, 1.0)  # nothing spent yet: the first save starts at once
    assert within_budget(0.1, 10.0, 1.0)  # 1% of 10 s
    assert not within_budget(0.11, 10.0, 1.0)
    assert within_budget(0.11, 11.0, 1.0)  # and is allowed again once training has run long enough
    assert within_budget(5.0, 1.0, 0)  # 0: no budget
