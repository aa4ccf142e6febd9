"""Checksums, sidecars and verification: is this file exactly the checkpoint we wrote, and safe to load?

Every checkpoint `NAME.pt` has a sidecar `NAME.pt.json` recording the sha256 and size
of its bytes (see publish.py for how the two stay consistent through a crash).
Verification never executes the pickle: it hashes the bytes and lists the globals
the pickle would import (torch's static disassembly), nothing more. A file whose
sidecar names the format `safetensors` (an export), or one without a sidecar that is
one, has its header checked instead; a file without a sidecar that is neither format
is `foreign` (content.py names what it looks like), not damaged.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from useg.files import FILE_MODE, atomic_write_cache

from .content import EMPTY, FOREIGN, PICKLE, SAFETENSORS, identify_content, safetensors_header
from .layout import VERIFIED_CACHE_NAME, pending_path, sidecar_path

STATUSES = ("ok", "corrupt", "missing-checksum", "missing", "unsafe", "foreign")
NOT_OURS = "not a useg checkpoint or export"  # how a foreign file's reason begins
_CHUNK = 4 * 1024 * 1024
_RETRIES_WHEN_REPLACED = 3


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of checking one checkpoint file; `status` is one of STATUSES."""

    path: Path
    status: str
    reason: str = ""
    metadata: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        """True when the file is exactly what was written and safe to load."""
        return self.status == "ok"


def sha256_bytes(data: bytes | memoryview) -> str:
    """Hex sha256 of bytes already in memory."""
    return hashlib.sha256(data).hexdigest()


