"""The learning-rate schedule: cosine decay per epoch, and lining it up again after a resume."""

from __future__ import annotations

import warnings

import torch

from useg.config import TrainConfig


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """Cosine decay from cfg.lr to cfg.lr * min_lr_ratio over cfg.epochs, stepped once per epoch."""
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs, eta_min=cfg.lr * cfg.min_lr_ratio)


def align_schedule(optimizer: torch.optim.Optimizer, scheduler, cfg: TrainConfig) -> None:
    """After loading, make the lr follow a fresh run of the current settings (an extended run, a lower --lr).

    CosineAnnealingLR steps from the previous lr, so changing T_max after loading does nothing:
    replay a fresh schedule to the saved epoch instead, which gives a fresh run's lr bit for bit.
    Unchanged settings leave the loaded state alone (an exact resume).
    """
    if (scheduler.T_max, scheduler.base_lrs[0], scheduler.eta_min) == (cfg.epochs, cfg.lr, cfg.lr * cfg.min_lr_ratio):
        return
    replay_optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
    replay = build_scheduler(replay_optimizer, cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()": nothing is trained here
        for _ in range(scheduler.last_epoch):
            replay.step()
    for group in optimizer.param_groups:
        group["lr"], group["initial_lr"] = replay_optimizer.param_groups[0]["lr"], cfg.lr
    scheduler.load_state_dict(replay.state_dict())


def step_epoch_schedule(scheduler) -> None:
    """The scheduler's once-per-epoch step."""
    with warnings.catch_warnings():
        # Resumed after the epoch's last step, this process ran no optimizer step before the
        # epoch's scheduler step, which torch warns about; the order is right for the run.
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
        scheduler.step()
