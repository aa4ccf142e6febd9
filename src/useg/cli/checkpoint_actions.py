"""What the checkpoint CLI, the menu and the original scripts share: finding, describing, cleaning, exporting."""

from __future__ import annotations

import hashlib
import json
import shlex
import os
from pathlib import Path
from typing import Any

from useg.checkpoint import CheckpointInfo, bytes_freed
from useg.checkpoint import list_checkpoints, load_checkpoint, resolve_checkpoint, verify_checkpoint
from useg.checkpoint import LATEST_NAME, CleanPlan, ResumePoint, acquire_run_lock, checkpoint_info
from useg.files import explain_file_errors
from useg.checkpoint import VerifyResult, describe_problem, identify_content, read_metadata
from useg.checkpoint import kind_from_name, pending_path, resume_points, sidecar_path
from useg.config import batches_per_epoch
from useg.errors import CheckpointError, UsegError
from useg.run_folder import ReplacedFolder, checkpoints_folder, is_checkpoints_folder, remove_replaced, replaced_folders
from useg.training import state as training_state
from useg.training.history import latest_log, read_log

# The `--json` schema of one checkpoint (documented in CHECKPOINT_GUIDE.md): change it only deliberately.
RECORD_KEYS = ("path", "name", "kind", "epoch", "step", "train_loss", "val_dice", "best_val_dice", "best_epoch",
               "total_epochs", "size_bytes", "created", "valid", "status", "reason", "same_as_latest", "abandoned",
               "metrics")
CONFIG_SUMMARY_KEYS = ("data", "image_size", "widths", "support_size", "batch_size", "lr", "seed", "classes")
# What applying a model needs of its run's config: all of it that an export carries.
APPLY_CONFIG_KEYS = ("image_size", "resize", "support_size", "seed", "slice_axis", "label", "classes", "class_names")


def checkpoints_dir(run_dir: str | Path) -> Path:
    """The run's checkpoints folder; a missing run folder is a usage error."""
    run = Path(run_dir)
    if not run.is_dir():
        raise UsegError(f"run folder {run} does not exist; pass the folder you trained into with --run-dir")
    return checkpoints_folder(run)


def run_checkpoints(run_dir: str | Path) -> list[CheckpointInfo]:
    """Every checkpoint of a run, oldest epoch first; valid only when its bytes hash to its sidecar
    (bytes unchanged since they were last hashed are not hashed again)."""
    folder = checkpoints_dir(run_dir)
    infos = list_checkpoints(folder, verify=True)
    if not infos:
        raise CheckpointError(f"no checkpoints yet in {folder}; start one with: useg train --run-dir {shlex.quote(str(run_dir))}")
    return infos


def require_file(path: str | Path) -> Path:
    """`path` as a Path when it is an existing file; otherwise a usage error naming it."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a checkpoint file" if path.is_dir() else "does not exist"
        raise UsegError(f"{path} {what}; list the run's checkpoints with: useg checkpoints list --run-dir RUN")
    return path


def record(info: CheckpointInfo, verified: Any = None, point: ResumePoint | None = None) -> dict[str, Any]:
    """One checkpoint in the stable `--json` schema; `verified` (a VerifyResult) overrides the listed
    status; `point` (its ResumePoint) says whether it shares latest's bytes or left the run's branch."""
    row = info.to_dict()
    if verified is not None:
        row.update(valid=verified.ok, status=verified.status, reason=verified.reason)
    row.update(same_as_latest=bool(point and point.same_as_latest and info.name != LATEST_NAME),
               abandoned=bool(point and point.abandoned))
    return {key: row[key] for key in RECORD_KEYS}


def points_by_path(infos: list[CheckpointInfo]) -> dict[Path, ResumePoint]:
    """Each resume point among `infos` by path: its place in the run's lineage and its hard links."""
    return {point.path: point for point in resume_points(Path("."), infos)}


def verify_records(run_dir: str | Path, path: str | Path | None = None) -> list[dict[str, Any]]:
    """Hash-check one file or every checkpoint of the run; one record each."""
    paths = [require_file(path)] if path else [info.path for info in run_checkpoints(run_dir)]
    return [record(checkpoint_info(p), verify_file(p)) for p in paths]


def verify_file(path: Path) -> VerifyResult:
    """The library's verdict on `path`; an export without its sidecar is ok when its weights match the
    checksum it carries inside (see useg.weights)."""
    result = verify_checkpoint(path)
    if result.status != "missing-checksum":
        return result
    from useg.weights import is_export, read_export  # imports torch: only a file without a sidecar pays for it

    if not is_export(path):
        return result
    try:
        read_export(path)
    except CheckpointError as error:
        return VerifyResult(path, "corrupt", str(error).removeprefix(f"{path}: ").removeprefix("corrupt: "))
    return VerifyResult(path, "ok", f"no sidecar {sidecar_path(path).name}: checked against the checksum it carries")


