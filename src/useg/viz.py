"""Prediction pictures: target, truth, prediction overlay and the support set used."""

from __future__ import annotations

import functools
import io
import json
from pathlib import Path

import numpy as np

from useg.files import write_file_atomically


TRUTH_COLOUR = "#00e5ff"  # cyan: the ground truth, filled in its panel and outlined over the prediction
PREDICTION_COLOUR = "#ff8c00"  # orange: the prediction; both stand out on a grey image and from each other
FILL_ALPHA = 0.4

# Readable names of the classes of the layouts we know; other names are shown with spaces for underscores.
CLASS_DISPLAY_NAMES = {
    "nang_don_thuy": "unilocular cyst",  # Ovatus (Vietnamese: nang = cyst, don/da thuy = uni-/multilocular)
    "nang_da_thuy": "multilocular cyst",
    "nang_don_thuy_dac": "unilocular solid cyst",  # dac = solid
    "nang_da_thuy_dac": "multilocular solid cyst",
    "u_bi": "dermoid tumour",
    "u_dac": "solid tumour",
}


def class_display_name(name: str) -> str:
    """`u_dac` -> `solid tumour (u_dac)`, `septated_cyst` -> `septated cyst`: what a figure calls a class."""
    readable = CLASS_DISPLAY_NAMES.get(name)
    return f"{readable} ({name})" if readable else name.replace("_", " ")


def prediction_figure(image: np.ndarray, truth: np.ndarray, pred: np.ndarray, support_images: np.ndarray,
                      support_labels: np.ndarray, title: str, note: str | None = None):
    """The training picture as a matplotlib Figure: image | ground truth | prediction (with the truth's
    outline), a legend of the two colours, and the support strip labelled as images over masks.

    Arrays are (H, W) for the target and (S, H, W) for the support set, values in [0, 1];
    `note` (e.g. that colour input was converted to grey) is written under the title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    shown = min(len(support_images), 8)
    fig = plt.figure(figsize=(9, 5))
    columns = max(shown, 3)
    grid = fig.add_gridspec(3, columns, height_ratios=[3, 1, 1], top=0.86 if note else 0.9, bottom=0.1)
    panels = [("image", None, None), ("ground truth", truth, TRUTH_COLOUR), ("prediction", pred, PREDICTION_COLOUR)]
    for col, (name, mask, colour) in enumerate(panels):
        ax = fig.add_subplot(grid[0, col * columns // 3:(col + 1) * columns // 3])
        ax.imshow(image, cmap="gray", vmin=0, vmax=1)
        if mask is not None:
            draw_mask(ax, mask, colour)
        if name == "prediction" and truth.any() and not truth.all():
            ax.contour(truth, levels=[0.5], colors=TRUTH_COLOUR, linewidths=0.9, linestyles="dashed")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    for i in range(shown):
        strip = ((1, support_images[i], "support\nimages"), (2, support_labels[i], "support\nmasks"))
        for row, picture, label in strip:
            ax = fig.add_subplot(grid[row, i])
            ax.imshow(picture, cmap="gray", vmin=0, vmax=1)
            bare_axes(ax)
            if i == 0:
                ax.set_ylabel(label, fontsize=8)
    fig.legend(handles=[Patch(color=TRUTH_COLOUR, alpha=0.8, label="ground truth"),
                        Patch(color=PREDICTION_COLOUR, alpha=0.8, label="prediction"),
                        Line2D([], [], color=TRUTH_COLOUR, linestyle="dashed", label="ground truth outline")],
               loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    if note:
        fig.text(0.5, 0.905, note, ha="center", fontsize=8, style="italic")
    return fig


def draw_mask(ax, mask: np.ndarray, colour: str) -> None:
    """Fill the mask in `colour` and outline it, over the image already drawn on `ax`."""
    from matplotlib.colors import ListedColormap

    ax.imshow(np.ma.masked_where(mask < 0.5, mask), cmap=ListedColormap([colour]), alpha=FILL_ALPHA, vmin=0, vmax=1)
    if mask.any() and not mask.all():
        ax.contour(mask, levels=[0.5], colors=colour, linewidths=1)


def bare_axes(ax) -> None:
    """No ticks and no frame, but a y label still shows (axis('off') would hide it)."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


COLOUR_NOTE = "colour input, shown and trained on in grey (mean of R, G and B)"


