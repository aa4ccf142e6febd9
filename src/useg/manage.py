"""What the checkpoint CLI, the menu and the seed scripts share: finding, describing, exporting."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from rich import box
from rich.table import Table

from useg.checkpoint import CheckpointInfo, atomic_write_bytes, atomic_write_json, list_checkpoints, load_checkpoint
from useg.checkpoint import read_metadata, verify_checkpoint
from useg.errors import CheckpointError, UsegError
from useg.history import latest_log, read_log


def checkpoints_dir(run_dir: str | Path) -> Path:
    """The run's checkpoints folder; a missing run folder is a usage error."""
    run = Path(run_dir)
    if not run.is_dir():
        raise UsegError(f"run folder {run} does not exist; pass the folder you trained into with --run-dir")
    return run / "checkpoints"


def run_checkpoints(run_dir: str | Path) -> list[CheckpointInfo]:
    """Every checkpoint of a run (from sidecars, no tensors), newest epoch last."""
    folder = checkpoints_dir(run_dir)
    infos = list_checkpoints(folder) if folder.is_dir() else []
    if not infos:
        raise CheckpointError(f"no checkpoints yet in {folder}; start one with: useg train --run-dir {run_dir}")
    return infos


def resume_command(run_dir: str | Path, which: str = "latest") -> str:
    return f"useg resume {which} --run-dir {run_dir}"


def format_number(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_size(size: int | None) -> str:
    if size is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"


def list_table(infos: list[CheckpointInfo], title: str) -> Table:
    """The `checkpoints list` table; best and latest marked, invalid files shown with their reason."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    for name in ("#", "file", "kind", "epoch", "loss", "val Dice", "size", "created", "valid"):
        numeric = name in ("#", "epoch", "loss", "val Dice", "size")
        table.add_column(name, justify="right" if numeric else "left", no_wrap=name != "valid")
    for number, info in enumerate(infos, 1):
        mark = {"best": " *", "latest": " <", "interrupt": " <"}.get(info.kind, "")
        valid = "yes" if info.valid else f"NO: {info.reason}"
        table.add_row(str(number), info.name + mark, info.kind, "-" if info.epoch is None else str(info.epoch),
                      format_number(info.train_loss), format_number(info.val_dice), format_size(info.size_bytes),
                      (info.created or "-")[5:16].replace("T", " "), valid)
    table.caption = "* best   < latest (resume point)"
    return table


def describe(path: str | Path, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Details of one checkpoint from its sidecar (no tensors), plus the command to resume from it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is not a file; list the run's checkpoints with: useg checkpoints list")
    result = verify_checkpoint(path)
    meta = read_metadata(path) or {}
    run_dir = run_dir if run_dir is not None else path.parent.parent
    config = meta.get("config") or {}
    which = "latest" if path.name == "latest_checkpoint.pt" else str(path)
    return {
        "path": str(path), "name": path.name, "kind": meta.get("kind"), "epoch": meta.get("epoch"),
        "total_epochs": meta.get("total_epochs"), "step": meta.get("step"),
        "val_dice": meta.get("val_dice"), "train_loss": meta.get("train_loss"),
        "best_val_dice": meta.get("best_val_dice"), "best_epoch": meta.get("best_epoch"),
        "size_bytes": path.stat().st_size, "created": meta.get("created"), "sha256": meta.get("sha256"),
        "valid": result.status == "ok", "status": result.status, "reason": result.reason,
        "config": config,
        "resume_command": resume_command(run_dir, which) if meta.get("kind") != "best" else None,
    }


CONFIG_SUMMARY_KEYS = ("data", "image_size", "widths", "support_size", "batch_size", "lr", "seed", "classes")


def info_lines(details: dict[str, Any]) -> list[str]:
    """`checkpoints latest` / `info` as readable lines."""
    config = details["config"] or {}
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
    return lines


def export_weights(path: str | Path, out: str | Path) -> dict[str, Any]:
    """Write a checkpoint's model weights alone (.safetensors or .pt) plus a JSON of metadata."""
    path, out = Path(path), Path(out)
    if out.suffix not in (".safetensors", ".pt"):
        raise UsegError(f"export target {out} must end in .safetensors or .pt")
    state = load_checkpoint(path)
    weights = state.get("model_state_dict")
    if not isinstance(weights, dict):
        raise CheckpointError(f"{path} holds no model_state_dict; export a useg checkpoint")
    weights = {name: tensor.contiguous() for name, tensor in weights.items()}
    data = serialise_weights(weights, out.suffix)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, data)
    meta = {"weights": out.name, "format": out.suffix[1:], "sha256": hashlib.sha256(data).hexdigest(),
            "source": path.name, "epoch": state.get("epoch"), "val_dice": state.get("val_dice"),
            "model_config": state.get("model_config"), "classes": state.get("classes"),
            "image_size": (state.get("config") or {}).get("image_size"),
            "parameters": sum(t.numel() for t in weights.values())}
    if meta["val_dice"] is None:
        history = state.get("history") or {}
        meta["val_dice"] = (history.get("val_dice") or [None])[-1]
    meta_path = out.with_name(out.name + ".json")
    atomic_write_json(meta_path, meta)
    return {**meta, "path": str(out), "metadata_path": str(meta_path)}


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
    run = Path(run_dir)
    if not run.is_dir():
        raise UsegError(f"run folder {run} does not exist; pass the folder you trained into with --run-dir")
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
