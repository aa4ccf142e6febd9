"""File names inside a checkpoints folder: the one place that spells them.

Temp files (`.NAME.*.tmp`) are named by useg.files, which writes them; where the checkpoints
folder sits in a run folder (`RUN_DIR/checkpoints`) is useg.run_folder's business.
"""

from __future__ import annotations

import re
from pathlib import Path

FORMAT_VERSION = 1  # bump when a reader needs to know; load() refuses files newer than this

LATEST_NAME = "latest_checkpoint.pt"
BEST_NAME = "best_model.pt"
LOCK_NAME = ".lock"
VERIFIED_CACHE_NAME = ".verified.json"  # hashes already checked, by name (see integrity.known_verified)
SIDECAR_SUFFIX = ".json"
PENDING_SUFFIX = ".json.pending"

_PERIODIC_RE = re.compile(r"^epoch_(\d+)_checkpoint\.pt$")


def periodic_name(epoch: int) -> str:
    """`epoch_010_checkpoint.pt` for epoch 10 (three digits, more when needed)."""
    return f"epoch_{epoch:03d}_checkpoint.pt"


def periodic_epoch(name: str) -> int | None:
    """The epoch in a periodic file's name, or None for any other name."""
    match = _PERIODIC_RE.match(name)
    return int(match.group(1)) if match else None


def is_resume_name(name: str) -> bool:
    """Latest and the periodic files can resume a run; best_model.pt (no optimiser state) cannot."""
    return name == LATEST_NAME or periodic_epoch(name) is not None


def kind_from_name(name: str) -> str:
    """Best guess of a checkpoint's kind from its name alone (used when its sidecar is unreadable)."""
    if name == LATEST_NAME:
        return "latest"
    if name == BEST_NAME:
        return "best"
    return "periodic" if periodic_epoch(name) is not None else "unknown"


def sidecar_path(checkpoint: Path) -> Path:
    """`latest_checkpoint.pt` -> `latest_checkpoint.pt.json`."""
    return checkpoint.with_name(checkpoint.name + SIDECAR_SUFFIX)


def pending_path(checkpoint: Path) -> Path:
    """The not-yet-final sidecar of a save in progress (see publish.py)."""
    return checkpoint.with_name(checkpoint.name + PENDING_SUFFIX)


def checkpoint_files(directory: Path) -> list[Path]:
    """Every visible `*.pt` file in `directory` (empty when it does not exist)."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob("*.pt") if not p.name.startswith("."))

