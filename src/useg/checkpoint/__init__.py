"""Checkpoints that survive crashes: atomic durable writes, checksummed sidecars, safe loading.

Knows nothing about the model or the trainer: it saves and restores any dict of
`state_dict()`-able parts and plain values.

The face: code outside this package imports from `useg.checkpoint` only, never from its
modules (tests/checkpoint/test_face.py checks it). It offers, in the table below:
- for any training loop (README.md, CHECKPOINT_GUIDE.md): `CheckpointManager`, `Position`,
  the rules (`BestRule`, `periodic_epochs`, `mid_epoch_save_due`, `within_budget`), the random state
  (`capture_rng_state`, `restore_rng_state`), and reading: `list_checkpoints`, `read_metadata`,
  `verify_checkpoint`, `load_checkpoint`, `open_checkpoint`, `resolve_checkpoint`;
- for useg's own commands: the file names of a checkpoints folder, the resume points, the
  run lock, and the pieces `useg checkpoints export` builds its file from;
- for bench/: the stages of a save (`snapshot_state`, `write_state_temp`, `sha256_bytes`,
  `lower_thread_priority`), to time them one by one.
Atomic writes of ordinary files are useg.files; the run folder's tree around `checkpoints/`
(and the folders `--overwrite` sets aside) is useg.run_folder.

The modules inside. The write path, in the order a save runs:
  policy (when to write which file, which periodic files to keep) -> manager
  (`CheckpointManager.save`) -> finite (nothing non-finite is saved) -> state (a frozen
  snapshot; overlap: its copies taken while the next step runs) -> writer (the background
  thread) -> serialize (torch.save into a temp file, hashed on the way) -> publish (the file
  and its sidecar put in place, consistent after a crash at any point) -> atomic (durable
  writes with a run's error messages, on useg.files); then retention (old periodic files
  deleted) and lock (one trainer per folder).
The read path: listing (what a folder holds, from sidecars alone) -> resume_order (which
files can resume a run, in order) -> integrity (checksums, verification, the verified-hash
cache, the weights_only check; content: what a file's bytes are, torch.save, safetensors
or foreign) -> loading (always verified first, then `weights_only=True`).
Both use layout (file names), state_walk (the leaves of a nested state), rng and position.

The names are imported on first use (PEP 562), so that reading sidecars, e.g.
`useg checkpoints list`, does not pay the second it takes to import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    # For any training loop (documented in README.md and CHECKPOINT_GUIDE.md)
    "BestRule": "policy",
    "CheckpointInfo": "listing",
    "CheckpointManager": "manager",
    "DEFAULT_BEST_EXCLUDE": "manager",
    "DEFAULT_PERCENTAGES": "policy",
    "FORMAT_VERSION": "layout",
    "Position": "position",
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
    "mid_epoch_save_due": "policy",
    "nonfinite_weights": "finite",
    "open_checkpoint": "loading",
    "periodic_epochs": "policy",
    "read_metadata": "listing",
    "resolve_checkpoint": "loading",
    "restore_rng_state": "rng",
    "verify_checkpoint": "integrity",
    "within_budget": "policy",
    # For useg's own commands: file names, resume points, the run lock, reading one file
    "BEST_NAME": "layout",
    "LATEST_NAME": "layout",
    "LOCK_NAME": "layout",
    "checkpoint_files": "layout",
    "is_resume_name": "layout",
    "kind_from_name": "layout",
    "pending_path": "layout",
    "sidecar_path": "layout",
    "ResumePoint": "resume_order",
    "left_behind": "resume_order",
    "resume_points": "resume_order",
    "CleanPlan": "retention",
    "checkpoint_info": "listing",
    "acquire_run_lock": "lock",
    "OpenCheckpoint": "loading",
    "checkpoint_path": "loading",
    "describe_problem": "loading",
    "load_verified": "loading",
    "open_resolved": "loading",
    "open_verified": "integrity",
    "identify_content": "content",
    "safetensors_header": "content",
    "warn_to_stderr": "manager",
    "explain_write_errors": "atomic",
    "publish_export": "publish",
    "write_temp_file": "atomic",
    # For bench/: the stages of a save
    "LOW_PRIORITY_NICE": "writer",
    "lower_thread_priority": "writer",
    "sha256_bytes": "integrity",
    "snapshot_state": "state",
    "write_state_temp": "serialize",
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