def sha256_stream(handle: BinaryIO) -> str:
    """Hex sha256 of an open file from its start, read in chunks so size never matters."""
    handle.seek(0)
    digest = hashlib.sha256()
    while chunk := handle.read(_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def read_sidecar(path: Path) -> tuple[dict[str, Any] | None, str]:
    """Read one sidecar file: (its dict, "") or (None, why it is unusable)."""
    try:
        with open(path, encoding="utf-8") as handle:
            sidecar = json.load(handle)
    except FileNotFoundError:
        return None, f"no checksum sidecar {path.name}"
    except (OSError, ValueError) as error:
        return None, f"sidecar {path.name} is unreadable ({error})"
    if not isinstance(sidecar, dict) or not _has_checksum(sidecar):
        return None, f"sidecar {path.name} lacks sha256/size_bytes"
    return sidecar, ""


def verify_checkpoint(path: str | os.PathLike) -> VerifyResult:
    """Check a checkpoint against its sidecar and for unsafe pickle globals; never runs the pickle."""
    result, handle = open_verified(path)
    if handle is not None:
        # The stat of the bytes hashed, not of whatever the name holds now (a writer may have replaced it).
        hashed = os.fstat(handle.fileno())
        handle.close()
        # Only a checkpoint's hash is cached (its sidecar names its kind): an export may sit in a user's
        # own folder, where verifying it must not leave a file behind.
        if result.metadata is not None and "kind" in result.metadata:
            _remember(Path(path), _cache_entry(hashed, result.metadata["sha256"]))
    return result


def open_verified(path: str | os.PathLike) -> tuple[VerifyResult, BinaryIO | None]:
    """Verify `path` and, when it is ok, return the open file that was checked (positioned at 0).

    Loading from this handle reads exactly the verified bytes, even if a writer
    replaces the file by name a moment later.
    """
    path = Path(path)
    for _ in range(_RETRIES_WHEN_REPLACED):
        try:
            handle = open(path, "rb")
        except FileNotFoundError:
            return VerifyResult(path, "missing", f"{path.name} does not exist"), None
        result = _verify_open_file(path, handle)
        if result.ok:
            handle.seek(0)
            return result, handle
        replaced = _replaced_since_open(path, handle)
        handle.close()
        if not replaced:  # a mismatch caused by a concurrent save is retried; a real one is reported
            break
    return result, None


def known_verified(path: str | os.PathLike) -> VerifyResult | None:
    """An ok result when these very bytes (same name, size and mtime, same sha256 in the sidecar)
    were hashed and verified before, else None. Reads no checkpoint bytes.

    Keyed by name, not inode, so that a run copied with its times (cp -p, rsync -a) keeps it.

    Any write to the file changes its mtime and so drops it from here; decay of the disk
    under an unchanged mtime is caught only by `verify_checkpoint`, which `useg checkpoints
    verify`, resume and clean always use.

    A writer may replace the file while this reads: the file is looked at first and again
    last, and the reads are retried when it changed in between, so that a match is never
    made from the sidecar or cache entry of other bytes and a just-published file is not
    reported unknown because its entry was read before it existed.
    """
    path = Path(path)
    for _ in range(_RETRIES_WHEN_REPLACED):
        before = _stat(path)
        if before is None:
            return None
        candidates, _ = _sidecar_candidates(path)
        entries = _cached_entries(path.parent, path.name)
        known = next((sidecar for sidecar in candidates if sidecar["size_bytes"] == before.st_size
                      and _cache_entry(before, sidecar["sha256"]) in entries), None)
        if _same_file(_stat(path), before):
            # nothing changed while reading: the answer is about the bytes at `path` now
            return None if known is None else VerifyResult(path, "ok", "", known)
    return None


def remember_verified(path: Path, sha256: str, written: Path | None = None) -> None:
    """Record that the bytes now at `path` hash to `sha256` and are safe (a cache: failures are ignored).

    `written`: a complete temp file about to be renamed onto `path` (a rename keeps its size and
    mtime). Recorded before the rename, the entry exists before any listing can see the new file;
    the entry of the file still at `path` is kept beside it until then.
    """
    try:
        entry = _cache_entry(os.stat(written or path), sha256)
    except OSError:
        return
    _remember(path, entry)


def _remember(path: Path, entry: dict[str, Any]) -> None:
    try:
        live = {item.name for item in os.scandir(path.parent)}  # drop entries of deleted files
        cache = {name: value for name, value in _read_cache(path.parent).items() if name in live}
        now = _stat(path)
        kept = [old for old in _entries(cache.get(path.name))
                if now is not None and _describes(old, now) and _key(old) != _key(entry)]
        cache[path.name] = entry if not kept else [entry, kept[0]]
        atomic_write_cache(path.parent / VERIFIED_CACHE_NAME, json.dumps(cache).encode("utf-8"), FILE_MODE)
    except OSError:
        pass  # losing the cache costs a re-hash; it is written without fsync for the same reason


def _cache_entry(stat: os.stat_result, sha256: str) -> dict[str, Any]:
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256}


def _key(entry: dict[str, Any]) -> tuple:
    return entry.get("size"), entry.get("mtime_ns")


def _describes(entry: dict[str, Any], stat: os.stat_result) -> bool:
    return _key(entry) == (stat.st_size, stat.st_mtime_ns)


def _cached_entries(directory: Path, name: str) -> list[dict[str, Any]]:
    return _entries(_read_cache(directory).get(name))


def _entries(value: Any) -> list[dict[str, Any]]:
    # One entry per name; two while a replacement is being published (the file there and the next one).
    values = value if isinstance(value, list) else [value]
    return [entry for entry in values if isinstance(entry, dict)]


