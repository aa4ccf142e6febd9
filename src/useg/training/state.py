"""The training checkpoint dict: its key names, building it from a run's parts, reading it back.

One plain dict at the top level, readable with one `torch.load(weights_only=True)`: the
original scripts' keys (`epoch`, `model_state_dict`, `optimizer_state_dict`, ...) plus what exact
resume needs. Everything that writes or reads a training checkpoint goes through here,
so that the keys have one spelling. Takes explicit parts, never the trainer's `Run`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from useg.checkpoint import Position
from useg.config import MODEL_WEIGHTS as MODEL
from useg.config import (COMPUTE_KEYS, RETUNABLE_KEYS, TrainConfig, batches_per_epoch, incompatible_keys,
                          saved_value)
from useg.errors import CheckpointError, ConfigError
from useg.training.progress import position_text

EPOCH = "epoch"
STEP = "step"
OPTIMIZER = "optimizer_state_dict"
SCHEDULER = "scheduler_state_dict"
GRAD_SCALER = "grad_scaler_state_dict"  # the fp16 loss scaler ({} for fp32 / bf16)
SKIPPED_STEPS = "skipped_steps"  # optimiser steps the fp16 scaler skipped over the whole run
HISTORY = "history"
RNG = "rng_state"  # rank 0's generators (what a one-process resume restores)
RNG_PER_RANK = "rng_state_per_rank"
POSITION = "sampler_state"  # the data position; named so since the first checkpoints
CONFIG = "config"
MODEL_CONFIG = "model_config"
SPLIT = "split"
CLASSES = "classes"
LOG_FILE = "log_file"
VAL_DICE = "val_dice"  # best_model.pt records the value that made it best

# Parts only resuming needs; best_model.pt (for applying the model) leaves them out.
TRAINING_ONLY_KEYS = (OPTIMIZER, SCHEDULER, RNG, RNG_PER_RANK, POSITION)
MODEL_KEYS = (MODEL, MODEL_CONFIG, CONFIG)  # what rebuilding and applying the model needs


@dataclass
class TrainingPosition(Position):
    """The trainer's position: the library's (epoch, batch, step) plus the epoch's running loss."""

    loss_sum: float = 0.0
    loss_count: int = 0

    def finish_epoch(self) -> None:
        super().finish_epoch()
        self.loss_sum, self.loss_count = 0.0, 0

    def add_loss(self, loss: float) -> None:
        self.loss_sum, self.loss_count = self.loss_sum + loss, self.loss_count + 1

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / max(self.loss_count, 1)


def position_record(position: TrainingPosition, cfg: TrainConfig, world_size: int,
                    draw_version: int) -> dict[str, Any]:
    """The `sampler_state` dict: the position plus the data settings it is valid for."""
    return {"seed": cfg.seed, "epoch": position.epoch, "batch_index": position.batch,
            "loss_sum": position.loss_sum, "loss_count": position.loss_count, "world_size": world_size,
            "samples_per_epoch": cfg.samples_per_epoch, "batch_size": cfg.batch_size, "draw_version": draw_version}


def saved_position(state: Mapping[str, Any]) -> TrainingPosition:
    """The position a checkpoint resumes at (also from a `sampler_state` saved as the old tuple)."""
    record = state[POSITION]
    if isinstance(record, (list, tuple)):  # (epoch, batch_index, loss_sum, loss_count)
        record = dict(zip(("epoch", "batch_index", "loss_sum", "loss_count"), record))
    return TrainingPosition(epoch=state[EPOCH], batch=record["batch_index"], step=state[STEP],
                            loss_sum=record["loss_sum"], loss_count=record["loss_count"])


def saved_draw_version(state: Mapping[str, Any]) -> int:
    """How the checkpoint's batches were drawn (see useg.data.tasks): the version its data position
    records, 1 for files written before versions were recorded (also the old tuple position)."""
    record = state[POSITION]
    return record.get("draw_version", 1) if isinstance(record, Mapping) else 1


def build_training_state(*, position: TrainingPosition, cfg: TrainConfig, world_size: int, draw_version: int,
                         model, optimizer,
                         scheduler, grad_scaler: dict[str, Any], skipped_steps: int, history: dict[str, Any],
                         rng_per_rank: list[dict[str, Any]],
                         model_config: dict[str, Any], split: dict[str, Any], classes: list[str],
                         log_file: str) -> dict[str, Any]:
    """The full state a checkpoint holds, after `position.epoch` completed epochs (the
    optimizer as a part: `CheckpointManager.save` calls its state_dict())."""
    return {
        EPOCH: position.epoch,
        STEP: position.step,
        MODEL: model.state_dict(),
        # The optimizer itself, not its state_dict(): the checkpoint manager then copies its tensors
        # while the next forward and backward run, and its next step() waits for the copy.
        OPTIMIZER: optimizer,
        SCHEDULER: scheduler.state_dict(),
        GRAD_SCALER: grad_scaler,
        SKIPPED_STEPS: skipped_steps,
        HISTORY: history,
        RNG: rng_per_rank[0],
        RNG_PER_RANK: rng_per_rank,
        POSITION: position_record(position, cfg, world_size, draw_version),
        CONFIG: cfg.to_dict(),
        MODEL_CONFIG: model_config,
        SPLIT: split,
        CLASSES: list(classes),
        LOG_FILE: log_file,
    }


