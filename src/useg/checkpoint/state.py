"""The training state on its way into a file: frozen snapshot, weights_only check, stamps, bytes.

The on-disk format stays a plain dict (`epoch`, `model_state_dict`, ...) that one
`torch.load(path, weights_only=True)` reads.
"""

from __future__ import annotations

import contextlib
import copy
import mmap
import platform
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch

import useg

FORMAT_VERSION = 1  # bump when a reader needs to know; load() refuses files newer than this

# Leaves the weights_only unpickler rebuilds without any non-allow-listed global.
_SAFE_LEAVES = (type(None), bool, int, float, complex, str, bytes, bytearray, torch.dtype, torch.device)
_SAFE_SEQUENCES = (list, tuple, set, torch.Size)
_SAFE_MAPPINGS = (dict, OrderedDict)
_SAFE_KEY_LEAVES = (type(None), bool, int, float, str)
# Tensors at least this large are copied into reused staging memory (see StagingMemory).
_STAGED_MIN_BYTES = 1024 * 1024
_CAN_MAP_PRIVATE = hasattr(mmap, "MAP_PRIVATE")  # not on Windows: plain copies there


def snapshot_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `state` that later training steps cannot change.

    Parts with `state_dict()` are converted by calling it; every tensor is detached and
    copied to the CPU (tensors shared inside the state stay shared); containers are
    rebuilt and other plain values deep-copied.
    """
    memo: dict[int, torch.Tensor] = {}
    with _STAGING.session() as lend:
        return {key: _copy(_plain(value), memo, lend) for key, value in state.items()}


def check_weights_only_safe(value: Any, where: str = "") -> None:
    """Raise TypeError naming the key path (e.g. `history.val_dice[3]`) of the first value
    that `torch.load(weights_only=True)` would refuse."""
    kind = type(value)
    if kind in _SAFE_LEAVES or isinstance(value, torch.Tensor):
        return
    if kind in _SAFE_MAPPINGS:
        for key, item in value.items():
            _check_key(key, where)
            check_weights_only_safe(item, f"{where}.{key}" if where else str(key))
        return
    if kind in _SAFE_SEQUENCES:
        for index, item in enumerate(value):
            check_weights_only_safe(item, f"{where}[{index}]")
        return
    raise TypeError(
        f"checkpoint value at {where or '<root>'} is a {kind.__module__}.{kind.__qualname__}, which "
        "torch.load(weights_only=True) refuses; convert it to a plain type (float(x), x.tolist(), str(p)) before saving"
    )


def stamp(state: dict[str, Any]) -> dict[str, Any]:
    """Add format_version, created (ISO-8601 UTC) and library versions where the state lacks them."""
    state.setdefault("format_version", FORMAT_VERSION)
    state.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    state.setdefault("versions", library_versions())
    return state


def library_versions() -> dict[str, str]:
    """Versions that explain how a file was written."""
    return {
        "torch": str(torch.__version__),  # a str subclass that weights_only refuses
        "python": platform.python_version(),
        "numpy": np.__version__,
        "useg": useg.__version__,
    }


def _plain(value: Any) -> Any:
    state_dict = getattr(value, "state_dict", None)
    return state_dict() if callable(state_dict) else value


def _copy(value: Any, memo: dict[int, torch.Tensor], lend: Callable[[int], memoryview]) -> Any:
    if isinstance(value, torch.Tensor):
        if id(value) not in memo:
            memo[id(value)] = _host_copy(value.detach(), lend)
        return memo[id(value)]
    kind = type(value)
    if kind in _SAFE_MAPPINGS:
        copied = kind((key, _copy(item, memo, lend)) for key, item in value.items())
        if hasattr(value, "_metadata"):  # nn.Module.state_dict() keeps per-module versions here
            copied._metadata = copy.deepcopy(value._metadata)
        return copied
    if kind in (list, tuple, set):
        return kind(_copy(item, memo, lend) for item in value)
    return copy.deepcopy(value)


def _host_copy(tensor: torch.Tensor, lend: Callable[[int], memoryview]) -> torch.Tensor:
    """A CPU copy of `tensor` with the same shape, strides and dtype."""
    staged = (tensor.device.type == "cpu" and tensor.layout == torch.strided and not tensor.is_quantized
              and tensor.is_contiguous() and tensor.nbytes >= _STAGED_MIN_BYTES and _CAN_MAP_PRIVATE)
    if not staged:
        return tensor.to("cpu", copy=True)
    memory = torch.frombuffer(lend(tensor.nbytes), dtype=torch.uint8)
    return memory.view(tensor.dtype).view(tensor.shape).copy_(tensor)


def _check_key(key: Any, where: str) -> None:
    if type(key) in _SAFE_KEY_LEAVES or (type(key) is tuple and all(type(k) in _SAFE_KEY_LEAVES for k in key)):
        return
    raise TypeError(f"checkpoint key {key!r} under {where or '<root>'} is a {type(key).__qualname__}; use str or int keys")


@dataclass
class _Buffer:
    memory: mmap.mmap
    lent_as: weakref.ref | None = None  # the memoryview handed out last

    def free(self) -> bool:
        return self.lent_as is None or self.lent_as() is None


class StagingMemory:
    """Host memory for the snapshot copies, reused from one snapshot to the next.

    The copy is the training thread's whole stall per save. Into fresh memory most of it is
    page faults: 0.4-1.1 s per GiB measured on our 2-core VM, against 0.06 s per GiB into
    memory touched before; and a run saves tensors of the same sizes every time. (Advising
    fresh buffers for transparent huge pages made the first copy slower there, 2-3 s per GiB.)

    A buffer is lent as a memoryview; the snapshot tensor made from it by torch.frombuffer
    keeps that view alive until its storage, which every view of the tensor shares, is
    freed. So once the weak reference to the view is dead no tensor can see the buffer and
    it may be lent again (never while a background write still holds the last snapshot).
    Only the buffers of the latest snapshot are kept: between saves this holds at most one
    copy of the state's large tensors.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: dict[int, list[_Buffer]] = {}  # by size in bytes

    @contextlib.contextmanager
    def session(self) -> Iterator[Callable[[int], memoryview]]:
        """One snapshot: yields `lend(nbytes)`; afterwards only what it lent is kept."""
        with self._lock:
            lent: dict[int, list[_Buffer]] = {}
            yield lambda nbytes: self._lend(nbytes, lent)
            self._kept = lent

    def _lend(self, nbytes: int, lent: dict[int, list[_Buffer]]) -> memoryview:
        candidates = self._kept.get(nbytes, [])
        buffer = None
        while candidates and buffer is None:
            buffer = candidates.pop()
            buffer = buffer if buffer.free() else None  # still written by the previous save: let it go
        if buffer is None:
            buffer = _Buffer(mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS))
        view = memoryview(buffer.memory)
        buffer.lent_as = weakref.ref(view)
        lent.setdefault(nbytes, []).append(buffer)
        return view


_STAGING = StagingMemory()
