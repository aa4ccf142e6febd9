"""What a run says about itself: the data summary line and the JSON log's header and sessions."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch

import useg
from useg.checkpoint import Position
from useg.config import TrainConfig, changed_keys
from useg.data import Split
from useg.compute.distributed import World
from useg.training.history import read_log, utc_now, write_log
from useg.model import model_config


def describe_data(dataset, split: Split, val_tasks: int, held_out=()) -> str:
    """The data line: the data, its classes and split; with several datasets each one's counts and split, and
    the held-out datasets' (`held_out`: useg.data.collection.HeldOut); the memory the arrays take. Datasets are
    named by their folders' names, patients only counted."""
    report = dataset.report
    skipped = {key: value for key, value in report.items() if key.startswith(("skipped", "missing")) and value}
    text = (f"Data: {dataset.source}, {len(dataset.ids)} images of {report.get('patients', '?')} patients, "
            f"classes {', '.join(dataset.classes)}; split train/val/test = "
            f"{len(split.train)}/{len(split.val)}/{len(split.test)} images"
            f"{f' ({split.origin})' if split.origin else ''}; {val_tasks} validation tasks")
    if dataset.datasets:
        text += "; datasets: " + "; ".join(f"d{number + 1} {part_text(part)}, weight {part['weight']:g}"
                                           for number, part in enumerate(datasets_record(dataset, split)))
    if held_out:
        text += "; held out: " + "; ".join(part_text(part) for part in held_out_record(held_out))
    text += f"; arrays {megabytes(array_bytes(dataset, held_out))}"
    if skipped:
        text += "; skipped: " + ", ".join(f"{key}={value}" for key, value in skipped.items())
    if dataset.notes:
        text += "; " + "; ".join(dataset.notes)
    return text


def part_text(part: dict[str, Any]) -> str:
    """`a 8 images of 8 patients, split 4/2/2` (train/val/test) for a dataset's record."""
    sizes = "/".join(str(part["split_sizes"][name]) for name in ("train", "val", "test"))
    return f"{part['name']} {part['images']} images of {part['patients']} patients, split {sizes}"


def split_sizes(split: Split, images=None) -> dict[str, int]:
    """Images per part of `split`, counting only `images` (a boolean mask over the data) when given."""
    return {name: int(len(getattr(split, name)) if images is None else np.count_nonzero(images[getattr(split, name)]))
            for name in ("train", "val", "test")}


def datasets_record(dataset, split: Split) -> list[dict[str, Any]]:
    """Each dataset of a run over several: its name, images, patients, weight, classes and split sizes."""
    record = []
    for number, name in enumerate(dataset.datasets):
        mine = dataset.image_datasets == number
        record.append({"name": name, "images": int(np.count_nonzero(mine)),
                       "patients": int(len(np.unique(dataset.patients[mine]))),
                       "weight": float(dataset.dataset_weights[number]), "classes": dataset.classes_of([number]),
                       "split_sizes": split_sizes(split, mine)})
    return record


def held_out_record(held_out) -> list[dict[str, Any]]:
    """Each held-out dataset: its name, images, patients, classes and split sizes."""
    return [{"name": held.name, "images": len(held.dataset), "patients": held.dataset.num_patients,
             "classes": list(held.dataset.classes), "split_sizes": split_sizes(held.split)} for held in held_out]


def array_bytes(dataset, held_out=()) -> int:
    """The memory the run's images and masks take, the held-out datasets' included."""
    return dataset.array_bytes + sum(held.dataset.array_bytes for held in held_out)


def megabytes(size: int) -> str:
    """`172 MB`, `3.4 MB`, `0.021 MB`, `<0.01 MB`: what a size is in mebibytes, to two digits."""
    value = size / 2**20
    if value < 0.01:
        return "<0.01 MB"
    return f"{value:.0f} MB" if value >= 10 else f"{value:.2g} MB"


def describe_world(world: World, device: torch.device) -> str:
    return f"; {world.world_size} processes on {device.type}" if world.enabled else f"; device {device.type}"


def log_header(cfg: TrainConfig, model, dataset, split: Split, device: torch.device,
               world_size: int, held_out=()) -> dict[str, Any]:
    """The log's description of the run: config, model, environment and data (no patient names); with several
    datasets each one's counts and split, and the held-out datasets' (describe_data)."""
    data = {"source": dataset.source, "classes": dataset.classes, "report": dataset.report,
            "split_sizes": split_sizes(split), "array_bytes": array_bytes(dataset, held_out)}
    if dataset.datasets:
        data["datasets"] = datasets_record(dataset, split)
    if held_out:
        data["held_out"] = held_out_record(held_out)
    return {
        "format": "useg-training-log", "format_version": 1,
        "config": cfg.to_dict(), "model": model_config(model), "environment": environment(device, world_size),
        "data": data,
    }


def new_session(position: Position, world_size: int, resumed_from: str | None,
                saved_config: dict[str, Any] | None, cfg: TrainConfig) -> dict[str, Any]:
    """One entry of the log's sessions: where this process started; on resume, what changed."""
    session = {"started": utc_now(), "resumed_from": resumed_from, "start_epoch": position.epoch,
               "start_batch": position.batch, "world_size": world_size}
    if saved_config is not None:
        session["config_changes"] = changed_keys(saved_config, cfg)
    return session


def open_log(path: Path, header: dict[str, Any], session: dict[str, Any], history: dict[str, Any],
             continuing: bool) -> dict[str, Any]:
    """Start the JSON log, or continue the one the run has been writing; returns the log."""
    path.parent.mkdir(parents=True, exist_ok=True)
    previous = read_log(path) if continuing else None
    log = {**header, "sessions": (previous or {}).get("sessions", []) + [session]}
    write_log(path, log, history)
    return log


def record_saves(log: dict[str, Any], manager, routine) -> None:
    """This session's checkpoint saves in its log entry: how many were asked for, how many routine
    mid-epoch saves a newer save replaced while an earlier one was still being written, and how many
    were due but deferred by the save budget (`routine`: the session's SaveCounts)."""
    if manager is not None and log.get("sessions"):
        log["sessions"][-1]["checkpoint_saves"] = {
            "asked": manager.saves_asked, "coalesced": manager.coalesced_saves,
            "routine_due": routine.asked, "deferred": routine.deferred, "budget_percent": routine.budget}


def record_thread_recheck(log: dict[str, Any], record: dict[str, Any]) -> None:
    """A re-timing of the thread counts after a SLOW epoch (useg.training.setup.recheck_thread_count),
    in this session's log entry next to its `thread_choice`."""
    if log.get("sessions"):
        log["sessions"][-1].setdefault("thread_rechecks", []).append(record)


def environment(device: torch.device, world_size: int) -> dict[str, Any]:
    return {"useg": useg.__version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "device": str(device), "threads": torch.get_num_threads(), "world_size": world_size}
