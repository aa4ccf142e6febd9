"""What a run says about itself: the data summary line and the JSON log's header and sessions."""

from __future__ import annotations

import platform
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

import useg
from useg.config import changed_keys
from useg.data import Split
from useg.distributed import World
from useg.history import read_log, utc_now, write_log
from useg.model import model_config

if TYPE_CHECKING:
    from useg.train import Run


def describe_data(dataset, split: Split, val_tasks: int) -> str:
    report = dataset.report
    skipped = {key: value for key, value in report.items() if key.startswith(("skipped", "missing")) and value}
    text = (f"Data: {dataset.source}, {len(dataset.ids)} images of {report.get('patients', '?')} patients, "
            f"classes {', '.join(dataset.classes)}; split train/val/test = "
            f"{len(split.train)}/{len(split.val)}/{len(split.test)} images; {val_tasks} validation tasks")
    if skipped:
        text += "; skipped: " + ", ".join(f"{key}={value}" for key, value in skipped.items())
    if dataset.notes:
        text += "; " + "; ".join(dataset.notes)
    return text


def describe_world(world: World, device: torch.device) -> str:
    return f"; {world.world_size} processes on {device.type}" if world.enabled else f"; device {device.type}"


def open_log(run: Run, state: dict | None, resumed_from: str | None) -> None:
    """Start the JSON log, or continue the one the run has been writing."""
    run.log_path.parent.mkdir(parents=True, exist_ok=True)
    previous = read_log(run.log_path) if state is not None else None
    session = {"started": utc_now(), "resumed_from": resumed_from, "start_epoch": run.start_epoch,
               "start_batch": run.start_batch, "world_size": run.world.world_size}
    if state is not None:
        session["config_changes"] = changed_keys(state.get("config") or {}, run.cfg)
    run.log = {
        "format": "useg-training-log", "format_version": 1,
        "config": run.cfg.to_dict(), "model": model_config(run.model), "environment": environment(run),
        "data": {"source": run.dataset.source, "classes": run.dataset.classes, "report": run.dataset.report,
                 "split_sizes": {name: len(getattr(run.split, name)) for name in ("train", "val", "test")}},
        "sessions": (previous or {}).get("sessions", []) + [session],
    }
    write_log(run.log_path, run.log, run.history)


def record_saves(run: Run) -> None:
    """This session's checkpoint saves in its log entry: how many were asked for, and how many
    routine mid-epoch saves a newer save replaced while an earlier one was still being written."""
    if run.manager is not None and run.log.get("sessions"):
        run.log["sessions"][-1]["checkpoint_saves"] = {"asked": run.manager.saves_asked,
                                                       "coalesced": run.manager.coalesced_saves}


def environment(run: Run) -> dict[str, Any]:
    return {"useg": useg.__version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "device": str(run.device), "threads": torch.get_num_threads(), "world_size": run.world.world_size}
