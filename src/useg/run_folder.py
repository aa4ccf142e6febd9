"""A run folder's parts (checkpoints/, logs/, pictures) and what is done to the folder as a whole."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from useg.checkpoint import read_metadata
from useg.checkpoint.loading import OpenCheckpoint, open_checkpoint
from useg.checkpoint.atomic import fsync_directory
from useg.faults import kill_point
from useg.checkpoint.layout import LOCK_NAME, checkpoints_folder
from useg.checkpoint.replaced import replaced_name
from useg.errors import CheckpointError, ConfigError


@dataclass
class RunPaths:
    root: Path
    checkpoints: Path
    logs: Path
    visualizations: Path


def run_paths(run_dir: str | Path) -> RunPaths:
    root = Path(run_dir)
    return RunPaths(root, checkpoints_folder(root), root / "logs", root / "visualizations_training")


def open_resume_point(run_dir: str | Path, which: str) -> OpenCheckpoint:
    """The verified checkpoint `which` names, kept open: the command hashes it once, here, and
    the trainer loads these bytes (`CheckpointManager.load(opened=...)`)."""
    folder = run_paths(run_dir).checkpoints
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder} is a file, not a folder; move it away or use another --run-dir")
    if not folder.is_dir():
        raise CheckpointError(f"no checkpoint to resume from: {folder} does not exist; start with useg train")
    return open_checkpoint(folder, which, warn=None)  # said by the run's own output when it loads it


def resume_config(opened: OpenCheckpoint, which: str) -> dict[str, Any]:
    """The config saved with the resume point (read from its sidecar, no tensors)."""
    meta = read_metadata(opened.path) or {}
    config = dict(meta.get("config") or {})
    planned = planned_total_epochs(opened.path.parent) if which == "latest" else None
    if planned is not None:
        # Falling back to an older file must not fall back to its older plan: the run's newest
        # save says how many epochs the run is now meant to have (e.g. after --epochs 8).
        config["epochs"] = planned
    return config


def planned_total_epochs(folder: Path) -> int | None:
    """The total epochs recorded by the run's newest save (latest's sidecar, else its branch's newest file)."""
    from useg.checkpoint.resume_points import resume_points

    points = resume_points(folder)
    return points[0].info.total_epochs if points and not points[0].abandoned else None


def remove_unused_folders(folders: list[Path]) -> None:
    """A run that failed before writing anything (bad data, bad weights) leaves no folders behind."""
    for folder in folders:
        lock = folder / LOCK_NAME
        if lock.is_file() and lock.stat().st_size == 0:
            lock.unlink()
        try:
            folder.rmdir()  # only succeeds when empty: nothing written is ever removed
        except OSError:
            pass


def set_aside_checkpoints(paths: RunPaths, warn: Callable[[str], None]) -> Path:
    """--overwrite: move the previous run's files into checkpoints_replaced_<time>/ instead of deleting them.

    Called while the caller holds the run lock, so no other trainer can start in the folder
    between the move and our first save; `.lock` itself stays (we hold it).
    """
    kill_point("overwrite-set-aside")
    stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
    kept, number = paths.root / replaced_name(stamp), 1
    while kept.exists():  # a second --overwrite within the same second
        number += 1
        kept = paths.root / replaced_name(stamp, number)
    kept.mkdir()
    for entry in sorted(paths.checkpoints.iterdir()):
        if entry.name != LOCK_NAME:
            entry.rename(kept / entry.name)
    if paths.visualizations.is_dir():  # the old run's pictures go with its checkpoints, not into the new run
        paths.visualizations.rename(kept / paths.visualizations.name)
    for folder in (kept, paths.checkpoints, paths.root):
        fsync_directory(folder)  # the moves are durable before this run writes anything
    warn(f"--overwrite: moved the previous checkpoints (and pictures) to {kept}")
    return kept
