"""The run lock: one training process per checkpoints folder.

`.lock` holds the owner's pid and hostname and is held with flock on an open file
descriptor for the manager's life. The kernel drops a flock when its process dies,
so a lock file whose flock is free was left by a dead process and may be taken over.
The file is emptied, never deleted, on release: deleting it would let a second
process lock the old (unlinked) inode while a third creates and locks a new one.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
import weakref
from pathlib import Path
from typing import Callable

from useg.errors import CheckpointError

from .layout import LOCK_NAME

# is_locked() takes a shared flock for an instant; a trainer starting in that instant retries.
_ATTEMPTS = 5
_PAUSE_S = 0.05


class RunLock:
    """A held run lock; `release()` gives it up (idempotent, and also done when garbage-collected)."""

    def __init__(self, directory: Path, fd: int) -> None:
        self.directory = directory
        self._release = weakref.finalize(self, _release_fd, fd)

    @property
    def held(self) -> bool:
        """True until released."""
        return self._release.alive

    def release(self) -> None:
        """Empty the lock file (a clean exit) and drop the flock."""
        self._release()


def _release_fd(fd: int) -> None:
    try:
        os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing the descriptor drops the flock


def acquire_run_lock(directory: Path, warn: Callable[[str], None]) -> RunLock:
    """Lock `directory` for this process or raise CheckpointError naming the process that holds it."""
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _flock_or_refuse(fd, directory)
        previous = _read_owner(fd)
        if previous:
            warn(f"took over the run lock of {directory} left by process {previous.get('pid')} "
                 f"on {previous.get('hostname')}, which is no longer running")
        _write_owner(fd)
    except BaseException:
        os.close(fd)
        raise
    return RunLock(directory, fd)


def is_locked(directory: str | os.PathLike) -> bool:
    """True when another live process holds the run lock of `directory` (it is training)."""
    return lock_owner(directory) is not None


def lock_owner(directory: str | os.PathLike) -> dict | None:
    """{"pid", "hostname"} of the other live process holding the lock of `directory`, else None."""
    try:
        fd = os.open(Path(directory) / LOCK_NAME, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        if _try_flock(fd, fcntl.LOCK_SH):
            return None
        owner = _read_owner(fd) or {"pid": "?", "hostname": "?"}
        return None if owner.get("pid") == os.getpid() else owner
    finally:
        os.close(fd)


def _flock_or_refuse(fd: int, directory: Path) -> None:
    for _ in range(_ATTEMPTS):
        if _try_flock(fd, fcntl.LOCK_EX):
            return
        time.sleep(_PAUSE_S)
    owner = _read_owner(fd) or {}
    raise CheckpointError(
        f"run {directory} is being trained by process {owner.get('pid', '?')} on {owner.get('hostname', '?')}; "
        "wait for it or use another --run-dir"
    )


def _try_flock(fd: int, mode: int) -> bool:
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise
    if mode == fcntl.LOCK_SH:
        fcntl.flock(fd, fcntl.LOCK_UN)  # we only wanted to know
    return True


def _read_owner(fd: int) -> dict | None:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 4096)
    if not raw.strip():
        return None
    try:
        owner = json.loads(raw)
    except ValueError:
        return {"pid": raw.decode(errors="replace").strip()[:40], "hostname": "?"}
    return owner if isinstance(owner, dict) else None


def _write_owner(fd: int) -> None:
    record = json.dumps({"pid": os.getpid(), "hostname": socket.gethostname()}).encode()
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, record + b"\n")
    os.fsync(fd)
