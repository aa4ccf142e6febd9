"""Apply a trained model: load it from a run's checkpoint and segment new images from a support folder.

Inputs are read as training reads them (every format and intensity rule of
`useg.data.images` and `useg.data.medical`). Inputs of any size are made into
the model's square as the run was trained (`--resize`: squashed, or letterboxed
with `pad`; `useg.data.geometry`), predicted from a
fixed, seeded support set per class (or the mean of K seeded draws,
`--ensembles K`; never the input itself: `useg.apply.supports`), and the
probability map goes back to the input's original size (letterbox cropped,
then resized) before thresholding. Several classes give one mask per class and a
label map (`<stem>_label_map.png`, values named in `classes.json`). A 3-D volume
is predicted slice by slice along the slice axis and its masks are written as
one NIfTI volume each (`<stem>.nii.gz`, 0/1, with a NIfTI input's geometry).

No input of the command and no ground truth is written over without
`--overwrite`, and input images never are (`check_outputs`); predict marks what
it writes, so a re-run into its own output folder replaces its earlier outputs.
"""

from __future__ import annotations

import gzip
import io
import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, PngImagePlugin

from useg.training import state as training_state
from useg.checkpoint import OpenCheckpoint, checkpoint_path, open_checkpoint, sidecar_path
from useg.checkpoint import warn_to_stderr as warn  # to stderr, so `--json` output stays parseable
from useg.config import saved_value
from useg.files import write_file_atomically
from useg.data.folders import is_folders
from useg.apply.outputs import holds
from useg.data.formats import IMAGE_SUFFIXES, file_stem, file_suffix, is_image_file, is_medical
from useg.data.geometry import from_square
from useg.data.images import open_image, open_upright, read_grey, resize_grey, to_grey
from useg.data.labels import CLASSES_FILE
from useg.data.medical import read_medical_image, slices
from useg.errors import CheckpointError, DataError
from useg.model import UniverSeg, build_from_config
from useg.run_folder import checkpoints_folder
from useg.weights import fit_weights, is_export_sidecar, model_weights, read_export, require_finite
from useg.apply.scores import boundary
from useg.apply.supports import SupportSet, file_id
from useg.viz import contrasting_tints

# Overlay tints per class (RGB) on grey images, in the support set's class order (colour images: viz.contrasting_tints).
OVERLAY_COLOURS = [(255, 64, 64), (64, 200, 255), (255, 210, 0), (120, 255, 120), (255, 100, 255), (255, 150, 60)]
OVERLAY_ALPHA = 0.35
# Written into every mask, label map and overlay (PNG text chunk, NIfTI `descrip`): files carrying it are
# predict's own outputs, which a re-run may replace; anything else in a labelled folder is ground truth.
WRITTEN_BY = "useg predict"
VOLUME_SUFFIX = ".nii.gz"


@dataclass
class TrainedModel:
    """A model rebuilt from a checkpoint or an export, with the training config it was saved with."""

    model: UniverSeg
    path: Path
    epoch: int
    config: dict[str, Any]  # an export's: only what applying needs (no data path)
    classes: list[str]
    split: dict[str, list[str]] | None  # anonymous image ids per split, as training saved them
    export: dict[str, Any] | None = None  # an export's description (useg.weights); None for a run's checkpoint

    @property
    def image_size(self) -> int:
        return int(self.config["image_size"])

    @property
    def resize(self) -> str:
        """How the run made images square (`--resize`); runs saved before the setting squashed."""
        return str(saved_value(self.config, "resize"))

    @property
    def slice_axis(self) -> int:
        """The axis the run cut 3-D volumes along (`--slice-axis`); volumes it is applied to are cut alike."""
        return int(self.config.get("slice_axis", 2))

    @property
    def support_size(self) -> int:
        return int(self.config["support_size"])

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))


