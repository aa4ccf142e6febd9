"""A real tiny model, optimizer and scheduler saved through CheckpointManager, shared by the checkpoint
and fault tests."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from useg.checkpoint import CheckpointManager, capture_rng_state

LATEST = "latest_checkpoint.pt"
BEST = "best_model.pt"


class Trainer:
    """A real tiny model, optimizer and scheduler whose state changes every step."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.model = nn.Linear(4, 2)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-2)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=2)

    def step(self) -> None:
        loss = self.model(torch.randn(3, 4)).pow(2).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()

    def state(self, epoch: int) -> dict:
        return {
            "epoch": epoch,
            "model_state_dict": self.model,
            "optimizer_state_dict": self.optimizer,
            "scheduler_state_dict": self.scheduler,
            "rng_state": capture_rng_state(),
            "history": {"val_dice": [0.1 * e for e in range(epoch)], "best_val_dice": None},
            "config": {"lr": 1e-2, "data": "toy"},
        }


def manager(directory: Path, total: int = 10, warnings: list | None = None, **kwargs) -> CheckpointManager:
    kwargs.setdefault("async_save", False)
    sink = warnings.append if warnings is not None else (lambda message: None)
    return CheckpointManager(directory, total_epochs=total, warn=sink, **kwargs)


def train(directory: Path, epochs: int, total: int | None = None, dice=lambda e: 0.5, **kwargs) -> Trainer:
    trainer = Trainer()
    with manager(directory, total or epochs, **kwargs) as mgr:
        for epoch in range(1, epochs + 1):
            trainer.step()
            mgr.save(trainer.state(epoch), epoch=epoch, val_dice=dice(epoch), train_loss=1.0 / epoch)
    return trainer


def periodic_on_disk(directory: Path) -> set[int]:
    """The epochs of the periodic files in `directory`."""
    return {int(p.name[6:9]) for p in directory.glob("epoch_*_checkpoint.pt")}


def flip_byte(path: Path, offset: int | None = None) -> None:
    """Invert one byte in place (the middle one by default): same size, other bytes."""
    with open(path, "r+b") as handle:
        handle.seek(path.stat().st_size // 2 if offset is None else offset)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))
