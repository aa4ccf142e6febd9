"""Putting a checkpoint and its sidecar in place so that the pair is consistent after a crash at any point.

Protocol for `NAME.pt` with sidecar `NAME.pt.json`:
  0. write the bytes to a hidden temp `.NAME.pt.*.tmp` (fsynced)   [or hard-link an identical file there]
  1. write the new sidecar durably as `NAME.pt.json.pending`
  2. os.replace the temp onto `NAME.pt`;  3. fsync the folder
  4. os.replace the pending sidecar onto `NAME.pt.json`;  5. fsync the folder

What a SIGKILL leaves, by the last step completed:
  - none or 0: the old file and old sidecar, untouched and matching; a stray `.tmp` that
    start-up removes (under the run lock).
  - 1: the old pair still matches; the pending sidecar describes bytes that are not at
    NAME.pt, so readers ignore it and start-up deletes it.
  - 2 or 3: NAME.pt is new, NAME.pt.json describes the old bytes, the pending sidecar the new
    ones: verification accepts the file through the pending sidecar (roll forward) and
    start-up renames it onto NAME.pt.json.
  - 4 or 5: the new pair, matching.
On power loss, step 3 makes the checkpoint rename durable before the sidecar rename
starts, so we never end up with a new sidecar next to the old bytes (which would make a
good file look corrupt). Each sidecar records the inode of its file, so a reader that
cannot hash (listing) can still tell which of the two sidecars describes the file.

An export (`publish_export`: weights and a JSON that other programs read) follows the same
steps with two changes, because those programs know no pending sidecars: the new sidecar
waits in a hidden temp `.NAME.json.*.tmp`, and the old sidecar is removed (and the folder
fsynced) before step 2. Killed at any instant it leaves the old pair, the new pair, or the
new bytes with no sidecar; never new bytes beside an old sidecar.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from pathlib import Path
from typing import Any, Iterator, Mapping

from useg.faults import kill_point
from useg.files import TEMP_SUFFIX, fsync_directory, json_text, new_temp_file, remove_quietly, replace_durably
from useg.files import write_all

from .atomic import atomic_write_json
from .integrity import read_sidecar, remember_verified, sha256_stream
from .layout import PENDING_SUFFIX, SIDECAR_SUFFIX, pending_path, sidecar_path
from .serialize import write_state_temp


def publish_state(final: Path, state: Mapping[str, Any], sidecar: dict[str, Any]) -> dict[str, Any]:
    """Durably replace `final` with torch.save(`state`) and its sidecar with `sidecar` plus the
    checksum of the new bytes; returns that checksum (sha256 and size_bytes)."""
    written = write_state_temp(final.parent, final.name, state)
    kill_point("after-temp-write")
    publish_temp(written.path, final, {**sidecar, **written.checksum()})
    return written.checksum()


def publish_link(source: Path, final: Path, checksum: dict[str, Any], state: Mapping[str, Any],
                 sidecar: dict[str, Any]) -> dict[str, Any]:
    """Publish `final` with the bytes of the just published `source` (`checksum`), stored once as a hard link.

    Where the file system refuses links, `state` is serialised again instead. Returns the checksum of `final`.
    """
    temp = _link_to_temp(source, final)
    if temp is None:
        written = write_state_temp(final.parent, final.name, state)
        temp, checksum = written.path, written.checksum()
    publish_temp(temp, final, {**sidecar, **checksum})
    return checksum


def publish_temp(temp: Path, final: Path, sidecar: dict[str, Any]) -> None:
    """Steps 1-5 of the protocol above, for a durable temp file holding the new bytes."""
    pending = pending_path(final)
    sidecar = {**sidecar, "inode": os.stat(temp).st_ino}
    with _undone_unless_renamed(temp, pending, final):
        atomic_write_json(pending, sidecar)
        # Recorded before the rename, so a listing never sees the new file without its known hash.
        remember_verified(final, sidecar["sha256"], written=temp)
        kill_point("before-rename")
        replace_durably(temp, final)
        kill_point("after-rename")
    replace_durably(pending, sidecar_path(final))
    kill_point("after-sidecar")


def publish_export(final: Path, data: bytes, sidecar: dict[str, Any]) -> None:
    """Durably replace `final` with `data` and `final`.json with `sidecar` (which carries the sha256
    and size_bytes of `data`), for a pair that other programs read; see the module doc.

    The folder and the JSON are the user's: no verified-hash cache is written beside the file and
    the sidecar records no inode. Hidden temps of a killed export to `final` are removed first.
    """
    folder = final.parent
    _remove_killed_temps(final)
    temp = _user_file_temp(folder, final.name, data)
    try:
        staged = _user_file_temp(folder, sidecar_path(final).name, (json_text(sidecar) + "\n").encode("utf-8"))
    except BaseException:
        remove_quietly(temp)
        raise
    with _undone_unless_renamed(temp, staged, final):
        kill_point("export-temps-written")
        remove_quietly(sidecar_path(final))  # the old sidecar must never sit beside the new bytes
        fsync_directory(folder)
        kill_point("export-metadata-removed")
        replace_durably(temp, final)
        kill_point("export-weights-renamed")
    replace_durably(staged, sidecar_path(final))


def _user_file_temp(folder: Path, name: str, data: bytes) -> Path:
    """A durable temp of `data` beside a user's file; OSErrors are left to the caller, which knows the folder
    is not a checkpoints folder (no `--run-dir` or `clean` advice fits there)."""
    return new_temp_file(folder, name, len(data), lambda fd: write_all(fd, data))


@contextlib.contextmanager
def _undone_unless_renamed(temp: Path, staged: Path, final: Path) -> Iterator[None]:
    """On a failure, remove `temp` and, unless `temp` already became `final`, the sidecar staged
    for it: before that rename it describes nothing; after it, it describes `final` and stays (a
    pending sidecar rolls forward; an export's hidden one goes with the next export)."""
    inode = os.stat(temp).st_ino
    try:
        yield
    except BaseException:
        remove_quietly(temp)
        if not _holds_inode(final, inode):
            remove_quietly(staged)
        raise


def _remove_killed_temps(final: Path) -> None:
    """Delete the hidden temps (`.NAME.xxxxxxxx.tmp`, mkstemp's names) a killed export to `final` left."""
    names = "|".join(re.escape(name) for name in (final.name, sidecar_path(final).name))
    pattern = re.compile(rf"^\.({names})\.[a-z0-9_]{{8}}{re.escape(TEMP_SUFFIX)}$")
    for entry in os.scandir(final.parent):
        if pattern.match(entry.name) and entry.is_file(follow_symlinks=False):
            remove_quietly(Path(entry.path))


def finalize_pending_sidecars(directory: Path) -> list[Path]:
    """Roll forward or discard pending sidecars left by a killed save; call only under the run lock.

    Returns the checkpoints whose pending sidecar was made final.
    """
    finalized = []
    for pending in sorted(directory.glob("*" + PENDING_SUFFIX)):
        final = pending.with_name(pending.name[: -len(PENDING_SUFFIX)])
        if _pending_matches(pending, final):
            os.replace(pending, sidecar_path(final))
            finalized.append(final)
        else:
            remove_quietly(pending)
    fsync_directory(directory)
    return finalized


def remove_orphan_sidecars(directory: Path) -> list[Path]:
    """Delete sidecars whose checkpoint is gone (e.g. a clean killed between the two unlinks);
    call only under the run lock. Returns the sidecars removed."""
    removed = []
    for sidecar in sorted(directory.glob("*.pt" + SIDECAR_SUFFIX)):
        checkpoint = sidecar.with_name(sidecar.name[: -len(SIDECAR_SUFFIX)])
        if not checkpoint.name.startswith(".") and not checkpoint.exists():
            remove_quietly(sidecar)
            removed.append(sidecar)
    if removed:
        fsync_directory(directory)
    return removed


def _pending_matches(pending: Path, final: Path) -> bool:
    sidecar, _ = read_sidecar(pending)
    if sidecar is None or not final.is_file() or final.stat().st_size != sidecar["size_bytes"]:
        return False
    with open(final, "rb") as handle:
        return sha256_stream(handle) == sidecar["sha256"]


def _link_to_temp(source: Path, final: Path) -> Path | None:
    temp = final.with_name(f".{final.name}.{secrets.token_hex(6)}{TEMP_SUFFIX}")
    try:
        os.link(source, temp)
    except OSError:
        return None  # e.g. EPERM/ENOTSUP on file systems without hard links: copy instead
    return temp


def _holds_inode(path: Path, inode: int) -> bool:
    try:
        return os.stat(path).st_ino == inode
    except FileNotFoundError:
        return False
