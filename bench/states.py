"""Training states of a chosen size: a UniverSeg and its Adam state, as the trainer checkpoints them."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from useg.model import build_universeg

_BYTES_PER_PARAMETER = 3 * 4  # float32 weight + Adam's exp_avg and exp_avg_sq


@dataclass
class TrainingState:
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    width: int

    @property
    def nbytes(self) -> int:
        return sum(p.numel() for p in self.model.parameters()) * _BYTES_PER_PARAMETER

    def parts(self) -> dict:
        """What `CheckpointManager.save` takes: parts with state_dict()."""
        return {"model_state_dict": self.model, "optimizer_state_dict": self.optimizer}

    def plain(self, epoch: int) -> dict:
        """What a plain `torch.save` takes: the same state as a dict of state_dicts."""
        return {"epoch": epoch, "model_state_dict": self.model.state_dict(),
                "optimizer_state_dict": self.optimizer.state_dict()}


def training_state(target_bytes: int) -> TrainingState:
    """UniverSeg with equal widths W (chosen so that weights + Adam moments come near
    `target_bytes`) after one Adam step, so the optimizer holds its full state."""
    width = _width_for(target_bytes)
    torch.manual_seed(0)
    model = build_universeg((width,) * 4)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    for parameter in model.parameters():
        parameter.grad = torch.full_like(parameter, 1e-3)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return TrainingState(model, optimizer, width)


def _width_for(target_bytes: int) -> int:
    low, high = 2, 4096
    while low < high:  # the smallest width whose state reaches the target
        middle = (low + high) // 2
        if _parameters(middle) * _BYTES_PER_PARAMETER < target_bytes:
            low = middle + 1
        else:
            high = middle
    return low


def _parameters(width: int) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in build_universeg((width,) * 4).parameters())
