"""`clean` (retention.py): which periodic files go, what is never removed, and the bytes freed."""

from __future__ import annotations

import pytest

from checkpoint_kit import BEST, LATEST, manager, periodic_on_disk, train
from useg.checkpoint import bytes_freed, verify_checkpoint
from useg.errors import CheckpointError


def test_clean_keeps_newest_periodic_plus_latest_and_best(tmp_path):
    train(tmp_path, 10, dice=lambda e: 1.0 if e == 1 else 0.5)  # periodic 2,4,6,8,10; best from epoch 1
    with manager(tmp_path) as mgr:
        would_remove = mgr.clean(keep=2, dry_run=True)
        assert sorted(i.epoch for i in would_remove) == [2, 4, 6]
        assert periodic_on_disk(tmp_path) == {2, 4, 6, 8, 10}
        removed = mgr.clean(keep=2)
    assert periodic_on_disk(tmp_path) == {8, 10}
    assert (tmp_path / LATEST).exists() and (tmp_path / BEST).exists()
    assert not (tmp_path / "epoch_002_checkpoint.pt.json").exists()
    assert bytes_freed(removed) == sum(i.size_bytes for i in removed)


def test_clean_counts_no_freed_bytes_for_a_hard_link_of_latest(tmp_path):
    train(tmp_path, 2, total=2, periodic_percentages=(100,))
    with manager(tmp_path, 2) as mgr:
        removed = mgr.clean(keep=0)
    assert [i.name for i in removed] == ["epoch_002_checkpoint.pt"] and bytes_freed(removed) == 0
    assert verify_checkpoint(tmp_path / LATEST).status == "ok"


def test_clean_refuses_a_negative_keep(tmp_path):
    with manager(tmp_path) as mgr, pytest.raises(CheckpointError, match="keep"):
        mgr.clean(keep=-1)


def test_clean_never_removes_the_checkpoint_the_run_resumed_from(tmp_path):
    train(tmp_path, 10)
    with manager(tmp_path) as mgr:
        mgr.load(2)
        mgr.clean(keep=1)
    # 10 is latest's twin (the kept one), 8 is what resume falls back to if that file rots, 2 is protected.
    assert periodic_on_disk(tmp_path) == {2, 8, 10}