def _read_cache(directory: Path) -> dict[str, Any]:
    try:
        cache = json.loads((directory / VERIFIED_CACHE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def _stat(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


def _same_file(a: os.stat_result | None, b: os.stat_result | None) -> bool:
    identity = lambda s: None if s is None else (s.st_dev, s.st_ino, s.st_size, s.st_mtime_ns)  # noqa: E731
    return identity(a) == identity(b)


def unsafe_globals(handle: BinaryIO) -> list[str]:
    """Globals the pickle would import that weights_only loading refuses (static; runs nothing).

    Raises ValueError/RuntimeError when the file is not a complete torch.save zip archive.
    """
    import torch  # here, not at the top: listing checkpoints should not pay torch's start-up

    handle.seek(0)
    return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(handle))


def _verify_open_file(path: Path, handle: BinaryIO) -> VerifyResult:
    candidates, problem = _sidecar_candidates(path)
    if not candidates:
        return _verify_without_sidecar(path, handle, problem)
    size = os.fstat(handle.fileno()).st_size
    same_size = [c for c in candidates if c["size_bytes"] == size]
    if not same_size:
        expected = candidates[0]["size_bytes"]
        return VerifyResult(path, "corrupt", f"file is {size} bytes but its sidecar records {expected} (truncated or overwritten)")
    digest = sha256_stream(handle)
    matching = next((c for c in same_size if c["sha256"] == digest), None)
    if matching is None:
        return VerifyResult(path, "corrupt", "sha256 of the file does not match its sidecar (bytes changed on disk)")
    if matching.get("format") == SAFETENSORS:
        return _check_safetensors(path, handle, matching)
    return _check_pickle(path, handle, matching)


def _verify_without_sidecar(path: Path, handle: BinaryIO, problem: str) -> VerifyResult:
    # Still look inside: an unsafe, truncated or foreign file deserves that status more than "no checksum".
    content = identify_content(handle)
    if content.kind in (FOREIGN, PICKLE):
        return VerifyResult(path, "foreign", f"{NOT_OURS}: {content.looks_like}")
    if content.kind == EMPTY:
        return VerifyResult(path, "corrupt", "the file is empty (truncated?)")
    check = _check_safetensors if content.kind == SAFETENSORS else _check_pickle
    result = check(path, handle, None)
    if not result.ok:
        return result
    return VerifyResult(path, "missing-checksum", f"{problem}, so its bytes cannot be checked")


def _check_safetensors(path: Path, handle: BinaryIO, metadata: dict | None) -> VerifyResult:
    try:
        safetensors_header(handle)
    except ValueError as error:
        return VerifyResult(path, "corrupt", f"not a complete safetensors file: {error}")
    return VerifyResult(path, "ok", "", metadata)


def _check_pickle(path: Path, handle: BinaryIO, metadata: dict | None) -> VerifyResult:
    try:
        names = unsafe_globals(handle)
    except (RuntimeError, ValueError, OSError) as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        return VerifyResult(path, "corrupt", f"not a complete torch.save zip archive, truncated? ({first_line})")
    except Exception as error:  # the scan meets bytes no pickler wrote (a flipped byte where no checksum tells)
        return VerifyResult(path, "corrupt", f"its pickle is damaged ({type(error).__name__}: {error})")
    if names:
        return VerifyResult(path, "unsafe", f"its pickle needs globals outside the weights_only allow-list: {', '.join(names)}")
    return VerifyResult(path, "ok", "", metadata)


def _sidecar_candidates(path: Path) -> tuple[list[dict[str, Any]], str]:
    # The final sidecar first; a pending one (an unfinished save, see publish.py) may describe
    # the file instead when the process died between the two renames. The pending one is read
    # first: a writer renames it onto the final name, so read the other way round, a save
    # finishing between the two reads would leave neither describing the new file.
    pending, _ = read_sidecar(pending_path(path))
    sidecar, problem = read_sidecar(sidecar_path(path))
    return [c for c in (sidecar, pending) if c is not None], problem


def _has_checksum(sidecar: dict[str, Any]) -> bool:
    return isinstance(sidecar.get("sha256"), str) and type(sidecar.get("size_bytes")) is int


def _replaced_since_open(path: Path, handle: BinaryIO) -> bool:
    try:
        return os.stat(path).st_ino != os.fstat(handle.fileno()).st_ino
    except FileNotFoundError:
        return True
