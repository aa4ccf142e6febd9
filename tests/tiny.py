"""What many test modules share: the tiny training flags and a trained tiny run."""

from __future__ import annotations

from pathlib import Path

from useg.cli import main

# A UniverSeg small enough that an epoch takes a fraction of a second on one core.
TINY = ["--widths", "8,8", "--image-size", "32", "--support-size", "2", "--batch-size", "2",
        "--samples-per-epoch", "6", "--vis-count", "1", "--num-threads", "1"]


def train_tiny(run: Path, epochs: int, *extra: str) -> Path:
    """Train a tiny run in-process into `run` (no pictures) and return it."""
    assert main(["train", "--run-dir", str(run), "--epochs", str(epochs), *TINY, "--quiet", "--vis-every", "0",
                 *extra]) == 0
    return run
