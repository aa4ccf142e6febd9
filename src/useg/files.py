"""Atomic, durable writes of ordinary files: a file is its old complete self or its new one, never torn.

The protocol (PostgreSQL's durable_rename): write a hidden temp file `.NAME.*.tmp` in the same
folder, fsync it, os.replace it onto the final name, fsync the folder. The file fsync makes the
bytes durable; only the folder fsync makes the rename durable.

`write_file_atomically` is what pictures, curves, CSVs, masks, reports and the data index use;
the checkpoint library builds its own writes (and its own messages) on the same primitives.
Imports nothing from useg but its errors.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from useg.errors import UsegError

FILE_MODE = 0o644  # mkstemp creates 0600; our files are meant to be shared and copied
TEMP_SUFFIX = ".tmp"
FULL_DISK = frozenset({errno.ENOSPC, errno.EDQUOT})
NOT_WRITABLE = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})


def is_temp_name(name: str) -> bool:
    """Our temp files are hidden and end in `.tmp`, so they never look like the files they become."""
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


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


def write_file_atomically(path: str | os.PathLike, data: bytes, *, create_folder: bool = False,
                          then: str = "try again", mode: int = FILE_MODE) -> Path:
    """Replace `path` with `data` durably, for the files that are not checkpoints (pictures, curves,
    CSVs, masks): a full disk, an unwritable, missing or vanished folder or a failing disk is one
    UsegError naming the file, the fix and `then` (what to do after it).
    No partial file and no temp file is left. `create_folder`: make the missing folders first;
    `mode`: the file's permissions (e.g. 0o600 for a file only its owner may read)."""
    path = Path(path)
    with explain_file_errors(path, then, len(data)):
        if create_folder:
            path.parent.mkdir(parents=True, exist_ok=True)
        temp = new_temp_file(path.parent, path.name, len(data), lambda fd: write_all(fd, data), mode)
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
    if error.errno in FULL_DISK:
        needs = f"the file needs {nbytes} bytes, " if nbytes else ""
        return f"the disk is full ({needs}{free_bytes(folder)} bytes are free); free some space"
    if error.errno in NOT_WRITABLE:
        return f"{error.strerror} in {folder}; make the folder writable or choose another one"
    if error.errno == errno.ENOENT:
        return f"the folder {folder} does not exist (it may have been removed); create it or choose another one"
    if error.errno in (errno.ENOTDIR, errno.EEXIST):
        blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), folder)
        return f"{blocker} is a file, not a folder; move it away or choose another folder"
    if error.errno == errno.EIO:
        return "the disk reported an I/O error (it may be failing or disconnected); check it"
    return None


def new_temp_file(directory: Path, name: str, size_hint: int, fill: Callable[[int], None],
                  mode: int = FILE_MODE, sync: bool = True) -> Path:
    """Create a hidden `.NAME.*.tmp` in `directory`, let `fill(fd)` write it, then fsync; return its path.

    `size_hint` bytes are reserved first, so a full disk usually fails before any byte is
    written; a file that ends up shorter is cut to what `fill` wrote. OSErrors are left as they
    are, for the caller to explain; on any error the temp file is removed. mkstemp creates the
    file 0600, so a narrower `mode` holds from the first byte written. `sync=False` skips the
    fsync (caches: losing one after a power cut costs a recomputation).
    """
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
    temp = new_temp_file(path.parent, path.name, len(data), lambda fd: write_all(fd, data), mode, sync=False)
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


def remove_quietly(path: Path) -> None:
    """Unlink `path`, ignoring a file that is already gone."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def write_all(fd: int, data: bytes | memoryview) -> None:
    """os.write until every byte of `data` is written (a single write may be short)."""
    view = memoryview(data).cast("B")
    while view:
        written = os.write(fd, view)
        view = view[written:]


def free_bytes(directory: Path) -> int | str:
    """Bytes free for us in `directory`'s file system, or "?" when it cannot be asked."""
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
        if error.errno in FULL_DISK:
            raise
        # EOPNOTSUPP/EINVAL: the file system cannot preallocate; the write below still reports ENOSPC.
