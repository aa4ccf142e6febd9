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


def describe_data(dataset, split: Split, val_tasks: int) -> str:
    report = dataset.report
    skipped = {key: value for key, value in report.items() if key.startswith(("skipped", "missing")) and value}
    text = (f"Data: {dataset.source}, {len(dataset.ids)} images of {report.get('patients', '?')} patients, "
            f"classes {', '.join(dataset.classes)}; split train/val/test = "
            f"{len(split.train)}/{len(split.val)}/{len(split.test)} images"
            f"{f' ({split.origin})' if split.origin else ''}; {val_tasks} validation tasks")
    if skipped:
        text += "; skipped: " + ", ".join(f"{key}={value}" for key, value in skipped.items())
    if dataset.notes:
        text += "; " + "; ".join(dataset.notes)
    return text


def describe_world(world: World, device: torch.device) -> str:
    return f"; {world.world_size} processes on {device.type}" if world.enabled else f"; device {device.type}"


def log_header(cfg: TrainConfig, model, dataset, split: Split, device: torch.device,
               world_size: int) -> dict[str, Any]:
    """The log's description of the run: config, model, environment and data (no patient names)."""
    return {
        "format": "useg-training-log", "format_version": 1,
        "config": cfg.to_dict(), "model": model_config(model), "environment": environment(device, world_size),
        "data": {"source": dataset.source, "classes": dataset.classes, "report": dataset.report,
                 "split_sizes": {name: len(getattr(split, name)) for name in ("train", "val", "test")}},
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


def record_saves(log: dict[str, Any], manager) -> None:
    """This session's checkpoint saves in its log entry: how many were asked for, and how many
    routine mid-epoch saves a newer save replaced while an earlier one was still being written."""
    if manager is not None and log.get("sessions"):
        log["sessions"][-1]["checkpoint_saves"] = {"asked": manager.saves_asked, "coalesced": manager.coalesced_saves}


def environment(device: torch.device, world_size: int) -> dict[str, Any]:
    return {"useg": useg.__version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "device": str(device), "threads": torch.get_num_threads(), "world_size": world_size}