def open_trained(run_dir: str | Path, which: str | None) -> OpenCheckpoint:
    """The verified checkpoint `which` names in the run (default best): latest, best, an epoch number
    or a path; kept open, so the bytes loaded are the bytes hashed (once)."""
    which = which or "best"
    folder = checkpoints_folder(run_dir)
    named = which in ("latest", "best") or which.isdigit()
    if named and not folder.is_dir():
        raise CheckpointError(f"no checkpoints in {folder}: train first (useg train --run-dir {shlex.quote(str(run_dir))}), "
                              "or pass --run-dir or a checkpoint path")
    return open_checkpoint(folder, which, warn)  # a file without a sidecar is read as an export (export_path)


def load_trained(run_dir: str | Path = ".", which: str | None = None) -> TrainedModel:
    """Load a run's checkpoint or an export (verified, weights_only) and rebuild its model in eval mode."""
    shared = export_path(run_dir, which)
    if shared is not None:
        return load_export(shared)
    opened = open_trained(run_dir, which)
    path, state = opened.path, opened.load()
    training_state.require_model_parts(state, path)
    weights = model_weights(state)
    require_finite(weights, path)
    model = build_from_config(state[training_state.MODEL_CONFIG])
    fit_weights(model, weights, path, own_config=True)
    model.eval()
    return TrainedModel(model, path, int(state.get(training_state.EPOCH, 0)), training_state.saved_config(state),
                        training_state.saved_classes(state), training_state.saved_split(state))


def export_path(run_dir: str | Path, which: str | None) -> Path | None:
    """The file `which` names when it is read as an export: it has an export's sidecar, or no sidecar at all
    (then `read_export` says what a lone file is, e.g. a checkpoint whose .json was not copied with it)."""
    if which is None or which in ("latest", "best") or which.isdigit():
        return None
    path = checkpoint_path(checkpoints_folder(run_dir), which)
    if not path.is_file() or (sidecar_path(path).exists() and not is_export_sidecar(path)):
        return None
    return path


def load_export(path: Path) -> TrainedModel:
    """Rebuild the model an export describes (see useg.weights), in eval mode; it carries no split."""
    export = read_export(path)
    model = build_from_config(export.info["model_config"])
    fit_weights(model, export.weights, path, own_config=True)
    model.eval()
    return TrainedModel(model, path, int(export.info.get("epoch") or 0), dict(export.info["config"]),
                        list(export.info.get("classes") or []), None, export.info)


@torch.no_grad()
def probabilities(model: UniverSeg, targets: torch.Tensor, support_images: torch.Tensor,
                  support_labels: torch.Tensor) -> torch.Tensor:
    """Sigmoid foreground probabilities (B, 1, H, W) for targets (B, 1, H, W) and supports (B, S, 1, H, W)."""
    model.eval()
    return torch.sigmoid(model(targets, support_images, support_labels))


@dataclass
class InputImage:
    """One input of predict: a 2-D image, or a 3-D volume of `slices` planes along the slice axis."""

    path: Path
    slices: int | None = None  # None: a 2-D image

    @property
    def stem(self) -> str:
        return file_stem(self.path)  # `scan.nii.gz` -> `scan`

    @property
    def mask_suffix(self) -> str:
        return ".png" if self.slices is None else VOLUME_SUFFIX


def input_files(items: list[str | Path], slice_axis: int = 2) -> list[InputImage]:
    """Image files named directly or found (not recursively) in named folders; each readable, stems unique."""
    files: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            found = sorted(path for path in item.iterdir() if is_image_file(path))
            if not found:
                raise DataError(f"no images in {item}: predict reads {', '.join(IMAGE_SUFFIXES)} and suffix-less "
                                f"DICOM files")
            files += found
        elif item.exists():
            files.append(item)
        else:
            raise DataError(f"input image {item} does not exist")
    stems: dict[str, Path] = {}
    for path in files:
        if stems.setdefault(file_stem(path), path) != path:
            raise DataError(f"inputs {stems[file_stem(path)]} and {path} share the name {file_stem(path)}; "
                            f"their masks would clash")
    return [checked_input(path, slice_axis) for path in files]


def checked_input(path: Path, slice_axis: int) -> InputImage:
    """Fail on an unreadable input before any mask is written; a NIfTI or DICOM file is read whole (its
    reader's checks) to learn whether it is a volume."""
    if not is_medical(path):
        open_image(path, str(path))  # header only
        return InputImage(path)
    volume = read_medical_image(path, str(path))
    return InputImage(path, volume.shape[slice_axis] if volume.ndim == 3 else None)


