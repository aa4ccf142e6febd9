"""What `useg evaluate` scores: the run's saved split, or every image of another labelled folder.

On the run's own data the targets are its saved val or test split and the
supports its train split (training's validation rules); `--classes` may name a
class of that data the run never trained (`useg train --classes` left it out),
scored the same way and marked held-out. On any other folder
every image is a target once per class it shows; its supports come from the
other images of that folder, never of the target's patient, or from a second
labelled folder (`--support DIR2`) matched by class name. The two folders are
stacked into one dataset so that one task rule (never the target, never its
patient) covers both cases.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from useg.data import SegDataset, Split, data_options, load_dataset
from useg.data.index import dataset_files
from useg.errors import ConfigError, DataError
from useg.apply.predict import TrainedModel

SPLITS = ("val", "test")
NATIVE_MASK_BYTES = 256 * 2**20  # targets' truth kept between sweep points (a CT volume's masks are ~0.5 GB)


@dataclass
class EvalSet:
    """Targets and support pool as indices into one dataset, and how they were chosen."""

    dataset: SegDataset
    targets: np.ndarray
    pool: np.ndarray
    split: str  # "val" or "test" of the run, or "all" for another folder
    held_out: bool  # True when the data is not the run's own
    data: str | None
    support_data: str | None
    files: list[str]  # per dataset image: its file relative to its data folder ("" when unknown)
    resize: str = "squash"  # how the images were made square: the run's --resize (useg.data.geometry)

    _native: OrderedDict[int, np.ndarray] = field(default_factory=OrderedDict, repr=False)
    _native_bytes: int = field(default=0, repr=False)

    def native_masks(self, index: int) -> np.ndarray:
        """(C, H, W) truth of a target at the size it has on disk.

        Kept for the next sweep point while they fit in NATIVE_MASK_BYTES (the oldest are dropped first), so
        big CT data does not end up wholly in memory; a dropped one is read again when asked for.
        """
        if index in self._native:
            self._native.move_to_end(index)
            return self._native[index]
        read = self.dataset.read_native_masks
        masks = self.dataset.masks[index] if read is None else read(index)
        self._native[index] = masks
        self._native_bytes += masks.nbytes
        while len(self._native) > 1 and self._native_bytes > NATIVE_MASK_BYTES:
            self._native_bytes -= self._native.popitem(last=False)[1].nbytes
        return masks

    def class_status(self, trained_classes: list[str]) -> dict[str, str]:
        """Per class of the data: `trained` when the model was trained on it, else `held-out`."""
        return {name: "trained" if name in trained_classes else "held-out" for name in self.dataset.classes}


def is_run_data(trained: TrainedModel, data: str | None) -> bool:
    """No --data, or the folder the run trained on (same real path)."""
    if data is None:
        return True
    saved = trained.config.get("data")
    return saved is not None and os.path.realpath(os.path.expanduser(saved)) == os.path.realpath(
        os.path.expanduser(data))


def load_eval_set(trained: TrainedModel, *, data: str | None, annotations: str | None, split: str,
                  support: str | None = None, options: dict | None = None) -> EvalSet:
    """The targets and supports to score, following the module docstring's rules.

    `options`: the `load_dataset` keywords given on the command line (label, classes, class_names,
    patient_pattern); None values are left out.
    """
    if split not in SPLITS:
        raise ConfigError(f"--split {split} is unknown; use val or test")
    options = {key: value for key, value in (options or {}).items() if value is not None}
    if is_run_data(trained, data):
        if support is not None:
            raise ConfigError("--support applies to data the run was not trained on; the run's own data is "
                              "scored with its saved train split as supports (drop --support or pass --data)")
        return run_split(trained, data, annotations, split, options)
    return held_out(trained, data, annotations, support, options)


def run_split(trained: TrainedModel, data: str | None, annotations: str | None, split: str,
              options: dict) -> EvalSet:
    """The run's data as it was loaded for training, and its saved split; --classes picks classes to score."""
    saved_options = data_options(trained.config)
    for key, value in options.items():
        if key != "classes" and value != saved_options.get(key):
            flag = "--" + key.replace("_", "-")
            raise ConfigError(f"{flag} {value} differs from the run's ({saved_options.get(key)}); the run's data is "
                              f"read as it was trained, so drop {flag} (or evaluate a copy of the folder as other "
                              "data)")
    data = trained.config.get("data") if data is None else data
    saved_options["annotations"] = annotations or saved_options.get("annotations")
    saved_options["resize"] = trained.resize
    dataset = load_dataset(data, image_size=trained.image_size, seed=trained.seed, **saved_options)
    if trained.classes and dataset.classes != trained.classes:
        raise DataError(f"the data has classes {', '.join(dataset.classes)} but {trained.path.name} was trained on "
                        f"{', '.join(trained.classes)}; pass the run's data with --data")
    if not isinstance(trained.split, dict):
        raise DataError(f"{trained.path.name} holds no saved split; evaluate a checkpoint written by useg train")
    saved = Split.from_dict(trained.split, dataset, origin=f"the split saved in {trained.path.name}")
    targets = getattr(saved, split)
    if not len(targets):
        raise DataError(f"the {split} split of {trained.path.name} is empty; evaluate --split "
                        f"{'val' if split == 'test' else 'test'} instead")
    wanted = options.get("classes")
    if wanted and not set(wanted) <= set(dataset.classes):  # a class the run did not train: read every class
        return with_untrained_classes(trained, data, saved_options, dataset, saved, split, wanted)
    dataset = only_classes(dataset, wanted)
    return EvalSet(dataset, targets, saved.train, split, False, data, None, dataset_files(dataset), trained.resize)