def resume_command(run_dir: str | Path, path: Path, kind: str | None, epoch: int | None) -> str | None:
    """The exact command that resumes from `path`; None for weights-only files (best)."""
    if kind == "best":
        return None
    if path.name == LATEST_NAME:
        which = "latest"
    elif kind == "periodic" and epoch is not None and path.parent == checkpoints_folder(run_dir):
        which = str(epoch)
    else:
        which = str(path)

    return f"useg resume {shlex.quote(which)} --run-dir {shlex.quote(str(run_dir))}"


def describe(path: str | Path, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Details of one checkpoint from its sidecar (no tensors), plus the command to resume from it."""
    path = require_file(path)
    from useg.weights import is_export  # imports torch, as verifying does

    if is_export(path):
        return describe_export(path)
    info, result = checkpoint_info(path), verify_checkpoint(path)
    if result.status == "foreign":
        raise CheckpointError(describe_problem(result))
    if info.status == "missing-checksum" and result.status == "corrupt":
        raise CheckpointError(f"{path} is not a useg checkpoint (no sidecar {path.name}.json and {result.reason})")
    run_dir = run_dir if run_dir is not None else run_dir_of(path, info.config)
    batch, batches = batch_position(info)
    details = {**record(info, result), "sha256": (result.metadata or {}).get("sha256"), "config": info.config or {},
               "batch": batch, "batches_per_epoch": batches,
               "resume_command": resume_command(run_dir, path, info.kind, info.epoch),
               "resumes_from": resume_target(run_dir, path, result.ok)}
    details.update(best_by_other_metric(result.metadata or {}))
    datasets = run_datasets(info.config or {})
    return {**details, "datasets": datasets} if datasets else details


def best_by_other_metric(metadata: dict[str, Any]) -> dict[str, Any]:
    """`best_metric` and `best_value` of a run whose best is not chosen by val Dice (`--best-metric
    held_out_dice`: its `best_val_dice` is null), else nothing: the record stays as it was."""
    metric = metadata.get("best_metric")
    if metric in (None, "val_dice"):
        return {}
    return {"best_metric": metric, "best_value": metadata.get("best_value")}


def run_datasets(config: dict[str, Any]) -> dict[str, list[dict[str, Any]]] | None:
    """A run over several datasets or with held-out ones: each dataset's id, name, folder, weight and own data
    options, and each held-out one's; None for a run over one dataset and nothing held out (nothing to add)."""
    from useg.data.collection import dataset_names, entries, is_several

    data, held_out = config.get("data"), config.get("held_out_data") or []
    if not is_several(data) and not held_out:
        return None
    trained = entries(data) if is_several(data) else []
    held = entries(held_out)
    return {"trained": [{"id": f"d{number + 1}", "name": name, "data": entry.path, "weight": entry.weight,
                         "options": dict(entry.options or {})}
                        for number, (entry, name) in enumerate(zip(trained, dataset_names(trained)))],
            "held_out": [{"name": name, "data": entry.path, "options": dict(entry.options or {})}
                         for entry, name in zip(held, dataset_names(held))]}


# What `checkpoints info` shows of an export's description (useg.weights), besides its file and checks.
EXPORT_INFO_KEYS = ("useg_version", "source", "epoch", "val_dice", "model_config", "config", "classes", "intensity",
                    "dtype", "parameters", "content_sha256")


def describe_export(path: Path) -> dict[str, Any]:
    """Details of an export from the description it carries (or, when its bytes are damaged, its sidecar's)."""
    from useg.weights import read_export

    result = verify_file(path)
    description = read_export(path).info if result.ok else (read_metadata(path) or {})
    config = description.get("config") or {}
    with open(path, "rb") as handle:
        kind = identify_content(handle).kind
    return {"path": str(path), "name": path.name, "kind": "export", "format": "pt" if kind == "torch" else kind,
            "valid": result.ok, "status": result.status, "reason": result.reason,
            "sha256": (read_metadata(path) or {}).get("sha256"), "size_bytes": path.stat().st_size,
            **{key: description.get(key) for key in EXPORT_INFO_KEYS},
            "image_size": config.get("image_size"), "support_size": config.get("support_size"),
            "apply_command": f"useg predict {shlex.quote(str(path))} --support DIR --images DIR --out DIR"}


def batch_position(info: CheckpointInfo) -> tuple[int | None, int | None]:
    """(batches done in the epoch in progress, batches per epoch) of a file useg's trainer wrote.

    The sidecar has no batch of its own, but the trainer takes one step per batch and cannot be
    resumed with another batch size or epoch length, so step = epoch * batches + batch; (None, None)
    when the sidecar lacks a number or they disagree (a file from another training loop).
    """
    config = info.config or {}
    numbers = (info.step, info.epoch, config.get("samples_per_epoch"), config.get("batch_size"))
    if not all(type(number) is int for number in numbers) or numbers[3] <= 0:
        return None, None
    step, epoch, samples, batch_size = numbers
    batches = batches_per_epoch(samples, batch_size)
    batch = step - epoch * batches
    return (batch, batches) if 0 <= batch <= batches else (None, None)


def run_dir_of(path: Path, config: dict | None) -> Path | str:
    """The run a checkpoint belongs to: its folder's parent, else the run_dir it was trained in."""
    if is_checkpoints_folder(path.parent):
        return path.parent.parent
    return (config or {}).get("run_dir") or "."


def resume_target(run_dir: str | Path, path: Path, valid: bool) -> str | None:
    """Which file `useg resume latest` really loads when latest itself is invalid (its fallback)."""
    if valid or path.name != LATEST_NAME:
        return None
    try:
        return str(resolve_checkpoint(checkpoints_folder(run_dir), "latest", warn=lambda message: None))
    except CheckpointError:
        return None


def check_keep(keep: int) -> int:
    """`--keep` must leave at least one periodic checkpoint (latest and best stay anyway)."""
    if keep < 1:
        raise UsegError(f"--keep must be at least 1 (got {keep}); latest and best are always kept anyway")
    return keep


def clean_run(run_dir: str | Path, keep: int, dry_run: bool) -> tuple[list[CheckpointInfo], int]:
    """Remove (or with dry_run, list) the periodic checkpoints `clean --keep` removes; (removed, bytes freed)."""
    plan, freed = clean_with_plan(run_dir, keep, dry_run)
    return plan.remove, freed


def clean_with_plan(run_dir: str | Path, keep: int, dry_run: bool) -> tuple[CleanPlan, int]:
    """Decide what `clean --keep` removes and, unless dry_run, remove it; (the plan, bytes freed).

    A real clean takes the run lock, so it refuses while a training process holds it, and
    tidies what a killed save or clean left behind first.
    """
    check_keep(keep)
    folder = checkpoints_dir(run_dir)
    run_checkpoints(run_dir)  # a clear error when there is nothing to clean
    from useg.checkpoint import CheckpointManager  # imports torch: only the commands that write pay for it

    with CheckpointManager(folder, total_epochs=1, lock=not dry_run, warn=lambda message: None) as manager:
        plan = manager.plan_clean(keep)
        manager.clean(keep, dry_run=dry_run, plan=plan)
    return plan, bytes_freed(plan.remove)


def clean_replaced(run_dir: str | Path, dry_run: bool) -> list[ReplacedFolder]:
    """Remove (or with dry_run, list) the folders `--overwrite` set aside; the live checkpoints/ stays.

    A real removal takes the run lock, as `clean --keep` does: no `--overwrite` is filling a
    set-aside folder while it goes.
    """
    folder = checkpoints_dir(run_dir)
    doomed = replaced_folders(folder.parent)
    if dry_run or not doomed:
        return doomed
    lock = acquire_run_lock(folder, warn=lambda message: None) if folder.is_dir() else None
    try:
        doomed = replaced_folders(folder.parent)  # as they are now that no trainer can add one
        remove_replaced(folder.parent, doomed)
    finally:
        if lock is not None:
            lock.release()
    return doomed


def export_weights(path: str | Path, out: str | Path, dtype: str = "fp32") -> dict[str, Any]:
    """Write the shareable model file of a checkpoint (.safetensors or .pt: its weights and what applying them
    needs, see useg.weights) plus OUT.json, the same with the file's sha256; floating-point tensors in `dtype`
    (fp32, bf16 or fp16; checkpoints hold fp32)."""
    path, out = require_file(path), Path(out)
    if out.suffix not in (".safetensors", ".pt"):
        raise UsegError(f"export target {out} must end in .safetensors or .pt")
    refuse_export_target(path, out)
    state = load_checkpoint(path)
    weights = state.get(training_state.MODEL)
    if not isinstance(weights, dict):
        raise CheckpointError(f"{path} holds no model_state_dict; export a useg checkpoint")
    from useg.compute.precision import cast_weights
    from useg.weights import export_bytes, require_finite

    require_finite(weights, path, refused="exported")
    weights = {name: tensor.contiguous() for name, tensor in cast_weights(weights, dtype).items()}
    data, description = export_bytes(weights, export_description(state, path, dtype), out.suffix)
    meta = export_metadata(description, out, data)
    write_export(out, data, meta)
    return {**meta, "path": str(out), "metadata_path": str(export_metadata_path(out))}


def export_metadata_path(out: Path) -> Path:
    """`w.safetensors` -> `w.safetensors.json` (the same naming as a checkpoint's sidecar)."""
    return sidecar_path(out)


def refuse_export_target(source: Path, out: Path) -> None:
    """An export writes a new file or replaces an earlier export: never its source, never a checkpoint."""
    if out.exists() and os.path.samefile(out, source):
        raise UsegError(f"export target {out} is the checkpoint being exported ({source}); "
                        "nothing was written: choose a new file for the export")
    if is_checkpoints_folder(out.parent) and kind_from_name(out.name) != "unknown":
        raise UsegError(f"export target {out} is a checkpoint name inside a run's checkpoints folder; "
                        "nothing was written: export to a file outside checkpoints/")
    for sidecar in (export_metadata_path(out), pending_path(out)):
        if sidecar.exists() and not is_export_metadata(sidecar, out):
            raise UsegError(f"export target {out} is a useg checkpoint (it has the sidecar {sidecar.name}); "
                            "nothing was written: choose a new file for the export")


def is_export_metadata(path: Path, out: Path) -> bool:
    """True when `path` is the metadata an earlier export to `out` wrote (so it may be replaced)."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    from useg.weights import is_export_metadata as describes_export

    return describes_export(meta, out.name)


def write_export(out: Path, data: bytes, meta: dict[str, Any]) -> None:
    """Replace the weights and their metadata so that a kill at any instant leaves metadata that
    describes the weights beside it, or no metadata at all (the library's `publish_export`)."""
    from useg.checkpoint import publish_export  # imports torch: only the commands that write pay for it

    with explain_file_errors(out, then="run the export again", nbytes=len(data)):
        out.parent.mkdir(parents=True, exist_ok=True)
        publish_export(out, data, meta)


def export_description(state: dict[str, Any], source: Path, dtype: str) -> dict[str, Any]:
    """What an export carries inside: how to rebuild the model, how to feed it, how good it was, and
    nothing of where its data lived (no paths: the file is meant to be shared)."""
    from useg import __version__
    from useg.config import saved_value
    from useg.weights import model_weights  # imports torch: only export pays for it

    saved = training_state.saved_config(state)
    config = {key: saved_value(saved, key) for key in APPLY_CONFIG_KEYS if saved_value(saved, key) is not None}
    return {"useg_version": __version__, "model_config": state.get(training_state.MODEL_CONFIG), "config": config,
            "classes": training_state.saved_classes(state), "intensity": intensity_handling(config),
            "source": source.name, "epoch": state.get(training_state.EPOCH),
            "val_dice": training_state.recorded_val_dice(state), "dtype": dtype,
            "parameters": sum(t.numel() for t in model_weights(state).values())}


def export_metadata(description: dict[str, Any], out: Path, data: bytes) -> dict[str, Any]:
    """OUT.json: the description the export carries, plus the file's name, format, sha256 and size (which make
    it a sidecar that `useg checkpoints verify`, predict and `--pretrained` check) and the sizes applying uses."""
    config = description["config"]
    return {"weights": out.name, "format": out.suffix[1:], "sha256": hashlib.sha256(data).hexdigest(),
            "size_bytes": len(data), **description, "image_size": config.get("image_size"),
            "support_size": config.get("support_size")}


def intensity_handling(config: dict[str, Any]) -> dict[str, str]:
    """How training turned files into the model's input (useg.data.images, useg.data.medical, --resize), in
    words, so that whoever applies an export outside useg can feed it the same way."""
    from useg.data.formats import PERCENTILES

    low, high = PERCENTILES
    size = config.get("image_size")
    square = {"pad": f"letterboxed to {size}x{size} (aspect ratio kept, padded with 0), bilinear",
              "squash": f"stretched to {size}x{size} (aspect ratio not kept), bilinear"}
    return {"8-bit images": "grey = mean of R, G and B, divided by 255",
            "16-bit and floating-point images": f"scaled per image between its {low}th and {high}th percentiles "
                                                "to [0, 1]",
            "NIfTI and DICOM": f"scaled per file (a volume as a whole) between its {low}th and {high}th "
                               f"percentiles to [0, 1]; volumes cut into slices along axis "
                               f"{config.get('slice_axis', 2)}",
            "to the model's size": square.get(str(config.get("resize", "squash")), str(config.get("resize"))),
            "masks": "0/1 per class; predictions are sigmoid probabilities thresholded at 0.5"}


def run_history(run_dir: str | Path) -> dict[str, Any]:
    """The run's history: from its newest JSON log, else from the latest checkpoint."""
    run = checkpoints_dir(run_dir).parent
    log_path = latest_log(run / "logs")
    log = read_log(log_path) if log_path else None
    if log and log.get("history"):
        return log["history"]
    latest = checkpoints_folder(run) / LATEST_NAME
    if latest.is_file():
        return load_checkpoint(latest)[training_state.HISTORY]
    raise UsegError(f"no training history in {run} (no logs/training_*.json, no checkpoint); train first")
