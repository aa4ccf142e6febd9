"""Scores of one boolean prediction against its truth (Dice, IoU, HD95) and their summaries."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

METRICS = ("dice", "iou", "hd95_px")
_DISTANCE_CHUNK = 2048  # boundary points per torch.cdist call: bounds memory on noisy masks


def scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """Dice, IoU (both 1 when both masks are empty), HD95 in pixels (None unless both are non-empty)."""
    overlap, union = int((pred & truth).sum()), int((pred | truth).sum())
    total = int(pred.sum()) + int(truth.sum())
    return {"dice": 2 * overlap / total if total else 1.0, "iou": overlap / union if union else 1.0,
            "hd95_px": hausdorff95(pred, truth), "truth_pixels": int(truth.sum()), "predicted_pixels": int(pred.sum())}


def boundary(mask: np.ndarray, thickness: int = 1) -> np.ndarray:
    """Mask pixels within `thickness` of its edge: a 4-neighbour outside the mask (the image border
    counts as outside) makes a pixel edge. Scores use the one-pixel edge, overlays a thicker one."""
    inner = mask.copy()
    for _ in range(thickness):
        padded = np.pad(inner, 1, constant_values=False)
        inner = inner & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def nearest_distances(points: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """For each point, the Euclidean distance to the nearest of `others`."""
    return torch.cat([torch.cdist(part, others).min(dim=1).values for part in points.split(_DISTANCE_CHUNK)])


def hausdorff95(pred: np.ndarray, truth: np.ndarray) -> float | None:
    """95th percentile of the boundary-to-boundary distances, both directions pooled (as medpy's hd95)."""
    if not pred.any() or not truth.any():
        return None
    a = torch.from_numpy(np.argwhere(boundary(pred))).double()
    b = torch.from_numpy(np.argwhere(boundary(truth))).double()
    distances = torch.cat([nearest_distances(a, b), nearest_distances(b, a)])
    return float(np.percentile(distances.numpy(), 95))


def describe(values: list[float]) -> dict[str, float | int | None]:
    """Mean, sample std (0 for one value), median and count; None when there are no values."""
    if not values:
        return {"mean": None, "std": None, "median": None, "n": 0}
    array = np.asarray(values, dtype=np.float64)
    std = float(array.std(ddof=1)) if len(array) > 1 else 0.0
    return {"mean": float(array.mean()), "std": std, "median": float(np.median(array)), "n": len(array)}


def summarise(rows: list[dict[str, Any]], classes: list[str]) -> dict[str, dict[str, Any]]:
    """Per class with at least one row: `describe` of Dice, IoU and HD95 (HD95 over its non-null rows)."""
    summary = {}
    for name in classes:
        mine = [row for row in rows if row["class"] == name]
        if mine:
            summary[name] = {metric: describe([row[metric] for row in mine if row[metric] is not None])
                             for metric in METRICS}
    return summary


def mean_over_classes(per_class: dict[str, dict[str, Any]], metric: str) -> float | None:
    """The unweighted mean of the class means, so a rare class counts as much as a common one."""
    means = [stats[metric]["mean"] for stats in per_class.values() if stats[metric]["mean"] is not None]
    return float(np.mean(means)) if means else None
