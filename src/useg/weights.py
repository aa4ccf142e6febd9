"""Weights entering a model: the one reader of weight files and the one check of what they hold.

A weight file is an official UniverSeg state_dict (no sidecar), a useg checkpoint or a useg
export (both with a sidecar). A file with a sidecar is verified against it, one without is
loaded with `weights_only=True` alone. Whatever the source (`--pretrained`, predict, evaluate,
export), weights holding NaN or inf are refused by `require_finite` and weights whose names or
shapes do not fit the model by `fit_weights`, each with one message.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from useg.checkpoint import load_checkpoint, nonfinite_weights, sidecar_path
from useg.errors import CheckpointError
from useg.model import UniverSeg


# Where a useg checkpoint keeps the model's weights (the original scripts' key); training/state.py,
# the owner of the other keys, takes it from here so that reading weights needs nothing of training.
MODEL_WEIGHTS = "model_state_dict"


def model_weights(state: Any) -> Any:
    """The weights inside a useg checkpoint, or `state` itself when it is a plain state_dict."""
    if isinstance(state, Mapping) and isinstance(state.get(MODEL_WEIGHTS), Mapping):
        return state[MODEL_WEIGHTS]
    return state


def load_pretrained(model: UniverSeg, path: str | Path) -> None:
    """Loads an official-format weight file (plain state_dict) or our checkpoint's `model_state_dict`."""
    fit_weights(model, read_weights(Path(path)), path)


def read_weights(path: Path) -> Mapping[str, torch.Tensor]:
    """The finite state_dict of tensors in a weight file, or a CheckpointError saying what is wrong."""
    if not path.is_file():
        raise CheckpointError(f"weight file {path} not found; check the path")
    # A file with a useg sidecar (a checkpoint or an export) is verified against it: the one
    # definition of valid. An official weight file has none and is only loaded safely.
    loaded = _load_verified(path) if sidecar_path(path).exists() else _load_plain(path)
    loaded = model_weights(loaded)  # a useg checkpoint holds them under model_state_dict
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise CheckpointError(f"weight file {path} holds no state_dict of tensors; expected a torch.save'd state_dict")
    require_finite(loaded, path)
    return loaded


def require_finite(weights: Mapping, path: str | Path, refused: str = "loaded") -> None:
    """Refuse weights holding NaN or inf, naming the file and the first such parameter; `refused`
    says what did not happen to them ("loaded", "exported")."""
    bad = nonfinite_weights(weights)
    if bad is not None:
        raise CheckpointError(f"{path} holds NaN or inf in {bad} (a diverged run) and was not {refused}; use "
                              "weights saved before the divergence (`useg checkpoints list` shows a run's checkpoints)")


def fit_weights(model: UniverSeg, weights: Mapping, path: str | Path, *, own_config: bool = False) -> None:
    """Load `weights` into `model` strictly; names or shapes that do not fit are refused in one line.

    `own_config`: the model was built from the model_config saved beside these weights, so a
    mismatch means the file was edited or mixed up; otherwise the remedy is the widths to build.
    """
    problems = _mismatches(model.state_dict(), weights)
    if problems:
        raise CheckpointError(_misfit_message(model, weights, path, problems, own_config))
    model.load_state_dict(weights, strict=True)


def infer_widths(state_dict: Mapping) -> tuple[int, ...] | None:
    """The encoder widths a UniverSeg state_dict was built with, or None if it does not look like one."""
    widths = []
    while (weight := state_dict.get(f"enc_blocks.{len(widths)}.cross.cross_conv.weight")) is not None:
        if not isinstance(weight, torch.Tensor) or weight.dim() != 4:
            return None
        widths.append(int(weight.shape[0]))
    return tuple(widths) if len(widths) >= 2 else None


def _misfit_message(model: UniverSeg, weights: Mapping, path: str | Path, problems: list[str],
                    own_config: bool) -> str:
    ours, found = _flag(model.widths), infer_widths(weights)
    if own_config:
        return (f"{path}: its weights (widths {_flag(found or ()) or 'unknown'}) do not fit its model_config "
                f"(widths {ours}); the file was edited or mixed up: use another checkpoint")
    shown = "; ".join(problems[:4]) + (f"; and {len(problems) - 4} more" if len(problems) > 4 else "")
    if found and found != model.widths:
        # The remedy first: the shapes behind it are detail for whoever wants it.
        return (f"weights in {path} have widths {_flag(found)}, this model {ours}: "
                f"build it with --widths {_flag(found)} (mismatches: {shown})")
    return f"weights in {path} do not match this UniverSeg architecture ({shown})"


def _flag(widths: tuple[int, ...]) -> str:
    return ",".join(map(str, widths))


def _load_verified(path: Path) -> Mapping:
    try:
        return load_checkpoint(path)
    except CheckpointError as error:
        raise CheckpointError(f"weight file refused: {error}") from None


def _load_plain(path: Path) -> Mapping:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        culprit = f" of {found.group(1)}" if found else ""
        raise CheckpointError(
            f"weight file {path} was refused: it needs unsafe unpickling{culprit}; "
            "save a plain state_dict of tensors instead"
        ) from None
    except Exception as error:  # torch raises many types for truncated or foreign files
        reason = type(error).__name__
        raise CheckpointError(f"weight file {path} is unreadable ({reason}); re-download or re-save it") from None


def _mismatches(expected: Mapping, found: Mapping) -> list[str]:
    problems = [
        f"{k}: file {_shape(found[k])}, model {_shape(v)}"
        for k, v in expected.items()
        if k in found and _shape(found[k]) != _shape(v)
    ]
    problems += [f"missing {k}" for k in expected if k not in found]
    problems += [f"unexpected {k}" for k in found if k not in expected]
    return problems


def _shape(value) -> str:
    shape = getattr(value, "shape", None)
    if shape is None:
        return type(value).__name__  # a checkpoint's weights are only checked to be a mapping
    return "x".join(map(str, shape)) or "scalar"
