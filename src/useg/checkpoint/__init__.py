"""Checkpoints that survive crashes: atomic durable writes, checksummed sidecars, safe loading.

Knows nothing about the model or the trainer: it saves and restores any dict of
`state_dict()`-able parts and plain values.
"""

from .atomic import atomic_write_bytes, atomic_write_json
from .integrity import VerifyResult, verify_checkpoint
from .listing import CheckpointInfo, list_checkpoints, read_metadata
from .loading import load_checkpoint, resolve_checkpoint
from .lock import is_locked, lock_owner
from .manager import DEFAULT_BEST_EXCLUDE, CheckpointManager
from .policy import DEFAULT_PERCENTAGES, periodic_epochs
from .retention import bytes_freed
from .rng import capture_rng_state, restore_rng_state
from .state import FORMAT_VERSION

__all__ = [
    "CheckpointInfo",
    "CheckpointManager",
    "DEFAULT_BEST_EXCLUDE",
    "DEFAULT_PERCENTAGES",
    "FORMAT_VERSION",
    "VerifyResult",
    "atomic_write_bytes",
    "atomic_write_json",
    "bytes_freed",
    "capture_rng_state",
    "is_locked",
    "list_checkpoints",
    "load_checkpoint",
    "lock_owner",
    "periodic_epochs",
    "read_metadata",
    "resolve_checkpoint",
    "restore_rng_state",
    "verify_checkpoint",
]
