"""Binary in-context tasks (one class, one target, S supports) and their tensor batches.

Rules shared by training and validation: a task's supports never include its
target and, by default, no image of the target's patient (that would leak the
answer); supports are drawn without replacement when there are enough
candidates, else with replacement. Training images without any class (kept
with `--keep-empty`) are negative targets of every class: the model learns to
predict nothing when the target lacks what the supports show. Every random choice comes from a generator
seeded by the task's own coordinates, so any batch can be rebuilt exactly, on
any thread and in any order (which the background batch builders rely on).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch

from useg.config import batches_per_epoch
from useg.data import recipe_pixels
from useg.data.recipe import augmentation_from
from useg.data.augment import augment_into, augment_task, noise_bank
from useg.data.dataset import SegDataset
from useg.data.synthetic_tasks import SyntheticTasks
from useg.data.task_kinds import inverted
from useg.errors import ConfigError, DataError


# What new runs draw: version 3 draws the in-context recipe (useg.data.recipe, useg.data.synthetic_tasks)
# when one of its parts is on, else exactly what version 2 drew; see useg.data.augment for versions 1 and 2.
DRAW_VERSION = 3
DRAW_VERSIONS = (1, 2, 3)
SYNTHETIC = -1  # a synthetic task's target, class and supports: no image of the dataset


def draw_version_to_resume(saved: int | None) -> int:
    """The draw version a run continues with: the one its checkpoint was drawn with (`saved`, read
    by useg.training.state.saved_draw_version), DRAW_VERSION for a new run (None)."""
    return DRAW_VERSION if saved is None else saved


@dataclass
class Task:
    target: int  # dataset index of the image to segment
    cls: int  # class index
    supports: np.ndarray  # (S,) int64 dataset indices


@dataclass(frozen=True)
class Recipe:
    """The in-context training recipe of a run, as its config holds it: each part's resolved
    settings (useg.data.recipe.settings_from) or False, and the share of synthetic tasks."""

    task_augmentation: dict | bool = False
    in_task_augmentation: dict | bool = False
    synthetic_tasks: float = 0.0

    @property
    def on(self) -> bool:
        return bool(self.task_augmentation or self.in_task_augmentation or self.synthetic_tasks)


@dataclass
class Batch:
    target_image: torch.Tensor  # (B, 1, H, W) float32
    target_label: torch.Tensor  # (B, 1, H, W) float32, 0/1
    support_images: torch.Tensor  # (B, S, 1, H, W) float32
    support_labels: torch.Tensor  # (B, S, 1, H, W) float32, 0/1
    classes: torch.Tensor  # (B,) int64
    targets: torch.Tensor  # (B,) int64
    supports: torch.Tensor  # (B, S) int64

    def to(self, device: torch.device | str) -> Batch:
        return Batch(**{name: tensor.to(device) for name, tensor in vars(self).items()})


def class_members(ds: SegDataset, pool_idx) -> list[np.ndarray]:
    """Per class, the sorted pool images whose mask of that class is non-empty."""
    pool = np.unique(np.asarray(pool_idx, dtype=np.int64))
    presence = ds.class_presence()[pool]
    return [pool[presence[:, c]] for c in range(len(ds.classes))]


def negative_images(ds: SegDataset, pool_idx) -> np.ndarray:
    """The sorted pool images with no class at all (empty masks kept as negatives)."""
    pool = np.unique(np.asarray(pool_idx, dtype=np.int64))
    return pool[~ds.class_presence()[pool].any(axis=1)]


def candidates(members: np.ndarray, patients: np.ndarray, target: int, exclude_same_patient: bool) -> np.ndarray:
    """Support candidates for `target`: never the target, and not its patient unless allowed."""
    keep = members != target
    if exclude_same_patient:
        keep &= patients[members] != patients[target]
    return members[keep]


def candidate_counts(
    members: np.ndarray, patients: np.ndarray, targets: np.ndarray, exclude_same_patient: bool
) -> np.ndarray:
    """len(candidates(members, ..., t)) for each t in `targets`, vectorised."""
    if not exclude_same_patient:
        return len(members) - np.isin(targets, members).astype(np.int64)
    same_patient = np.bincount(patients[members], minlength=int(patients.max()) + 1)
    return len(members) - same_patient[patients[targets]]


def choose_supports(rng: np.random.Generator, pool: np.ndarray, support_size: int) -> np.ndarray:
    return rng.choice(pool, size=support_size, replace=len(pool) < support_size).astype(np.int64)


def check_support_size(largest_pool: int, support_size: int, where: str) -> None:
    if largest_pool < support_size:
        raise DataError(
            f"only {largest_pool} {where} images can serve as supports of one task, fewer than "
            f"--support-size {support_size}; lower --support-size to {largest_pool} or less"
        )


def check_support_size_setting(support_size: int) -> None:
    """The one check of a --support-size value (training, evaluation and prediction)."""
    if support_size < 1:
        raise ConfigError(f"--support-size must be at least 1, not {support_size}")


def _check_settings(support_size: int, seed: int) -> None:
    check_support_size_setting(support_size)
    if seed < 0:
        raise ConfigError(f"--seed must be 0 or more, not {seed}")


class TaskSampler:
    """Training tasks: a class uniformly among the eligible ones (with several datasets, a dataset by its weight
    first, then a class of it), then a target and supports of it."""

    def __init__(
        self, ds: SegDataset, train_idx, *, support_size: int, seed: int, samples_per_epoch: int,
        exclude_same_patient: bool = True, augment: bool = True, draw_version: int = DRAW_VERSION,
        recipe: Recipe = Recipe(),
    ) -> None:
        _check_settings(support_size, seed)
        if draw_version not in DRAW_VERSIONS:
            raise ConfigError(f"this useg cannot draw batches of version {draw_version} (it knows "
                              f"{', '.join(map(str, DRAW_VERSIONS))}); resume with the useg that wrote the checkpoint")
        if samples_per_epoch < 1:
            raise ConfigError(f"samples per epoch must be at least 1, not {samples_per_epoch}")
        self.ds, self.support_size, self.seed = ds, support_size, seed
        self.samples_per_epoch, self.augment = samples_per_epoch, augment
        self.exclude_same_patient, self.draw_version = exclude_same_patient, draw_version
        if recipe.on and draw_version < 3:
            raise ConfigError(f"batches of draw version {draw_version} have no task augmentation, in-task "
                              "augmentation or synthetic tasks; turn them off to resume this run")
        self.recipe = recipe
        self._task_augmentation = augmentation_from("task", recipe.task_augmentation)
        self._in_task_augmentation = augmentation_from("in_task", recipe.in_task_augmentation)
        self._inverted_pairs = self._task_augmentation.inverted_pairs if self._task_augmentation else 0.0
        self._synthetic = SyntheticTasks(seed, ds.images.shape[-1]) if recipe.synthetic_tasks else None
        self._source: AugmentationSource | None = None
        self._source_lock = threading.Lock()
        self._members = class_members(ds, train_idx)
        self._negatives = negative_images(ds, train_idx)
        self._targets, largest = self._eligible_targets()
        self.eligible_classes = np.asarray([c for c, t in enumerate(self._targets) if len(t)], dtype=np.int64)
        self._targets = [self._with_negatives(c, targets) for c, targets in enumerate(self._targets)]
        if not len(self.eligible_classes):
            raise DataError(
                f"no class has a training image with a support image of another "
                f"{'patient' if exclude_same_patient else 'image'} in the training split "
                f"({len(np.unique(train_idx))} images); add data or give the training split more patients"
            )
        check_support_size(largest, support_size, "training")
        self._dataset_classes, self._dataset_bounds = self._classes_per_dataset(train_idx)

    def _classes_per_dataset(self, train_idx) -> tuple[list[np.ndarray] | None, np.ndarray | None]:
        """Several datasets (useg.data.collection): each one's eligible classes, and the cumulative dataset
        weights a task's dataset is drawn by; (None, None) for one dataset, whose draws stay as they were."""
        ds = self.ds
        if len(ds.datasets) < 2:
            return None, None
        owner = np.asarray(ds.class_datasets, dtype=np.int64)[self.eligible_classes]
        per_dataset = [self.eligible_classes[owner == index] for index in range(len(ds.datasets))]
        empty = [index for index, classes in enumerate(per_dataset) if not len(classes)]
        if empty:
            number = empty[0]
            images = int((ds.image_datasets[np.unique(np.asarray(train_idx, dtype=np.int64))] == number).sum())
            raise DataError(f"--data {number + 1} of {len(ds.datasets)} ({ds.datasets[number]}) has no class with a "
                            "training image and a support image of another patient in its training split "
                            f"({images} training image{'s' if images != 1 else ''}); give it more patients or "
                            "leave it out of --data")
        return per_dataset, np.cumsum(np.asarray(ds.dataset_weights, dtype=np.float64))

    def _eligible_targets(self) -> tuple[list[np.ndarray], int]:
        """Per class, the targets that have at least one candidate; and the largest candidate pool."""
        eligible, largest = [], 0
        for members in self._members:
            counts = candidate_counts(members, self.ds.patients, members, self.exclude_same_patient)
            eligible.append(members[counts >= 1])
            largest = max(largest, int(counts.max(initial=0)))
        return eligible, largest

    def _with_negatives(self, cls: int, targets: np.ndarray) -> np.ndarray:
        """A class's targets plus the negative images that have a support candidate of it."""
        negatives = self._negatives
        if self.ds.datasets:  # a negative of one dataset is no negative of another's class
            negatives = negatives[self.ds.image_datasets[negatives] == self.ds.class_datasets[cls]]
        if not len(negatives) or not len(targets):
            return targets
        counts = candidate_counts(self._members[cls], self.ds.patients, negatives, self.exclude_same_patient)
        return np.concatenate([targets, negatives[counts >= 1]])

    def num_batches(self, batch_size: int) -> int:
        return batches_per_epoch(self.samples_per_epoch, batch_size)

    def task(self, epoch: int, index: int) -> Task:
        """The task at `index` of `epoch`: depends only on (seed, epoch, index)."""
        return self._draw(self._rng(epoch, index))

    def batch(self, epoch: int, batch_index: int, batch_size: int) -> Batch:
        """Samples batch_index * batch_size .. (capped at samples_per_epoch) of `epoch`; exactly reproducible."""
        start = batch_index * batch_size
        stop = min(start + batch_size, self.samples_per_epoch)
        if batch_size < 1 or not 0 <= start < stop:
            raise IndexError(
                f"batch {batch_index} of size {batch_size} is outside the epoch's {self.samples_per_epoch} samples"
            )
        rngs = [self._rng(epoch, index) for index in range(start, stop)]
        if self.augment and self.recipe.on:
            return self._recipe_batch(rngs, start)
        tasks = [self._draw(rng) for rng in rngs]
        if self.augment and self.draw_version >= 2:
            return augmented_batch(self._augmentation_source(), tasks, rngs)
        return make_batch(self.ds, tasks, rngs if self.augment else None)

    def _recipe_batch(self, rngs: list[np.random.Generator], start: int) -> Batch:
        """Draw version 3 with the recipe on: per task, real or synthetic, then augmented as a whole and per
        image straight into the batch's arrays. With inverted pairs, sample 2k+1 may instead be sample 2k
        with its labels inverted (when both are in this batch)."""
        count, support, (height, width) = len(rngs), self.support_size, self.ds.images.shape[1:]
        target_image, target_label = (np.empty((count, 1, height, width), np.float32) for _ in range(2))
        support_images, support_labels = (np.empty((count, support, 1, height, width), np.float32) for _ in range(2))
        tasks = []
        for b, rng in enumerate(rngs):
            # Drawn only where a pair can form, so that runs without pairs draw what they always drew.
            if self._inverted_pairs and b and (start + b) % 2 and rng.random() < self._inverted_pairs:
                target_image[b], support_images[b] = target_image[b - 1], support_images[b - 1]
                target_label[b], support_labels[b] = inverted(target_label[b - 1]), inverted(support_labels[b - 1])
                tasks.append(tasks[b - 1])
                continue
            if self._synthetic is not None and rng.random() < self.recipe.synthetic_tasks:
                images, labels = self._synthetic.task(rng, support)
                task = Task(SYNTHETIC, SYNTHETIC, np.full(support, SYNTHETIC, dtype=np.int64))
            else:
                task = self._draw(rng)
                members = np.concatenate([[task.target], task.supports])
                images, labels = self.ds.images[members], self.ds.masks[members, task.cls]
            recipe_pixels.augment_into(rng, images, labels, self._task_augmentation, self._in_task_augmentation,
                                       [target_image[b], support_images[b, :, 0]],
                                       [target_label[b], support_labels[b, :, 0]])
            tasks.append(task)
        targets, classes, supports, _ = _task_indices(tasks)
        return Batch(
            target_image=torch.from_numpy(target_image), target_label=torch.from_numpy(target_label),
            support_images=torch.from_numpy(support_images), support_labels=torch.from_numpy(support_labels),
            classes=torch.from_numpy(classes), targets=torch.from_numpy(targets), supports=torch.from_numpy(supports),
        )

    def _augmentation_source(self) -> AugmentationSource:
        with self._source_lock:  # built once, by whichever batch builder gets here first
            if self._source is None:
                self._source = AugmentationSource.of(self.ds, self.seed)
            return self._source

    def _rng(self, epoch: int, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch, index])

    def _draw(self, rng: np.random.Generator) -> Task:
        cls = self._draw_class(rng)
        target = int(rng.choice(self._targets[cls]))
        pool = candidates(self._members[cls], self.ds.patients, target, self.exclude_same_patient)
        return Task(target=target, cls=cls, supports=choose_supports(rng, pool, self.support_size))

    def _draw_class(self, rng: np.random.Generator) -> int:
        """A class uniformly among the eligible ones; with several datasets, first a dataset by weight."""
        if self._dataset_classes is None:
            return int(rng.choice(self.eligible_classes))
        bounds = self._dataset_bounds
        dataset = min(int(np.searchsorted(bounds, rng.random() * bounds[-1], side="right")), len(bounds) - 1)
        return int(rng.choice(self._dataset_classes[dataset]))


