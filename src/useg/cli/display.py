"""How checkpoint facts look in a terminal: numbers, sizes, the list table, info lines, JSON."""

from __future__ import annotations

import shlex
import sys
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from useg.checkpoint import LATEST_NAME, CheckpointInfo, CleanPlan, ResumePoint
from useg.files import json_text
from useg.run_folder import ReplacedFolder
from useg.training.history import format_number  # the one number formatter (re-exported for the CLI)
from useg.cli.checkpoint_actions import CONFIG_SUMMARY_KEYS, batch_position, points_by_path
from useg.training.progress import position_text


def console() -> Console:
    """Rich output on stdout; wide enough for the tables when piped into a file or a log."""
    return Console(highlight=False, width=None if sys.stdout.isatty() else 120)


def format_size(size: int | float | None) -> str:
    if size is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"


def list_table(infos: list[CheckpointInfo], title: str) -> Table:
    """The `checkpoints list` table; best and latest marked, invalid files shown with their reason,
    files sharing latest's bytes and files of an abandoned branch named in the note column."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD,
                  caption="* best   < latest (resume point)   epoch: epochs complete (+b/B: batches done of the "
                          "next one)\nsame file as latest: one copy on disk, one damaged "
                          "byte hits both names; the file before it is the backup\nabandoned branch: written "
                          "before the run went back to an earlier checkpoint; resume uses it only as a last resort")
    for name in ("#", "file", "kind", "epoch", "loss", "val Dice", "size", "created", "valid", "note"):
        numeric = name in ("#", "epoch", "loss", "val Dice", "size")
        table.add_column(name, justify="right" if numeric else "left", no_wrap=name not in ("valid", "note"))
    points = points_by_path(infos)
    for number, info in enumerate(infos, 1):
        mark = {"best": " *", "latest": " <", "mid_epoch": " <", "interrupt": " <"}.get(info.kind, "")
        valid = "yes" if info.valid else "not hashed yet: run verify" if info.status == "unchecked" else f"NO: {info.reason}"
        table.add_row(str(number), info.name + mark, info.kind, epoch_cell(info),
                      format_number(info.train_loss), format_number(info.val_dice), format_size(info.size_bytes),
                      (info.created or "-")[5:16].replace("T", " "), valid, note(info, points.get(info.path)))
    return table


def epoch_cell(info: CheckpointInfo) -> str:
    """Complete epochs, plus the batches done of the next one for a mid-epoch save: `3 +82/128`."""
    if info.epoch is None:
        return "-"
    batch, batches = batch_position(info)
    return f"{info.epoch} +{batch}/{batches}" if batch else str(info.epoch)


def position_line(details: dict[str, Any]) -> str:
    """Where the checkpoint stands, in the words of every training message (see progress.position_text)."""
    if details["epoch"] is None:
        return "-"
    return position_text(details["epoch"], details.get("batch") or 0, details.get("batches_per_epoch"),
                         details["total_epochs"])


def best_line(details: dict[str, Any]) -> str:
    if details.get("best_metric") not in (None, "val_dice") and details.get("best_value") is not None:
        named = "held-out Dice" if details["best_metric"] == "held_out_dice" else details["best_metric"]
        return f"{named} {format_number(details['best_value'])} at epoch {details['best_epoch']}"
    if details["best_val_dice"] is None:
        return "none yet"
    return f"{format_number(details['best_val_dice'])} at epoch {details['best_epoch']}"


def note(info: CheckpointInfo, point: ResumePoint | None) -> str:
    """What the note column says of one file ('' when nothing)."""
    notes = []
    if point is not None and point.same_as_latest and info.name != LATEST_NAME:
        notes.append("same file as latest")
    if point is not None and point.abandoned:
        notes.append("abandoned branch")  # the run resumed from an earlier checkpoint since
    return "; ".join(notes)


def info_lines(details: dict[str, Any]) -> list[str]:
    """`checkpoints latest` / `info` as readable lines."""
    if details["kind"] == "export":
        return export_lines(details)
    config = details["config"]
    summary = ", ".join(f"{key}={summary_value(key, config[key])}" for key in CONFIG_SUMMARY_KEYS if key in config)
    status = "valid" if details["valid"] else f"INVALID ({details['status']}: {details['reason']})"
    lines = [
        f"file:          {details['path']} ({format_size(details['size_bytes'])}, {status})",
        f"kind:          {details['kind']}",
        f"position:      {position_line(details)}",
        f"train loss:    {format_number(details['train_loss'])}",
        f"val Dice:      {format_number(details['val_dice'])}",
        f"best so far:   {best_line(details)}",
        f"created:       {details['created']}",
        f"config:        {summary or '-'}",
        *dataset_lines(details.get("datasets")),
        f"precision:     {config.get('precision') or 'fp32 (before mixed precision existed)'}",
        f"deterministic: {determinism_text(config) if details['resume_command'] else NOT_A_RESUME_POINT}",
    ]
    if details["resume_command"]:
        lines.append(f"resume with:   {details['resume_command']}")
    else:
        lines.append("resume with:   - (weights only, no optimizer state: export it or start a run with --pretrained)")
    if details["resumes_from"]:
        lines.append(f"note:          latest is invalid; resuming falls back to {details['resumes_from']}")
    return lines


def summary_value(key: str, value: Any) -> Any:
    """A config value in the info's summary line; several datasets are counted there, listed below it."""
    return f"{len(value)} datasets" if key == "data" and isinstance(value, list) else value


