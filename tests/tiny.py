"""What many test modules share: the tiny training flags, a trained tiny run, running the CLI in a fresh
process and comparing two runs' final states."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from useg.cli import main

# A UniverSeg small enough that an epoch takes a fraction of a second on one core.
TINY = ["--widths", "8,8", "--image-size", "32", "--support-size", "2", "--batch-size", "2",
        "--samples-per-epoch", "6", "--vis-count", "1", "--num-threads", "1"]

# Today's recipe before issue 26 (flips and intensity jitter only): for tests whose scenario was built on
# its training dynamics (e.g. a run that reaches its best late).
RECIPE_OFF = ["--task-augmentation", "off", "--in-task-augmentation", "off", "--synthetic-tasks", "0"]


def train_tiny(run: Path, epochs: int, *extra: str) -> Path:
    """Train a tiny run in-process into `run` (no pictures) and return it."""
    assert main(["train", "--run-dir", str(run), "--epochs", str(epochs), *TINY, "--quiet", "--vis-every", "0",
                 *extra]) == 0
    return run


def useg(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the CLI in a fresh process, as a user (or a scheduler) would."""
    return subprocess.run([sys.executable, "-m", "useg", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def final_state(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "latest_checkpoint.pt", weights_only=True)


def assert_same_training(a: dict, b: dict) -> None:
    for name, tensor in a["model_state_dict"].items():
        assert torch.equal(tensor, b["model_state_dict"][name]), name
    for key in ("train_loss", "val_dice", "val_dice_per_class", "best_val_dice", "best_epoch"):
        assert a["history"][key] == b["history"][key], key
    assert a["optimizer_state_dict"]["state"].keys() == b["optimizer_state_dict"]["state"].keys()
    for index, slots in a["optimizer_state_dict"]["state"].items():
        for slot, value in slots.items():
            assert torch.equal(value, b["optimizer_state_dict"]["state"][index][slot]), (index, slot)


def error_line(capsys) -> str:
    """The one line a refused command printed: `error: ...` on stderr, nothing more."""
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def evaluate_json(run: Path, capsys, *args: str) -> dict:
    """`useg evaluate --run-dir RUN --json ARGS` in this process (exit 0 asserted): its JSON record."""
    capsys.readouterr()
    assert main(["evaluate", "--run-dir", str(run), "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def rewrite_saved_config(path: Path, position: dict | None = None, **changes) -> None:
    """Rewrite a checkpoint and its sidecar as an older useg saved it: each config key set to its value, or
    left out where the value is None, and the data position's keys updated with `position` (in place, so the
    sidecar's inode stays true; its checksum follows)."""
    state = torch.load(path, weights_only=True)
    state["sampler_state"].update(position or {})
    sidecar_path = path.with_name(path.name + ".json")
    sidecar = json.loads(sidecar_path.read_text())
    for config in (state["config"], sidecar["config"]):
        for key, value in changes.items():
            if value is None:
                del config[key]
            else:
                config[key] = value
    buffer = io.BytesIO()
    torch.save(state, buffer)
    path.write_bytes(buffer.getvalue())
    sidecar.update(sha256=hashlib.sha256(buffer.getvalue()).hexdigest(), size_bytes=len(buffer.getvalue()))
    sidecar_path.write_text(json.dumps(sidecar))


def assert_rate_matches(row: dict) -> None:
    """An epoch's samples/s is its samples over its time, which the log records to the millisecond."""
    fastest = row["samples_trained"] / max(row["epoch_time_s"] - 0.0005, 1e-9)
    slowest = row["samples_trained"] / (row["epoch_time_s"] + 0.0005)
    assert slowest - 0.01 <= row["samples_per_s"] <= fastest + 0.01, row
