"""Which files can resume a run, and in which order: the one rule that resume, list and clean share.

A *resume point* is `latest_checkpoint.pt` or an `epoch_NNN_checkpoint.pt` (best_model.pt has
no optimiser state). It is *valid* when its bytes hash to its sidecar's sha256 and its pickle
is weights_only-safe (`integrity.verify_checkpoint`); non-finite states are never written.

Each save records the session that wrote it, a save counter `seq` that grows along the run
(a resumed session carries on from the file it resumed), and its `lineage`: the sessions it
descends from and the seq at which each was left. Going back to an older epoch starts a new
branch; files written after that point by the sessions it left are *abandoned*: they
continue a history the run no longer has. Resume order: latest, then the periodic files of
the current branch, newest save first, then abandoned ones (a last resort, named as such).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .layout import LATEST_NAME, is_resume_name
from .listing import CheckpointInfo, list_checkpoints


@dataclass(frozen=True)
class ResumePoint:
    """One file that could resume the run, with its place in the run's lineage."""

    info: CheckpointInfo
    abandoned: bool  # written on a branch the run has left (it resumed from an earlier file since)
    same_as_latest: bool  # a hard link of latest: one copy on disk, one bit flip hits both names

    @property
    def path(self) -> Path:
        return self.info.path


def resume_points(directory: str | os.PathLike, infos: list[CheckpointInfo] | None = None) -> list[ResumePoint]:
    """Every existing resume point of `directory` in the order resume tries them (see module doc)."""
    if infos is None:
        infos = list_checkpoints(directory)
    infos = [info for info in infos if is_resume_name(info.name) and info.inode is not None]
    latest = next((info for info in infos if info.name == LATEST_NAME), None)
    periodic = [info for info in infos if info.name != LATEST_NAME]
    head = latest if latest is not None and latest.session is not None else _newest_leaf(periodic)
    current = sorted((i for i in periodic if on_branch(i, head)), key=_along_branch, reverse=True)
    left = sorted((i for i in periodic if not on_branch(i, head)), key=_by_write, reverse=True)
    latest_inode = latest.inode if latest is not None else None
    points = [ResumePoint(latest, False, True)] if latest is not None else []
    points += [ResumePoint(i, False, i.inode == latest_inode) for i in current]
    points += [ResumePoint(i, True, i.inode == latest_inode) for i in left]
    return points


def on_branch(info: CheckpointInfo, head: CheckpointInfo | None) -> bool:
    """True when `info` is an ancestor of `head` (the newest save) or a later save of the same line.

    Files without lineage (written before useg recorded it) count as on the branch.
    """
    if head is None or head.session is None or info.session is None or info.seq is None:
        return True
    if any(session == info.session and info.seq <= seq for session, seq in _chain(head)):
        return True  # an ancestor of head
    return any(session == head.session and seq >= (head.seq or 0) for session, seq in _chain(info))


def _chain(info: CheckpointInfo) -> list[tuple[str, int]]:
    return [(session, seq) for session, seq in info.lineage or []] + [(info.session, info.seq or 0)]


def _newest_leaf(infos: list[CheckpointInfo]) -> CheckpointInfo | None:
    # Without latest's sidecar, the head is the newest file that no other file descends from.
    known = [i for i in infos if i.session is not None and i.seq is not None]
    leaves = [i for i in known if not any(o is not i and _descends(o, i) for o in known)]
    return max(leaves, key=_by_write, default=None)


def _descends(child: CheckpointInfo, parent: CheckpointInfo) -> bool:
    return any(session == parent.session and seq >= parent.seq for session, seq in _chain(child)) and (
        child.session != parent.session or child.seq > parent.seq)


def _along_branch(info: CheckpointInfo) -> tuple:
    # seq grows along a branch; files from before lineage was recorded fall back to epoch and step.
    return (-1 if info.seq is None else info.seq, _int(info.epoch), _int(info.step), _mtime(info.path))


def _by_write(info: CheckpointInfo) -> tuple:
    # created has whole seconds; the file's mtime (kept by cp -p and rsync -a) orders saves within one.
    return (info.created or "", _mtime(info.path), -1 if info.seq is None else info.seq)


def _int(value) -> int:
    return value if type(value) is int else -1


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def left_behind(points: list[ResumePoint], chosen: ResumePoint) -> list[ResumePoint]:
    """The saves of the run's current branch newer than `chosen`: resuming from `chosen` starts a
    new branch, so these become abandoned (latest itself is replaced by the new branch's first save).

    `points` is `resume_points(...)`; nothing is left behind by resuming latest or its hard link.
    """
    if chosen.same_as_latest:
        return []
    return [point for point in points if not point.abandoned and point.info.inode != chosen.info.inode
            and not is_ancestor(point.info, chosen.info)]


def is_ancestor(info: CheckpointInfo, of: CheckpointInfo) -> bool:
    """True when `info` was saved on the way to `of` (files without lineage: by epoch and step)."""
    if info.session is None or info.seq is None or of.session is None:
        return (_int(info.epoch), _int(info.step)) <= (_int(of.epoch), _int(of.step))
    return any(session == info.session and info.seq <= seq for session, seq in _chain(of))
