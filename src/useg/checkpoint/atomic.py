"""Durable writes: a file is either its old complete self or its new complete self, never torn.

The protocol (PostgreSQL's durable_rename): write a hidden temp file in the same
folder, fsync it, os.replace it onto the final name, fsync the folder. The file
fsync makes the bytes durable; only the folder fsync makes the rename durable.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from useg.errors import CheckpointError

from .layout import TEMP_SUFFIX, is_temp_name

FILE_MODE = 0o644  # mkstemp creates 0600; checkpoints are meant to be shared and copied
_FULL_DISK = {errno.ENOSPC, errno.EDQUOT}
_NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}


def atomic_write_bytes(path: str | os.PathLike, data: bytes | memoryview) -> None:
    """Replace `path` with `data` durably: readers see the old file or the new one, never a mix."""
    path = Path(path)
    temp = write_temp_file(path.parent, path.name, data)
    replace_durably(temp, path)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """`atomic_write_bytes` of `obj` as indented JSON."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode("utf-8"))


def write_temp_file(directory: Path, name: str, data: bytes | memoryview) -> Path:
    """Write `data` to a new hidden `.NAME.*.tmp` in `directory`, fsynced, mode 0644; return its path."""
    with explain_write_errors(directory, len(data)):
        fd, temp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=TEMP_SUFFIX)
        try:
            _preallocate(fd, len(data))
            _write_all(fd, data)
            os.fchmod(fd, FILE_MODE)
            # A failed fsync is not retried: the kernel may already have dropped the dirty
            # pages, so a second fsync can "succeed" over lost data (PostgreSQL's fsyncgate).
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            remove_quietly(Path(temp))
            raise
        os.close(fd)
    return Path(temp)


def replace_durably(temp: Path, final: Path) -> None:
    """os.replace `temp` onto `final` and fsync the folder; `temp` is removed if the rename fails."""
    try:
        os.replace(temp, final)
    except BaseException:
        remove_quietly(temp)
        raise
    fsync_directory(final.parent)


def fsync_directory(directory: Path) -> None:
    """Make renames and unlinks inside `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_writable(directory: Path) -> None:
    """Create and delete a hidden temp file: a folder that takes no new files (chattr +i, a full
    inode table) then fails at start-up, before any training, instead of at the first save."""
    with explain_write_errors(directory):
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".write-probe.", suffix=TEMP_SUFFIX)
    os.close(fd)
    remove_quietly(Path(probe))


def remove_stale_temp_files(directory: Path) -> list[Path]:
    """Delete temp files left by killed writers; only call this while holding the run lock."""
    removed = []
    for entry in os.scandir(directory):
        if is_temp_name(entry.name) and entry.is_file(follow_symlinks=False):
            remove_quietly(Path(entry.path))
            removed.append(Path(entry.path))
    return removed


def remove_quietly(path: Path) -> None:
    """Unlink `path`, ignoring a file that is already gone."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


@contextlib.contextmanager
def explain_write_errors(directory: Path, nbytes: int | None = None) -> Iterator[None]:
    """Turn a full disk or an unwritable folder into a one-line CheckpointError."""
    try:
        yield
    except OSError as error:
        if error.errno in _FULL_DISK:
            needs = f": writing needs {nbytes} bytes, {_free_bytes(directory)} are free" if nbytes else ""
            raise CheckpointError(
                f"not enough space in {directory}{needs}; free some space "
                "(e.g. `useg checkpoints clean --keep 1`) or use another --run-dir"
            ) from error
        if error.errno in _NOT_WRITABLE:
            raise CheckpointError(
                f"cannot write in {directory}: {error.strerror}; fix its permissions or use another --run-dir"
            ) from error
        raise


def _free_bytes(directory: Path) -> int | str:
    try:
        stats = os.statvfs(directory)
    except OSError:
        return "?"
    return stats.f_bavail * stats.f_frsize


def _preallocate(fd: int, size: int) -> None:
    # Reserving the space first makes a full disk fail here, before any byte is written.
    if size == 0 or not hasattr(os, "posix_fallocate"):
        return
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as error:
        if error.errno in _FULL_DISK:
            raise
        # EOPNOTSUPP/EINVAL: the file system cannot preallocate; the write below still reports ENOSPC.


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data).cast("B")
    while view:
        written = os.write(fd, view)
        view = view[written:]
