"""The training state on its way into a file: frozen snapshot, weights_only check, stamps, bytes.

The on-disk format stays a plain dict (`epoch`, `model_state_dict`, ...) that one
`torch.load(path, weights_only=True)` reads.
"""

from __future__ import annotations

import copy
import io
import platform
from collections import OrderedDict
from datetime import datetime, timezone
from typing import Any, Mapping

import numpy as np
import torch

import useg

FORMAT_VERSION = 1  # bump when a reader needs to know; load() refuses files newer than this

# Leaves the weights_only unpickler rebuilds without any non-allow-listed global.
_SAFE_LEAVES = (type(None), bool, int, float, complex, str, bytes, bytearray, torch.dtype, torch.device)
_SAFE_SEQUENCES = (list, tuple, set, torch.Size)
_SAFE_MAPPINGS = (dict, OrderedDict)
_SAFE_KEY_LEAVES = (type(None), bool, int, float, str)


def snapshot_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `state` that later training steps cannot change.

    Parts with `state_dict()` are converted by calling it; every tensor is detached and
    copied to the CPU (tensors shared inside the state stay shared); containers are
    rebuilt and other plain values deep-copied.
    """
    memo: dict[int, torch.Tensor] = {}
    return {key: _copy(_plain(value), memo) for key, value in state.items()}


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


def to_bytes(state: Mapping[str, Any]) -> bytes:
    """torch.save into memory: a full disk then fails in our own write with a real OSError."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()  # CPython hands over its internal bytes without a copy here


def _plain(value: Any) -> Any:
    state_dict = getattr(value, "state_dict", None)
    return state_dict() if callable(state_dict) else value


def _copy(value: Any, memo: dict[int, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        if id(value) not in memo:
            memo[id(value)] = value.detach().to("cpu", copy=True)
        return memo[id(value)]
    kind = type(value)
    if kind in _SAFE_MAPPINGS:
        copied = kind((key, _copy(item, memo)) for key, item in value.items())
        if hasattr(value, "_metadata"):  # nn.Module.state_dict() keeps per-module versions here
            copied._metadata = copy.deepcopy(value._metadata)
        return copied
    if kind in (list, tuple, set):
        return kind(_copy(item, memo) for item in value)
    return copy.deepcopy(value)


def _check_key(key: Any, where: str) -> None:
    if type(key) in _SAFE_KEY_LEAVES or (type(key) is tuple and all(type(k) in _SAFE_KEY_LEAVES for k in key)):
        return
    raise TypeError(f"checkpoint key {key!r} under {where or '<root>'} is a {type(key).__qualname__}; use str or int keys")
