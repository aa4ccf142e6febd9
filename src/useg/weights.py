"""Weights entering a model: the one reader of weight files and the one check of what they hold.

A weight file is an official UniverSeg state_dict (no sidecar), a useg checkpoint (with its
sidecar) or a useg export (`useg checkpoints export`: the shareable model, with or without its
sidecar). A file with a sidecar is verified against it, one without is loaded with
`weights_only=True` alone (a safetensors file: its header checked first). Whatever the source
(`--pretrained`, predict, evaluate, export), weights holding NaN or inf are refused by
`require_finite` and weights whose names or shapes do not fit the model by `fit_weights`, each
with one message.

An export is one file that carries what applying the model needs (`export_bytes` writes it,
`read_export` reads it back): its weights, and a description (`EXPORT` = the format's version,
model_config, the config applying needs, classes, intensity handling, useg's version, and
`CONTENT_SHA256`, a checksum of that description and the weights that travels inside the file,
so that an export sent without its sidecar is still checked). In a `.pt` it is the
top level of the torch.save'd dict beside `model_state_dict`; in a `.safetensors` it is JSON in
the file's metadata under `EXPORT_METADATA`.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from useg.checkpoint import describe_problem, identify_content, load_verified, nonfinite_weights, open_verified
from useg.checkpoint import read_metadata, safetensors_header, sidecar_path
from useg.config import MODEL_WEIGHTS
from useg.errors import CheckpointError
from useg.model import UniverSeg


EXPORT = "useg_export"  # marks an export; its value is the export format's version
EXPORT_VERSION = 1
EXPORT_METADATA = "useg"  # the safetensors metadata key holding an export's description as JSON
CONTENT_SHA256 = "content_sha256"  # the checksum of its description and weights an export carries inside


@dataclass
class Export:
    """A useg export read back: its weights and its description (see the module docstring)."""

    path: Path
    weights: Mapping[str, torch.Tensor]
    info: dict[str, Any]
    checked_by: str  # "sidecar" (the file's bytes hash to OUT.json) or "embedded" (its contents to CONTENT_SHA256)


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
    loaded, metadata, _ = _read(path)
    info = _export_info(loaded, metadata)
    weights = _tensors(model_weights(loaded), path)  # a useg checkpoint or .pt export: under model_state_dict
    if info is not None:
        _check_embedded_sum(path, weights, info)
    require_finite(weights, path)
    return weights


def export_bytes(weights: Mapping[str, torch.Tensor], info: dict[str, Any], suffix: str) -> tuple[bytes, dict]:
    """The bytes of an export of `weights` described by `info` (.safetensors or .pt), and the
    description it carries (`info` plus EXPORT and CONTENT_SHA256)."""
    info = {**info, EXPORT: EXPORT_VERSION}
    info[CONTENT_SHA256] = content_sha256(info, weights)
    if suffix == ".safetensors":
        from safetensors.torch import save

        # "format": "pt" is the safetensors convention for torch tensors
        return save(dict(weights), metadata={"format": "pt", EXPORT_METADATA: json.dumps(info)}), info
    buffer = io.BytesIO()
    torch.save({**info, MODEL_WEIGHTS: dict(weights)}, buffer)
    return buffer.getvalue(), info


def content_sha256(info: Mapping[str, Any], weights: Mapping[str, torch.Tensor]) -> str:
    """A checksum of an export's description (as sorted JSON, without this checksum) and of every tensor's
    name, dtype, shape and bytes, whatever file format holds them."""
    described = {key: value for key, value in info.items() if key != CONTENT_SHA256}
    digest = hashlib.sha256(json.dumps(described, sort_keys=True).encode("utf-8"))
    for name in sorted(weights):
        tensor = weights[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode("utf-8"))
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def is_export_sidecar(path: Path) -> bool:
    """True when `path` has a sidecar and it is the one `useg checkpoints export` wrote for it."""
    meta = read_metadata(path)
    return is_export_metadata(meta, path.name)


def is_export_metadata(meta: Any, name: str) -> bool:
    """True when `meta` (a sidecar's dict) describes the export `name` (not a checkpoint)."""
    return isinstance(meta, dict) and meta.get("weights") == name and "source" in meta and "kind" not in meta


def is_export(path: Path) -> bool:
    """True when `path` is a useg export: by its sidecar, or, without one, by what it carries (read safely)."""
    if sidecar_path(path).exists():
        return is_export_sidecar(path)
    try:
        loaded, metadata, _ = _read(path)
    except CheckpointError:
        return False
    return _export_info(loaded, metadata) is not None


def read_export(path: Path) -> Export:
    """A useg export (.safetensors or .pt, with or without its sidecar) with its weights checked, or a
    CheckpointError that says what the file is instead and what to do."""
    loaded, metadata, by_sidecar = _read(path)
    info = _export_info(loaded, metadata)
    if info is None:
        raise CheckpointError(_not_an_export(path, loaded, by_sidecar))
    weights = _tensors(model_weights(loaded), path)
    _check_embedded_sum(path, weights, info)
    _check_description(path, info)
    require_finite(weights, path)
    return Export(path, weights, info, "sidecar" if by_sidecar else "embedded")


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


def _read(path: Path) -> tuple[Any, dict[str, str] | None, bool]:
    """(what the file holds, its safetensors metadata or None for a torch file, whether a sidecar verified it).

    A file with a useg sidecar (a checkpoint or an export) is verified against it: the one definition
    of valid. A file without one (an official weight file, an export sent alone) is only loaded safely.
    """
    if sidecar_path(path).exists():
        result, handle = open_verified(path)
        if handle is None and result.status == "corrupt" and is_export_sidecar(path):
            raise CheckpointError(f"weight file refused: {path}: corrupt: {result.reason}; it was damaged on disk "
                                  "or cut short: get the file again, or export it again")
        if handle is None:
            raise CheckpointError(f"weight file refused: {describe_problem(result)}")
        with handle:
            if identify_content(handle).kind == "safetensors":
                return (*_load_safetensors(handle, path), True)
            try:
                return load_verified(path, handle), None, True
            except CheckpointError as error:
                raise CheckpointError(f"weight file refused: {error}") from None
    with open(path, "rb") as handle:
        content = identify_content(handle)
        if content.kind == "safetensors":
            return (*_load_safetensors(handle, path), False)
    if content.kind == "foreign":
        raise CheckpointError(f"{path}: not a useg checkpoint or export: {content.looks_like}; check that this is "
                              "the file you meant")
    return _load_plain(path), None, False


def _load_safetensors(handle: BinaryIO, path: Path) -> tuple[dict, dict[str, str]]:
    """The tensors and metadata of a safetensors file, its header checked before any tensor is read."""
    from safetensors.torch import load

    try:
        metadata = safetensors_header(handle).get("__metadata__") or {}
        handle.seek(0)
        return load(handle.read()), metadata
    except Exception as error:  # noqa: BLE001 - the header check and the library each raise their own types
        raise CheckpointError(f"{path}: corrupt: not a complete safetensors file ({error}); it was damaged or cut "
                              "short: copy it again") from None


def _export_info(loaded: Any, metadata: dict[str, str] | None) -> dict[str, Any] | None:
    """The description an export carries, or None when the file is no export."""
    if metadata is not None:
        try:
            info = json.loads(metadata.get(EXPORT_METADATA) or "null")
        except ValueError:
            return None
    elif isinstance(loaded, Mapping):
        info = {key: value for key, value in loaded.items() if key != MODEL_WEIGHTS}
    else:
        return None
    return info if isinstance(info, dict) and type(info.get(EXPORT)) is int else None


def _check_description(path: Path, info: dict[str, Any]) -> None:
    if info[EXPORT] > EXPORT_VERSION:
        raise CheckpointError(f"{path}: written by a newer useg (export version {info[EXPORT]}, this one reads up "
                              f"to {EXPORT_VERSION}); upgrade useg to use it")
    config = info.get("config")
    if not (isinstance(info.get("model_config"), dict) and isinstance(config, dict)
            and all(type(config.get(key)) is int for key in ("image_size", "support_size"))):
        raise CheckpointError(f"{path}: its description lacks model_config or the image and support sizes "
                              "(edited?); export it again with useg checkpoints export")


def _check_embedded_sum(path: Path, weights: Mapping, info: dict[str, Any]) -> None:
    try:
        matches = info.get(CONTENT_SHA256) == content_sha256(info, weights)
    except (TypeError, ValueError):  # a description no export writes (not JSON): changed since
        matches = False
    if not matches:
        raise CheckpointError(f"{path}: corrupt: its contents do not match the checksum the export carries "
                              "(changed on disk or edited); get the file again, or export it again")


def _not_an_export(path: Path, loaded: Any, by_sidecar: bool) -> str:
    """What a file that cannot be applied is instead, and what to do."""
    name = path.name
    if isinstance(loaded, Mapping) and "model_config" in loaded and MODEL_WEIGHTS in loaded:
        return (f"{path} is a useg checkpoint without its checksum sidecar: copy {name}.json with it (the two "
                f"files go together), or share one file made by: useg checkpoints export {name} model.safetensors")
    if by_sidecar:
        return (f"{path} is an export from an older useg that carries no image size, support size or classes; "
                f"export it again from its checkpoint: useg checkpoints export best_model.pt {name}")
    return (f"{path} holds weights only (no model config, image size or classes), so it cannot be applied; a "
            "plain weight file (such as the official UniverSeg one) starts training with useg train --pretrained FILE")


def _tensors(loaded: Any, path: Path) -> Mapping[str, torch.Tensor]:
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise CheckpointError(f"weight file {path} holds no state_dict of tensors; expected a torch.save'd state_dict")
    return loaded


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
        raise CheckpointError(f"weight file {path} is corrupt: unreadable ({reason}), damaged or cut short; "
                              "re-download or re-save it") from None


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
