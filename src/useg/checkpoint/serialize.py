"""torch.save straight into a durable temp file, with the file's sha256 computed on the way.

One pass over the bytes instead of three (serialise into memory, hash, write). torch.save
hands `write` one record at a time, a CPU tensor's storage in one piece and without a
copy; this thread writes it while a helper thread hashes it (both release the GIL, so
on two cores a save costs about the larger of the two). Small records are gathered into
1 MiB writes. Written ranges are handed to the kernel for writeback at once, so the
closing fsync waits for the tail only. No copy of the file is ever held in memory.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from useg.faults import kill_point
from useg.files import write_all

from .atomic import start_writeback, write_temp
from .state import tensors_in

_WRITEBACK_EVERY = 16 * 1024 * 1024
# Records at least this large that are a storage of the state are written and hashed in place;
# the rest (torch's own headers and pickle bytes, which it may free once `write` returns, and
# small tensors) are copied into a buffer written out every _GATHER_BYTES.
_IN_PLACE_MIN_BYTES = 64 * 1024
_GATHER_BYTES = 1024 * 1024


@dataclass(frozen=True)
class WrittenFile:
    """A durable temp file and the checksum of its bytes."""

    path: Path
    sha256: str
    size_bytes: int

    def checksum(self) -> dict[str, Any]:
        """The sidecar fields that describe these bytes."""
        return {"sha256": self.sha256, "size_bytes": self.size_bytes}


def write_state_temp(directory: Path, name: str, state: Mapping[str, Any]) -> WrittenFile:
    """torch.save `state` into a new fsynced temp file for `name` in `directory`; see the module docstring."""
    storages = _storages(state)
    sink: _HashingSink | None = None

    def fill(fd: int) -> None:
        nonlocal sink
        sink = _HashingSink(fd, {ptr: size for (ptr, device), size in storages.items() if device == "cpu"})
        torch.save(state, sink)
        sink.flush()
        if sink.error is not None:
            raise sink.error

    estimate = sum(storages.values())  # the file is a little larger: headers and the pickle
    try:
        temp = write_temp(directory, name, estimate, fill, needed=lambda: serialized_size(state))
    finally:
        if sink is not None:
            sink.close()  # waited for only now, so that hashing the last records overlaps the fsync
    return WrittenFile(temp, sink.hexdigest(), sink.size)


def serialized_size(state: Mapping[str, Any]) -> int:
    """The size of torch.save(`state`) in bytes, found by serialising into a counter (for a full disk's message)."""
    counter = _ByteCounter()
    torch.save(state, counter)
    return counter.size


class _ByteCounter:
    """A file object that counts what is written to it and keeps nothing."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: Any) -> int:
        nbytes = memoryview(data).nbytes
        self.size += nbytes
        return nbytes

    def flush(self) -> None:
        """Nothing to flush."""


class _HashingSink:
    """The file object torch.save writes to: each record is written here and hashed on a helper thread.

    A record hashed in place is read by the helper after `write` has returned. That is safe
    because it is the memory of a CPU storage held by the state being saved, which outlives
    `close()`; `in_place` holds those storages' addresses and sizes.
    """

    def __init__(self, fd: int, in_place: dict[int, int]) -> None:
        self._fd = fd
        self._in_place = in_place
        self._digest = hashlib.sha256()
        self._queue: queue.SimpleQueue[memoryview | bytes | None] = queue.SimpleQueue()
        self._hashed_all = threading.Event()
        threading.Thread(target=self._hash, name="useg-checkpoint-hash").start()
        self._written_back = 0
        self._small = bytearray()
        self.error: OSError | None = None  # the first failed write; later records are dropped
        self.size = 0  # bytes written

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        if self.error is not None:
            return len(view)
        if self._hash_in_place(view):
            self._flush_small()
            self._put(view, view)
        else:
            # Headers, pickle bytes and small tensors: gathered into one buffer, so that a state
            # of many small records costs one write and one hand-off per MiB, not per record.
            self._small += view
            if len(self._small) >= _GATHER_BYTES:
                self._flush_small()
        return len(view)

    def flush(self) -> None:
        """Write out what is gathered (called once torch.save is done)."""
        self._flush_small()

    def _flush_small(self) -> None:
        if self._small and self.error is None:
            gathered, self._small = self._small, bytearray()
            self._put(gathered, memoryview(gathered))

    def _put(self, hashed: memoryview | bytearray, view: memoryview) -> None:
        self._queue.put(hashed)
        try:
            write_all(self._fd, view)
        except OSError as error:
            # Raised into torch.save's C++ writer, it would leave the zip writer in a state
            # whose clean-up fails with "unexpected pos" in place of this error (e.g. disk full).
            # So the rest is discarded and the caller raises this once torch.save returns.
            self.error = error
            return
        first = self.size == 0
        self.size += len(view)
        if self.size - self._written_back >= _WRITEBACK_EVERY:
            start_writeback(self._fd, self._written_back, self.size - self._written_back)
            self._written_back = self.size
        if first:
            kill_point("mid-write")  # a temp file holding part of a checkpoint, not yet fsynced

    def close(self) -> None:
        """Wait until every record written so far is hashed."""
        self._queue.put(None)
        try:
            self._hashed_all.wait()
        except BaseException:
            # Queued records point into the state's memory, which the caller may free once we
            # return: a Ctrl+C here still waits for the hasher (a few ms) before it propagates.
            self._hashed_all.wait()
            raise

    def hexdigest(self) -> str:
        """The sha256 of every byte written (call after `close`)."""
        return self._digest.hexdigest()

    def _hash_in_place(self, view: memoryview) -> bool:
        if len(view) < _IN_PLACE_MIN_BYTES:
            return False
        address = np.frombuffer(view, dtype=np.uint8).ctypes.data
        return self._in_place.get(address) == len(view)

    def _hash(self) -> None:
        try:
            while (chunk := self._queue.get()) is not None:
                self._digest.update(chunk)
        finally:
            self._hashed_all.set()


def _storages(state: Any) -> dict[tuple[int, str], int]:
    """(address, device type) -> size in bytes of every tensor storage in `state`, each counted once."""
    return {(storage.data_ptr(), storage.device.type): storage.nbytes()
            for storage in (tensor.untyped_storage() for tensor in tensors_in(state))}

