"""Prediction pictures: target, truth, prediction overlay and the support set used."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from useg.checkpoint.atomic import write_file_atomically


def save_prediction_figure(path: Path, image: np.ndarray, truth: np.ndarray, pred: np.ndarray,
                           support_images: np.ndarray, support_labels: np.ndarray, title: str,
                           then: str = "try again") -> Path:
    """Write one PNG: image | truth | prediction with contours, then a strip of (support, label) pairs.

    Arrays are (H, W) for the target and (S, H, W) for the support set, values in [0, 1].
    `then`: what to do once a write that failed can be retried (see `save_figure`).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = min(len(support_images), 8)
    fig = plt.figure(figsize=(9, 4.6))
    columns = max(shown, 3)
    grid = fig.add_gridspec(3, columns, height_ratios=[3, 1, 1])
    panels = [("image", None), ("ground truth", truth), ("prediction", pred)]
    for col, (name, mask) in enumerate(panels):
        ax = fig.add_subplot(grid[0, col * columns // 3:(col + 1) * columns // 3])
        ax.imshow(image, cmap="gray", vmin=0, vmax=1)
        if mask is not None:
            ax.imshow(np.ma.masked_where(mask < 0.5, mask), cmap="autumn", alpha=0.35, vmin=0, vmax=1)
            if mask.any() and not mask.all():
                ax.contour(mask, levels=[0.5], colors="yellow", linewidths=1)
        if name == "prediction" and truth.any() and not truth.all():
            ax.contour(truth, levels=[0.5], colors="cyan", linewidths=0.8, linestyles="dashed")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    for i in range(shown):
        for row, picture in ((1, support_images[i]), (2, support_labels[i])):
            ax = fig.add_subplot(grid[row, i])
            ax.imshow(picture, cmap="gray", vmin=0, vmax=1)
            ax.axis("off")
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path, dpi=80, then=then)


def save_figure(fig, path: Path, dpi: int, then: str = "try again") -> Path:
    """Render `fig` as PNG in memory and write it atomically (creating its folder); close the figure.

    A full disk or an unwritable folder is one UsegError naming the file, ending with `then`;
    no partial PNG is left behind.
    """
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return write_file_atomically(path, buffer.getvalue(), create_folder=True, then=then)
