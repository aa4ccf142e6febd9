"""Durable writes: a file is either its old complete self or its new complete self, never torn.

The protocol (PostgreSQL's durable_rename): write a hidden temp file in the same
folder, fsync it, os.replace it onto the final name, fsync the folder. The file
fsync makes the bytes durable; only the folder fsync makes the rename durable.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from useg.errors import CheckpointError, UsegError

from .layout import TEMP_SUFFIX, is_temp_name

FILE_MODE = 0o644  # mkstemp creates 0600; checkpoints are meant to be shared and copied
_FULL_DISK = {errno.ENOSPC, errno.EDQUOT}
_NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}
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


def json_text(obj: Any, **options: Any) -> str:
    """Strict JSON of `obj`: NaN and inf, which JSON lacks (bare `NaN` breaks strict readers), become null."""
    return json.dumps(_finite_or_none(obj), indent=2, allow_nan=False, **options)


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, dict):
        return {key: _finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(item) for item in value]
    return value


def write_temp_file(directory: Path, name: str, data: bytes | memoryview) -> Path:
    """Write `data` to a new hidden `.NAME.*.tmp` in `directory`, fsynced, mode 0644; return its path."""
    return write_temp(directory, name, len(data), lambda fd: write_all(fd, data))


def write_temp(directory: Path, name: str, size_hint: int, fill: Callable[[int], None],
               needed: Callable[[], int] | None = None) -> Path:
    """Create a hidden `.NAME.*.tmp` in `directory`, let `fill(fd)` write it, then fsync; return its path.

    `size_hint` bytes are reserved first, so a full disk usually fails before any byte is
    written; a file that ends up shorter is cut to what `fill` wrote. On a full disk the
    error names `needed()` bytes (default: the hint). On any error the temp file is removed.
    """
    with explain_write_errors(directory, needed or (lambda: size_hint)):
        return _write_temp(directory, name, size_hint, fill)


def _write_temp(directory: Path, name: str, size_hint: int, fill: Callable[[int], None],
                mode: int = FILE_MODE, sync: bool = True) -> Path:
    """`write_temp` with its OSErrors as they are, for callers that explain them their own way.
    mkstemp creates the file 0600, so a narrower `mode` holds from the first byte written.
    `sync=False` skips the fsync (caches: losing one after a power cut costs a recomputation)."""
    fd, temp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=TEMP_SUFFIX)
    try:
        _preallocate(fd, size_hint)
        fill(fd)
        end = os.lseek(fd, 0, os.SEEK_CUR)
        if os.fstat(fd).st_size > end:
            os.ftruncate(fd, end)  # drop the reserved space fill did not use
        os.fchmod(fd, mode)
        # A failed fsync is not retried: the kernel may already have dropped the dirty
        # pages, so a second fsync can "succeed" over lost data (PostgreSQL's fsyncgate).
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        remove_quietly(Path(temp))
        raise
    os.close(fd)
    return Path(temp)


def atomic_write_cache(path: Path, data: bytes, mode: int = FILE_MODE) -> None:
    """Replace `path` with `data` atomically (readers see the old or the new file) but without fsync,
    for caches; `mode` whatever the umask. OSErrors are left to the caller, which may ignore them."""
    temp = _write_temp(path.parent, path.name, len(data), lambda fd: write_all(fd, data), mode, sync=False)
    try:
        os.replace(temp, path)
    except BaseException:
        remove_quietly(temp)
        raise


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
def explain_write_errors(directory: Path, nbytes: int | Callable[[], int] | None = None) -> Iterator[None]:
    """Turn a full disk, an unwritable folder or a disk's I/O error into a one-line CheckpointError.

    `nbytes`: what the write needed, or a function giving it once the write has failed.
    """
    try:
        yield
    except OSError as error:
        if error.errno in _FULL_DISK:
            nbytes = nbytes() if callable(nbytes) else nbytes
            needs = f": writing needs {nbytes} bytes, {_free_bytes(directory)} are free" if nbytes else ""
            raise CheckpointError(
                f"not enough space in {directory}{needs}; free some space "
                "(e.g. `useg checkpoints clean --keep 1`) or use another --run-dir"
            ) from error
        if error.errno in _NOT_WRITABLE:
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


def write_file_atomically(path: str | os.PathLike, data: bytes, *, create_folder: bool = False,
                          then: str = "try again", mode: int = FILE_MODE) -> Path:
    """Replace `path` with `data` as `atomic_write_bytes` does, for the files that are not checkpoints
    (pictures, curves, CSVs, masks): a full disk, an unwritable, missing or vanished folder or a
    failing disk is one UsegError naming the file, the fix and `then` (what to do after it).
    No partial file and no temp file is left. `create_folder`: make the missing folders first;
    `mode`: the file's permissions (e.g. 0o600 for a file only its owner may read)."""
    path = Path(path)
    with explain_file_errors(path, then, len(data)):
        if create_folder:
            path.parent.mkdir(parents=True, exist_ok=True)
        temp = _write_temp(path.parent, path.name, len(data), lambda fd: write_all(fd, data), mode)
        replace_durably(temp, path)
    return path


@contextlib.contextmanager
def explain_file_errors(path: Path, then: str = "try again", nbytes: int = 0) -> Iterator[None]:
    """Turn the OSErrors a user can fix, while writing `path` (or making a folder), into one-line
    UsegErrors naming it and ending with `then`; `nbytes`: what the write needed."""
    try:
        yield
    except OSError as error:
        reason = _file_error_reason(path, nbytes, error)
        if reason is None:
            raise
        raise UsegError(f"cannot write {path}: {reason}, then {then}") from error


def _file_error_reason(path: Path, nbytes: int, error: OSError) -> str | None:
    folder = path.parent
    if error.errno in _FULL_DISK:
        needs = f"the file needs {nbytes} bytes, " if nbytes else ""
        return f"the disk is full ({needs}{_free_bytes(folder)} bytes are free); free some space"
    if error.errno in _NOT_WRITABLE:
        return f"{error.strerror} in {folder}; make the folder writable or choose another one"
    if error.errno == errno.ENOENT:
        return f"the folder {folder} does not exist (it may have been removed); create it or choose another one"
    if error.errno in (errno.ENOTDIR, errno.EEXIST):
        blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), folder)
        return f"{blocker} is a file, not a folder; move it away or choose another folder"
    if error.errno == errno.EIO:
        return "the disk reported an I/O error (it may be failing or disconnected); check it"
    return None


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


def write_all(fd: int, data: bytes | memoryview) -> None:
    """os.write until every byte of `data` is written (a single write may be short)."""
    view = memoryview(data).cast("B")
    while view:
        written = os.write(fd, view)
        view = view[written:]


def start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Ask the kernel to start writing this range of `fd` to disk now, without waiting.

    The final fsync then waits only for the tail instead of the whole file, so disk time
    overlaps with the rest of the save (PostgreSQL does the same with sync_file_range).
    A no-op where Linux's sync_file_range is unavailable.
    """
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, nbytes, _SYNC_FILE_RANGE_WRITE)  # advisory: its errors surface at fsync
