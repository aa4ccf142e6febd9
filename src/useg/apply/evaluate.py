"""Scores of a trained model: Dice, IoU and Hausdorff-95 per image and class, at each image's native size.

Tasks follow training's validation rules: one per (target image, class present
in it), supports never the target nor of the target's patient, drawn by a
generator seeded with (seed, target, class). `eval_data` decides which images
are targets and supports (the run's saved split, or another labelled folder).
With the checkpoint's support size and seed and one ensemble member, the mean
Dice on the run's `val` split is the run's `val_dice` (for data stored at the
model's size). Several support sizes or ensemble counts make a sweep: the same
targets and first draws at every point.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from useg.checkpoint import warn_to_stderr as warn  # stderr: `--json` output stays parseable
from useg.data import SegDataset, Task, make_batch
from useg.data.geometry import from_square
from useg.data.medical import keeping_last_mask
from useg.data.tasks import candidates, choose_supports, class_members
from useg.errors import ConfigError, DataError
from useg.apply.outputs import Written, write_keeping_earlier
from useg.apply.targets import SPLITS, EvalSet, load_eval_set
from useg.apply.predict import TrainedModel, probabilities
from useg.apply.scores import describe, hausdorff95, mean_over_classes, scores, summarise

__all__ = ["SPLITS", "Evaluation", "evaluate", "hausdorff95", "scores", "describe", "write_csv"]

CSV_COLUMNS = ("image", "class", "dice", "iou", "hd95_px", "truth_pixels", "predicted_pixels")
SWEEP_COLUMNS = ("support_size", "ensembles")
TASKS_PER_BATCH = 16
SUPPORTS_PER_BATCH = 128  # bounds a forward's memory: (tasks, supports, channels, H, W) activations


@dataclass
class SweepPoint:
    """The rows and per-class summary of one (support size, ensemble count)."""

    support_size: int
    ensembles: int
    rows: list[dict[str, Any]]
    per_class: dict[str, dict[str, Any]] = field(default_factory=dict)
    tasks: list[Task] = field(default_factory=list, repr=False)  # rows[i] scores tasks[i] (its first draw)

    def to_dict(self) -> dict[str, Any]:
        return {"support_size": self.support_size, "ensembles": self.ensembles,
                "mean_dice": mean_over_classes(self.per_class, "dice"),
                "mean_iou": mean_over_classes(self.per_class, "iou"),
                "mean_hd95_px": mean_over_classes(self.per_class, "hd95_px"),
                "tasks": len(self.rows), "per_class": self.per_class}


@dataclass
class Evaluation:
    """The scores of the largest support size and ensemble count, every sweep point, and what was skipped."""

    checkpoint: str
    epoch: int
    split: str
    seed: int
    data: EvalSet
    class_status: dict[str, str]
    points: list[SweepPoint]
    skipped: list[dict[str, Any]] = field(default_factory=list)

    @property
    def main(self) -> SweepPoint:
        return self.points[-1]

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self.main.rows

    @property
    def per_class(self) -> dict[str, dict[str, Any]]:
        return self.main.per_class

    @property
    def support_size(self) -> int:
        return self.main.support_size

    @property
    def ensembles(self) -> int:
        return self.main.ensembles

    @property
    def mean_dice(self) -> float | None:
        return mean_over_classes(self.per_class, "dice")

    @property
    def is_sweep(self) -> bool:
        return len(self.points) > 1 or bool(self.skipped)

    def support_sizes(self) -> list[int]:
        return sorted({point.support_size for point in self.points})

    def ensemble_counts(self) -> list[int]:
        return sorted({point.ensembles for point in self.points})

    def all_rows(self) -> list[dict[str, Any]]:
        """Every point's rows, each with its support size and ensemble count."""
        return [{**row, "support_size": point.support_size, "ensembles": point.ensembles}
                for point in self.points for row in point.rows]

    def to_dict(self) -> dict[str, Any]:
        """The `--json` schema (CHECKPOINT_GUIDE.md, --json schemas)."""
        return {"checkpoint": self.checkpoint, "epoch": self.epoch, "split": self.split,
                "data": self.data.data, "support_data": self.data.support_data, "held_out": self.data.held_out,
                "support_size": self.support_size, "ensembles": self.ensembles, "seed": self.seed,
                "classes": self.class_status, "per_class": self.per_class, "mean_dice": self.mean_dice,
                "mean_iou": mean_over_classes(self.per_class, "iou"),
                "mean_hd95_px": mean_over_classes(self.per_class, "hd95_px"), "rows": self.rows,
                "sweep": [point.to_dict() for point in self.points], "skipped_support_sizes": self.skipped}