def restore_training_parts(state: Mapping[str, Any], model, optimizer, scheduler) -> None:
    """Model, optimizer and scheduler back as saved."""
    model.load_state_dict(state[MODEL])
    optimizer.load_state_dict(state[OPTIMIZER])
    scheduler.load_state_dict(state[SCHEDULER])


def rng_for_rank(state: Mapping[str, Any], rank: int, world_size: int) -> tuple[dict[str, Any], bool]:
    """This rank's saved RNG state, and whether the resume is exact (same number of processes)."""
    per_rank = state.get(RNG_PER_RANK) or [state[RNG]]
    exact = len(per_rank) == world_size
    return (per_rank[rank] if exact else per_rank[0]), exact


def saved_rank_count(state: Mapping[str, Any]) -> int:
    return len(state.get(RNG_PER_RANK) or [state[RNG]])


def saved_config(state: Mapping[str, Any]) -> dict[str, Any]:
    return dict(state.get(CONFIG) or {})


def saved_split(state: Mapping[str, Any]) -> dict[str, Any] | None:
    return state.get(SPLIT)


def saved_history(state: Mapping[str, Any]) -> dict[str, Any]:
    return state.get(HISTORY) or {}


def saved_classes(state: Mapping[str, Any]) -> list[str]:
    return list(state.get(CLASSES) or saved_config(state).get("classes") or [])


def recorded_val_dice(state: Mapping[str, Any]) -> float | None:
    """best_model.pt records the val Dice it was saved for; other files have it in their history."""
    value = state.get(VAL_DICE)
    return value if value is not None else (saved_history(state).get("val_dice") or [None])[-1]


def require_model_parts(state: Mapping[str, Any], path: Path) -> None:
    """Refuse a file that cannot rebuild and apply a model."""
    missing = [key for key in MODEL_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}; it was not written by useg train")


def check_resume_state(state: Mapping[str, Any], path: Path, cfg: TrainConfig, *, warn: Callable[[str], None],
                       say: Callable[[str], None]) -> TrainingPosition:
    """Refuse a checkpoint that is not a full training state or whose config no longer fits;
    returns the position it resumes at."""
    if OPTIMIZER not in state or POSITION not in state:
        raise CheckpointError(f"{path.name} holds model weights only (no optimizer or data position) and cannot "
                              "be resumed; resume from latest or an epoch_NNN checkpoint, or fine-tune with --pretrained")
    saved = saved_config(state)
    refuse_other_datasets(saved, cfg, path)
    bad = [key for key in incompatible_keys(saved, cfg)
           if not (key in ("data", "held_out_data") and same_data(saved, cfg, state, key))]
    if bad:
        details = ", ".join(f"{key} {saved_value(saved, key)!r} -> {getattr(cfg, key)!r}" for key in bad)
        raise ConfigError(f"cannot resume {path.name}: the config differs in {details}; "
                          "use the checkpoint's values or start a new --run-dir")
    retuned = {key: (saved[key], getattr(cfg, key)) for key in sorted(RETUNABLE_KEYS)
               if key in saved and saved[key] != getattr(cfg, key)}
    if retuned:
        details = ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in retuned.items())
        warn(f"resuming with {details}: the run continues, but no longer as originally planned "
             "(the change is recorded in the log's sessions)")
    position = saved_position(state)
    say(f"Resuming from {path} at {saved_position_text(state, cfg.epochs)}")
    return position


def saved_position_text(state: Mapping[str, Any], total: int) -> str:
    """A checkpoint's position in the words every message uses (see progress.position_text)."""
    record = state[POSITION]
    known = "samples_per_epoch" in record
    batches = batches_per_epoch(record["samples_per_epoch"], record["batch_size"]) if known else None
    return position_text(state[EPOCH], saved_position(state).batch, batches, total)


