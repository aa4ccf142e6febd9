"""Validation Dice over fixed tasks, and the prediction pictures of a few of them."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import numpy as np
import torch

from useg.data import make_batch
from useg.compute.distributed import World, gather_objects
from useg.training.losses import hard_dice
from useg.viz import class_display_name, colour_input_note, save_prediction_figure


@torch.no_grad()
def validate(model, dataset, tasks: list, batch_size: int, device, world: World = World()) -> dict[str, Any]:
    """Dice of every fixed validation task (shared out over ranks); per class, their mean and spread; with
    several datasets also `val_dice_per_dataset`, each dataset's mean over its classes."""
    model.eval()
    mine = tasks[world.rank::world.world_size]
    scores, classes = [], []
    for start in range(0, len(mine), batch_size):
        batch = make_batch(dataset, mine[start:start + batch_size]).to(device)
        logits = model(batch.target_image, batch.support_images, batch.support_labels)
        scores += hard_dice(logits, batch.target_label).cpu().tolist()
        classes += batch.classes.cpu().tolist()
    gathered = gather_objects(world, (scores, classes))
    dice = np.array([value for part, _ in gathered for value in part], dtype=np.float64)
    cls = np.array([value for _, part in gathered for value in part], dtype=np.int64)
    by_class = {c: float(dice[cls == c].mean()) for c in sorted(set(cls.tolist()))}
    per_class = {dataset.classes[c]: value for c, value in by_class.items()}
    record = {"val_dice": float(np.mean(list(per_class.values()))), "val_dice_per_class": per_class,
              "val_dice_std": float(dice.std(ddof=1)) if len(dice) > 1 else 0.0,
              "val_dice_min": float(dice.min()), "val_dice_max": float(dice.max())}
    per_dataset = dice_per_dataset(dataset, by_class)
    if per_dataset:
        record["val_dice_per_dataset"] = per_dataset
    return record


def dice_per_dataset(dataset, by_class: dict[int, float]) -> dict[str, float]:
    """{dataset name: mean of its classes' Dice} of a run over several datasets, in the run's order (a
    dataset none of whose classes had a task is left out); {} for one dataset."""
    names = dataset.datasets
    if len(names) < 2:
        return {}
    grouped: dict[int, list[float]] = {}
    for cls, value in by_class.items():
        grouped.setdefault(dataset.class_datasets[cls], []).append(value)
    return {names[number]: float(np.mean(grouped[number])) for number in range(len(names)) if number in grouped}


def score_held_out(model, held_out: list, tasks: list[list], batch_size: int, device,
                   world: World = World()) -> dict[str, Any]:
    """Each --held-out-data dataset scored in context on its fixed tasks (`validate`'s val_dice: its mean
    over its classes), and `held_out_dice`, the mean over those datasets; {} for a run without any."""
    if not held_out:
        return {}
    per_dataset = {held.name: validate(model, held.dataset, own, batch_size, device, world)["val_dice"]
                   for held, own in zip(held_out, tasks)}
    return {"held_out_dice": float(np.mean(list(per_dataset.values()))), "held_out_dice_per_dataset": per_dataset}


def picture_tasks(tasks: list, count: int) -> list:
    """`count` fixed tasks spread over the validation list, so pictures compare across epochs."""
    count = min(count, len(tasks))
    return [tasks[i] for i in np.linspace(0, len(tasks) - 1, count).round().astype(int)] if count else []


@torch.no_grad()
def save_pictures(model, dataset, tasks: list, folder: Path, epoch: int, device) -> None:
    """One PNG per task: image, truth, prediction and support strip, Dice and anonymous id in the title.

    Called once the epoch's checkpoint is saved: a picture that cannot be written (full disk,
    read-only folder) stops training with one line that says how to continue from that checkpoint.
    """
    model.eval()
    then = (f"continue with `useg resume latest --run-dir {shlex.quote(str(folder.parent))}` "
            f"(epoch {epoch} is saved; --vis-every 0 trains without pictures)")
    for number, task in enumerate(tasks):
        batch = make_batch(dataset, [task]).to(device)
        logits = model(batch.target_image, batch.support_images, batch.support_labels)
        dice = float(hard_dice(logits, batch.target_label)[0])
        batch, logits = batch.to("cpu"), logits.cpu()
        title = (f"epoch {epoch} · {dataset.ids[task.target]} · class {class_display_name(dataset.classes[task.cls])}"
                 f" · Dice {dice:.3f}")
        save_prediction_figure(folder / f"epoch_{epoch:03d}_batch_{number:03d}.png",
                               batch.target_image[0, 0].numpy(), batch.target_label[0, 0].numpy(),
                               (logits[0, 0] > 0).float().numpy(), batch.support_images[0, :, 0].numpy(),
                               batch.support_labels[0, :, 0].numpy(), title, then=then,
                               note=colour_input_note(folder.parent, dataset.ids[task.target]))