def evaluate(trained: TrainedModel, *, data: str | None = None, annotations: str | None = None,
             split: str = "test", support_size: int | list[int] | None = None, ensembles: int | list[int] = 1,
             seed: int | None = None, support: str | None = None, data_options: dict | None = None,
             with_paths: bool = False, progress: Callable[[int, int], None] | None = None) -> Evaluation:
    """Score `trained` on its run's `split`, or on every image of another folder `data` (see eval_data).

    `data_options`: load_dataset keywords from the command line (label, classes, class_names, patient_pattern).
    `progress(done, total)`: called as tasks are scored (every support size's tasks count in `total`).

    A list of support sizes or ensemble counts sweeps them; sizes above what every target's
    pool can give are skipped (one warning each) instead of drawing repeated supports.
    """
    sizes = sorted(set(as_list(support_size, trained.support_size)))
    counts = sorted(set(as_list(ensembles, 1)))
    seed = trained.seed if seed is None else seed
    check_settings(sizes, counts, seed)
    if trained.export is not None and data is None:
        raise ConfigError(f"{trained.path.name} is an export: it carries no split of its run's data (nor the data's "
                          "path); pass --data FOLDER to score a labelled folder")
    evalset = load_eval_set(trained, data=data, annotations=annotations, split=split, support=support,
                            options=data_options)
    status = evalset.class_status(trained.classes)
    drawn = {size: draw_tasks(evalset, size, seed) for size in sizes}
    kept = [size for size in sizes if len(sizes) == 1 or drawn[size][1] >= size]
    if not kept:
        raise DataError(f"every --support-size ({', '.join(map(str, sizes))}) is larger than the "
                        f"{drawn[sizes[0]][1]} supports available to every target; choose smaller sizes")
    skipped = [{"support_size": size, "available": drawn[size][1]} for size in sizes if size not in kept]
    for record in skipped:
        warn(f"support size {record['support_size']} skipped: only {record['available']} support images are "
             f"available for every target (the smallest pool of a class); sizes up to {record['available']} "
             "are scored")
    if len(sizes) == 1:
        check_pool(evalset, drawn[sizes[0]][0], sizes[0])
    points = []
    advance = progress_counter(progress, sum(len(drawn[size][0]) for size in kept))
    with keeping_last_mask():  # a volume's slices are consecutive targets: read each mask volume once
        for size in kept:
            points += score_tasks(trained, evalset, drawn[size][0], size, counts, seed, with_paths, advance)
    return Evaluation(str(trained.path), trained.epoch, evalset.split, seed, evalset, status, points, skipped)


def progress_counter(progress: Callable[[int, int], None] | None, total: int) -> Callable[[int], None]:
    """A function that adds scored tasks to a running count and reports (done, total) to `progress`."""
    done = 0

    def advance(count: int) -> None:
        nonlocal done
        done += count
        if progress is not None:
            progress(done, total)

    if progress is not None:
        progress(0, total)
    return advance


def as_list(value: int | list[int] | None, default: int) -> list[int]:
    if value is None:
        return [default]
    return [int(value)] if isinstance(value, int) else [int(item) for item in value]


def check_settings(sizes: list[int], counts: list[int], seed: int) -> None:
    if sizes[0] < 1:
        raise ConfigError(f"--support-size must be at least 1, not {sizes[0]}")
    if counts[0] < 1:
        raise ConfigError(f"--ensembles must be at least 1, not {counts[0]}")
    if seed < 0:
        raise ConfigError(f"--seed must be 0 or more, not {seed}")


def draw_tasks(evalset: EvalSet, size: int, seed: int) -> tuple[list[Task], int]:
    """One task per (target, class it shows) with a candidate support; and the smallest candidate pool.

    The draw is training's `validation_tasks` draw, so the run's val split scores its val_dice.
    """
    dataset = evalset.dataset
    members, presence = class_members(dataset, evalset.pool), dataset.class_presence()
    tasks, smallest = [], None
    for target in evalset.targets.tolist():
        for cls in np.flatnonzero(presence[target]).tolist():
            pool = candidates(members[cls], dataset.patients, target, exclude_same_patient=True)
            if len(pool):
                smallest = len(pool) if smallest is None else min(smallest, len(pool))
                rng = np.random.default_rng([seed, target, cls])
                tasks.append(Task(target, cls, choose_supports(rng, pool, size)))
    if not tasks:
        where = "the training split" if not evalset.held_out else "another patient's image"
        raise DataError(f"none of the {len(evalset.targets)} target images has a class with a support image in "
                        f"{where}; give the data more patients (or pass --support DIR2)")
    return tasks, smallest


def check_pool(evalset: EvalSet, tasks: list[Task], size: int) -> None:
    """A single support size needs one target whose pool holds `size` images (smaller pools repeat some)."""
    dataset = evalset.dataset
    members = class_members(dataset, evalset.pool)
    largest = max(len(candidates(members[task.cls], dataset.patients, task.target, True)) for task in tasks)
    if largest < size:
        where = "training (support pool)" if not evalset.held_out else "support"
        raise DataError(f"only {largest} {where} images can serve as supports of one task, fewer than "
                        f"--support-size {size}; lower --support-size to {largest} or less")


