"""Finding and loading checkpoints: always verified first, always `weights_only=True`.

A file is loaded from the very handle that was verified, so the bytes loaded are the
bytes checked. Nothing here ever calls `torch.load(..., weights_only=False)`.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable

from useg.errors import CheckpointError

from .content import SAFETENSORS, identify_content
from .integrity import VerifyResult, open_verified
from .layout import BEST_NAME, FORMAT_VERSION, LATEST_NAME, periodic_name
from .resume_order import resume_points

Which = str | int | os.PathLike

_ADVICE = {
    "missing": "check the path, or run `useg checkpoints list` to see the run's checkpoints",
    "missing-checksum": "it cannot be verified; restore its .json sidecar or pick another checkpoint",
    "corrupt": "it was damaged on disk; resume from another checkpoint (see `useg checkpoints list`)",
    "unsafe": "it was not loaded and nothing in it ran; do not use this file",
    "foreign": "check that this is the file you meant (useg reads its checkpoints and `useg checkpoints export` files)",
}


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Verify `path`, then load it with `weights_only=True` on the CPU; CheckpointError if anything is off."""
    result, handle = open_verified(path)
    if handle is None:
        raise CheckpointError(describe_problem(result))
    with handle:
        return load_verified(Path(path), handle)


def load_verified(path: Path, handle: BinaryIO) -> dict[str, Any]:
    """Load an already verified open checkpoint and check that this useg can read its format."""
    import torch  # here, not at the top: finding and listing checkpoints should not pay torch's start-up

    content = identify_content(handle)
    if content.kind == SAFETENSORS:  # verified against its sidecar, but weights alone: nothing to resume
        raise CheckpointError(f"{path}: {content.looks_like} (weights alone, e.g. an export), not a torch.save "
                              "checkpoint, so it cannot be resumed; use it with --pretrained or useg predict")
    try:
        state = torch.load(handle, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(f"{path}: refused by weights_only loading ({_first_line(error)}); it was not loaded") from error
    except (RuntimeError, EOFError) as error:
        raise CheckpointError(f"{path}: unreadable ({_first_line(error)}); resume from another checkpoint") from error
    _check_format(path, state)
    return state


def describe_problem(result: VerifyResult) -> str:
    """One line naming the file, what is wrong with it and what to do."""
    status = "" if result.status == "foreign" else f"{result.status}: "  # its reason says it: not a useg file
    return f"{result.path}: {status}{result.reason}; {_ADVICE.get(result.status, '')}".rstrip("; ")


def checkpoint_path(directory: Path, which: Which) -> Path:
    """The file `which` names: "latest", "best", an epoch number, or a path (relative ones also tried in `directory`)."""
    if which == "latest":
        return directory / LATEST_NAME
    if which == "best":
        return directory / BEST_NAME
    if isinstance(which, int) or (isinstance(which, str) and which.isdigit()):
        return directory / periodic_name(int(which))
    path = Path(which)
    if not path.is_absolute() and not path.exists() and (directory / path).exists():
        return directory / path
    return path


def open_resolved(directory: Path, which: Which, warn: Callable[[str], None]) -> tuple[Path, BinaryIO]:
    """Resolve `which` to a verified open checkpoint; "latest" falls back to the newest valid periodic one."""
    if which == "latest":
        return _open_latest_or_fallback(directory, warn)
    path = checkpoint_path(directory, which)
    result, handle = open_verified(path)
    if handle is None:
        raise CheckpointError(describe_problem(result))
    return path, handle


@dataclass
class OpenCheckpoint:
    """A resolved and verified checkpoint kept open, so that the command that chose it can load
    these very bytes later without hashing them again (see `CheckpointManager.load(opened=...)`)."""

    path: Path
    handle: BinaryIO
    # What resolving it said (a damaged latest skipped, an abandoned branch used): whoever loads
    # these bytes says it, so the warning reaches the user through the run's own output.
    warnings: list[str] = field(default_factory=list)

    def still_current(self) -> bool:
        """True while the file at `path` is still the one that was verified (our writers only ever
        replace a file by renaming a new one over it, which changes the inode)."""
        try:
            now, opened = os.stat(self.path), os.fstat(self.handle.fileno())
        except (OSError, ValueError):  # gone, or the handle was closed
            return False
        same = ("st_dev", "st_ino", "st_size", "st_mtime_ns")
        return all(getattr(now, name) == getattr(opened, name) for name in same)

    def load(self) -> dict[str, Any]:
        """Load the verified bytes (once: the handle is closed afterwards)."""
        with self.handle:
            self.handle.seek(0)
            return load_verified(self.path, self.handle)

    def close(self) -> None:
        self.handle.close()


def open_checkpoint(directory: str | os.PathLike, which: Which = "latest",
                    warn: Callable[[str], None] | None = print) -> OpenCheckpoint:
    """Resolve `which` (see `open_resolved`) and keep the verified file open; what resolving said
    goes to `warn` and is kept in `warnings` (pass `warn=None` to only keep it)."""
    said: list[str] = []

    def keep(message: str) -> None:
        said.append(message)
        if warn is not None:
            warn(message)

    path, handle = open_resolved(Path(directory), which, keep)
    return OpenCheckpoint(path, handle, said)


def resolve_checkpoint(directory: str | os.PathLike, which: Which = "latest",
                       warn: Callable[[str], None] = print) -> Path:
    """The verified file to load for `which` (see `open_resolved`)."""
    path, handle = open_resolved(Path(directory), which, warn)
    handle.close()
    return path


def _open_latest_or_fallback(directory: Path, warn: Callable[[str], None]) -> tuple[Path, BinaryIO]:
    skipped: list[tuple[str, str]] = []
    points = resume_points(directory)
    if not any(point.path.name == LATEST_NAME for point in points):
        skipped.append((LATEST_NAME, f"missing, {LATEST_NAME} does not exist"))
    for point in points:
        result, handle = open_verified(point.path)
        if handle is not None:
            for name, reason in skipped:
                warn(f"skipped {name}: {reason}; resuming from {point.path.name}")
            if point.abandoned:
                warn(f"{point.path.name} belongs to a branch this run left when it resumed from an earlier "
                     "checkpoint; no file of the current branch is valid, so the run continues from it")
            return point.path, handle
        skipped.append((point.path.name, f"{result.status}, {result.reason}"))
    details = "; ".join(f"skipped {name}: {reason}" for name, reason in skipped if not reason.startswith("missing,"))
    raise CheckpointError(f"no checkpoint to resume from in {directory}" + (f" ({details})" if details else ""))


def _check_format(path: Path, state: Any) -> None:
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a useg checkpoint dict")
    version = state.get("format_version", 0)  # files from before versioning count as 0
    if type(version) is not int:
        raise CheckpointError(f"{path}: format_version {version!r} is not an int; this is not a useg checkpoint")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: written by a newer useg (format_version {version}, this one reads up to {FORMAT_VERSION}); "
            "upgrade useg to load it"
        )


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__