def output_names(stem: str, sets: list[SupportSet], multi_class: bool, suffix: str = ".png") -> dict[str, str]:
    """Mask file name per class: `<stem>.png`, or `<stem>_<class>.png` for multi-class supports."""
    return {s.cls: f"{stem}_{s.cls}{suffix}" if multi_class else f"{stem}{suffix}" for s in sets}


def label_map_name(stem: str, suffix: str = ".png") -> str:
    return f"{stem}_label_map{suffix}"


def overlay_name(item: InputImage, number: int | None = None) -> str:
    """`<stem>_overlay.png`, or `<stem>_slice012_overlay.png` for slice 12 of a volume."""
    if number is None:
        return f"{item.stem}_overlay.png"
    digits = max(3, len(str((item.slices or 1) - 1)))
    return f"{item.stem}_slice{number:0{digits}d}_overlay.png"


def planned_outputs(item: InputImage, sets: list[SupportSet], multi_class: bool, overlay: bool) -> list[str]:
    """The names of every file that predicting `item` writes."""
    names = list(output_names(item.stem, sets, multi_class, item.mask_suffix).values())
    if len(sets) > 1:
        names.append(label_map_name(item.stem, item.mask_suffix))
    if overlay:
        numbers = [None] if item.slices is None else range(item.slices)
        names += [overlay_name(item, number) for number in numbers]
    return names


def plane_probabilities(trained: TrainedModel, grey: np.ndarray, shape: tuple[int, int],
                        sets: list[SupportSet]) -> dict[str, np.ndarray]:
    """Probabilities per class at `shape` (height, width) of one plane read at the model's size, averaged over
    the support draws."""
    target = torch.from_numpy(grey)[None, None]
    draws = sets[0].images.shape[0]
    total = None
    for member in range(draws):
        probs = member_probabilities(trained, target, sets, member)
        total = probs if total is None else total + probs
    full = from_square(total / draws, shape, trained.resize)
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


def predict_file(trained: TrainedModel, item: InputImage, sets: list[SupportSet], out: Path, *,
                 multi_class: bool, overlay: bool, slice_axis: int = 2) -> list[Path]:
    """Segment one input and write its masks; returns the files written."""
    if item.slices is not None:
        return predict_volume(trained, item, sets, out, multi_class=multi_class, overlay=overlay,
                              slice_axis=slice_axis)
    return predict_image(trained, item, sets, out, multi_class=multi_class, overlay=overlay)


def predict_image(trained: TrainedModel, item: InputImage, sets: list[SupportSet], out: Path, *,
                  multi_class: bool, overlay: bool) -> list[Path]:
    """Mask PNG(s) (0/255) of a 2-D image, a label map for several classes, and `<stem>_overlay.png` when asked."""
    grey, (width, height) = read_grey(item.path, str(item.path), trained.image_size, trained.resize)
    probs = plane_probabilities(trained, grey, (height, width), sets)
    masks = {cls: prob > 0.5 for cls, prob in probs.items()}
    pictures = {out / name: masks[cls].astype(np.uint8) * 255
                for cls, name in output_names(item.stem, sets, multi_class).items()}
    if len(sets) > 1:
        pictures[out / label_map_name(item.stem)] = label_map(probs)
    if overlay:
        pictures[out / overlay_name(item)] = overlay_picture(original_rgb(item.path), list(masks.values()))
    return [write_png(target, picture) for target, picture in pictures.items()]


