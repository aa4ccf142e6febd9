"""predict's supports: seeded draws per class from a support folder, never an input image as its own support.

Every input gets the same draws (`--seed`, `--ensembles K`), except an input
that is itself an image of the support folder (the same file, by device and
inode): its draws come from the folder without it, so a target never sees
its own mask. `support_report` says which images were drawn, by anonymous ids
(and, with `--with-paths`, by file names relative to the folder).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from useg.checkpoint import warn_to_stderr as warn  # to stderr, so `--json` output stays parseable
from useg.data import SegDataset, load_dataset
from useg.data.dataset import select_classes
from useg.data.index import dataset_files
from useg.data.tasks import check_support_size_setting
from useg.errors import DataError

if TYPE_CHECKING:
    from useg.apply.predict import TrainedModel


@dataclass
class SupportSet:
    """The fixed supports of one class: K draws of (S, H, W) images in [0, 1] and 0/1 labels, (K, S, H, W)."""

    cls: str
    images: np.ndarray
    labels: np.ndarray
    picked: np.ndarray | None = None  # (K, S) indices of the drawn images in the support folder's dataset

    @property
    def size(self) -> int:
        return self.images.shape[1]


@dataclass
class SupportPool:
    """The support folder as loaded, the images showing each predicted class, and the shared draws."""

    data: SegDataset
    sets: list[SupportSet]
    members: dict[str, np.ndarray]  # per predicted class: indices of the images showing it
    support_size: int
    seed: int
    ensembles: int
    file_ids: list[tuple[int, int] | None] = field(default_factory=list)  # per image: its file's (device, inode)

    @property
    def multi_class(self) -> bool:
        return len(self.data.classes) > 1

    def images_of(self, path: Path) -> set[int]:
        """The support images (a volume's slices: all of them) read from the file `path` leads to."""
        identity = file_id(path)
        return set() if identity is None else {index for index, own in enumerate(self.file_ids) if own == identity}

    def sets_for(self, path: Path) -> list[SupportSet]:
        """The draws for the input `path`: the shared ones, or, where one holds the input itself, draws
        from the class's other images (same seeds)."""
        own = self.images_of(path)
        return [self.without(s, own) if s.picked is not None and own & set(s.picked.ravel().tolist()) else s
                for s in self.sets]

    def without(self, shared: SupportSet, own: set[int]) -> SupportSet:
        cls = self.data.classes.index(shared.cls)
        others = np.asarray([index for index in self.members[shared.cls].tolist() if index not in own], dtype=int)
        if not len(others):
            raise DataError(f"an input of --images is the only support image showing class {shared.cls}; add other "
                            "images of that class to --support, or leave that input out")
        return pick_supports(self.data, cls, others, self.support_size, self.seed, self.ensembles, quiet=True)


def support_pool(supports: SegDataset, wanted: list[str] | None, support_size: int, seed: int,
                 ensembles: int = 1) -> SupportPool:
    """The classes to predict, their members, and per chosen class `ensembles` seeded draws of up to
    `support_size` images showing it."""
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
    kept = [cls for cls in chosen if len(shown[cls])]
    sets = [pick_supports(supports, cls, shown[cls], support_size, seed, ensembles) for cls in kept]
    return SupportPool(supports, sets, {supports.classes[cls]: shown[cls] for cls in kept}, support_size, seed,
                       ensembles)


def pick_supports(supports: SegDataset, cls: int, members: np.ndarray, support_size: int, seed: int,
                  ensembles: int = 1, quiet: bool = False) -> SupportSet:
    """Seeded picks without repeats; all of them when there are fewer than `support_size`.

    The first draw is the one a single prediction uses, so `--ensembles 1` keeps earlier masks.
    """
    name = supports.classes[cls]
    if len(members) < support_size and not quiet:
        warn(f"class {name} has {len(members)} support images, fewer than --support-size {support_size}; "
             f"using all {len(members)}")
    size = min(support_size, len(members))
    picks = []
    for member in range(ensembles):
        rng = np.random.default_rng([seed, cls] if member == 0 else [seed, cls, member])
        picks.append(np.sort(rng.choice(members, size=size, replace=False)))
    picked = np.stack(picks)
    return SupportSet(name, supports.images[picked], supports.masks[picked, cls].astype(np.float32), picked)


def load_support_pool(trained: TrainedModel, folder: str | Path, wanted: list[str] | None, support_size: int | None,
                      *, options: dict | None = None, ensembles: int = 1, seed: int | None = None) -> SupportPool:
    """The supports from a folder in any training layout, at the model's size.

    `options`: load_dataset keywords for the folder (label, class_names, slice_axis)."""
    folder = Path(folder)
    if folder.is_dir() and not any(folder.iterdir()):
        raise DataError(f"support folder {folder} is empty; it needs images with masks in a training layout")
    options = {**(options or {}), "resize": trained.resize}  # supports are made square as the run's images were
    data = name_like_the_run(load_dataset(folder, image_size=trained.image_size, **options), trained)
    size = trained.support_size if support_size is None else support_size
    seed = trained.seed if seed is None else seed
    if seed < 0:
        raise DataError(f"--seed must be 0 or more, not {seed}")
    pool = support_pool(data, wanted, size, seed, ensembles)
    pool.file_ids = [file_id(path) if path else None for path in image_files(folder, data)]
    return pool


def load_supports(trained: TrainedModel, folder: str | Path, wanted: list[str] | None, support_size: int | None,
                  *, options: dict | None = None, ensembles: int = 1,
                  seed: int | None = None) -> tuple[list[SupportSet], bool]:
    """The shared support sets of `load_support_pool`, and whether the folder is multi-class."""
    pool = load_support_pool(trained, folder, wanted, support_size, options=options, ensembles=ensembles, seed=seed)
    return pool.sets, pool.multi_class


def name_like_the_run(supports: SegDataset, trained: TrainedModel) -> SegDataset:
    """Plain binary supports (the loader's `foreground`) take the name of a one-class run's class."""
    if supports.classes == ["foreground"] and len(trained.classes) == 1 and trained.classes != ["foreground"]:
        supports.classes = list(trained.classes)
    return supports


def image_files(folder: Path, data: SegDataset) -> list[Path | None]:
    """Per loaded image, its file: sources are relative to the folder, or to a layout folder inside it (MMOTU's
    OTU_2d)."""
    roots = [folder, *sorted(path for path in folder.glob("*/") if path.is_dir())]
    found: list[Path | None] = []
    for source in data.sources:
        candidates = (root / source.image for root in roots)
        found.append(next((path for path in candidates if path.is_file()), None))
    return found


def file_id(path: Path) -> tuple[int, int] | None:
    """The (device, inode) of the regular file `path` leads to, through symlinks; None when there is none."""
    try:
        status = os.stat(path)
    except (OSError, ValueError):
        return None
    return (status.st_dev, status.st_ino) if stat.S_ISREG(status.st_mode) else None


def support_report(pool: SupportPool, with_paths: bool = False) -> list[str]:
    """One line per class (and per draw, with --ensembles) naming the images drawn for every input."""
    return [f"supports of {s.cls} ({what}): {names}" for s in pool.sets for what, names in draws(pool, s, with_paths)]


def own_draws_report(pool: SupportPool, label: str, sets: list[SupportSet], with_paths: bool = False) -> list[str]:
    """The lines for an input that is itself a support image: the draws it gets instead of the shared ones."""
    return [f"{label} is itself a support image: its {own.cls} supports ({what}) are drawn without it: {names}"
            for own, shared in zip(sets, pool.sets) if own is not shared
            for what, names in draws(pool, own, with_paths)]


def draws(pool: SupportPool, s: SupportSet, with_paths: bool) -> list[tuple[str, str]]:
    """Per draw of `s`: `S=4` (`S=4, draw 2 of 3`) and the names of the images drawn."""
    files = dataset_files(pool.data) if with_paths else []
    picks = [] if s.picked is None else list(s.picked)
    return [(f"S={s.size}" + (f", draw {number + 1} of {len(picks)}" if len(picks) > 1 else ""),
             ", ".join(support_name(pool.data, int(index), files) for index in picked))
            for number, picked in enumerate(picks)]


def support_name(data: SegDataset, index: int, files: list[str]) -> str:
    """`p002_i000`, or `p002_i000 (images/s2.png)` when `files` (--with-paths) are given."""
    name = data.ids[index]
    return f"{name} ({files[index]})" if files and files[index] else name
