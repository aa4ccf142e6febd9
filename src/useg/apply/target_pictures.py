"""`useg evaluate --pictures N`: the N worst and N best scored targets, one picture each, so failures can be seen.

Each picture is training's figure (image | ground truth | prediction with the
truth's outline, and the first draw's supports) at the target's native size:
the image as it is on disk, the stored truth, and the prediction the CSV row
scored (resized back as predict does). Titles name targets by anonymous id and
carry the row's Dice; file names (`worst_01_p003_i001_cyst.png`, then
`best_01_...`) sort by rank. `--with-paths` adds the image's file to the note
under the title. The pictures of the largest support size and ensemble count
are drawn (the CSV's main rows).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from useg.apply.evaluate import Evaluation, task_prediction
from useg.apply.outputs import keep_folder
from useg.apply.predict import TrainedModel
from useg.apply.sweep_plot import scored_on
from useg.apply.targets import EvalSet
from useg.data.geometry import from_square
from useg.data.images import is_medical, open_upright, to_grey
from useg.data.medical import read_medical_image, slices
from useg.errors import DataError
from useg.viz import class_display_name, save_prediction_figure

THEN = "run useg evaluate again (or pass --csv elsewhere)"


def pictures_folder(csv_path: Path) -> Path:
    """`evaluation_test_pictures/` beside `evaluation_test.csv`."""
    return csv_path.parent / f"{csv_path.stem}_pictures"


def worst_and_best(rows: list[dict], count: int) -> list[tuple[str, int, int]]:
    """(kind, rank, row index) of the `count` lowest-Dice rows, then of the `count` highest among the others."""
    order = sorted(range(len(rows)), key=lambda index: (rows[index]["dice"], index))
    worst = order[:count]
    best = [index for index in reversed(order) if index not in worst][:count]
    return [("worst", rank, index) for rank, index in enumerate(worst, 1)] + \
           [("best", rank, index) for rank, index in enumerate(best, 1)]


def keep_earlier_pictures(folder: Path) -> Path | None:
    """Set an earlier evaluation's pictures aside (apply/outputs.py): a smaller N must not leave some of them
    among the new ones. Where they are kept, or None."""
    return keep_folder(folder, THEN)


def save_target_pictures(folder: Path, result: Evaluation, trained: TrainedModel, count: int,
                         with_paths: bool = False) -> list[Path]:
    """Draw the picked targets into `folder` (see the module docstring); the pictures written."""
    point, evalset = result.main, result.data
    slice_axis = trained.slice_axis
    written = []
    for kind, rank, index in worst_and_best(point.rows, count):
        row, task = point.rows[index], point.tasks[index]
        truth = evalset.native_masks(task.target)[task.cls]
        pred = task_prediction(trained, evalset, task, point.ensembles, result.seed)
        image = native_image(evalset, task.target, truth.shape, slice_axis)
        digits = max(2, len(str(count)))
        name = f"{kind}_{rank:0{digits}d}_{safe_name(row['image'])}_{safe_name(row['class'])}.png"
        title = (f"{kind} {rank} of {count} · {row['image']} · class {class_display_name(row['class'])} · "
                 f"Dice {row['dice']:.3f}")
        note = (f"S={point.support_size}, ensembles={point.ensembles}, seed={result.seed} · {scored_on(result)} · "
                f"native size {truth.shape[1]}x{truth.shape[0]}") + (f" · {row['file']}" if with_paths else "")
        supports = evalset.dataset
        written.append(save_prediction_figure(
            folder / name, image, truth.astype(np.float32), pred.astype(np.float32), supports.images[task.supports],
            supports.masks[task.supports, task.cls].astype(np.float32), title, then=THEN, note=note))
    return written


def safe_name(text: str) -> str:
    """A class name or image id (`d1/p001_i000`) as a file-name part: letters, digits, `-` and `_` only."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "class"


def native_image(evalset: EvalSet, index: int, shape: tuple[int, int], slice_axis: int) -> np.ndarray:
    """The target's image at its size on disk, read as training reads it; the loaded image resized to `shape`
    where the file is not found or differs in size (the synthetic set, a moved folder)."""
    image = read_native_image(evalset, index, slice_axis)
    if image is not None and image.shape == tuple(shape):
        return image
    loaded = evalset.dataset.images[index]
    if loaded.shape == tuple(shape):
        return loaded
    native = from_square(torch.from_numpy(loaded.astype(np.float32)), shape, evalset.resize)  # as predictions are
    return np.clip(native.numpy(), 0.0, 1.0)


def read_native_image(evalset: EvalSet, index: int, slice_axis: int) -> np.ndarray | None:
    """(H, W) grey in [0, 1] from the file the dataset recorded (`images/a.png`, `images/ct.nii.gz#slice=3`)."""
    label = evalset.files[index] if index < len(evalset.files) else ""
    folder = evalset.folder_of(index)
    if not label or folder is None:
        return None
    relative, _, number = label.partition("#slice=")
    root = Path(folder).expanduser()
    roots = [root, *sorted(path for path in root.glob("*/") if path.is_dir())]  # MMOTU: relative to OTU_2d/
    path = next((place / relative for place in roots if (place / relative).is_file()), None)
    if path is None:
        return None
    try:
        if is_medical(path):
            volume = read_medical_image(path, relative)
            return volume if not number else np.asarray(slices(volume, slice_axis)[int(number)])
        return to_grey(open_upright(path, relative))
    except (DataError, OSError, ValueError, IndexError):
        return None