def predict_volume(trained: TrainedModel, item: InputImage, sets: list[SupportSet], out: Path, *,
                   multi_class: bool, overlay: bool, slice_axis: int) -> list[Path]:
    """A 3-D volume slice by slice along `slice_axis` (as training cuts it): one NIfTI mask volume (0/1) per
    class and a label-map volume for several classes, each the input's shape; an overlay PNG per slice when
    asked."""
    volume = read_medical_image(item.path, str(item.path))  # scaled as training scales it: the volume as a whole
    masks: dict[str, list[np.ndarray]] = {s.cls: [] for s in sets}
    labels: list[np.ndarray] = []
    written = []
    for number, plane in enumerate(slices(volume, slice_axis)):
        probs = plane_probabilities(trained, resize_grey(plane, trained.image_size, trained.resize), plane.shape,
                                    sets)
        for cls, prob in probs.items():
            masks[cls].append(prob > 0.5)
        if len(sets) > 1:
            labels.append(label_map(probs))
        if overlay:
            picture = overlay_picture(grey_rgb(plane), [planes[-1] for planes in masks.values()])
            written.append(write_png(out / overlay_name(item, number), picture))
    volumes = {name: np.stack(masks[cls], axis=slice_axis).astype(np.uint8)
               for cls, name in output_names(item.stem, sets, multi_class, VOLUME_SUFFIX).items()}
    if labels:
        volumes[label_map_name(item.stem, VOLUME_SUFFIX)] = np.stack(labels, axis=slice_axis)
    return written + [write_volume(out / name, values, item.path) for name, values in volumes.items()]


def label_names_bytes(sets: list[SupportSet]) -> bytes | None:
    """The `classes.json` of several classes: label-map value -> class name (the format training reads)."""
    if len(sets) < 2:
        return None
    names = {str(index + 1): s.cls for index, s in enumerate(sets)}
    return (json.dumps(names, indent=1) + "\n").encode("utf-8")


def write_label_names(out: Path, sets: list[SupportSet]) -> Path | None:
    """`classes.json` in the output folder, for several classes."""
    data = label_names_bytes(sets)
    if data is None:
        return None
    return write_file_atomically(out / CLASSES_FILE, data, then="run useg predict again (or choose another --out)")


def write_png(path: Path, picture: np.ndarray) -> Path:
    """Encode in memory, then write atomically: a full disk leaves no empty or torn mask. Marked as predict's."""
    buffer = io.BytesIO()
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", WRITTEN_BY)
    Image.fromarray(picture).save(buffer, format="PNG", pnginfo=info)
    return write_file_atomically(path, buffer.getvalue(), then="run useg predict again (or choose another --out)")


def write_volume(path: Path, values: np.ndarray, source: Path) -> Path:
    """A uint8 `.nii.gz` in the input's array order, gzipped in memory and written atomically; a NIfTI input's
    affine and voxel sizes are kept so viewers lay the mask over the scan (a DICOM input's are not: identity)."""
    import nibabel

    affine, header = np.eye(4), None
    if file_suffix(source) in (".nii", ".nii.gz"):
        original = nibabel.load(source)  # the header only: the voxels were read by read_medical_image
        affine, header = original.affine, original.header
        values = values.reshape(original.shape)  # the singleton axes the reader dropped
    image = nibabel.Nifti1Image(values.astype(np.uint8), affine, header)
    image.header.set_data_dtype(np.uint8)
    image.header["cal_min"] = image.header["cal_max"] = 0  # the scan's display window would hide labels 0/1
    image.header["descrip"] = WRITTEN_BY.encode("ascii")
    data = gzip.compress(image.to_bytes(), compresslevel=6, mtime=0)
    return write_file_atomically(path, data, then="run useg predict again (or choose another --out)")


# ---------------------------------------------------------------- what predict must not write over


@dataclass
class Protected:
    """What predict must not write over: the input images (never), the support files and ground truth (only
    with --overwrite). Files are compared by (device, inode), so no path spelling or symlink hides one."""

    images: dict[tuple[int, int], Path]
    support: dict[tuple[int, int], Path]
    support_folder: Path
    support_stems: set[str]
    labelled: Path | None  # the labelled folder (images/ + masks/) that --out is, or is inside the masks/ of

    def problem(self, target: Path, stem: str | None, new_bytes: bytes | None = None) -> tuple[str, bool] | None:
        """What writing `target` would do ("would overwrite ...") and whether --overwrite allows it; None when it
        destroys nothing."""
        identity = file_id(target)
        if identity is None:
            return None
        if identity in self.images:
            return f"would overwrite an input image{also_named(self.images[identity], target)}", False
        if identity in self.support:
            where = also_named(self.support[identity], target)
            return f"would overwrite a file of --support {self.support_folder}{where}", True
        if written_by_predict(target) or (new_bytes is not None and holds(target, new_bytes)):
            return None  # an earlier prediction, or the same bytes again: a re-run loses nothing
        if self.labelled is not None:
            return (f"would overwrite a file of the labelled folder {self.labelled} that useg predict did not "
                    f"write"), True
        if stem in self.support_stems:
            return (f"would overwrite a file named like the support image {stem} that useg predict did not write "
                    f"(ground truth?)"), True
        return None