def dataset_lines(datasets: dict[str, Any] | None) -> list[str]:
    """`checkpoints info` of a run over several datasets or with held-out ones: one line per dataset."""
    if not datasets:
        return []
    lines = []
    for label, found in (("datasets:", datasets["trained"]), ("held out:", datasets["held_out"])):
        for number, entry in enumerate(found):
            name = f"{entry['id']} {entry['name']}" if "id" in entry else entry["name"]
            settings = ([f"weight {flag_text(entry['weight'])}"] if "weight" in entry else []) + [
                f"{key.replace('_', '-')} {flag_text(value)}" for key, value in entry["options"].items()]
            lines.append(f"{label if number == 0 else '':<15}{name}: {entry['data'] or 'the embedded synthetic set'}"
                         + (f" ({', '.join(settings)})" if settings else ""))
    return lines


def export_lines(details: dict[str, Any]) -> list[str]:
    """`checkpoints info` of an export: what it carries and how to apply it."""
    status = "valid" if details["valid"] else f"INVALID ({details['status']}: {details['reason']})"
    if details["valid"] and details["reason"]:
        status += f"; {details['reason']}"
    config, model = details["config"] or {}, details["model_config"] or {}
    widths = ",".join(map(str, model.get("widths") or [])) or "-"
    parameters = f"{details['parameters']:,}" if isinstance(details["parameters"], int) else "-"
    lines = [
        f"file:          {details['path']} ({format_size(details['size_bytes'])}, {status})",
        f"kind:          export ({details['format']}) of {details['source'] or '-'}, written by useg "
        f"{details['useg_version'] or '-'}",
        f"position:      epoch {details['epoch'] if details['epoch'] is not None else '-'}",
        f"val Dice:      {format_number(details['val_dice'])}",
        f"model:         widths {widths}, {parameters} {details['dtype'] or ''} parameters".rstrip(),
        f"applies at:    image size {details['image_size']} ({config.get('resize', 'squash')}), support size "
        f"{details['support_size']}, seed {config.get('seed', 0)}",
        f"classes:       {', '.join(details['classes'] or []) or '-'}",
        "intensity:",
    ]
    lines += [f"  {what}: {rule}" for what, rule in (details["intensity"] or {}).items()]
    return lines + [f"apply with:    {details['apply_command']}"]


NOT_A_RESUME_POINT = "- (weights only: not a resume point, so no resume to be bit-identical)"


def determinism_text(config: dict[str, Any]) -> str:
    """Whether resuming this checkpoint is bit-identical to never stopping."""
    if "deterministic" not in config:
        return "not recorded (saved before the setting existed)"
    if not config["deterministic"]:
        return "no: a resume continues correctly, not bit-identical"
    if config.get("bit_identical") is False:
        return ("yes, but an earlier resume changed how the run computes (threads, compile, precision, device or "
                "processes; the log's sessions say which): not bit-identical to an uninterrupted run")
    return "yes: a resume is bit-identical to an uninterrupted run"


def clean_notes(plan: CleanPlan) -> list[str]:
    """What a clean decided beyond the files it removes: a broken latest, files left in place, the fallback."""
    lines = []
    if plan.latest_problem:
        uses = f"; resume uses {plan.newest.path.name}" if plan.newest else "; no valid resume point is left"
        lines.append(f"note: {plan.latest_problem}{uses}")
    for info, reason in plan.invalid:
        lines.append(f"note: left {info.name} in place, not counted toward --keep: {reason}")
    if plan.fallback is not None:
        lines.append(f"kept {plan.fallback.path.name}: what resume falls back to if {plan.newest.path.name} is lost")
    return lines


def replaced_lines(folders: list[ReplacedFolder], run_dir: str) -> list[str]:
    """The note under `checkpoints list`: folders --overwrite set aside (no part of the run) and their size."""
    if not folders:
        return []
    total = sum(folder.size_bytes for folder in folders)
    lines = [f"set aside by --overwrite (old runs, not resumable from here): {len(folders)} folder(s), "
             f"{format_size(total)}; remove with: useg checkpoints clean --replaced --run-dir {shlex.quote(str(run_dir))}"]
    lines += [f"  {folder.path.name}/  {format_size(folder.size_bytes)}, {folder.files} file(s)" for folder in folders]
    return lines


def clean_replaced_lines(folders: list[ReplacedFolder], dry_run: bool, run_dir: str) -> list[str]:
    """What `clean --replaced` removed (or would remove), one line per folder and a total."""
    if not folders:
        return [f"no folders set aside by --overwrite in {run_dir}"]
    verb = "would remove" if dry_run else "removed"
    lines = [f"{verb} {folder.path}/ ({folder.files} file(s), {format_size(folder.size_bytes)})" for folder in folders]
    freed = format_size(sum(folder.size_bytes for folder in folders))
    return lines + [f"{verb} {len(folders)} set-aside folder(s), {'would free' if dry_run else 'freed'} {freed}"]


def print_json(value: Any) -> None:
    """Print `value` as strict JSON (NaN and inf as null; paths and other objects as strings)."""
    print(json_text(value, default=str))


def flag_text(value: Any) -> str:
    """A value as typed after its flag, as `useg train --help` shows defaults: 32,32,32,32 for a list,
    1e-4 and 0 for floats, 128=cytoplasm for class names, on/off for a switch."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ",".join(flag_text(item) for item in value)
    if isinstance(value, dict):  # --class-names
        return ",".join(f"{key}={name}" for key, name in value.items())
    if isinstance(value, float):
        mantissa, exponent = f"{value:e}".split("e")
        short = min(f"{value:g}", f"{float(mantissa):g}e{int(exponent)}", key=len)
        return short if float(short) == value else repr(value)  # never a rounded value: it goes into a command
    return str(value)
