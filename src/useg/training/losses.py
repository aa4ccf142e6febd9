"""Losses and scores for binary segmentation."""

from __future__ import annotations

import torch
import torch.nn.functional as F

SMOOTH = 1e-6


def soft_dice_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice per sample on sigmoid probabilities, averaged over the batch."""
    probs = torch.sigmoid(logits).flatten(1)
    labels = labels.flatten(1)
    overlap = (probs * labels).sum(1)
    total = probs.sum(1) + labels.sum(1)
    return (1 - (2 * overlap + SMOOTH) / (total + SMOOTH)).mean()


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor, kind: str = "dice") -> torch.Tensor:
    """The training loss named in the config: "dice" or "dice+bce"."""
    loss = soft_dice_loss(logits, labels)
    if kind == "dice+bce":
        loss = loss + F.binary_cross_entropy_with_logits(logits, labels)
    return loss


def hard_dice(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Dice of the thresholded prediction (logit > 0) per sample; 1 when both are empty."""
    pred = (logits > 0).flatten(1).float()
    labels = (labels > 0.5).flatten(1).float()
    overlap = (pred * labels).sum(1)
    total = pred.sum(1) + labels.sum(1)
    return torch.where(total > 0, 2 * overlap / total.clamp_min(1), torch.ones_like(total))
