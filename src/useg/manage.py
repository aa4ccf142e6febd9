"""What the checkpoint CLI, the menu and the seed scripts share: finding, describing, cleaning, exporting."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from rich import box
from rich.table import Table

from useg.checkpoint import CheckpointInfo, atomic_write_bytes, atomic_write_json, bytes_freed
from useg.checkpoint import list_checkpoints, load_checkpoint, resolve_checkpoint, verify_checkpoint
from useg.checkpoint.listing import checkpoint_info
from useg.errors import CheckpointError, UsegError
from useg.history import latest_log, read_log

# The `--json` schema of one checkpoint (documented in CHECKPOINT_GUIDE.md): change it only deliberately.
RECORD_KEYS = ("path", "name", "kind", "epoch", "step", "train_loss", "val_dice", "best_val_dice", "best_epoch",
               "total_epochs", "size_bytes", "created", "valid", "status", "reason")
CONFIG_SUMMARY_KEYS = ("data", "image_size", "widths", "support_size", "batch_size", "lr", "seed", "classes")


def checkpoints_dir(run_dir: str | Path) -> Path:
    """The run's checkpoints folder; a missing run folder is a usage error."""
    run = Path(run_dir)
    if not run.is_dir():
        raise UsegError(f"run folder {run} does not exist; pass the folder you trained into with --run-dir")
    return run / "checkpoints"


def run_checkpoints(run_dir: str | Path) -> list[CheckpointInfo]:
    """Every checkpoint of a run (from sidecars, no tensors), oldest epoch first."""
    folder = checkpoints_dir(run_dir)
    infos = list_checkpoints(folder)
    if not infos:
        raise CheckpointError(f"no checkpoints yet in {folder}; start one with: useg train --run-dir {run_dir}")
    return infos


def require_file(path: str | Path) -> Path:
    """`path` as a Path when it is an existing file; otherwise a usage error naming it."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a checkpoint file" if path.is_dir() else "does not exist"
        raise UsegError(f"{path} {what}; list the run's checkpoints with: useg checkpoints list --run-dir RUN")
    return path


def record(info: CheckpointInfo, verified: Any = None) -> dict[str, Any]:
    """One checkpoint in the stable `--json` schema; `verified` (a VerifyResult) overrides the cheap status."""
    row = info.to_dict()
    if verified is not None:
        row.update(valid=verified.ok, status=verified.status, reason=verified.reason)
    return {key: row[key] for key in RECORD_KEYS}


def verify_records(run_dir: str | Path, path: str | Path | None = None) -> list[dict[str, Any]]:
    """Hash-check one file or every checkpoint of the run; one record each."""
    paths = [require_file(path)] if path else [info.path for info in run_checkpoints(run_dir)]
    return [record(checkpoint_info(p), verify_checkpoint(p)) for p in paths]


def resume_command(run_dir: str | Path, path: Path, kind: str | None, epoch: int | None) -> str | None:
    """The exact command that resumes from `path`; None for weights-only files (best)."""
    if kind == "best":
        return None
    if path.name == "latest_checkpoint.pt":
        which = "latest"
    elif kind == "periodic" and epoch is not None and path.parent == Path(run_dir) / "checkpoints":
        which = str(epoch)
    else:
        which = str(path)
    return f"useg resume {which} --run-dir {run_dir}"


def describe(path: str | Path, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Details of one checkpoint from its sidecar (no tensors), plus the command to resume from it."""
    path = require_file(path)
    info, result = checkpoint_info(path), verify_checkpoint(path)
    if info.status == "missing-checksum" and result.status == "corrupt":
        raise CheckpointError(f"{path} is not a useg checkpoint (no sidecar {path.name}.json and {result.reason})")
    run_dir = run_dir if run_dir is not None else run_dir_of(path, info.config)
    return {**record(info, result), "sha256": (result.metadata or {}).get("sha256"), "config": info.config or {},
            "resume_command": resume_command(run_dir, path, info.kind, info.epoch),
            "resumes_from": resume_target(run_dir, path, result.ok)}


def run_dir_of(path: Path, config: dict | None) -> Path | str:
    """The run a checkpoint belongs to: its folder's parent, else the run_dir it was trained in."""
    if path.parent.name == "checkpoints":
        return path.parent.parent
    return (config or {}).get("run_dir") or "."


def resume_target(run_dir: str | Path, path: Path, valid: bool) -> str | None:
    """Which file `useg resume latest` really loads when latest itself is invalid (its fallback)."""
    if valid or path.name != "latest_checkpoint.pt":
        return None
    try:
        return str(resolve_checkpoint(Path(run_dir) / "checkpoints", "latest", warn=lambda message: None))
    except CheckpointError:
        return None


