"""Durable writes of checkpoint files, with the messages a training run gives when one fails.

The protocol itself (hidden temp file, fsync, os.replace, fsync of the folder) lives in
useg.files; this module adds what only the checkpoints folder needs: errors that say
`useg checkpoints clean` and `--run-dir`, the start-up check that the folder takes files,
the clean-up of temp files left by killed writers, and early writeback of large files.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from useg.errors import CheckpointError
from useg.files import (FULL_DISK, NOT_WRITABLE, TEMP_SUFFIX, free_bytes, is_temp_name, json_text, new_temp_file,
                        remove_quietly, replace_durably, write_all)

_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_sync_file_range = _load_sync_file_range()


def atomic_write_bytes(path: str | os.PathLike, data: bytes | memoryview) -> None:
    """Replace `path` with `data` durably: readers see the old file or the new one, never a mix."""
    path = Path(path)
    temp = write_temp_file(path.parent, path.name, data)
    replace_durably(temp, path)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """`atomic_write_bytes` of `obj` as indented JSON (NaN and inf written as null)."""
    atomic_write_bytes(path, (json_text(obj) + "\n").encode("utf-8"))


def write_temp_file(directory: Path, name: str, data: bytes | memoryview) -> Path:
    """Write `data` to a new hidden `.NAME.*.tmp` in `directory`, fsynced, mode 0644; return its path."""
    return write_temp(directory, name, len(data), lambda fd: write_all(fd, data))


def write_temp(directory: Path, name: str, size_hint: int, fill: Callable[[int], None],
               needed: Callable[[], int] | None = None) -> Path:
    """`useg.files.new_temp_file` with its errors explained for a checkpoints folder.

    On a full disk the error names `needed()` bytes (default: the hint).
    """
    with explain_write_errors(directory, needed or (lambda: size_hint)):
        return new_temp_file(directory, name, size_hint, fill)


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


@contextlib.contextmanager
def explain_write_errors(directory: Path, nbytes: int | Callable[[], int] | None = None) -> Iterator[None]:
    """Turn a full disk, an unwritable folder or a disk's I/O error into a one-line CheckpointError.

    `nbytes`: what the write needed, or a function giving it once the write has failed.
    """
    try:
        yield
    except OSError as error:
        if error.errno in FULL_DISK:
            nbytes = nbytes() if callable(nbytes) else nbytes
            needs = f": writing needs {nbytes} bytes, {free_bytes(directory)} are free" if nbytes else ""
            raise CheckpointError(
                f"not enough space in {directory}{needs}; free some space "
                "(e.g. `useg checkpoints clean --keep 1`) or use another --run-dir"
            ) from error
        if error.errno in NOT_WRITABLE:
            raise CheckpointError(
                f"cannot write in {directory}: {error.strerror}; fix its permissions or use another --run-dir"
            ) from error
        if error.errno == errno.EIO:
            # Never retried: after a failed fsync the kernel may have dropped the pages, so a retry
            # could "succeed" over lost data. The earlier checkpoints are left as they were.
            raise CheckpointError(
                f"the disk reported an I/O error while writing in {directory}, so this save failed (earlier "
                "checkpoints are kept); check the disk (e.g. `dmesg`) or use another --run-dir"
            ) from error
        raise


def start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Ask the kernel to start writing this range of `fd` to disk now, without waiting.

    The final fsync then waits only for the tail instead of the whole file, so disk time
    overlaps with the rest of the save (PostgreSQL does the same with sync_file_range).
    A no-op where Linux's sync_file_range is unavailable.
    """
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, nbytes, _SYNC_FILE_RANGE_WRITE)  # advisory: its errors surface at fsync
