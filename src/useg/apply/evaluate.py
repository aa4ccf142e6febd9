"""Scores of a trained model: Dice, IoU and Hausdorff-95 per image and class, at each image's native size.

Tasks follow training's validation rules: one per (target image, class present
in it), supports never the target nor of the target's patient, drawn by a
generator seeded with (seed, target, class). `eval_data` decides which images
are targets and supports (the run's saved split, or another labelled folder).
With the checkpoint's support size and seed and one ensemble member, the mean
Dice on the run's `val` split is the run's `val_dice` (for data stored at the
model's size). Several support sizes or ensemble counts make a sweep: the same
targets and first draws at every point.

In-context checks (`task_kinds`, useg.data.task_kinds) score the same targets with
the same support draws as another task: `inverted` gives the supports' labels
inverted, inverts the prediction back and scores it against the target's true mask
at its native size (a model that reads its supports scores about its normal Dice,
one that ignores them about 0); `edges` gives the supports' boundary bands and
scores the prediction against the band of the target's truth. The band is a few
pixels of the model's grid, so edges are scored at the model's square size
(`image_size`), against the band of the square truth the model trains on, HD95 in
those pixels.
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
from useg.data.task_kinds import EDGES, INVERTED, NORMAL, TASK_KINDS, edges, inverted, task_labels
from useg.data.tasks import candidates, choose_supports, class_members
from useg.errors import ConfigError, DataError
from useg.apply.outputs import Written, write_keeping_earlier
from useg.apply.targets import SPLITS, EvalSet, load_eval_set
from useg.apply.predict import TrainedModel, probabilities
from useg.apply.scores import describe, hausdorff95, mean_over_classes, scores, summarise

__all__ = ["SPLITS", "Evaluation", "evaluate", "hausdorff95", "scores", "describe", "write_csv"]

CSV_COLUMNS = ("image", "class", "dice", "iou", "hd95_px", "truth_pixels", "predicted_pixels")
SWEEP_COLUMNS = ("support_size", "ensembles")
TASK_COLUMN = "task"  # the last CSV column when in-context checks are scored: normal, inverted or edges
DATASET_COLUMN = "dataset"  # after `image` on a run over several datasets: the name of the image's dataset
TASKS_PER_BATCH = 16
SUPPORTS_PER_BATCH = 128  # bounds a forward's memory: (tasks, supports, channels, H, W) activations


@dataclass
class KindScores:
    """The rows and per-class summary of one in-context check (an inverted or edges task) at one sweep point;
    rows[i] scores the same task as the point's rows[i]."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    per_class: dict[str, dict[str, Any]] = field(default_factory=dict)


