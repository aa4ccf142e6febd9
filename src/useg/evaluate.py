"""Scores of a trained model on its run's val or test split: Dice, IoU and Hausdorff-95 per image and class.

Tasks follow training's validation rules (`validation_tasks`): one per (target
image, class present in it), supports from the train split and never of the
target's patient, drawn by a fixed seed. With the checkpoint's support size and
seed and one ensemble member, the mean Dice on `val` is the run's `val_dice`.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from useg.checkpoint.atomic import write_file_atomically
from useg.data import SegDataset, Split, Task, data_options, load_dataset, make_batch, validation_tasks
from useg.data.tasks import candidates, choose_supports, class_members
from useg.errors import ConfigError, DataError
from useg.predict import TrainedModel, probabilities

SPLITS = ("val", "test")
CSV_COLUMNS = ("image", "class", "dice", "iou", "hd95_px", "truth_pixels", "predicted_pixels")
TASKS_PER_BATCH = 16
_DISTANCE_CHUNK = 2048  # boundary points per torch.cdist call: bounds memory on noisy masks


@dataclass
class Evaluation:
    """Per (image, class) scores and their summary; `to_dict` is the `--json` schema."""

    checkpoint: str
    epoch: int
    split: str
    support_size: int
    ensembles: int
    seed: int
    rows: list[dict[str, Any]]
    per_class: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def mean_dice(self) -> float | None:
        return mean_over_classes(self.per_class, "dice")

    def to_dict(self) -> dict[str, Any]:
        return {"checkpoint": self.checkpoint, "epoch": self.epoch, "split": self.split,
                "support_size": self.support_size, "ensembles": self.ensembles, "seed": self.seed,
                "per_class": self.per_class, "mean_dice": self.mean_dice,
                "mean_iou": mean_over_classes(self.per_class, "iou"),
                "mean_hd95_px": mean_over_classes(self.per_class, "hd95_px"), "rows": self.rows}


def evaluate(trained: TrainedModel, *, data: str | None = None, annotations: str | None = None,
             split: str = "test", support_size: int | None = None, ensembles: int = 1,
             seed: int | None = None) -> Evaluation:
    """Score `trained` on `split` of its data (default: the data and split it was trained with)."""
    support_size = trained.support_size if support_size is None else support_size
    seed = trained.seed if seed is None else seed
    check_settings(split, support_size, ensembles, seed)
    dataset, saved_split = load_eval_data(trained, data, annotations)
    targets = getattr(saved_split, split)
    if not len(targets):
        raise DataError(f"the {split} split of {trained.path.name} is empty; evaluate --split "
                        f"{'val' if split == 'test' else 'test'} instead")
    tasks = validation_tasks(dataset, targets, saved_split.train, support_size=support_size, seed=seed)
    draws = support_draws(dataset, tasks, saved_split.train, ensembles, seed)
    rows = []
    for start in range(0, len(tasks), TASKS_PER_BATCH):
        chunk = slice(start, start + TASKS_PER_BATCH)
        probs = ensemble_probabilities(trained, dataset, [draw[chunk] for draw in draws])
        rows += [score_row(dataset, task, prob[0] > 0.5) for task, prob in zip(tasks[chunk], probs)]
    result = Evaluation(str(trained.path), trained.epoch, split, support_size, ensembles, seed, rows)
    result.per_class = summarise(rows, dataset.classes)
    return result


def check_settings(split: str, support_size: int, ensembles: int, seed: int) -> None:
    if split not in SPLITS:
        raise ConfigError(f"--split {split} is unknown; use val or test")
    if support_size < 1:
        raise ConfigError(f"--support-size must be at least 1, not {support_size}")
    if ensembles < 1:
        raise ConfigError(f"--ensembles must be at least 1, not {ensembles}")
    if seed < 0:
        raise ConfigError(f"--seed must be 0 or more, not {seed}")


def load_eval_data(trained: TrainedModel, data: str | None, annotations: str | None) -> tuple[SegDataset, Split]:
    """The dataset as the run loaded it (same size, seed, classes) and the split saved in the checkpoint."""
    cfg = trained.config
    if data is None:
        data, annotations = cfg.get("data"), annotations or cfg.get("annotations")
    options = {**data_options(cfg), "annotations": annotations}
    dataset = load_dataset(data, image_size=trained.image_size, seed=trained.seed, **options)
    if trained.classes and dataset.classes != trained.classes:
        raise DataError(f"the data has classes {', '.join(dataset.classes)} but {trained.path.name} was trained on "
                        f"{', '.join(trained.classes)}; pass the run's data with --data")
    if not isinstance(trained.split, dict):
        raise DataError(f"{trained.path.name} holds no saved split; evaluate a checkpoint written by useg train")
    return dataset, Split.from_dict(trained.split, dataset, origin=f"the split saved in {trained.path.name}")


def support_draws(dataset: SegDataset, tasks: list[Task], pool, ensembles: int, seed: int) -> list[list[Task]]:
    """K support sets per task: the validation draw first, then K-1 more from the same candidates."""
    members = class_members(dataset, pool)
    draws = [tasks]
    for member in range(1, ensembles):
        draws.append([redraw(dataset, members, task, seed, member) for task in tasks])
    return draws


def redraw(dataset: SegDataset, members: list[np.ndarray], task: Task, seed: int, member: int) -> Task:
    pool = candidates(members[task.cls], dataset.patients, task.target, exclude_same_patient=True)
    rng = np.random.default_rng([seed, task.target, task.cls, member])
    return Task(task.target, task.cls, choose_supports(rng, pool, len(task.supports)))


def ensemble_probabilities(trained: TrainedModel, dataset: SegDataset, draws: list[list[Task]]) -> torch.Tensor:
    """Mean sigmoid probability (B, 1, H, W) over the ensemble's support draws of the same targets."""
    total = None
    for tasks in draws:
        batch = make_batch(dataset, tasks)
        probs = probabilities(trained.model, batch.target_image, batch.support_images, batch.support_labels)
        total = probs if total is None else total + probs
    return total / len(draws)


