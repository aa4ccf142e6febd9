"""A plain PyTorch training loop with useg's crash-safe checkpoints (no useg trainer, no UniverSeg).

    python examples/own_loop.py --run-dir DIR [--epochs N]

Trains a small classifier on seeded synthetic data to N epochs. Run it again after a
crash, a kill or Ctrl+C and it resumes from DIR's latest checkpoint by itself, bit for
bit as if it had never stopped (it saves mid-epoch every few steps). Its run folder is a
useg one: `useg checkpoints list / verify / clean / export --run-dir DIR` work on it.

The lines that concern checkpoints are marked `# checkpoint:`.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from useg.checkpoint import CheckpointManager, Position, capture_rng_state, mid_epoch_save_due, restore_rng_state

SAMPLES, FEATURES, BATCH = 256, 16, 8
SAVE_EVERY_STEPS = 5


@dataclass
class LoopPosition(Position):  # checkpoint: epoch, batch and step, plus this loop's running loss
    loss_sum: float = 0.0

    def finish_epoch(self) -> None:
        super().finish_epoch()
        self.loss_sum = 0.0


def make_data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Points labelled by a random hyperplane; the same every run."""
    generator = torch.Generator().manual_seed(seed)
    points = torch.randn(SAMPLES + SAMPLES // 4, FEATURES, generator=generator)
    labels = (points @ torch.randn(FEATURES, generator=generator) > 0).long()
    return points, labels


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(FEATURES, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 2))


def batch_order(epoch: int) -> torch.Tensor:
    """The epoch's shuffle comes from the epoch number alone, so a resumed epoch sees the same batches."""
    return torch.randperm(SAMPLES, generator=torch.Generator().manual_seed(1000 + epoch))


class StopOnSignal:
    """Ctrl+C, SIGTERM (pre-emption): finish the current step, save, then exit."""

    def __init__(self) -> None:
        self.signum = None
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self.request)

    def request(self, signum, frame) -> None:
        self.signum = signum


def validation_loss(model: nn.Module, points: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        loss = nn.functional.cross_entropy(model(points[SAMPLES:]), labels[SAMPLES:]).item()
    model.train()
    return loss


def train_one_epoch(model, optimizer, points, labels, position: LoopPosition, manager: CheckpointManager,
                    state, stop: StopOnSignal) -> int | None:
    """The rest of the current epoch, from the saved batch on; an exit code when a signal stopped it."""
    order = batch_order(position.epoch)
    last_save = time.monotonic()
    while position.batch < SAMPLES // BATCH:
        chosen = order[position.batch * BATCH:(position.batch + 1) * BATCH]
        loss = nn.functional.cross_entropy(model(points[chosen]), labels[chosen])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        position.finish_batch()
        position.loss_sum += loss.item()
        if stop.signum is not None:  # checkpoint: save where we are, wait until it is durable, exit
            manager.save(state(), epoch=position.epoch, step=position.step, kind="interrupt")
            manager.wait()
            print(f"stopped by signal {stop.signum}; run again to continue", file=sys.stderr)
            return 128 + stop.signum
        if mid_epoch_save_due(position.step, time.monotonic() - last_save, SAVE_EVERY_STEPS, None):
            manager.save(state(), epoch=position.epoch, step=position.step, kind="mid_epoch")  # checkpoint
            last_save = time.monotonic()
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args(argv)

    points, labels = make_data()
    torch.manual_seed(0)
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    position = LoopPosition()
    stop = StopOnSignal()

    def state() -> dict:  # checkpoint: the original scripts' key names; parts with state_dict() are snapshotted
        return {"model_state_dict": model, "optimizer_state_dict": optimizer, "scheduler_state_dict": scheduler,
                "rng_state": capture_rng_state(), "position": position}

    # checkpoint: one manager per run folder; it locks the folder and tidies up after a killed save.
    with CheckpointManager(args.run_dir / "checkpoints", total_epochs=args.epochs,
                           best_metric="val_loss", mode="min") as manager:
        if manager.can_resume():  # checkpoint: resume by itself when the folder holds a resume point
            saved = manager.load("latest")
            for part, key in ((model, "model_state_dict"), (optimizer, "optimizer_state_dict"),
                              (scheduler, "scheduler_state_dict"), (position, "position")):
                part.load_state_dict(saved[key])
            restore_rng_state(saved["rng_state"])
            print(f"resumed from {manager.resumed_from.name} at epoch {position.epoch}, batch {position.batch}")
        while position.epoch < args.epochs:
            stopped = train_one_epoch(model, optimizer, points, labels, position, manager, state, stop)
            if stopped is not None:
                return stopped
            scheduler.step()
            train_loss = position.loss_sum / (SAMPLES // BATCH)
            position.finish_epoch()
            val_loss = validation_loss(model, points, labels)
            # checkpoint: latest every epoch, periodic files on schedule, best_model.pt on a lower val_loss
            manager.save(state(), epoch=position.epoch, step=position.step,
                         metrics={"val_loss": val_loss, "train_loss": train_loss})
            print(f"epoch {position.epoch}/{args.epochs}: train loss {train_loss:.4f}, val loss {val_loss:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