def validation_tasks(
    ds: SegDataset, target_idx, pool_idx, *, support_size: int, seed: int, exclude_same_patient: bool = True,
) -> list[Task]:
    """One task per (target image, class present in it) with supports from `pool_idx`, fixed by `seed`.

    A (target, class) pair without any candidate support is left out.
    """
    _check_settings(support_size, seed)
    members = class_members(ds, pool_idx)
    presence = ds.class_presence()
    tasks, largest = [], 0
    for target in np.asarray(target_idx, dtype=np.int64):
        for cls in np.flatnonzero(presence[target]):
            pool = candidates(members[cls], ds.patients, int(target), exclude_same_patient)
            if len(pool):
                largest = max(largest, len(pool))
                rng = np.random.default_rng([seed, int(target), int(cls)])
                tasks.append(Task(int(target), int(cls), choose_supports(rng, pool, support_size)))
    if len(target_idx) and not tasks:
        raise DataError(
            f"none of the {len(target_idx)} evaluation images has a class with support images in the "
            f"training split; give the training split more patients"
        )
    if tasks:
        check_support_size(largest, support_size, "training (support pool)")
    return tasks


def make_batch(ds: SegDataset, tasks: list[Task], rngs: list[np.random.Generator] | None = None) -> Batch:
    """Stack tasks into tensors; `rngs` (one per task) turns augmentation on (draw version 1)."""
    targets, classes, supports, members = _task_indices(tasks)
    images = ds.images[members]  # (B, 1 + S, H, W)
    labels = ds.masks[members, classes[:, None]].astype(np.float32)
    if rngs is not None:
        for b, rng in enumerate(rngs):
            images[b], labels[b] = augment_task(rng, images[b], labels[b])
    return Batch(
        target_image=torch.from_numpy(np.ascontiguousarray(images[:, :1])),
        target_label=torch.from_numpy(np.ascontiguousarray(labels[:, :1])),
        support_images=torch.from_numpy(np.ascontiguousarray(images[:, 1:, None])),
        support_labels=torch.from_numpy(np.ascontiguousarray(labels[:, 1:, None])),
        classes=torch.from_numpy(classes),
        targets=torch.from_numpy(targets),
        supports=torch.from_numpy(supports),
    )