def score_row(dataset: SegDataset, task: Task, pred: torch.Tensor) -> dict[str, Any]:
    """One CSV row: the scores of a boolean (H, W) prediction against the task's truth."""
    pred = pred.numpy()
    truth = dataset.masks[task.target, task.cls]
    return {"image": dataset.ids[task.target], "class": dataset.classes[task.cls], **scores(pred, truth)}


def scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """Dice, IoU (both 1 when both masks are empty), HD95 in pixels (None unless both are non-empty)."""
    overlap, union = int((pred & truth).sum()), int((pred | truth).sum())
    total = int(pred.sum()) + int(truth.sum())
    return {"dice": 2 * overlap / total if total else 1.0, "iou": overlap / union if union else 1.0,
            "hd95_px": hausdorff95(pred, truth), "truth_pixels": int(truth.sum()), "predicted_pixels": int(pred.sum())}


def boundary(mask: np.ndarray) -> np.ndarray:
    """Mask pixels with a 4-neighbour outside the mask; the image border counts as outside."""
    padded = np.pad(mask, 1, constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


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
                             for metric in ("dice", "iou", "hd95_px")}
    return summary


def mean_over_classes(per_class: dict[str, dict[str, Any]], metric: str) -> float | None:
    """The unweighted mean of the class means, so a rare class counts as much as a common one."""
    means = [stats[metric]["mean"] for stats in per_class.values() if stats[metric]["mean"] is not None]
    return float(np.mean(means)) if means else None


def csv_text(rows: list[dict[str, Any]]) -> str:
    """Rows as CSV; a missing HD95 is an empty cell."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: "" if row[key] is None else row[key] for key in CSV_COLUMNS})
    return out.getvalue()


def write_csv(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Write the rows atomically: a full disk leaves the previous CSV (or none), never a torn one."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"--csv {path} is a folder; give a file name such as {path / 'evaluation.csv'}")
    return write_file_atomically(path, csv_text(rows).encode("utf-8"), create_folder=True,
                                 then="run useg evaluate again (or pass --csv elsewhere)")
