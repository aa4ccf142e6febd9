"""useg.checkpoint as a library for any loop: best_metric / mode, metrics, mid-epoch kinds, Position, RNG."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from useg.checkpoint import CheckpointManager, Position, capture_rng_state, list_checkpoints, mid_epoch_save_due
from useg.checkpoint import read_metadata, restore_rng_state
from useg.checkpoint.policy import BestRule
from useg.errors import CheckpointError
from useg.training.state import saved_position

LATEST, BEST = "latest_checkpoint.pt", "best_model.pt"


def manager(directory, total: int = 4, **kwargs) -> CheckpointManager:
    return CheckpointManager(directory, total_epochs=total, async_save=False, warn=lambda message: None, **kwargs)


def state(model: torch.nn.Module) -> dict:
    return {"model_state_dict": model, "rng_state": capture_rng_state(), "position": Position(epoch=1)}


@pytest.mark.parametrize("mode, values, best_epochs", [
    ("max", [0.5, 0.7, 0.7, 0.6], [1, 2, 2, 2]),  # a tie keeps the older best
    ("min", [0.5, 0.7, 0.3, float("nan")], [1, 1, 3, 3]),  # lower wins; NaN never does
])
def test_best_model_follows_best_metric_and_mode(tmp_path, mode, values, best_epochs):
    model = torch.nn.Linear(2, 1)
    seen = []
    with manager(tmp_path, best_metric="val_loss", mode=mode) as mgr:
        for epoch, value in enumerate(values, 1):
            mgr.save(state(model), epoch=epoch, metrics={"val_loss": value})
            seen.append(read_metadata(tmp_path / BEST)["epoch"])
    assert seen == best_epochs
    best = torch.load(tmp_path / BEST, weights_only=True)
    assert best["val_loss"] == values[best_epochs[-1] - 1] and "position" not in best and "rng_state" not in best


def test_keyword_and_dict_metrics_reach_the_sidecar_and_the_listing(tmp_path):
    model = torch.nn.Linear(2, 1)
    with manager(tmp_path) as mgr:
        mgr.save(state(model), epoch=1, val_dice=0.71)  # the documented call keeps working
        mgr.save(state(model), epoch=2, step=20, metrics={"val_dice": 0.5, "accuracy": np.float32(0.25)})
        assert mgr.best_val_dice == pytest.approx(0.71) and mgr.best_epoch == 1
    sidecar = read_metadata(tmp_path / LATEST)
    assert sidecar["metrics"] == {"val_dice": 0.5, "accuracy": 0.25} and sidecar["val_dice"] == 0.5
    assert (sidecar["best_metric"], sidecar["best_mode"], sidecar["best_value"]) == ("val_dice", "max", 0.71)
    infos = {info.name: info for info in list_checkpoints(tmp_path)}
    assert infos[LATEST].metric("accuracy") == 0.25 and infos[BEST].metric("val_dice") == pytest.approx(0.71)


def test_keyword_metrics_are_folded_into_metrics_one_way(tmp_path):
    model = torch.nn.Linear(2, 1)
    with manager(tmp_path) as mgr:
        mgr.save(state(model), epoch=1, val_dice=None, train_loss=None)  # a loop without validation yet
        assert read_metadata(tmp_path / LATEST)["metrics"] == {} and not (tmp_path / BEST).exists()
        mgr.save(state(model), epoch=2, metrics={"accuracy": 0.5}, val_dice=0.7, train_loss=np.float64(0.25))
        assert mgr.planned_files(3, metrics={"val_dice": 0.8}) == mgr.planned_files(3, 0.8)
    sidecar = read_metadata(tmp_path / LATEST)
    assert sidecar["metrics"] == {"accuracy": 0.5, "val_dice": 0.7, "train_loss": 0.25}
    assert (sidecar["val_dice"], sidecar["train_loss"]) == (0.7, 0.25) and read_metadata(tmp_path / BEST)["epoch"] == 2


def test_a_metric_given_twice_or_an_epoch_given_by_position_is_refused(tmp_path):
    with manager(tmp_path) as mgr:
        with pytest.raises(ValueError, match="metric 'val_dice' is given twice"):
            mgr.save(state(torch.nn.Linear(2, 1)), epoch=1, metrics={"val_dice": 0.5}, val_dice=0.6)
        with pytest.raises(TypeError):
            mgr.save(state(torch.nn.Linear(2, 1)), 1)  # epoch=1: which number is the epoch is never guessed
    assert not (tmp_path / LATEST).exists()


def test_best_model_leaves_out_the_guides_resume_parts_and_knows_no_trainer_key(tmp_path):
    model = torch.nn.Linear(2, 1)
    parts = {**state(model), "optimizer_state_dict": torch.optim.SGD(model.parameters(), lr=0.1),
             "sampler_state": {"batch_index": 0}}
    with manager(tmp_path) as mgr:
        mgr.save(parts, epoch=1, val_dice=0.5)
    best = torch.load(tmp_path / BEST, weights_only=True)
    assert not {"optimizer_state_dict", "rng_state", "position"} & best.keys()
    assert "sampler_state" in best  # useg's trainer passes its own list (training/state.py)


def test_a_metric_that_is_no_number_is_refused_before_anything_is_written(tmp_path):
    with manager(tmp_path) as mgr:
        with pytest.raises(ValueError, match="metric 'val_dice' must be a number"):
            mgr.save(state(torch.nn.Linear(2, 1)), epoch=1, metrics={"val_dice": "0.7"})
    assert not (tmp_path / LATEST).exists()


def test_an_unknown_mode_is_one_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="mode must be one of"):
        manager(tmp_path, mode="highest")


def test_mid_epoch_saves_have_their_own_kind_and_refresh_latest_only(tmp_path):
    model = torch.nn.Linear(2, 1)
    with manager(tmp_path) as mgr:
        mgr.save(state(model), epoch=1, val_dice=0.1)
        mgr.save(state(model), epoch=1, step=7, kind="mid_epoch", val_dice=0.9)
        assert mgr.planned_files(1, 0.9, kind="mid_epoch") == [LATEST]
        assert mgr.load("latest")["epoch"] == 1
    assert read_metadata(tmp_path / LATEST)["kind"] == "mid_epoch"
    assert read_metadata(tmp_path / BEST)["val_dice"] == 0.1


def test_can_resume_is_false_for_an_empty_folder_and_for_best_alone(tmp_path):
    model = torch.nn.Linear(2, 1)
    with manager(tmp_path) as mgr:
        assert not mgr.can_resume()
        mgr.save(state(model), epoch=1, val_dice=0.5)
        assert mgr.can_resume()
    for name in (LATEST, "epoch_001_checkpoint.pt"):  # best_model.pt alone cannot resume a run
        (tmp_path / name).unlink()
    with manager(tmp_path) as mgr:
        assert (tmp_path / BEST).exists() and not mgr.can_resume()


@pytest.mark.parametrize("step, seconds, every_steps, every_minutes, due", [
    (10, 0.0, 5, None, True), (11, 0.0, 5, None, False), (3, 61.0, None, 1.0, True),
    (3, 59.0, 0, 1.0, False), (5, 0.0, 0, 0, False),
])
def test_mid_epoch_save_due_by_steps_or_minutes(step, seconds, every_steps, every_minutes, due):
    assert mid_epoch_save_due(step, seconds, every_steps, every_minutes) is due


def test_best_rule_table():
    assert BestRule().improves(0.5, None) and not BestRule().improves(None, 0.1)
    assert BestRule(mode="min").improves(0.1, 0.2) and not BestRule(mode="min").improves(0.2, 0.2)


@dataclass
class RunningPosition(Position):
    loss_sum: float = 0.0


def test_position_round_trips_with_the_fields_a_loop_adds():
    position = RunningPosition()
    for _ in range(3):
        position.finish_batch()
    position.loss_sum = 1.5
    restored = RunningPosition()
    restored.load_state_dict(json.loads(json.dumps(position.state_dict())))
    assert restored == position and (restored.epoch, restored.batch, restored.step) == (0, 3, 3)
    restored.finish_epoch()
    assert (restored.epoch, restored.batch, restored.step) == (1, 0, 3)
    older = RunningPosition()
    older.load_state_dict({"epoch": 2, "batch": 1, "step": 9})  # saved before loss_sum existed
    assert older.loss_sum == 0.0 and older.epoch == 2


def test_the_trainers_position_reads_the_saved_dict_and_the_old_tuple():
    saved = {"epoch": 1, "step": 5, "sampler_state": {"epoch": 1, "batch_index": 2, "loss_sum": 1.0, "loss_count": 2}}
    as_tuple = {"epoch": 1, "step": 5, "sampler_state": (1, 2, 1.0, 2)}
    assert saved_position(saved) == saved_position(as_tuple)
    assert (saved_position(saved).batch, saved_position(saved).mean_loss) == (2, 0.5)


def test_rng_helpers_put_every_generator_back():
    saved = capture_rng_state()
    first = (random.random(), np.random.rand(), torch.rand(1))
    restore_rng_state(torch.load(_round_trip(saved), weights_only=True))
    assert (random.random(), np.random.rand()) == first[:2] and torch.equal(torch.rand(1), first[2])


def _round_trip(value):
    import io

    buffer = io.BytesIO()
    torch.save(value, buffer)
    buffer.seek(0)
    return buffer