@dataclass(frozen=True)
class AugmentationSource:
    """What draw version 2 reads: the dataset, its left-right mirror image, and the noise bank."""

    images: np.ndarray  # (N, H, W) float32
    masks: np.ndarray  # (N, C, H, W) bool
    mirrored_images: np.ndarray
    mirrored_masks: np.ndarray
    bank: np.ndarray

    @classmethod
    def of(cls, ds: SegDataset, seed: int) -> AugmentationSource:
        height, width = ds.images.shape[1:]
        return cls(ds.images, ds.masks, np.ascontiguousarray(ds.images[..., ::-1]),
                   np.ascontiguousarray(ds.masks[..., ::-1]), noise_bank(seed, height * width))


def augmented_batch(source: AugmentationSource, tasks: list[Task], rngs: list[np.random.Generator]) -> Batch:
    """Draw version 2 of an augmented `make_batch`: each task is augmented straight into the batch's arrays."""
    targets, classes, supports, members = _task_indices(tasks)
    count, height, width = len(tasks), *source.images.shape[1:]
    shape = (count, supports.shape[1], 1, height, width)
    target_image, target_label = (np.empty((count, 1, height, width), np.float32) for _ in range(2))
    support_images, support_labels = (np.empty(shape, np.float32) for _ in range(2))
    for b, rng in enumerate(rngs):
        def images(mirrored: bool, rows=members[b]) -> np.ndarray:
            return (source.mirrored_images if mirrored else source.images)[rows]

        def labels(mirrored: bool, rows=members[b], cls=classes[b]) -> np.ndarray:
            return (source.mirrored_masks if mirrored else source.masks)[rows, cls]

        augment_into(rng, images, labels, source.bank,
                     [target_image[b], support_images[b, :, 0]], [target_label[b], support_labels[b, :, 0]])
    return Batch(
        target_image=torch.from_numpy(target_image), target_label=torch.from_numpy(target_label),
        support_images=torch.from_numpy(support_images), support_labels=torch.from_numpy(support_labels),
        classes=torch.from_numpy(classes), targets=torch.from_numpy(targets), supports=torch.from_numpy(supports),
    )


def _task_indices(tasks: list[Task]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """targets (B,), classes (B,), supports (B, S) and members (B, 1 + S): the target first."""
    if not tasks or len({len(task.supports) for task in tasks}) != 1:
        raise ValueError("make_batch needs at least one task, all with the same number of supports")
    targets = np.asarray([task.target for task in tasks], dtype=np.int64)
    classes = np.asarray([task.cls for task in tasks], dtype=np.int64)
    supports = np.stack([np.asarray(task.supports, dtype=np.int64) for task in tasks])
    return targets, classes, supports, np.concatenate([targets[:, None], supports], axis=1)
