"""Capture and restore every global random generator, in a form `torch.load(weights_only=True)` accepts."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def capture_rng_state() -> dict[str, Any]:
    """The state of Python's, NumPy's legacy global, torch's CPU and (when present) CUDA generators."""
    return {
        "python": random.getstate(),
        "numpy": _pack_numpy_state(np.random.get_state()),
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else None,
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put every generator back exactly as `capture_rng_state` found it.

    CUDA states are restored for the devices present; a state captured with CUDA is
    restored without it on a CPU-only machine (CPU training does not draw from CUDA).
    """
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(_unpack_numpy_state(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        for device, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, device)


def _pack_numpy_state(legacy: tuple) -> dict[str, Any]:
    # get_state() holds a uint32 ndarray, which weights_only refuses; int64 holds it exactly.
    name, keys, pos, has_gauss, cached_gaussian = legacy
    return {
        "bit_generator": str(name),
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached_gaussian),
    }


def _unpack_numpy_state(packed: dict[str, Any]) -> tuple:
    keys = packed["keys"].numpy().astype(np.uint32)
    return (packed["bit_generator"], keys, packed["pos"], packed["has_gauss"], packed["cached_gaussian"])
