"""What checkpoints a folder holds, from sidecars and stat alone (no checkpoint bytes are read).

Listing 100 checkpoints of 1 GB stays instant; `verify_checkpoint` is the one that hashes.
Here "ok" therefore means "has a sidecar whose recorded size matches the file".
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from .integrity import known_verified, read_sidecar
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
    inode: int | None = None
    session: str | None = None  # the training session that wrote it
    lineage: list | None = None  # [[session, seq], ...]: the sessions it descends from, and where each left off
    seq: int | None = None  # saves along its lineage so far: grows with every save, across resumes
    metrics: dict[str, float | None] | None = None  # every metric the save was given, by name

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (path as a string)."""
        return {**asdict(self), "path": str(self.path)}

    def metric(self, name: str) -> float | None:
        """The save's value of metric `name` (sidecars from before `metrics` only know val_dice and train_loss)."""
        if self.metrics and name in self.metrics:
            return self.metrics[name]
        return {"val_dice": self.val_dice, "train_loss": self.train_loss}.get(name)


def list_checkpoints(directory: str | os.PathLike, verify: bool = False) -> list[CheckpointInfo]:
    """Every checkpoint in `directory`, oldest first; never raises for a bad file, never reads tensors.

    With `verify`, a file is valid only when its bytes are known to hash to its sidecar
    (`known_verified`: hashed by the writer or by `verify` and unchanged since); other files
    are `unchecked`. Without it, valid means a sidecar exists and records the file's size.
    """
    directory = Path(directory)
    infos = [checkpoint_info(path) for path in checkpoint_files(directory)]
    infos += [checkpoint_info(path) for path in _orphan_sidecar_targets(directory)]
    if verify:
        infos = [with_known_verification(info) for info in infos]
    return sorted(infos, key=_age_key)


def with_known_verification(info: CheckpointInfo) -> CheckpointInfo:
    """`info`, marked `unchecked` (not valid) unless its bytes are known to be verified."""
    if not info.valid or known_verified(info.path) is not None:
        return info
    return replace(info, valid=False, status="unchecked",
                   reason="not hashed since it was written or changed; `useg checkpoints verify` checks it")


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
    # Sidecars are read back from disk: a field of the wrong type is shown as unknown, never trusted.
    return CheckpointInfo(
        path=path,
        name=path.name,
        kind=_typed(meta.get("kind"), str) or kind_from_name(path.name),
        epoch=_typed(meta.get("epoch"), int, periodic_epoch(path.name)),
        step=_typed(meta.get("step"), int),
        val_dice=_number(meta.get("val_dice")),
        train_loss=_number(meta.get("train_loss")),
        size_bytes=stat.st_size if stat else _typed(meta.get("size_bytes"), int),
        created=_typed(meta.get("created"), str),
        valid=status == "ok",
        status=status,
        reason=reason,
        best_val_dice=_number(meta.get("best_val_dice")),
        best_epoch=_typed(meta.get("best_epoch"), int),
        total_epochs=_typed(meta.get("total_epochs"), int),
        config=_typed(meta.get("config"), dict),
        links=stat.st_nlink if stat else 0,
        inode=stat.st_ino if stat else None,
        session=_typed(meta.get("session"), str),
        lineage=_lineage(meta.get("lineage")),
        seq=_typed(meta.get("seq"), int),
        metrics=_metrics(meta.get("metrics")),
    )


def _metrics(value: Any) -> dict[str, float | None] | None:
    if not isinstance(value, dict):
        return None
    return {name: _number(number) for name, number in value.items() if isinstance(name, str)}


def _typed(value: Any, kind: type, default: Any = None) -> Any:
    return value if type(value) is kind else default


def _number(value: Any) -> float | None:
    if type(value) not in (int, float) or value != value or value in (float("inf"), float("-inf")):
        return None
    return float(value)


def _lineage(value: Any) -> list | None:
    if not isinstance(value, list):
        return None
    pairs = [entry for entry in value if isinstance(entry, list) and len(entry) == 2
             and type(entry[0]) is str and type(entry[1]) is int]
    return pairs if len(pairs) == len(value) else None


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