def with_untrained_classes(trained: TrainedModel, data: str | None, saved_options: dict, run_data: SegDataset,
                           saved: Split, split: str, wanted: list[str]) -> EvalSet:
    """The run's data read again with every class, restricted to `wanted`, which names a class the run never
    trained (held out by `useg train --classes`): targets from the run's `split` patients, supports from its
    training patients.

    Reading other classes can bring images the run never loaded (they show none of its classes) and renumber
    its ids, so images are matched to the run's by their file (by id on the embedded data, whose images do not
    depend on the classes); an image the run never loaded takes the split of its patient's other images, and is
    left out where its patient has none (or several).
    """
    everything = load_dataset(data, image_size=trained.image_size, seed=trained.seed,
                              **{**saved_options, "classes": None})
    roles = split_roles(run_data, saved, everything)
    dataset = only_classes(everything, wanted)
    targets, pool = np.flatnonzero(roles == split), np.flatnonzero(roles == "train")
    return EvalSet(dataset, targets, pool, split, False, data, None, dataset_files(dataset), trained.resize)


def image_keys(dataset: SegDataset) -> list:
    """What names an image whatever classes were read: its file (and slice), or its id on the embedded data."""
    if dataset.sources:
        return [(source.image, source.mask, source.slice) for source in dataset.sources]
    return list(dataset.ids)


def split_roles(run_data: SegDataset, saved: Split, everything: SegDataset) -> np.ndarray:
    """Per image of `everything`: "train", "val" or "test" as `saved` splits `run_data`, else "" (see
    with_untrained_classes)."""
    run_roles = np.full(len(run_data), "", dtype=object)
    for name in ("train", "val", "test"):
        run_roles[getattr(saved, name)] = name
    position = {key: index for index, key in enumerate(image_keys(run_data))}
    roles = np.array([run_roles[position[key]] if key in position else "" for key in image_keys(everything)],
                     dtype=object)
    for patient in np.unique(everything.patients):
        mine = everything.patients == patient
        known = set(roles[mine]) - {""}
        if len(known) == 1:  # the run split by patient: its images the run never loaded share its part
            roles[mine & (roles == "")] = known.pop()
    return roles


def held_out(trained: TrainedModel, data: str, annotations: str | None, support: str | None,
             options: dict) -> EvalSet:
    """Every image of `data` as a target; supports from `data` itself or from the `support` folder, made square
    and cut into slices as the run's own data was."""
    options = {**options, "resize": trained.resize, "slice_axis": trained.slice_axis}
    targets = load_dataset(data, image_size=trained.image_size, annotations=annotations, seed=trained.seed,
                           **options)
    files = dataset_files(targets)
    if support is None:
        everything = np.arange(len(targets))
        return EvalSet(targets, everything, everything, "all", True, data, None, files, trained.resize)
    # Classes are matched by name, so --classes applies to the targets only.
    support_options = {key: value for key, value in options.items() if key != "classes"}
    supports = load_dataset(support, image_size=trained.image_size, seed=trained.seed, **support_options)
    shared = [name for name in targets.classes if name in supports.classes]
    if not shared:
        raise DataError(f"--support {support} has classes {', '.join(supports.classes)}, none of the classes of "
                        f"--data {data} ({', '.join(targets.classes)}); give a support folder of the same classes "
                        "(--class-names or classes.json name them)")
    both = stack_datasets(targets, supports)
    everything = np.arange(len(both))
    return EvalSet(both, everything[:len(targets)], everything[len(targets):], "all", True, data, support,
                   files + dataset_files(supports), trained.resize)


def only_classes(dataset: SegDataset, wanted: list[str] | None) -> SegDataset:
    """The dataset restricted to the wanted classes (all when None), in the data's class order."""
    if wanted is None:
        return dataset
    from useg.data.dataset import select_classes

    keep = select_classes(dataset.classes, wanted)
    read = dataset.read_native_masks
    return SegDataset(dataset.images, dataset.masks[:, keep], [dataset.classes[i] for i in keep], dataset.patients,
                      dataset.ids, dataset.source, dataset.report, dataset.predefined_split, sources=dataset.sources,
                      read_native_masks=None if read is None else lambda index: read(index)[keep])


def stack_datasets(first: SegDataset, second: SegDataset) -> SegDataset:
    """`first`'s images then `second`'s, with `first`'s classes only (matched by name) and no shared patient."""
    columns = [second.classes.index(name) if name in second.classes else None for name in first.classes]
    second_masks = np.zeros((len(second), len(first.classes), *second.images.shape[1:]), dtype=bool)
    for index, column in enumerate(columns):
        if column is not None:
            second_masks[:, index] = second.masks[:, column]
    offset = int(first.patients.max()) + 1
    return SegDataset(
        images=np.concatenate([first.images, second.images]), masks=np.concatenate([first.masks, second_masks]),
        classes=list(first.classes), patients=np.concatenate([first.patients, second.patients + offset]),
        ids=list(first.ids) + [f"support_{image}" for image in second.ids], source=first.source,
        report=dict(first.report), read_native_masks=first.read_native_masks)  # targets are `first`'s only
