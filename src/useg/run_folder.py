"""A run folder's tree and what is done to the folder as a whole.

RUN_DIR/checkpoints/ (the checkpoint library's folder), logs/, visualizations_training/, and the
`checkpoints_replaced_<time>/` folders that `useg train --overwrite` sets aside beside checkpoints/.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from useg.checkpoint import LOCK_NAME, OpenCheckpoint, checkpoint_files, is_resume_name, open_checkpoint
from useg.checkpoint import read_metadata, resume_points
from useg.errors import CheckpointError, ConfigError
from useg.faults import kill_point
from useg.files import fsync_directory

CHECKPOINTS_DIR = "checkpoints"  # a run folder's checkpoints live in RUN_DIR/checkpoints/
REPLACED_PREFIX = "checkpoints_replaced_"
_REPLACED_RE = re.compile(rf"^{REPLACED_PREFIX}\d{{8}}_\d{{6}}(?:_\d+)?$")


@dataclass
class RunPaths:
    root: Path
    checkpoints: Path
    logs: Path
    visualizations: Path


def run_paths(run_dir: str | Path) -> RunPaths:
    root = Path(run_dir)
    return RunPaths(root, checkpoints_folder(root), root / "logs", root / "visualizations_training")


def checkpoints_folder(run_dir: str | Path) -> Path:
    """`RUN_DIR/checkpoints`: where a run's checkpoints live."""
    return Path(run_dir) / CHECKPOINTS_DIR


def is_checkpoints_folder(folder: Path) -> bool:
    """True for a folder named like a run's checkpoints folder."""
    return folder.name == CHECKPOINTS_DIR


@dataclass(frozen=True)
class ExistingRun:
    """The checkpoint files already in a run folder. While there are any, a new run may not start
    there: `useg train` refuses without --resume or --overwrite, and the menu asks first."""

    folder: Path  # RUN_DIR/checkpoints
    files: list[Path]  # every visible checkpoint file, sorted

    @property
    def resumable(self) -> bool:
        """One of the files can resume the run (latest, an epoch file); not so when, e.g., a first
        epoch was killed after best_model.pt was written but before latest."""
        return any(is_resume_name(path.name) for path in self.files)


def existing_run(run_dir: str | Path) -> ExistingRun:
    """What a new run in `run_dir` would start over (no files: it may start there)."""
    folder = checkpoints_folder(run_dir)
    return ExistingRun(folder, checkpoint_files(folder))


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


# --- folders set aside by --overwrite -------------------------------------------------------------
# A set-aside folder holds a replaced run's checkpoints and its `visualizations_training/`; it is
# no part of the live run, so removing it never changes what the run can resume from. Only real
# folders (never a link) whose name is exactly that pattern are touched, never `checkpoints/`.


@dataclass(frozen=True)
class ReplacedFolder:
    """One set-aside folder: where, how many bytes its files hold on disk (hard links once), how many files."""

    path: Path
    size_bytes: int
    files: int

    def to_dict(self) -> dict[str, Any]:
        """The `--json` form (documented in CHECKPOINT_GUIDE.md)."""
        return {"path": str(self.path), "name": self.path.name, "size_bytes": self.size_bytes, "files": self.files}


def replaced_name(stamp: str, number: int = 1) -> str:
    """`checkpoints_replaced_<stamp>`, with `_<number>` for a second set-aside within the same second."""
    return f"{REPLACED_PREFIX}{stamp}" + (f"_{number}" if number > 1 else "")


def is_replaced_name(name: str) -> bool:
    return bool(_REPLACED_RE.match(name))


def replaced_folders(run_root: str | os.PathLike) -> list[ReplacedFolder]:
    """The set-aside folders of a run, oldest first (their names sort by time)."""
    root = Path(run_root)
    if not root.is_dir():
        return []
    entries = sorted((entry for entry in os.scandir(root)
                      if is_replaced_name(entry.name) and entry.is_dir(follow_symlinks=False)),
                     key=lambda entry: entry.name)
    return [ReplacedFolder(Path(entry.path), *folder_usage(Path(entry.path))) for entry in entries]


def folder_usage(folder: Path) -> tuple[int, int]:
    """(bytes, files) under `folder`, links not followed; a file with two names (latest and its
    periodic twin) counts once, as it takes its space once."""
    seen, size, files = set(), 0, 0
    for parent, _, names in os.walk(folder):
        for name in names:
            try:
                stat = os.lstat(os.path.join(parent, name))
            except FileNotFoundError:
                continue
            files += 1
            if (stat.st_dev, stat.st_ino) not in seen:
                seen.add((stat.st_dev, stat.st_ino))
                size += stat.st_size
    return size, files


def remove_replaced(run_root: str | os.PathLike, folders: list[ReplacedFolder]) -> None:
    """Delete set-aside folders of `run_root`; refuses anything that is not one (see above)."""
    root = Path(run_root)
    live = checkpoints_folder(root)
    for folder in folders:
        path = folder.path
        if path.parent != root or not is_replaced_name(path.name) or path.is_symlink() or not path.is_dir():
            raise CheckpointError(f"{path} is not a folder set aside by --overwrite in {root}; nothing was removed")
        if live.exists() and os.path.samefile(path, live):
            raise CheckpointError(f"{path} is the live checkpoints folder; nothing was removed")
        try:
            shutil.rmtree(path)
        except OSError as error:
            raise CheckpointError(f"cannot remove {path} ({error.strerror or error}); "
                                  "check its permissions and run clean --replaced again") from None
    if folders:
        fsync_directory(root)
