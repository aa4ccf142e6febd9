"""Resolving what to load (loading.py): latest, its fallback to the newest valid periodic, best, epoch numbers and paths."""

from __future__ import annotations

import os

import pytest

from checkpoint_kit import BEST, LATEST, flip_byte, manager, train
from useg.errors import CheckpointError, UsegError


def test_corrupt_latest_falls_back_to_newest_valid_periodic_with_a_warning(tmp_path):
    train(tmp_path, 5, total=10)  # periodic files at epochs 2 and 4; latest is epoch 5
    flip_byte(tmp_path / LATEST)
    warnings: list[str] = []
    with manager(tmp_path, 10, warnings=warnings) as mgr:
        assert mgr.resolve("latest") == tmp_path / "epoch_004_checkpoint.pt"
        assert mgr.load("latest")["epoch"] == 4
    assert warnings and LATEST in warnings[0] and "sha256" in warnings[0] and "epoch_004" in warnings[0]


def test_best_model_is_never_a_resume_fallback(tmp_path):
    train(tmp_path, 1, total=10)  # no periodic file yet
    os.unlink(tmp_path / LATEST)
    with manager(tmp_path) as mgr, pytest.raises(CheckpointError, match=f"no checkpoint to resume from in {tmp_path}"):
        mgr.resolve("latest")


def test_resolve_names_best_epoch_numbers_and_paths(tmp_path):
    train(tmp_path, 4, total=4, periodic_percentages=(50,))
    with manager(tmp_path, 4) as mgr:
        assert mgr.resolve("best") == tmp_path / BEST
        assert mgr.resolve(2) == tmp_path / "epoch_002_checkpoint.pt"
        assert mgr.resolve(str(tmp_path / LATEST)) == tmp_path / LATEST
        with pytest.raises(CheckpointError, match="epoch_003_checkpoint.pt"):
            mgr.resolve(3)
        with pytest.raises(CheckpointError, match="missing"):
            mgr.resolve(tmp_path / "elsewhere.pt")


def test_checkpoint_errors_are_useg_errors_on_one_line(tmp_path):
    with manager(tmp_path) as mgr, pytest.raises(UsegError) as caught:
        mgr.load("latest")
    assert "\n" not in str(caught.value)