def also_named(original: Path, target: Path) -> str:
    """` (ORIGINAL)` when a symlink or a link leads `target` to it, so the message names the file at risk."""
    return "" if original == target else f" ({original})"


def check_outputs(items: list[InputImage], sets: list[SupportSet], out: Path, *, multi_class: bool,
                  overlay: bool, support: str | Path, overwrite: bool = False) -> None:
    """Refuse, before anything is written, an --out where predict would write over an input of the command or
    ground truth: one line naming the first such file and what to do."""
    protected = protected_files(items, Path(support), out)
    for item in items:
        for name in planned_outputs(item, sets, multi_class, overlay):
            refuse_if(protected.problem(out / name, item.stem), out / name, overwrite)
    names = label_names_bytes(sets)
    if names is None:
        return
    target = out / CLASSES_FILE
    refuse_if(protected.problem(target, None, names), target, overwrite)
    if protected.labelled == out.resolve() and not target.exists():
        refuse_if((f"would give the labelled folder {protected.labelled} a {CLASSES_FILE}, renaming its classes",
                   True), target, overwrite)


def refuse_if(problem: tuple[str, bool] | None, target: Path, overwrite: bool) -> None:
    if problem is None:
        return
    what, allowed = problem
    if allowed and overwrite:
        return
    fix = "choose another --out folder" + (", or pass --overwrite to allow it" if allowed else "")
    raise DataError(f"writing {target} {what}; {fix}")


def protected_files(items: list[InputImage], support: Path, out: Path) -> Protected:
    found = [support] if support.is_file() else [path for path in support.rglob("*") if path.is_file()]
    return Protected(images=file_ids(item.path for item in items), support=file_ids(found), support_folder=support,
                     support_stems={file_stem(path) for path in found if is_image_file(path)},
                     labelled=labelled_folder(out))


def file_ids(paths) -> dict[tuple[int, int], Path]:
    ids: dict[tuple[int, int], Path] = {}
    for path in paths:
        identity = file_id(path)
        if identity is not None:
            ids.setdefault(identity, path)
    return ids


def labelled_folder(out: Path) -> Path | None:
    """The labelled folder (images/ + masks/) that `out` is, or whose masks/ holds `out`, by its resolved path."""
    folder = out.resolve()
    if is_folders(folder):
        return folder
    for place in (folder, *folder.parents):
        if place.name == "masks" and (place.parent / "images").is_dir():
            return place.parent
    return None


def written_by_predict(path: Path) -> bool:
    """Whether `path` carries predict's mark (WRITTEN_BY): a mask, label map or overlay of an earlier run."""
    try:
        if file_suffix(path) == VOLUME_SUFFIX:
            import nibabel

            return bytes(nibabel.load(path).header["descrip"].item()).rstrip(b"\0") == WRITTEN_BY.encode("ascii")
        with open_image(path, path.name) as image:
            return image.info.get("Software") == WRITTEN_BY
    except Exception:  # noqa: BLE001 - a file that cannot be read as ours is not ours
        return False


def original_rgb(path: Path) -> np.ndarray:
    """The input as (H, W, 3) uint8, upright as viewers show it; grey, 16-bit and medical images scaled as
    training scales them, to 0-255."""
    if is_medical(path):
        return grey_rgb(read_medical_image(path, str(path)))
    image = open_upright(path, str(path))
    if image.mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr"):
        return np.asarray(image.convert("RGB"))
    return grey_rgb(to_grey(image))


def grey_rgb(grey: np.ndarray) -> np.ndarray:
    """A [0, 1] grey plane as (H, W, 3) uint8."""
    return np.repeat((grey * 255).round().astype(np.uint8)[:, :, None], 3, axis=2)


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