def means(per_class: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """The means over classes of a per-class summary, under their JSON names."""
    return {"mean_dice": mean_over_classes(per_class, "dice"), "mean_iou": mean_over_classes(per_class, "iou"),
            "mean_hd95_px": mean_over_classes(per_class, "hd95_px")}


def scored_at(kind: str, image_size: int) -> str:
    """Where a task kind is scored (module docstring): `native` or `model square 32x32`."""
    return f"model square {image_size}x{image_size}" if kind == EDGES else "native"


@dataclass
class SweepPoint:
    """The rows and per-class summary of one (support size, ensemble count), and of its in-context checks."""

    support_size: int
    ensembles: int
    rows: list[dict[str, Any]]
    per_class: dict[str, dict[str, Any]] = field(default_factory=dict)
    tasks: list[Task] = field(default_factory=list, repr=False)  # rows[i] scores tasks[i] (its first draw)
    checks: dict[str, KindScores] = field(default_factory=dict)  # inverted / edges, when asked

    def kind(self, kind: str) -> KindScores:
        """The rows and summary of a task kind scored here (normal is the point's own)."""
        return KindScores(self.rows, self.per_class) if kind == NORMAL else self.checks[kind]

    def to_dict(self) -> dict[str, Any]:
        record = {"support_size": self.support_size, "ensembles": self.ensembles, **means(self.per_class),
                  "tasks": len(self.rows), "per_class": self.per_class}
        if self.checks:  # only when --task asked for a check: the record is otherwise as it always was
            record["task_kinds"] = {kind: {**means(self.kind(kind).per_class), "per_class": self.kind(kind).per_class}
                                    for kind in (NORMAL, *self.checks)}
        return record


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
    image_size: int = 0  # the model's square size, where edges are scored

    @property
    def task_kinds(self) -> list[str]:
        """normal, then the in-context checks scored (in TASK_KINDS order)."""
        return [NORMAL, *self.main.checks]

    @property
    def has_checks(self) -> bool:
        return bool(self.main.checks)

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
        """Every point's rows, each with its support size and ensemble count; with in-context checks, every task
        kind's rows too, each with its `task` (per point: normal's rows, then each check's)."""
        if not self.has_checks:
            return [{**row, "support_size": point.support_size, "ensembles": point.ensembles}
                    for point in self.points for row in point.rows]
        return [{**row, "support_size": point.support_size, "ensembles": point.ensembles, TASK_COLUMN: kind}
                for point in self.points for kind in self.task_kinds for row in point.kind(kind).rows]

    def to_dict(self) -> dict[str, Any]:
        """The `--json` schema (CHECKPOINT_GUIDE.md, --json schemas)."""
        return {"checkpoint": self.checkpoint, "epoch": self.epoch, "split": self.split,
                "data": self.data.data, "support_data": self.data.support_data, "held_out": self.data.held_out,
                "support_size": self.support_size, "ensembles": self.ensembles, "seed": self.seed,
                "classes": self.class_status, "per_class": self.per_class, "mean_dice": self.mean_dice,
                "mean_iou": mean_over_classes(self.per_class, "iou"),
                "mean_hd95_px": mean_over_classes(self.per_class, "hd95_px"), "rows": self.rows,
                "sweep": [point.to_dict() for point in self.points], "skipped_support_sizes": self.skipped,
                **({"task_kinds": self.kinds_dict()} if self.has_checks else {}),
                **({"datasets": self.dataset_results()} if self.data.scored_datasets else {})}

    def dataset_results(self) -> dict[str, dict[str, Any]]:
        """A run over several datasets: per dataset scored (by name), its id prefix, folder, targets and tasks,
        the means over its own classes and its per-class summary, at the main point."""
        dataset, results = self.data.dataset, {}
        for number in self.data.scored_datasets:
            name = dataset.datasets[number]
            own = dataset.classes_of([number])
            per_class = {cls: stats for cls, stats in self.per_class.items() if cls in own}
            results[name] = {"id": f"d{number + 1}", "data": self.data.folder_of_dataset(number),
                             "targets": int(np.count_nonzero(dataset.image_datasets[self.data.targets] == number)),
                             "tasks": sum(row[DATASET_COLUMN] == name for row in self.rows), **means(per_class),
                             "per_class": per_class}
        return results

    def kinds_dict(self) -> dict[str, Any]:
        """Per task kind at the main point: the means over classes, per class, where it was scored, its rows."""
        return {kind: {**means(self.main.kind(kind).per_class), "per_class": self.main.kind(kind).per_class,
                       "scored_at": scored_at(kind, self.image_size), "rows": self.main.kind(kind).rows}
                for kind in self.task_kinds}


def evaluate(trained: TrainedModel, *, data: str | None = None, annotations: str | None = None,
             split: str = "test", support_size: int | list[int] | None = None, ensembles: int | list[int] = 1,
             seed: int | None = None, support: str | None = None, data_options: dict | None = None,
             with_paths: bool = False, progress: Callable[[int, int], None] | None = None,
             task_kinds: str | list[str] | tuple[str, ...] = (NORMAL,)) -> Evaluation:
    """Score `trained` on its run's `split`, or on every image of another folder `data` (see eval_data).

    `task_kinds`: the in-context checks to score beside the normal task (`inverted`, `edges`; see the module
    docstring); normal is always scored.

    `data_options`: load_dataset keywords from the command line (label, classes, class_names, patient_pattern).
    `progress(done, total)`: called as tasks are scored (every support size's tasks count in `total`).

    A list of support sizes or ensemble counts sweeps them; sizes above what every target's
    pool can give are skipped (one warning each) instead of drawing repeated supports.
    """
    sizes = sorted(set(as_list(support_size, trained.support_size)))
    counts = sorted(set(as_list(ensembles, 1)))
    seed = trained.seed if seed is None else seed
    check_settings(sizes, counts, seed)
    checks = check_kinds(task_kinds)
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
            points += score_tasks(trained, evalset, drawn[size][0], size, counts, seed, with_paths, advance,
                                  checks)
    return Evaluation(str(trained.path), trained.epoch, evalset.split, seed, evalset, status, points, skipped,
                      trained.image_size)


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


def check_kinds(kinds: str | list[str] | tuple[str, ...]) -> list[str]:
    """The in-context checks asked (normal left out: it is always scored), in TASK_KINDS order."""
    kinds = [kinds] if isinstance(kinds, str) else list(kinds)
    unknown = [kind for kind in kinds if kind not in TASK_KINDS]
    if unknown:
        raise ConfigError(f"--task {unknown[0]} is unknown; use {', '.join(TASK_KINDS[1:])} (normal is always scored)")
    return [kind for kind in TASK_KINDS if kind in kinds and kind != NORMAL]


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
                seed: int, with_paths: bool, advance: Callable[[int], None] = lambda count: None,
                checks: list[str] = ()) -> list[SweepPoint]:
    """One point per ensemble count: member k averages the first k support draws of each task. Each check
    (inverted, edges) is scored on the same draws."""
    points = {count: SweepPoint(size, count, [], checks={kind: KindScores() for kind in checks}) for count in counts}
    members = class_members(evalset.dataset, evalset.pool)
    step = max(1, min(TASKS_PER_BATCH, SUPPORTS_PER_BATCH // size))
    for start in range(0, len(tasks), step):
        chunk = tasks[start:start + step]
        totals: dict[str, torch.Tensor] = {}
        for member in range(counts[-1]):
            draw = chunk if member == 0 else [redraw(evalset.dataset, members, task, seed, member) for task in chunk]
            for kind, probs in kind_probabilities(trained, evalset.dataset, draw, [NORMAL, *checks]).items():
                totals[kind] = probs if kind not in totals else totals[kind] + probs
            if member + 1 in points:
                point = points[member + 1]
                for kind in (NORMAL, *checks):
                    point.kind(kind).rows.extend(score_row(evalset, task, prob[0] / (member + 1), with_paths, kind)
                                                 for task, prob in zip(chunk, totals[kind]))
                point.tasks += chunk
        advance(len(chunk))
    for point in points.values():
        point.per_class = summarise(point.rows, evalset.dataset.classes)
        for scored in point.checks.values():
            scored.per_class = summarise(scored.rows, evalset.dataset.classes)
    return list(points.values())


def redraw(dataset: SegDataset, members: list[np.ndarray], task: Task, seed: int, member: int) -> Task:
    """Ensemble member `member`'s supports for the task: same candidates, own generator."""
    pool = candidates(members[task.cls], dataset.patients, task.target, exclude_same_patient=True)
    rng = np.random.default_rng([seed, task.target, task.cls, member])
    return Task(task.target, task.cls, choose_supports(rng, pool, len(task.supports)))


def task_probabilities(trained: TrainedModel, dataset: SegDataset, tasks: list[Task]) -> torch.Tensor:
    """Sigmoid probabilities (B, 1, H, W) of the tasks at the model's size (on the CPU)."""
    return kind_probabilities(trained, dataset, tasks, [NORMAL])[NORMAL]


def kind_probabilities(trained: TrainedModel, dataset: SegDataset, tasks: list[Task],
                       kinds: list[str]) -> dict[str, torch.Tensor]:
    """Per task kind, the sigmoid probabilities (B, 1, H, W) of the tasks at the model's size (on the CPU): the
    same targets and supports, the supports' labels made that kind's (useg.data.task_kinds)."""
    made = make_batch(dataset, tasks)
    batch = made.to(next(trained.model.parameters()).device)
    labels = made.support_labels.numpy()  # the kinds' labels are made on the CPU, from the same draw
    result = {}
    with torch.no_grad():
        for kind in kinds:
            support_labels = batch.support_labels if kind == NORMAL else torch.from_numpy(
                task_labels(kind, labels)).to(batch.support_labels.device)
            result[kind] = probabilities(trained.model, batch.target_image, batch.support_images,
                                         support_labels).cpu()
    return result


def score_row(evalset: EvalSet, task: Task, prob: torch.Tensor, with_paths: bool,
              kind: str = NORMAL) -> dict[str, Any]:
    """One CSV row: the probability map brought back to the target's native size (as predict does), thresholded
    at one half and scored against the native truth; HD95 is in pixels of the original image. An inverted task's
    prediction is inverted back first; an edges task is scored at the model's size against the band of the
    square truth (module docstring)."""
    dataset = evalset.dataset
    if kind == EDGES:
        pred, truth = prob.numpy() > 0.5, edges(dataset.masks[task.target, task.cls])
    else:
        truth = evalset.native_masks(task.target)[task.cls]
        pred = from_square(prob, truth.shape, evalset.resize).numpy() > 0.5
        pred = inverted(pred) if kind == INVERTED else pred
    row = {"image": dataset.ids[task.target], "class": dataset.classes[task.cls], **scores(pred, truth)}
    if evalset.scored_datasets:  # a run over several datasets: which one the image comes from
        row = {"image": row.pop("image"), DATASET_COLUMN: dataset.datasets[int(dataset.image_datasets[task.target])],
               **row}
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
    """Today's columns; a sweep adds support_size and ensembles, --with-paths adds file, in-context checks add
    task last (older readers find every other column where it was); a run over several datasets has dataset
    after image."""
    columns = CSV_COLUMNS
    if result.data.scored_datasets:
        columns = (columns[0], DATASET_COLUMN, *columns[1:])
    return (columns + (SWEEP_COLUMNS if result.is_sweep else ()) + (("file",) if with_paths else ())
            + ((TASK_COLUMN,) if result.has_checks else ()))


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
