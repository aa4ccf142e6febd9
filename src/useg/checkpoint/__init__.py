"""Checkpoints that survive crashes: atomic durable writes, checksummed sidecars, safe loading.

Knows nothing about the model or the trainer: it saves and restores any dict of
`state_dict()`-able parts and plain values.

The names below are imported on first use (PEP 562), so that reading sidecars, e.g.
`useg checkpoints list`, does not pay the second it takes to import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "BestRule": "policy",
    "CheckpointInfo": "listing",
    "CheckpointManager": "manager",
    "DEFAULT_BEST_EXCLUDE": "manager",
    "DEFAULT_PERCENTAGES": "policy",
    "FORMAT_VERSION": "layout",
    "VerifyResult": "integrity",
    "atomic_write_bytes": "atomic",
    "atomic_write_json": "atomic",
    "bytes_freed": "retention",
    "capture_rng_state": "rng",
    "first_nonfinite": "finite",
    "is_locked": "lock",
    "list_checkpoints": "listing",
    "load_checkpoint": "loading",
    "lock_owner": "lock",
    "nonfinite_weights": "finite",
    "mid_epoch_save_due": "policy",
    "periodic_epochs": "policy",
    "Position": "position",
    "read_metadata": "listing",
    "open_checkpoint": "loading",
    "resolve_checkpoint": "loading",
    "restore_rng_state": "rng",
    "verify_checkpoint": "integrity",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
