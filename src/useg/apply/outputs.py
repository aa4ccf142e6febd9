"""evaluate never silently replaces an earlier result: what it would replace is kept under the time it was written.

`evaluation_test.csv` always holds the latest evaluation, so scripts find it by
one fixed name; an earlier file of that name with other contents is kept
beside it as `evaluation_test_20250102_130405.csv` (its modification time;
`_2`, `_3` when two share a second). The sweep pictures and the `--pictures`
folder are kept the same way. A write that fails leaves the earlier file where
it was, and no kept copy.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from useg.files import explain_file_errors, remove_quietly, write_file_atomically


@dataclass(frozen=True)
class Written:
    """A file written, and where the file it replaced is kept (None: there was none, or it was the same)."""

    path: Path
    earlier: Path | None = None


def write_keeping_earlier(path: str | Path, data: bytes, then: str) -> Written:
    """Write `data` to `path` atomically (creating its folder), keeping a different earlier file aside first."""
    path = Path(path)
    earlier = keep_file(path, then) if path.is_file() and not holds(path, data) else None
    try:
        write_file_atomically(path, data, create_folder=True, then=then)
    except BaseException:
        if earlier is not None:
            remove_quietly(earlier)  # the earlier file is still at `path`
        raise
    return Written(path, earlier)


def keep_file(path: Path, then: str) -> Path:
    """A second name for the file at `path` (a hard link; a copy where links are not supported)."""
    with explain_file_errors(path.parent / aside_name(path), then):
        for number in range(1, 1000):
            aside = path.parent / aside_name(path, number)
            try:
                os.link(path, aside)
                return aside
            except FileExistsError:
                continue
            except OSError:  # a file system without hard links (FAT, some network shares)
                if aside.exists():
                    continue
                shutil.copy2(path, aside)
                return aside
    raise FileExistsError(f"{path.parent} holds 999 kept copies of {path.name}")


def keep_folder(folder: Path, then: str) -> Path | None:
    """Rename a non-empty `folder` to its kept name, so that what is written next starts from an empty folder."""
    if not folder.is_dir() or not any(folder.iterdir()):
        return None
    with explain_file_errors(folder, then):
        for number in range(1, 1000):
            aside = folder.parent / aside_name(folder, number)
            if not os.path.lexists(aside):  # rename would replace an empty folder of that name
                os.rename(folder, aside)
                return aside
    raise FileExistsError(f"{folder.parent} holds 999 kept copies of {folder.name}")


def aside_name(path: Path, number: int = 1) -> str:
    """`evaluation_test_20250102_130405.csv`: the name plus the time the file was last written."""
    stamp = datetime.fromtimestamp(path.stat().st_mtime).strftime("%Y%m%d_%H%M%S")
    suffix = path.suffix if path.is_file() else ""
    stem = path.name[:len(path.name) - len(suffix)] if suffix else path.name
    return f"{stem}_{stamp}" + (f"_{number}" if number > 1 else "") + suffix


def holds(path: Path, data: bytes) -> bool:
    try:
        return path.stat().st_size == len(data) and path.read_bytes() == data
    except OSError:
        return False