def same_data(saved: dict, cfg: TrainConfig, state: Mapping[str, Any], key: str = "data") -> bool:
    """A moved or re-spelled data path (`key`: data or held_out_data) is the same data when it is the same
    folder, or when the saved split's image fingerprints (checked when the split is loaded) will prove it;
    with several datasets, each in turn, with the same weights and options."""
    before, now = saved_value(saved, key), getattr(cfg, key)
    if before is None or now is None or isinstance(before, list) != isinstance(now, list):
        return False
    pairs = list(zip(dataset_entries(before), dataset_entries(now)))
    if len(dataset_entries(before)) != len(dataset_entries(now)) or any(
            {**old, "path": None} != {**new, "path": None} for old, new in pairs):
        return False
    split = saved_split(state) or {}
    fingerprinted = bool(split.get("fingerprints")) if key == "data" else all(
        part.get("fingerprints") for part in split.get("held_out") or [{}])
    return all(os.path.realpath(old["path"]) == os.path.realpath(new["path"]) for old, new in pairs) or fingerprinted


def dataset_entries(data: Any) -> list[dict[str, Any]]:
    """A `data` or `held_out_data` setting as a list of {path, options...} mappings (for comparing)."""
    items = data if isinstance(data, list) else [data]
    return [dict(item) if isinstance(item, Mapping) else {"path": item} for item in items]


def refuse_other_datasets(saved: dict, cfg: TrainConfig, path: Path) -> None:
    """A resume trains on the datasets the run trained on, in its order: adding or removing one is another run."""
    before, now = dataset_entries(saved_value(saved, "data")), dataset_entries(cfg.data)
    if len(before) != len(now):
        raise ConfigError(f"cannot resume {path.name}: the run trained on {len(before)} dataset(s) and this resume "
                          f"names {len(now)}; resume with the run's --data, or start a new run (a new --run-dir) and "
                          f"fine-tune from it with --pretrained {path}")
    for key, flag in (("data", "--data"), ("held_out_data", "--held-out-data")):
        refuse_reordered_datasets(saved_value(saved, key), getattr(cfg, key), flag, path)


def refuse_reordered_datasets(before: Any, now: Any, flag: str, path: Path) -> None:
    """The same folders in another order would pair each dataset with another's saved images: say so in
    one line. (A folder moved under another name keeps the name the run gave it: training.setup.)"""
    from useg.data.collection import dataset_names, entries  # here: `useg checkpoints list` must not load torch

    if not (isinstance(before, list) and isinstance(now, list)) or len(before) != len(now):
        return
    old, new = dataset_names(entries(before)), dataset_names(entries(now))
    if old != new and sorted(old) == sorted(new):
        raise ConfigError(f"cannot resume {path.name}: {flag} names the run's datasets in another order; give them "
                          f"in the run's order: {', '.join(old)}")


# --- how the run computes: kept on resume, or changed with a warning ---------------------------

NOT_EXACT = "the resumed run continues correctly, not bit-identical to an uninterrupted run"


def saved_compute(saved: Mapping[str, Any], key: str) -> Any:
    """The value of a COMPUTE_KEYS setting (or "device": its type) the checkpoint computed with;
    None where it is not known (a checkpoint from before useg recorded the chosen value)."""
    value = saved.get(key)
    if key == "num_threads" and value == 0:
        return None  # "chosen from the cores" was saved, not the count chosen
    if key == "device" and value is not None:
        return str(value).split(":")[0]  # cpu or cuda: another GPU of the same kind computes the same
    return value


def compute_changes(saved: Mapping[str, Any], cfg: TrainConfig, device_type: str) -> dict[str, tuple[Any, Any]]:
    """The settings in which this session computes otherwise than the one that saved `saved`
    (its config): {key: (saved, now)}, for COMPUTE_KEYS and the device type."""
    now = {**{key: getattr(cfg, key) for key in COMPUTE_KEYS}, "device": device_type}
    changes = {}
    for key, value in now.items():
        old = saved_compute(saved, key)
        if old is not None and old != value:
            changes[key] = (old, value)
    return changes


def changes_text(changes: Mapping[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changes.items())


def kept_but_not_chosen(saved: Mapping[str, Any], cfg: TrainConfig, machine: Mapping[str, Any],
                        thread_timings: str | None = None) -> list[str]:
    """One line per setting kept from the checkpoint where this machine would choose another value
    (`machine`: {key: its choice}; `thread_timings`: the trial step that chose the count, when one did):
    the count or dtype stays what the run computed with."""
    lines = []
    for key, chosen in machine.items():
        kept = saved_compute(saved, key)
        if kept is None or kept != getattr(cfg, key) or kept == chosen:
            continue
        what = f"{kept} CPU thread{'s' if kept != 1 else ''}" if key == "num_threads" else f"{key} {kept}"
        flag = "--" + key.replace("_", "-")
        measured = f", faster in a trial step ({thread_timings})" if key == "num_threads" and thread_timings else ""
        lines.append(f"keeping {what} as the run computed with; this machine would use {chosen}{measured} "
                     f"({flag} {chosen} changes that, and the resume is then not bit-identical)")
    return lines

