"""Deleting old periodic checkpoints without ever deleting a resume point the run still needs.

Only files that verify count toward `--keep`, hard-linked twins (a periodic file and the
latest that shares its bytes) count as one state, and two states always stay whatever
`keep` says: the newest valid resume point and the one resume would fall back to if that
one were lost. Files that do not verify are left in place and reported, never counted.
latest and best are never touched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from useg.files import fsync_directory, remove_quietly

from .integrity import verify_checkpoint
from .layout import LATEST_NAME, pending_path, sidecar_path
from .listing import CheckpointInfo, list_checkpoints
from .resume_order import ResumePoint, resume_points


@dataclass(frozen=True)
class CleanPlan:
    """What `clean --keep N` removes and keeps, and why (the same for --dry-run and a real clean)."""

    remove: list[CheckpointInfo] = field(default_factory=list)
    keep: list[CheckpointInfo] = field(default_factory=list)  # periodic files that stay
    invalid: list[tuple[CheckpointInfo, str]] = field(default_factory=list)  # left in place, not counted
    newest: ResumePoint | None = None  # the file resume uses now
    fallback: ResumePoint | None = None  # the file resume would use if `newest` were lost
    latest_problem: str = ""  # why latest_checkpoint.pt is not the resume point ("" when it is)


def plan_clean(directory: Path, keep: int, protect: Iterable[Path] = ()) -> CleanPlan:
    """Decide what `clean_checkpoints` removes: hashes every resume point, deletes nothing."""
    if keep < 0:
        raise ValueError(f"keep must be >= 0, got {keep}")
    protected = {Path(p).resolve() for p in protect}
    points = resume_points(directory, list_checkpoints(directory))
    results = {point.path: verify_checkpoint(point.path) for point in points}
    valid = [point for point in points if results[point.path].ok]
    states = _distinct_states(valid)
    newest = states[0] if states else None
    fallback = states[1] if len(states) > 1 else None
    periodic = [point for point in valid if point.path.name != LATEST_NAME]
    kept_inodes = {point.info.inode for point in _distinct_states(periodic)[:keep]}
    # latest itself always stays, so a state it holds needs no periodic copy to survive.
    latest_inode = next((point.info.inode for point in valid if point.path.name == LATEST_NAME), None)
    kept_inodes |= {point.info.inode for point in (newest, fallback) if point is not None} - {latest_inode}
    remove = [point.info for point in periodic
              if point.info.inode not in kept_inodes and point.path.resolve() not in protected]
    return CleanPlan(
        remove=remove,
        keep=[point.info for point in periodic if point.info not in remove],
        invalid=[(point.info, f"{results[point.path].status}: {results[point.path].reason}")
                 for point in points if not results[point.path].ok and point.path.name != LATEST_NAME],
        newest=newest,
        fallback=fallback,
        latest_problem=_latest_problem(points, results),
    )


def clean_checkpoints(directory: Path, keep: int, dry_run: bool = False,
                      protect: Iterable[Path] = (), plan: CleanPlan | None = None) -> list[CheckpointInfo]:
    """Remove what `plan_clean` (or the given `plan`) decides, file before sidecar; return what was removed.

    Call it only while no other process trains in `directory`. A kill between a file and
    its sidecar leaves an orphan sidecar that the next locked start-up removes.
    """
    plan = plan if plan is not None else plan_clean(directory, keep, protect)
    if not dry_run and plan.remove:
        for info in plan.remove:
            for path in (info.path, sidecar_path(info.path), pending_path(info.path)):
                remove_quietly(path)
        fsync_directory(directory)
    return plan.remove


def bytes_freed(removed: Iterable[CheckpointInfo]) -> int:
    """Bytes that removing these files frees: a file hard-linked elsewhere (latest) frees nothing."""
    return sum(info.size_bytes or 0 for info in removed if info.links == 1)


def _distinct_states(points: list[ResumePoint]) -> list[ResumePoint]:
    # Hard links are one copy of the bytes: keeping both names of one inode is no redundancy.
    seen: set[int | None] = set()
    distinct = []
    for point in points:
        if point.info.inode not in seen:
            seen.add(point.info.inode)
            distinct.append(point)
    return distinct


def _latest_problem(points: list[ResumePoint], results: dict) -> str:
    latest = next((point for point in points if point.path.name == LATEST_NAME), None)
    if latest is None:
        return f"{LATEST_NAME} is missing"
    result = results[latest.path]
    return "" if result.ok else f"{LATEST_NAME} is {result.status} ({result.reason})"
