"""Apply a trained model: load it from a run's checkpoint and segment new images from a support folder.

Inputs of any size are resized to the model's square size (the rule every data
layout uses), predicted from a fixed, seeded support set per class (or the mean
of K seeded draws, `--ensembles K`), and the probability map is resized back to
the input's original size before thresholding. Several classes give one mask
per class and a label map (`<stem>_label_map.png`, values named in `classes.json`).
"""

from __future__ import annotations

import io
import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from useg import training_state
from useg.checkpoint import nonfinite_weights
from useg.checkpoint.atomic import write_file_atomically
from useg.checkpoint.integrity import open_verified
from useg.checkpoint.layout import checkpoints_folder
from useg.checkpoint.loading import checkpoint_path, describe_problem, load_verified, open_resolved
from useg.checkpoint.manager import warn_to_stderr as warn  # to stderr, so `--json` output stays parseable
from useg.data import SegDataset, load_dataset
from useg.data.dataset import select_classes
from useg.data.tasks import check_support_size_setting
from useg.data.images import is_image_file, open_image, open_upright, read_grey, to_grey
from useg.errors import CheckpointError, DataError
from useg.model import UniverSeg, build_from_config, infer_widths
from useg.scores import boundary
from useg.viz import contrasting_tints

# Overlay tints per class (RGB) on grey images, in the support set's class order (colour images: viz.contrasting_tints).
OVERLAY_COLOURS = [(255, 64, 64), (64, 200, 255), (255, 210, 0), (120, 255, 120), (255, 100, 255), (255, 150, 60)]
OVERLAY_ALPHA = 0.35


@dataclass
class TrainedModel:
    """A model rebuilt from a checkpoint, with the training config it was saved with."""

    model: UniverSeg
    path: Path
    epoch: int
    config: dict[str, Any]
    classes: list[str]
    split: dict[str, list[str]] | None  # anonymous image ids per split, as training saved them

    @property
    def image_size(self) -> int:
        return int(self.config["image_size"])

    @property
    def support_size(self) -> int:
        return int(self.config["support_size"])

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))


@dataclass
class SupportSet:
    """The fixed supports of one class: K draws of (S, H, W) images in [0, 1] and 0/1 labels, (K, S, H, W)."""

    cls: str
    images: np.ndarray
    labels: np.ndarray

    @property
    def size(self) -> int:
        return self.images.shape[1]


def open_checkpoint(run_dir: str | Path, which: str | None) -> tuple[Path, BinaryIO]:
    """The verified open file `which` names (default best): latest, best, an epoch number or a path.

    Hashed once: the handle returned is the one whose bytes were checked.
    """
    which = which or "best"
    folder = checkpoints_folder(run_dir)
    if which in ("latest", "best") or which.isdigit():
        if not folder.is_dir():
            raise CheckpointError(f"no checkpoints in {folder}: train first (useg train --run-dir {shlex.quote(str(run_dir))}), "
                                  "or pass --run-dir or a checkpoint path")
        return open_resolved(folder, which, warn)
    path = checkpoint_path(folder, which)
    result, handle = open_verified(path)
    if handle is not None:
        return path, handle
    if result.status == "missing-checksum":
        raise CheckpointError(f"{which} has no checksum sidecar, so it is no useg checkpoint; a plain weight file "
                              "(such as the official UniverSeg one) starts training with useg train --pretrained FILE")
    raise CheckpointError(describe_problem(result))


def load_trained(run_dir: str | Path = ".", which: str | None = None) -> TrainedModel:
    """Load a run's checkpoint (verified, weights_only) and rebuild its model in eval mode."""
    path, handle = open_checkpoint(run_dir, which)
    with handle:
        state = load_verified(path, handle)
    training_state.require_model_parts(state, path)
    weights = training_state.model_weights(state)
    bad = nonfinite_weights(weights)
    if bad is not None:
        raise CheckpointError(f"{path} holds NaN or inf weights in {bad} (a diverged run); "
                              "use a checkpoint saved before the divergence (see `useg checkpoints list`)")
    model = build_from_config(state[training_state.MODEL_CONFIG])
    fit_weights(model, weights, path)
    model.eval()
    return TrainedModel(model, path, int(state.get(training_state.EPOCH, 0)), training_state.saved_config(state),
                        training_state.saved_classes(state), training_state.saved_split(state))


def fit_weights(model: UniverSeg, weights: dict, path: Path) -> None:
    """Load weights into the model built from the same checkpoint's model_config; refuse a mismatch."""
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError:
        found = ",".join(map(str, infer_widths(weights) or ())) or "unknown"
        raise CheckpointError(
            f"{path}: its weights (widths {found}) do not fit its model_config (widths "
            f"{','.join(map(str, model.widths))}); the file was edited or mixed up: use another checkpoint"
        ) from None


