"""What a task asks the model to segment: the structure itself, its inverse, or its boundary.

UniverSeg learns the task from its supports' labels. Training swaps whole tasks
for their inverted or boundary version (task augmentation, useg.data.recipe), so
that the only way to know what to segment is to read the supports; `useg evaluate
--task` asks the same questions of a trained model. Both use these functions, so
"inverted" and "edges" mean one thing everywhere.
"""

from __future__ import annotations

import numpy as np

NORMAL, INVERTED, EDGES = "normal", "inverted", "edges"
TASK_KINDS = (NORMAL, INVERTED, EDGES)


def inverted(labels: np.ndarray) -> np.ndarray:
    """Foreground <-> background of 0/1 (bool or float) labels, in their own dtype."""
    return (labels <= 0.5).astype(labels.dtype, copy=False)


def edges(labels: np.ndarray) -> np.ndarray:
    """The boundary band of 0/1 labels (..., H, W): where the Sobel gradient of the label is non-zero.

    The band is two pixels wide (one on each side of the boundary, diagonals included);
    the image's border is not an edge (the label is extended by its edge values). Every
    plane of a stack is treated on its own, in the labels' own dtype.
    """
    mask = np.asarray(labels) > 0.5
    padded = np.pad(mask.astype(np.int8), [(0, 0)] * (mask.ndim - 2) + [(1, 1), (1, 1)], mode="edge")
    rows = padded[..., :-2, :] + 2 * padded[..., 1:-1, :] + padded[..., 2:, :]  # smoothing down the rows
    columns = padded[..., :, :-2] + 2 * padded[..., :, 1:-1] + padded[..., :, 2:]
    gradient_x = rows[..., :, 2:] - rows[..., :, :-2]
    gradient_y = columns[..., 2:, :] - columns[..., :-2, :]
    return ((gradient_x != 0) | (gradient_y != 0)).astype(labels.dtype, copy=False)


def task_labels(kind: str, labels: np.ndarray) -> np.ndarray:
    """The labels of the `kind` version of a task whose structure is `labels`."""
    if kind == NORMAL:
        return labels
    if kind == INVERTED:
        return inverted(labels)
    if kind == EDGES:
        return edges(labels)
    raise ValueError(f"unknown task kind {kind!r}; known: {', '.join(TASK_KINDS)}")
