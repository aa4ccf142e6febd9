"""The training state on its way into a file: frozen snapshot, weights_only check, stamps, bytes.

The on-disk format stays a plain dict (`epoch`, `model_state_dict`, ...) that one
`torch.load(path, weights_only=True)` reads.
"""

from __future__ import annotations

import copy
import platform
import threading
from collections import OrderedDict
from datetime import datetime, timezone
from typing import Any, Iterator, Mapping

import numpy as np
import torch

import useg

from .layout import FORMAT_VERSION
from .overlap import DeferredCopy, copy_tensors, optimizer_owned
from .state_walk import leaves

# Leaves the weights_only unpickler rebuilds without any non-allow-listed global.
_SAFE_LEAVES = (type(None), bool, int, float, complex, str, bytes, bytearray, torch.dtype, torch.device)
_SAFE_SEQUENCES = (list, tuple, set, torch.Size)
_SAFE_LEAF_TYPES = frozenset(_SAFE_LEAVES)
_SAFE_MAPPINGS = (dict, OrderedDict)
_SAFE_KEY_LEAVES = (type(None), bool, int, float, str)
_SAFE_KEY_TYPES = frozenset(_SAFE_KEY_LEAVES)
_IMMUTABLE = tuple(kind for kind in _SAFE_LEAVES if kind is not bytearray)  # leaves that need no copy
_IMMUTABLE_TYPES = frozenset(_IMMUTABLE)


def snapshot_state(state: Mapping[str, Any], pool: StagingPool | None = None, *,
                   check_safe: bool = False) -> dict[str, Any]:
    """A copy of `state` that later training steps cannot change.

    Parts with `state_dict()` are converted by calling it; every tensor is copied to the
    CPU (tensors shared inside the state stay shared); containers are rebuilt and other
    plain values deep-copied. With a `pool`, tensors are copied into host tensors it keeps
    from earlier snapshots (see StagingPool). With `check_safe`, raise the TypeError of
    `check_weights_only_safe` instead of returning a snapshot that
    `torch.load(weights_only=True)` would refuse.
    """
    return _snapshot(state, pool, check_safe, overlap=False)[0]


def snapshot_state_overlapped(state: Mapping[str, Any], pool: StagingPool | None = None, *,
                              check_safe: bool = False) -> tuple[dict[str, Any], DeferredCopy | None]:
    """`snapshot_state`, except that the CPU tensors an Optimizer part changes in step() (its
    parameters, wherever they appear in the state, and its own state) are left to the returned
    DeferredCopy: its `take()` fills them in, and that optimizer's next step() waits for it
    (see overlap.py). None when there is nothing to defer. Only for a loop that changes those
    tensors in no other way until that step (useg's own trainer): nothing here can see an
    uncounted change such as `p.data.mul_()`."""
    return _snapshot(state, pool, check_safe, overlap=True)


def _snapshot(state: Mapping[str, Any], pool: StagingPool | None, check_safe: bool,
              overlap: bool) -> tuple[dict[str, Any], DeferredCopy | None]:
    pool = pool or StagingPool()
    optimizers = [value for value in state.values() if isinstance(value, torch.optim.Optimizer)] if overlap else []
    copies = _Copies(pool, optimizer_owned(optimizers))
    try:
        with torch.no_grad():  # the copies are plain tensors: no detach() per tensor, no graph
            snapshot = {key: _copy(_plain(value), copies) for key, value in state.items()}
            copies.run()
        if check_safe and copies.unvouched:
            check_weights_only_safe(snapshot)  # the walk met a value it cannot vouch for: name it, if refused
    except BaseException:  # e.g. Ctrl+C mid-copy: what was taken goes back to the pool
        pool.give_back(copies.targets())
        raise
    targets, sources = copies.deferred
    return snapshot, DeferredCopy(targets, sources, optimizers) if targets else None


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
        if _SAFE_LEAF_TYPES.issuperset(map(type, value)):
            return  # e.g. Python's random state: one pass in C
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


def _copy(value: Any, copies: _Copies) -> Any:
    # Also tells `copies` whether every value met is one the weights_only unpickler takes
    # (`unvouched` otherwise), so that a save needs no second walk to check it.
    if isinstance(value, torch.Tensor):
        return copies.add(value)
    kind = type(value)
    if kind in _IMMUTABLE:
        return value
    if kind in _SAFE_MAPPINGS:
        if not _SAFE_KEY_TYPES.issuperset(map(type, value)):
            copies.unvouched = True
        copied = kind((key, _copy(item, copies)) for key, item in value.items())
        if hasattr(value, "_metadata"):  # nn.Module.state_dict() keeps per-module versions here
            copied._metadata = _copy_metadata(value._metadata)
        return copied
    if kind in (list, tuple, set):
        if _IMMUTABLE_TYPES.issuperset(map(type, value)):
            # e.g. Python's random state, 625 ints: one pass in C instead of a call per item.
            return value if kind is tuple else kind(value)
        return kind(_copy(item, copies) for item in value)
    if kind not in _SAFE_LEAF_TYPES:
        copies.unvouched = True
    return copy.deepcopy(value)


