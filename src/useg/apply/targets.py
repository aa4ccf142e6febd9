"""What `useg evaluate` scores: the run's saved split, or every image of another labelled folder.

On the run's own data the targets are its saved val or test split and the
supports its train split (training's validation rules); `--classes` may name a
class of that data the run never trained (`useg train --classes` left it out),
scored the same way and marked held-out. A run over several datasets
(useg.data.collection) is read again as it was trained, merged, and each
dataset's part of the split is scored (a class belongs to one dataset, so its
supports come from that dataset's training patients); `--data` naming one of
its folders scores that dataset alone. On any other folder
every image is a target once per class it shows; its supports come from the
other images of that folder, never of the target's patient, or from a second
labelled folder (`--support DIR2`) matched by class name. The two folders are
stacked into one dataset so that one task rule (never the target, never its
patient) covers both cases.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field, replace

import numpy as np

from useg.data import SegDataset, Split, data_options, load_dataset
from useg.data.collection import DEFAULT_FRACTIONS, data_paths, is_several, load_data
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
    data: str | list[str] | None  # the folder scored; a run over several datasets: its folders, in order
    support_data: str | None
    files: list[str]  # per dataset image: its file relative to its data folder ("" when unknown)
    resize: str = "squash"  # how the images were made square: the run's --resize (useg.data.geometry)
    # A run over several datasets: the numbers (0-based) of those scored, each reported on its own; else empty.
    scored_datasets: list[int] = field(default_factory=list)

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

    def folder_of(self, index: int) -> str | None:
        """The folder image `index`'s file is relative to: with several datasets, its own dataset's."""
        if isinstance(self.data, list):
            return self.folder_of_dataset(int(self.dataset.image_datasets[index]))
        return self.data

    def folder_of_dataset(self, number: int) -> str | None:
        """The folder of dataset `number` (0-based) of a run over several; `data` itself otherwise."""
        return self.data[number] if isinstance(self.data, list) else self.data

    def class_status(self, trained_classes: list[str]) -> dict[str, str]:
        """Per class of the data: `trained` when the model was trained on it, else `held-out`."""
        return {name: "trained" if name in trained_classes else "held-out" for name in self.dataset.classes}


def is_run_data(trained: TrainedModel, data: str | None) -> bool:
    """No --data, or a folder the run trained on (same real path)."""
    return data is None or run_dataset_number(trained, data) is not None


def run_dataset_number(trained: TrainedModel, data: str | None) -> int | None:
    """Which of the run's datasets (0-based) the folder `data` is, by real path; None when none (or no --data)."""
    if data is None:
        return None
    wanted = real_path(data)
    folders = [real_path(path) if path is not None else None for path in data_paths(trained.config.get("data"))]
    return folders.index(wanted) if wanted in folders else None


def real_path(path: str) -> str:
    return os.path.realpath(os.path.expanduser(path))


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
    saved_options["annotations"] = annotations or saved_options.get("annotations")  # where an entry sets none
    saved_options["resize"] = trained.resize
    if is_several(trained.config.get("data")):
        return several_datasets(trained, data, split, options, saved_options)
    data = trained.config.get("data") if data is None else data
    dataset = load_dataset(data, image_size=trained.image_size, seed=trained.seed, **saved_options)
    saved, targets = saved_targets(trained, dataset, split)
    wanted = options.get("classes")
    if wanted and not set(wanted) <= set(dataset.classes):  # a class the run did not train: read every class
        return with_untrained_classes(trained, data, saved_options, dataset, saved, split, wanted)
    dataset = only_classes(dataset, wanted)
    return EvalSet(dataset, targets, saved.train, split, False, data, None, dataset_files(dataset), trained.resize)


def saved_targets(trained: TrainedModel, dataset: SegDataset, split: str) -> tuple[Split, np.ndarray]:
    """The run's saved split rebuilt on its data (ids and fingerprints checked), and its `split` part."""
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
    return saved, targets


def several_datasets(trained: TrainedModel, data: str | None, split: str, options: dict,
                     saved_options: dict) -> EvalSet:
    """A run over several datasets: its data loaded and merged as training did, the saved split rebuilt on it;
    every dataset's `split` part scored, or only the one whose folder `data` names."""
    run_data = trained.config.get("data")
    chosen = run_dataset_number(trained, data)
    fractions = trained.config.get("split_fractions") or DEFAULT_FRACTIONS
    dataset = load_data(run_data, image_size=trained.image_size, seed=trained.seed, fractions=fractions,
                        **saved_options)
    saved, targets = saved_targets(trained, dataset, split)
    numbers = list(range(len(dataset.datasets))) if chosen is None else [chosen]
    targets = targets[np.isin(dataset.image_datasets[targets], numbers)]
    if not len(targets):
        raise DataError(f"the {split} split of dataset {dataset.datasets[chosen]} in {trained.path.name} is empty; "
                        f"evaluate --split {'val' if split == 'test' else 'test'} instead")
    own = dataset.classes_of(numbers)
    wanted = options.get("classes")
    check_wanted(wanted or [], own, dataset.classes, None if chosen is None else dataset.datasets[chosen])
    dataset = only_classes(dataset, wanted or own)
    folders = [str(path) for path in data_paths(run_data)]
    return EvalSet(dataset, targets, saved.train, split, False, folders, None, dataset_files(dataset),
                   trained.resize, scored_datasets=numbers)


def check_wanted(wanted: list[str], own: list[str], trained: list[str], chosen: str | None) -> None:
    """--classes on a run over several datasets: classes it trained on, of the dataset --data names (if any)."""
    unknown = [name for name in wanted if name not in trained]
    if unknown:
        raise ConfigError(f"--classes {', '.join(unknown)} is not a class of the run ({', '.join(trained)}); a run "
                          "over several datasets scores only the classes it trained on (to score another class, "
                          "evaluate a copy of its folder with --data)")
    elsewhere = [name for name in wanted if name not in own]
    if elsewhere:
        raise ConfigError(f"--classes {', '.join(elsewhere)} is not a class of dataset {chosen} (its classes: "
                          f"{', '.join(own)}); drop --data to score every dataset of the run")


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
    return replace(dataset, masks=dataset.masks[:, keep], classes=[dataset.classes[i] for i in keep],
                   class_datasets=[dataset.class_datasets[i] for i in keep] if dataset.class_datasets else [],
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
