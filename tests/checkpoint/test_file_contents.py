"""What a save writes: the checkpoint dict, its sidecar, best_model.pt, and which files each save touches."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from checkpoint_kit import BEST, LATEST, Trainer, manager, periodic_on_disk, train
from useg.checkpoint import load_checkpoint, read_metadata
from useg.checkpoint.integrity import sha256_bytes
from useg.errors import CheckpointError


def test_saved_file_opens_with_plain_weights_only_load_and_holds_keys_and_stamps(tmp_path):
    trainer = train(tmp_path, 1)
    state = torch.load(tmp_path / LATEST, weights_only=True)
    assert set(trainer.state(1)) <= set(state)
    assert state["format_version"] == 1 and state["epoch"] == 1
    assert state["created"].endswith("+00:00")
    assert set(state["versions"]) == {"torch", "python", "numpy", "useg"}
    assert torch.equal(state["model_state_dict"]["weight"], trainer.model.weight.detach())
    assert state["optimizer_state_dict"]["state"][0]["step"] == trainer.optimizer.state_dict()["state"][0]["step"]


def test_sidecar_records_checksum_and_training_metadata(tmp_path):
    train(tmp_path, 2, total=2, periodic_percentages=(100,))
    sidecar = json.loads((tmp_path / (LATEST + ".json")).read_text())
    assert sidecar["sha256"] == sha256_bytes((tmp_path / LATEST).read_bytes())
    assert sidecar["size_bytes"] == (tmp_path / LATEST).stat().st_size
    assert (sidecar["kind"], sidecar["epoch"], sidecar["train_loss"], sidecar["total_epochs"]) == ("latest", 2, 0.5, 2)
    assert sidecar["config"] == {"lr": 1e-2, "data": "toy"}
    assert json.loads((tmp_path / "epoch_002_checkpoint.pt.json").read_text())["kind"] == "periodic"


def test_best_model_lacks_training_only_parts_and_records_val_dice(tmp_path):
    train(tmp_path, 1)
    best = torch.load(tmp_path / BEST, weights_only=True)
    assert not {"optimizer_state_dict", "scheduler_state_dict", "rng_state"} & set(best)
    assert {"model_state_dict", "epoch", "config", "history", "versions"} <= set(best)
    assert best["val_dice"] == 0.5


def test_best_model_is_rewritten_only_on_strict_improvement(tmp_path):
    dice = {1: 0.5, 2: 0.5, 3: 0.4, 4: 0.6, 5: 0.6}
    best_epochs = []
    trainer = Trainer()
    with manager(tmp_path, 5) as mgr:
        for epoch, val_dice in dice.items():
            mgr.save(trainer.state(epoch), epoch=epoch, val_dice=val_dice)
            best_epochs.append(read_metadata(tmp_path / BEST)["epoch"])
    assert best_epochs == [1, 1, 1, 4, 4]


def test_planned_files_name_exactly_what_each_save_writes(tmp_path):
    dice = {1: 0.5, 2: 0.5, 3: 0.4, 4: 0.6, 5: 0.6}
    trainer = Trainer()
    with manager(tmp_path, 5, async_save=False) as mgr:
        for epoch, val_dice in dice.items():
            planned = mgr.planned_files(epoch, val_dice)
            before = {p.name: p.stat().st_ino for p in tmp_path.glob("*.pt")}  # each publish is a new inode
            mgr.save(trainer.state(epoch), epoch=epoch, val_dice=val_dice)
            after = {p.name: p.stat().st_ino for p in tmp_path.glob("*.pt")}
            assert sorted(planned) == sorted(n for n, t in after.items() if before.get(n) != t), epoch
    assert mgr.planned_files(6, 0.1, kind="interrupt") == [LATEST]


def test_a_new_manager_reads_the_best_val_dice_back_from_disk(tmp_path):
    train(tmp_path, 2, total=5, dice=lambda e: 0.7)
    trainer = Trainer()
    with manager(tmp_path, 5) as mgr:
        assert mgr.best_val_dice == 0.7
        mgr.save(trainer.state(3), epoch=3, val_dice=0.65)
    assert torch.load(tmp_path / BEST, weights_only=True)["val_dice"] == 0.7


def test_interrupt_save_rewrites_latest_only_and_records_its_kind(tmp_path):
    trainer = Trainer()
    with manager(tmp_path, total=3) as mgr:
        mgr.save(trainer.state(1), epoch=1, val_dice=0.5)
        mgr.save(trainer.state(1), epoch=1, val_dice=0.9, kind="interrupt", step=7)
        assert mgr.load("latest")["epoch"] == 1
    assert read_metadata(tmp_path / LATEST)["kind"] == "interrupt"
    assert read_metadata(tmp_path / LATEST)["step"] == 7
    assert read_metadata(tmp_path / BEST)["val_dice"] == 0.5
    assert periodic_on_disk(tmp_path) == {1}


def test_value_refused_by_weights_only_is_a_type_error_naming_its_key_path(tmp_path):
    state = Trainer().state(1)
    state["history"] = {"val_dice": [0.1, 0.2, 0.3, np.float64(0.4)]}
    with manager(tmp_path) as mgr, pytest.raises(TypeError, match=r"history\.val_dice\[3\].*numpy\.float64"):
        mgr.save(state, epoch=1)
    assert not (tmp_path / LATEST).exists()


def test_model_state_dict_metadata_survives_the_snapshot(tmp_path):
    trainer = train(tmp_path, 1)
    loaded = load_checkpoint(tmp_path / LATEST)["model_state_dict"]
    assert loaded._metadata == trainer.model.state_dict()._metadata


def test_newer_format_version_is_refused_on_load_with_upgrade_advice(tmp_path):
    with manager(tmp_path) as mgr:
        mgr.save({**Trainer().state(1), "format_version": 2}, epoch=1)
        with pytest.raises(CheckpointError, match="newer useg.*upgrade"):
            mgr.load("latest")