@torch.no_grad()
def probabilities(model: UniverSeg, targets: torch.Tensor, support_images: torch.Tensor,
                  support_labels: torch.Tensor) -> torch.Tensor:
    """Sigmoid foreground probabilities (B, 1, H, W) for targets (B, 1, H, W) and supports (B, S, 1, H, W)."""
    model.eval()
    return torch.sigmoid(model(targets, support_images, support_labels))


def support_sets(supports: SegDataset, wanted: list[str] | None, support_size: int, seed: int,
                 ensembles: int = 1) -> list[SupportSet]:
    """Per chosen class, `ensembles` seeded draws of up to `support_size` images showing it."""
    check_support_size_setting(support_size)
    if ensembles < 1:
        raise DataError(f"--ensembles must be at least 1, not {ensembles}")
    chosen = select_classes(supports.classes, wanted)
    shown = {cls: np.flatnonzero(supports.masks[:, cls].any(axis=(1, 2))) for cls in chosen}
    unshown = [supports.classes[cls] for cls in chosen if not len(shown[cls])]
    if unshown and (wanted or len(unshown) == len(chosen)):
        raise DataError(f"no support image shows class {', '.join(unshown)}; add such images or choose --classes")
    if unshown:
        warn(f"no support image shows class {', '.join(unshown)}; not predicted")
    return [pick_supports(supports, cls, shown[cls], support_size, seed, ensembles)
            for cls in chosen if len(shown[cls])]


def pick_supports(supports: SegDataset, cls: int, members: np.ndarray, support_size: int, seed: int,
                  ensembles: int = 1) -> SupportSet:
    """Seeded picks without repeats; all of them when there are fewer than `support_size`.

    The first draw is the one a single prediction uses, so `--ensembles 1` keeps earlier masks.
    """
    name = supports.classes[cls]
    if len(members) < support_size:
        warn(f"class {name} has {len(members)} support images, fewer than --support-size {support_size}; "
             f"using all {len(members)}")
    size = min(support_size, len(members))
    picks = []
    for member in range(ensembles):
        rng = np.random.default_rng([seed, cls] if member == 0 else [seed, cls, member])
        picks.append(np.sort(rng.choice(members, size=size, replace=False)))
    picked = np.stack(picks)
    return SupportSet(name, supports.images[picked], supports.masks[picked, cls].astype(np.float32))


def load_supports(trained: TrainedModel, folder: str | Path, wanted: list[str] | None, support_size: int | None,
                  *, options: dict | None = None, ensembles: int = 1,
                  seed: int | None = None) -> tuple[list[SupportSet], bool]:
    """The support sets from a folder in any training layout, at the model's size; and whether it is multi-class.

    `options`: load_dataset keywords for the folder (label, class_names)."""
    folder = Path(folder)
    if folder.is_dir() and not any(folder.iterdir()):
        raise DataError(f"support folder {folder} is empty; it needs images with masks in a training layout")
    data = name_like_the_run(load_dataset(folder, image_size=trained.image_size, **(options or {})), trained)
    size = trained.support_size if support_size is None else support_size
    seed = trained.seed if seed is None else seed
    if seed < 0:
        raise DataError(f"--seed must be 0 or more, not {seed}")
    return support_sets(data, wanted, size, seed, ensembles), len(data.classes) > 1


def name_like_the_run(supports: SegDataset, trained: TrainedModel) -> SegDataset:
    """Plain binary supports (the loader's `foreground`) take the name of a one-class run's class."""
    if supports.classes == ["foreground"] and len(trained.classes) == 1 and trained.classes != ["foreground"]:
        supports.classes = list(trained.classes)
    return supports


def input_files(items: list[str | Path]) -> list[Path]:
    """Image files named directly or found (not recursively) in named folders; each readable, stems unique."""
    files: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            found = sorted(path for path in item.iterdir() if is_image_file(path))
            if not found:
                raise DataError(f"no images (.png, .jpg, .tif) in {item}")
            files += found
        elif item.exists():
            files.append(item)
        else:
            raise DataError(f"input image {item} does not exist")
    stems: dict[str, Path] = {}
    for path in files:
        open_image(path, str(path))  # header only: fail before any mask is written
        if stems.setdefault(path.stem, path) != path:
            raise DataError(f"inputs {stems[path.stem]} and {path} share the name {path.stem}; their masks would clash")
    return files


def output_names(stem: str, sets: list[SupportSet], multi_class: bool) -> dict[str, str]:
    """Mask file name per class: `<stem>.png`, or `<stem>_<class>.png` for multi-class supports."""
    return {s.cls: f"{stem}_{s.cls}.png" if multi_class else f"{stem}.png" for s in sets}


def label_map_name(stem: str) -> str:
    return f"{stem}_label_map.png"