def colour_input_note(run_dir: Path, image_id: str) -> str | None:
    """COLOUR_NOTE when the file behind `image_id` (found through the run's data_index.json) is a colour
    image, which the loaders turn into grey; None for grey files, the synthetic set, or an unknown file."""
    from useg.data.index import INDEX_NAME, image_folder

    try:
        index = json.loads((Path(run_dir) / INDEX_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # no index (the synthetic set, an older run) or an unreadable one
        return None
    if not isinstance(index, dict):
        return None
    entry = (index.get("images") or {}).get(image_id) or {}
    folder = image_folder(index, entry)
    if folder is None or not entry.get("image") or entry.get("slice") is not None:
        return None  # volumes are grey by nature
    return COLOUR_NOTE if is_colour_file(folder, entry["image"]) else None


@functools.lru_cache(maxsize=256)
def is_colour_file(data: Path, relative: str) -> bool:
    """True when the image at `relative` (to the data folder, or to a layout folder inside it such as
    MMOTU's OTU_2d) has channels that differ: colour that the grey conversion discards."""
    from PIL import Image

    candidates = [data / relative, *(folder / relative for folder in sorted(data.glob("*/")) if folder.is_dir())]
    path = next((candidate for candidate in candidates if candidate.is_file()), None)
    if path is None:
        return False
    try:
        with Image.open(path) as image:
            if image.mode not in ("RGB", "RGBA", "P", "CMYK", "YCbCr"):
                return False
            image.draft("RGB", (64, 64))  # JPEG decodes small directly; enough to see colour
            rgb = np.asarray(image.convert("RGB").resize((64, 64)), dtype=np.int16)
    except (OSError, ValueError):
        return False
    return int((rgb.max(axis=2) - rgb.min(axis=2)).max()) > 8


def save_prediction_figure(path: Path, image: np.ndarray, truth: np.ndarray, pred: np.ndarray,
                           support_images: np.ndarray, support_labels: np.ndarray, title: str,
                           then: str = "try again", note: str | None = None) -> Path:
    """Write `prediction_figure` as one PNG (atomically); `then`: what to do once a failed write can be retried."""
    fig = prediction_figure(image, truth, pred, support_images, support_labels, title, note)
    legend = ", ".join(text.get_text() for text in fig.legends[0].get_texts())
    # The PNG's text chunks repeat what the figure shows, for readers and tests that do not look at pixels.
    metadata = {"Title": title, "Description": f"legend: {legend}" + (f"; note: {note}" if note else "")}
    return save_figure(fig, path, dpi=80, then=then, metadata=metadata)


GREY_SATURATION = 0.12  # mean saturation below which an image counts as grey: any vivid tint contrasts with it


def contrasting_tints(rgb: np.ndarray, count: int, for_grey: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """`count` overlay tints (RGB 0-255) that stand out on the (H, W, 3) uint8 image `rgb`.

    A grey image gets `for_grey` (cycled). A coloured one (e.g. purple H&E staining) gets fully
    saturated hues centred on the opposite of its mean hue (weighted by saturation), spread
    at most 60 degrees apart so that several classes stay apart from each other and from the image.
    """
    import colorsys

    from PIL import Image

    small = Image.fromarray(np.ascontiguousarray(rgb[..., :3])).resize((64, 64)).convert("HSV")
    hsv = np.asarray(small, dtype=np.float64) / 255.0
    hue, saturation = hsv[..., 0] * 2 * np.pi, hsv[..., 1] * hsv[..., 2]  # dark pixels carry no hue
    if saturation.mean() < GREY_SATURATION:
        return [for_grey[index % len(for_grey)] for index in range(count)]
    mean_hue = np.arctan2((saturation * np.sin(hue)).sum(), (saturation * np.cos(hue)).sum()) / (2 * np.pi)
    spacing = min(1 / 6, 0.5 / max(count, 1))
    hues = [(mean_hue + 0.5 + (index - (count - 1) / 2) * spacing) % 1.0 for index in range(count)]
    return [tuple(round(255 * channel) for channel in colorsys.hsv_to_rgb(h, 1.0, 1.0)) for h in hues]


def save_figure(fig, path: Path, dpi: int, then: str = "try again", metadata: dict[str, str] | None = None) -> Path:
    """Render `fig` as PNG in memory and write it atomically (creating its folder); close the figure.

    A full disk or an unwritable folder is one UsegError naming the file, ending with `then`;
    no partial PNG is left behind.
    """
    return write_file_atomically(path, figure_png(fig, dpi, metadata), create_folder=True, then=then)


def figure_png(fig, dpi: int, metadata: dict[str, str] | None = None) -> bytes:
    """`fig` as PNG bytes (with `metadata` as text chunks); the figure is closed."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=dpi, metadata=metadata)
    finally:
        plt.close(fig)
    return buffer.getvalue()