def score_tasks(trained: TrainedModel, evalset: EvalSet, tasks: list[Task], size: int, counts: list[int],
                seed: int, with_paths: bool, advance: Callable[[int], None] = lambda count: None) -> list[SweepPoint]:
    """One point per ensemble count: member k averages the first k support draws of each task."""
    points = {count: SweepPoint(size, count, []) for count in counts}
    members = class_members(evalset.dataset, evalset.pool)
    step = max(1, min(TASKS_PER_BATCH, SUPPORTS_PER_BATCH // size))
    for start in range(0, len(tasks), step):
        chunk = tasks[start:start + step]
        total = None
        for member in range(counts[-1]):
            draw = chunk if member == 0 else [redraw(evalset.dataset, members, task, seed, member) for task in chunk]
            probs = task_probabilities(trained, evalset.dataset, draw)
            total = probs if total is None else total + probs
            if member + 1 in points:
                points[member + 1].rows += [score_row(evalset, task, prob[0] / (member + 1), with_paths)
                                            for task, prob in zip(chunk, total)]
                points[member + 1].tasks += chunk
        advance(len(chunk))
    for point in points.values():
        point.per_class = summarise(point.rows, evalset.dataset.classes)
    return list(points.values())


def redraw(dataset: SegDataset, members: list[np.ndarray], task: Task, seed: int, member: int) -> Task:
    """Ensemble member `member`'s supports for the task: same candidates, own generator."""
    pool = candidates(members[task.cls], dataset.patients, task.target, exclude_same_patient=True)
    rng = np.random.default_rng([seed, task.target, task.cls, member])
    return Task(task.target, task.cls, choose_supports(rng, pool, len(task.supports)))


def task_probabilities(trained: TrainedModel, dataset: SegDataset, tasks: list[Task]) -> torch.Tensor:
    """Sigmoid probabilities (B, 1, H, W) of the tasks at the model's size, on the model's device."""
    batch = make_batch(dataset, tasks).to(next(trained.model.parameters()).device)
    with torch.no_grad():
        return probabilities(trained.model, batch.target_image, batch.support_images, batch.support_labels).cpu()


def score_row(evalset: EvalSet, task: Task, prob: torch.Tensor, with_paths: bool) -> dict[str, Any]:
    """One CSV row: the probability map brought back to the target's native size (as predict does), thresholded
    at one half and scored against the native truth; HD95 is in pixels of the original image."""
    dataset = evalset.dataset
    truth = evalset.native_masks(task.target)[task.cls]
    prob = from_square(prob, truth.shape, evalset.resize)
    row = {"image": dataset.ids[task.target], "class": dataset.classes[task.cls], **scores(prob.numpy() > 0.5, truth)}
    if with_paths:
        row["file"] = evalset.files[task.target]
    return row


def task_prediction(trained: TrainedModel, evalset: EvalSet, task: Task, ensembles: int, seed: int) -> np.ndarray:
    """The 0/1 prediction a row scored: the mean of `ensembles` draws (the first is `task`'s), at the target's
    native size."""
    members = class_members(evalset.dataset, evalset.pool)
    total = None
    for member in range(ensembles):
        draw = task if member == 0 else redraw(evalset.dataset, members, task, seed, member)
        probs = task_probabilities(trained, evalset.dataset, [draw])[0, 0]
        total = probs if total is None else total + probs
    return from_square(total / ensembles, evalset.native_masks(task.target).shape[1:], evalset.resize).numpy() > 0.5


def csv_text(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    """Rows as CSV; a missing HD95 is an empty cell."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: "" if row[key] is None else row[key] for key in columns})
    return out.getvalue()


def csv_columns(result: Evaluation, with_paths: bool) -> tuple[str, ...]:
    """Today's columns; a sweep adds support_size and ensembles, --with-paths adds file."""
    return CSV_COLUMNS + (SWEEP_COLUMNS if result.is_sweep else ()) + (("file",) if with_paths else ())


def write_csv(path: str | Path, result: Evaluation | list[dict[str, Any]], with_paths: bool = False) -> Written:
    """Write the rows (every sweep point's) atomically: a full disk leaves the previous CSV (or none). An earlier
    CSV of that name with other rows is kept as `<name>_<its time>.csv` (apply/outputs.py)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"--csv {path} is a folder; give a file name such as {path / 'evaluation.csv'}")
    if isinstance(result, list):
        text = csv_text(result, CSV_COLUMNS)
    else:
        text = csv_text(result.all_rows(), csv_columns(result, with_paths))
    return write_keeping_earlier(path, text.encode("utf-8"), then="run useg evaluate again (or pass --csv elsewhere)")