def format_number(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_size(size: int | float | None) -> str:
    if size is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"


def list_table(infos: list[CheckpointInfo], title: str) -> Table:
    """The `checkpoints list` table; best and latest marked, invalid files shown with their reason."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, caption="* best   < latest (resume point)")
    for name in ("#", "file", "kind", "epoch", "loss", "val Dice", "size", "created", "valid"):
        numeric = name in ("#", "epoch", "loss", "val Dice", "size")
        table.add_column(name, justify="right" if numeric else "left", no_wrap=name != "valid")
    for number, info in enumerate(infos, 1):
        mark = {"best": " *", "latest": " <", "interrupt": " <"}.get(info.kind, "")
        valid = "yes" if info.valid else f"NO: {info.reason}"
        table.add_row(str(number), info.name + mark, info.kind, "-" if info.epoch is None else str(info.epoch),
                      format_number(info.train_loss), format_number(info.val_dice), format_size(info.size_bytes),
                      (info.created or "-")[5:16].replace("T", " "), valid)
    return table


def info_lines(details: dict[str, Any]) -> list[str]:
    """`checkpoints latest` / `info` as readable lines."""
    config = details["config"]
    summary = ", ".join(f"{key}={config[key]}" for key in CONFIG_SUMMARY_KEYS if key in config)
    status = "valid" if details["valid"] else f"INVALID ({details['status']}: {details['reason']})"
    lines = [
        f"file:          {details['path']} ({format_size(details['size_bytes'])}, {status})",
        f"kind:          {details['kind']}",
        f"epoch:         {details['epoch']} of {details['total_epochs']}",
        f"train loss:    {format_number(details['train_loss'])}",
        f"val Dice:      {format_number(details['val_dice'])}",
        f"best so far:   {format_number(details['best_val_dice'])} at epoch {details['best_epoch']}",
        f"created:       {details['created']}",
        f"config:        {summary or '-'}",
    ]
    if details["resume_command"]:
        lines.append(f"resume with:   {details['resume_command']}")
    else:
        lines.append("resume with:   - (weights only, no optimizer state: export it or start a run with --pretrained)")
    if details["resumes_from"]:
        lines.append(f"note:          latest is invalid; resuming falls back to {details['resumes_from']}")
    return lines


def check_keep(keep: int) -> int:
    """`--keep` must leave at least one periodic checkpoint (latest and best stay anyway)."""
    if keep < 1:
        raise UsegError(f"--keep must be at least 1 (got {keep}); latest and best are always kept anyway")
    return keep


def clean_run(run_dir: str | Path, keep: int, dry_run: bool) -> tuple[list[CheckpointInfo], int]:
    """Remove (or with dry_run, list) all but the `keep` newest periodic checkpoints; (removed, bytes freed).

    A real clean takes the run lock, so it refuses while a training process holds it.
    """
    check_keep(keep)
    folder = checkpoints_dir(run_dir)
    run_checkpoints(run_dir)  # a clear error when there is nothing to clean
    from useg.checkpoint import CheckpointManager  # imports torch: only the commands that write pay for it

    with CheckpointManager(folder, total_epochs=1, lock=not dry_run, warn=lambda message: None) as manager:
        removed = manager.clean(keep=keep, dry_run=dry_run)
    return removed, bytes_freed(removed)


def export_weights(path: str | Path, out: str | Path) -> dict[str, Any]:
    """Write a checkpoint's model weights alone (.safetensors or .pt) plus a JSON of metadata."""
    path, out = require_file(path), Path(out)
    if out.suffix not in (".safetensors", ".pt"):
        raise UsegError(f"export target {out} must end in .safetensors or .pt")
    state = load_checkpoint(path)
    weights = state.get("model_state_dict")
    if not isinstance(weights, dict):
        raise CheckpointError(f"{path} holds no model_state_dict; export a useg checkpoint")
    data = serialise_weights({name: tensor.contiguous() for name, tensor in weights.items()}, out.suffix)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, data)
    meta = export_metadata(state, path, out, data)
    meta_path = out.with_name(out.name + ".json")
    atomic_write_json(meta_path, meta)
    return {**meta, "path": str(out), "metadata_path": str(meta_path)}


def export_metadata(state: dict[str, Any], source: Path, out: Path, data: bytes) -> dict[str, Any]:
    """What a user of the exported weights needs: how to rebuild the model and how good it was."""
    weights = state["model_state_dict"]
    history = state.get("history") or {}
    val_dice = state.get("val_dice")  # best_model.pt records it; others have it in their history
    if val_dice is None:
        val_dice = (history.get("val_dice") or [None])[-1]
    return {"weights": out.name, "format": out.suffix[1:], "sha256": hashlib.sha256(data).hexdigest(),
            "source": source.name, "epoch": state.get("epoch"), "val_dice": val_dice,
            "model_config": state.get("model_config"), "classes": state.get("classes"),
            "image_size": (state.get("config") or {}).get("image_size"),
            "parameters": sum(t.numel() for t in weights.values())}


def serialise_weights(weights: dict, suffix: str) -> bytes:
    if suffix == ".safetensors":
        from safetensors.torch import save

        return save(weights)
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(weights, buffer)
    return buffer.getvalue()


def run_history(run_dir: str | Path) -> dict[str, Any]:
    """The run's history: from its newest JSON log, else from the latest checkpoint."""
    run = checkpoints_dir(run_dir).parent
    log_path = latest_log(run / "logs")
    log = read_log(log_path) if log_path else None
    if log and log.get("history"):
        return log["history"]
    latest = run / "checkpoints" / "latest_checkpoint.pt"
    if latest.is_file():
        return load_checkpoint(latest)["history"]
    raise UsegError(f"no training history in {run} (no logs/training_*.json, no checkpoint); train first")


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))