def predict_masks(trained: TrainedModel, path: Path, sets: list[SupportSet]) -> dict[str, np.ndarray]:
    """Probabilities per class at the image's original (height, width), averaged over the support draws."""
    size = trained.image_size
    grey, (width, height) = read_grey(path, str(path), size)
    target = torch.from_numpy(grey)[None, None]
    draws = sets[0].images.shape[0]
    total = None
    for member in range(draws):
        probs = member_probabilities(trained, target, sets, member)
        total = probs if total is None else total + probs
    full = F.interpolate(total / draws, size=(height, width), mode="bilinear", align_corners=False)
    return {s.cls: full[i, 0].numpy() for i, s in enumerate(sets)}


def member_probabilities(trained: TrainedModel, target: torch.Tensor, sets: list[SupportSet],
                         member: int) -> torch.Tensor:
    """(classes, 1, size, size) probabilities of one support draw per class."""
    if len({s.size for s in sets}) == 1:
        images = torch.from_numpy(np.stack([s.images[member] for s in sets]))[:, :, None]
        labels = torch.from_numpy(np.stack([s.labels[member] for s in sets]))[:, :, None]
        return probabilities(trained.model, target.expand(len(sets), 1, *target.shape[2:]), images, labels)
    # classes with fewer supports cannot share a batch
    return torch.cat([probabilities(trained.model, target, torch.from_numpy(s.images[member])[None, :, None],
                                    torch.from_numpy(s.labels[member])[None, :, None]) for s in sets])


def label_map(probs: dict[str, np.ndarray]) -> np.ndarray:
    """uint8 (H, W): 0 background, else 1 + the index of the most probable class above one half."""
    stacked = np.stack(list(probs.values()))
    best = stacked.argmax(axis=0)
    return np.where(stacked.max(axis=0) > 0.5, best + 1, 0).astype(np.uint8)


def predict_file(trained: TrainedModel, path: Path, sets: list[SupportSet], out: Path, *,
                 multi_class: bool, overlay: bool) -> list[Path]:
    """Segment one input and write its mask PNG(s) (0/255), a label map for several classes, and
    `<stem>_overlay.png` when asked."""
    probs = predict_masks(trained, path, sets)
    masks = {cls: prob > 0.5 for cls, prob in probs.items()}
    pictures = {out / name: masks[cls].astype(np.uint8) * 255
                for cls, name in output_names(path.stem, sets, multi_class).items()}
    if len(sets) > 1:
        pictures[out / label_map_name(path.stem)] = label_map(probs)
    if overlay:
        pictures[out / f"{path.stem}_overlay.png"] = overlay_picture(original_rgb(path), list(masks.values()))
    return [write_png(target, picture) for target, picture in pictures.items()]


def write_label_names(out: Path, sets: list[SupportSet]) -> Path | None:
    """`classes.json` in the output folder: label-map value -> class name (the format training reads)."""
    if len(sets) < 2:
        return None
    names = {str(index + 1): s.cls for index, s in enumerate(sets)}
    return write_file_atomically(out / "classes.json", (json.dumps(names, indent=1) + "\n").encode("utf-8"),
                                 then="run useg predict again (or choose another --out)")


def write_png(path: Path, picture: np.ndarray) -> Path:
    """Encode in memory, then write atomically: a full disk leaves no empty or torn mask."""
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    return write_file_atomically(path, buffer.getvalue(), then="run useg predict again (or choose another --out)")


def check_outputs(files: list[Path], sets: list[SupportSet], out: Path, multi_class: bool) -> None:
    """Refuse an --out that would overwrite one of the inputs."""
    inputs = {path.resolve() for path in files}
    for path in files:
        names = [*output_names(path.stem, sets, multi_class).values(), f"{path.stem}_overlay.png",
                 label_map_name(path.stem), "classes.json"]
        clash = next((out / name for name in names if (out / name).resolve() in inputs), None)
        if clash is not None:
            raise DataError(f"writing {clash} would overwrite an input image; choose another --out folder")


def original_rgb(path: Path) -> np.ndarray:
    """The input as (H, W, 3) uint8, upright as viewers show it; grey and 16-bit images scaled to 0-255."""
    image = open_upright(path, str(path))
    if image.mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr"):
        return np.asarray(image.convert("RGB"))
    grey = (to_grey(image) * 255).round().astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def overlay_picture(rgb: np.ndarray, masks: list[np.ndarray]) -> np.ndarray:
    """The image tinted inside each mask, with the mask's outline in full colour (tints chosen to contrast)."""
    picture = rgb.astype(np.float32)
    thickness = max(1, min(rgb.shape[:2]) // 200)  # visible on large scans, thin on small ones
    tints = contrasting_tints(rgb, len(masks), for_grey=OVERLAY_COLOURS)  # not red on purple-stained cells
    for mask, tint in zip(masks, tints):
        colour = np.asarray(tint, dtype=np.float32)
        picture[mask] = (1 - OVERLAY_ALPHA) * picture[mask] + OVERLAY_ALPHA * colour
        picture[boundary(mask, thickness)] = colour
    return picture.round().astype(np.uint8)
