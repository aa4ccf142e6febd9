"""A real tiny model, optimizer and scheduler saved through CheckpointManager, shared by the checkpoint
and fault tests."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from useg.checkpoint import CheckpointManager, capture_rng_state


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
