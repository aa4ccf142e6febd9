"""Folders that `useg train --overwrite` set aside (`checkpoints_replaced_<time>/` beside `checkpoints/`):
finding them, their size, and removing them.

A set-aside folder holds a replaced run's checkpoints and its `visualizations_training/`; it is
no part of the live run, so removing it never changes what the run can resume from. Only
real folders (never a link) whose name is exactly that pattern are touched, never `checkpoints/`.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from useg.errors import CheckpointError

from .atomic import fsync_directory
from .layout import checkpoints_folder

REPLACED_PREFIX = "checkpoints_replaced_"
_REPLACED_RE = re.compile(rf"^{REPLACED_PREFIX}\d{{8}}_\d{{6}}(?:_\d+)?$")


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
    """Delete set-aside folders of `run_root`; refuses anything that is not one (see the module doc)."""
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