def _copy_metadata(metadata: Any) -> Any:
    # {module prefix: {"version": int, ...}} for every module: a per-entry dict copy is a deep
    # copy of that shape and takes a tenth of copy.deepcopy's time, which counts in the stall.
    if isinstance(metadata, dict) and all(type(entry) is dict for entry in metadata.values()):
        return type(metadata)((prefix, dict(entry)) for prefix, entry in metadata.items())
    return copy.deepcopy(metadata)


class _Copies:
    """The tensor copies of one snapshot, collected during the walk and then done together."""

    def __init__(self, pool: StagingPool, deferrable: set[int]) -> None:
        self._pool = pool
        self._deferrable = deferrable  # data_ptr() of CPU tensors whose copy may wait (see DeferredCopy)
        self._done: dict[int, torch.Tensor] = {}  # id(source) -> copy: a tensor met twice is copied once
        self._batched: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
        self.deferred: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
        self._devices: set[torch.device] = set()
        self.unvouched = False  # set by the walk: a value weights_only may refuse was met

    def add(self, tensor: torch.Tensor) -> torch.Tensor:
        """The host tensor that will hold `tensor`'s values once `run()` has returned (call under no_grad)."""
        # Keyed by the state's own tensor, which lives through the walk.
        done = self._done.get(id(tensor))
        if done is not None:
            return done
        if tensor.layout != torch.strided or tensor.is_quantized:
            target = tensor.detach().to("cpu", copy=True)  # rare kinds: a plain copy, not pooled
        else:
            target = self._pool.take(tensor)
            if tensor.is_cpu:
                later = self._deferrable and tensor.data_ptr() in self._deferrable
                batch = self.deferred if later else self._batched
                batch[0].append(target)
                batch[1].append(tensor)
            else:
                # Pinned memory (see StagingPool) lets the device copy run without a bounce buffer.
                target.copy_(tensor, non_blocking=target.is_pinned())
                self._devices.add(tensor.device)
        self._done[id(tensor)] = target
        return target

    def targets(self) -> list[torch.Tensor]:
        """Every copy made or planned so far."""
        return list(self._done.values())

    def run(self) -> None:
        """Do the CPU copies that may not wait in one batched call; wait for device copies still in flight."""
        copy_tensors(*self._batched)
        for device in self._devices:
            if device.type == "cuda":
                torch.cuda.current_stream(device).synchronize()


class StagingPool:
    """Host tensors for snapshots, reused from one save to the next.

    The copy is the training thread's whole stall per save. Into fresh memory most of it is
    allocation and page faults: 0.4-1.1 s per GiB measured on our 2-core VM, against 0.06 s
    per GiB into memory touched before; and a run saves tensors of the same shapes every
    time. So the owner of a snapshot hands its tensors back once nothing reads them any more
    (`give_back`, after the write), and the next snapshot copies into them. Copies of CUDA
    tensors go to pinned memory, which the device copies into directly. Between saves the
    pool holds one copy of the state's tensors; it is freed with the pool.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # take() runs on the training thread, give_back() on the writer's
        self._free: dict[tuple, list[torch.Tensor]] = {}
        self._lent: dict[int, tuple[tuple, torch.Tensor]] = {}

    def take(self, like: torch.Tensor) -> torch.Tensor:
        """A CPU tensor with the shape, strides and dtype of `like` (contents undefined)."""
        key = (like.shape, like.stride(), like.dtype, like.is_cuda)
        with self._lock:
            free = self._free.get(key)
            if free:
                tensor = free.pop()
                self._lent[id(tensor)] = (key, tensor)
                return tensor
        tensor = torch.empty_like(like, device="cpu")  # preserve_format: strides kept where they can be
        if like.is_cuda:
            tensor = tensor.pin_memory()
        with self._lock:
            self._lent[id(tensor)] = (key, tensor)
        return tensor

    def give_back(self, snapshot: Any) -> None:
        """Return the pooled tensors in `snapshot` for reuse; the caller promises nothing reads them again."""
        with self._lock:
            for tensor in tensors_in(snapshot):
                key, _ = self._lent.pop(id(tensor), (None, None))
                if key is not None:
                    self._free.setdefault(key, []).append(tensor)


def tensors_in(value: Any) -> Iterator[torch.Tensor]:
    """Every tensor inside nested dicts, lists, tuples and sets."""
    return leaves(value, torch.Tensor)


def _check_key(key: Any, where: str) -> None:
    if type(key) in _SAFE_KEY_LEAVES or (type(key) is tuple and all(type(k) in _SAFE_KEY_LEAVES for k in key)):
        return
    raise TypeError(f"checkpoint key {key!r} under {where or '<root>'} is a {type(key).__qualname__}; use str or int keys")
