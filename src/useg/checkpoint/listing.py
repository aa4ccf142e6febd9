"""What checkpoints a folder holds, from sidecars and stat alone (no checkpoint bytes are read).

Listing 100 checkpoints of 1 GB stays instant; `verify_checkpoint` is the one that hashes.
Here "ok" therefore means "has a sidecar whose recorded size matches the file".
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .integrity import read_sidecar
from .layout import SIDECAR_SUFFIX, checkpoint_files, kind_from_name, pending_path, periodic_epoch, sidecar_path


@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint as its sidecar describes it; `valid` is False (with a reason) when that is doubtful."""

    path: Path
    name: str
    kind: str
    epoch: int | None
    step: int | None
    val_dice: float | None
    train_loss: float | None
    size_bytes: int | None
    created: str | None
    valid: bool
    status: str
    reason: str = ""
    best_val_dice: float | None = None
    best_epoch: int | None = None
    total_epochs: int | None = None
    config: dict[str, Any] | None = None
    links: int = 1  # hard links to the file's bytes: deleting a file with links > 1 frees nothing

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (path as a string)."""
        return {**asdict(self), "path": str(self.path)}


def list_checkpoints(directory: str | os.PathLike) -> list[CheckpointInfo]:
    """Every checkpoint in `directory`, oldest first; never raises for a bad file, never reads tensors."""
    directory = Path(directory)
    infos = [checkpoint_info(path) for path in checkpoint_files(directory)]
    infos += [checkpoint_info(path) for path in _orphan_sidecar_targets(directory)]
    return sorted(infos, key=_age_key)


def read_metadata(path: str | os.PathLike) -> dict[str, Any] | None:
    """The sidecar describing the file now at `path`, or None when it has no usable sidecar."""
    path = Path(path)
    sidecar, _ = read_sidecar(sidecar_path(path))
    pending, _ = read_sidecar(pending_path(path))
    # After a save killed between its two renames, the pending sidecar describes the file:
    # it recorded the inode that the rename put at `path`.
    if pending is not None and pending.get("inode") == _inode(path):
        return pending
    return sidecar


def checkpoint_info(path: Path) -> CheckpointInfo:
    """Describe one checkpoint from its sidecar and stat."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        stat = None
    metadata = read_metadata(path)
    status, reason = _status(path, stat, metadata)
    return _info(path, stat, metadata or {}, status, reason)


def _status(path: Path, stat: os.stat_result | None, metadata: dict | None) -> tuple[str, str]:
    if stat is None:
        return "missing", f"{path.name} does not exist but its sidecar does"
    if metadata is None:
        return "missing-checksum", read_sidecar(sidecar_path(path))[1]
    if metadata["size_bytes"] != stat.st_size:
        return "corrupt", f"file is {stat.st_size} bytes but its sidecar records {metadata['size_bytes']}"
    return "ok", ""


def _info(path: Path, stat: os.stat_result | None, meta: dict, status: str, reason: str) -> CheckpointInfo:
    return CheckpointInfo(
        path=path,
        name=path.name,
        kind=meta.get("kind") or kind_from_name(path.name),
        epoch=meta.get("epoch", periodic_epoch(path.name)),
        step=meta.get("step"),
        val_dice=meta.get("val_dice"),
        train_loss=meta.get("train_loss"),
        size_bytes=stat.st_size if stat else meta.get("size_bytes"),
        created=meta.get("created"),
        valid=status == "ok",
        status=status,
        reason=reason,
        best_val_dice=meta.get("best_val_dice"),
        best_epoch=meta.get("best_epoch"),
        total_epochs=meta.get("total_epochs"),
        config=meta.get("config"),
        links=stat.st_nlink if stat else 0,
    )


def _orphan_sidecar_targets(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    targets = (p.with_name(p.name[: -len(SIDECAR_SUFFIX)]) for p in directory.glob("*.pt" + SIDECAR_SUFFIX))
    return [t for t in targets if not t.name.startswith(".") and not t.exists()]


def _age_key(info: CheckpointInfo) -> tuple:
    return (_or_minus_one(info.epoch), _or_minus_one(info.step), info.name)


def _or_minus_one(value: Any) -> int:
    return value if type(value) is int else -1


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None
