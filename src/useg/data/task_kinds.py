"""What a task asks the model to segment: the structure itself, its inverse, or its boundary.

UniverSeg learns the task from its supports' labels. Training swaps whole tasks
for their inverted or boundary version (task augmentation, useg.data.recipe), so
that the only way to know what to segment is to read the supports; `useg evaluate
--task` asks the same questions of a trained model. Both use these functions, so
"inverted" and "edges" mean one thing everywhere.
"""

from __future__ import annotations

import numpy as np

from useg.data.compiled import compiled

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
    kernel = compiled(_edge_pixels)
    if kernel is None:
        band = edges_numpy(mask)
    else:  # the same band, one pixel at a time (useg.data.compiled)
        band = np.empty(mask.shape, bool)
        planes = (-1, *mask.shape[-2:])
        kernel(mask.reshape(planes), band.reshape(planes))
    return band.astype(labels.dtype, copy=False)


def edges_numpy(mask: np.ndarray) -> np.ndarray:
    """`edges` of a bool mask, as a bool band, in whole-array passes."""
    padded = np.pad(mask.astype(np.int8), [(0, 0)] * (mask.ndim - 2) + [(1, 1), (1, 1)], mode="edge")
    rows = padded[..., :-2, :] + 2 * padded[..., 1:-1, :] + padded[..., 2:, :]  # smoothing down the rows
    columns = padded[..., :, :-2] + 2 * padded[..., :, 1:-1] + padded[..., :, 2:]
    gradient_x = rows[..., :, 2:] - rows[..., :, :-2]
    gradient_y = columns[..., 2:, :] - columns[..., :-2, :]
    return (gradient_x != 0) | (gradient_y != 0)


def _edge_pixels(masks, band):  # pragma: no cover (numba)
    """edges_numpy on (n, H, W) masks into `band`, row by row: the smoothed column sums (for the gradient
    across) and the differences down (for the gradient down), then each pixel's two gradients from its
    edge-clamped neighbours. Integer sums, so any order gives the same band."""
    count, height, width = masks.shape
    across, down_diff = np.empty(width, np.int8), np.empty(width, np.int8)
    for i in range(count):
        mask, out = masks[i], band[i]
        for y in range(height):
            above, centre, below = mask[max(y - 1, 0)], mask[y], mask[min(y + 1, height - 1)]
            for x in range(width):
                across[x] = np.int8(above[x]) + 2 * np.int8(centre[x]) + np.int8(below[x])
                down_diff[x] = np.int8(below[x]) - np.int8(above[x])
            row = out[y]
            for x in (0, width - 1):  # the ends, whose outer neighbour is themselves
                left, right = max(x - 1, 0), min(x + 1, width - 1)
                row[x] = (across[right] != across[left]) | (down_diff[left] + 2 * down_diff[x] + down_diff[right] != 0)
            for x in range(1, width - 1):  # no branch: LLVM vectorizes it
                down = down_diff[x - 1] + 2 * down_diff[x] + down_diff[x + 1]
                row[x] = (across[x + 1] != across[x - 1]) | (down != 0)


def task_labels(kind: str, labels: np.ndarray) -> np.ndarray:
    """The labels of the `kind` version of a task whose structure is `labels`."""
    if kind == NORMAL:
        return labels
    if kind == INVERTED:
        return inverted(labels)
    if kind == EDGES:
        return edges(labels)
    raise ValueError(f"unknown task kind {kind!r}; known: {', '.join(TASK_KINDS)}")
