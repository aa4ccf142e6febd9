"""Deleting old periodic checkpoints: latest and best are never touched."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from .atomic import fsync_directory, remove_quietly
from .layout import pending_path, sidecar_path
from .listing import CheckpointInfo, list_checkpoints
from .policy import periodic_to_remove


def clean_checkpoints(directory: Path, keep: int, dry_run: bool = False,
                      protect: Iterable[Path] = ()) -> list[CheckpointInfo]:
    """Remove all but the `keep` newest periodic checkpoints (file and sidecar); return those removed.

    `protect` names files that must stay whatever their age (e.g. the one a run resumed from).
    Call it only while no other process trains in `directory`.
    """
    protected = {Path(p).resolve() for p in protect}
    periodic = [i for i in list_checkpoints(directory) if i.kind == "periodic" and i.path.exists()]
    candidates = [(i.epoch if type(i.epoch) is int else -1, i) for i in periodic]
    doomed = [i for i in periodic_to_remove(candidates, keep) if i.path.resolve() not in protected]
    if not dry_run and doomed:
        for info in doomed:
            for path in (info.path, sidecar_path(info.path), pending_path(info.path)):
                remove_quietly(path)
        fsync_directory(directory)
    return doomed


def bytes_freed(removed: Iterable[CheckpointInfo]) -> int:
    """Bytes that removing these files frees: a file hard-linked elsewhere (latest) frees nothing."""
    return sum(info.size_bytes or 0 for info in removed if info.links == 1)
