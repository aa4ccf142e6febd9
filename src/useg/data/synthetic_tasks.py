"""Synthetic in-context tasks, as in UniverSeg's training recipe: shapes and looks no dataset has.

A *family* is a random label map of LABELS smooth shapes (the argmax of LABELS
smooth noise fields) with a look of its own: a mean intensity and a texture per
label, a shape scale, a deformation strength, shading and noise levels. Its
*subjects* are the family's template bent by a smooth random deformation and
shaded by a smooth random gain and offset, with noise: the same anatomy seen
in different people. A task picks one family, one label and different subjects
for its target and supports, so the label is known only from the supports: its
intensity changes from family to family and, with the shading, from place to place.

Everything is a pure function of (seed, image_size, family, subject): a family
holds every number its subjects need (each subject's coarse deformation and
shading grids, where its noise starts in a fixed noise bank), so a task takes
no random draws beyond the few made from the caller's generator (family,
subjects, label order). Families are cached, bounded by bytes, least recently
used out first, shared by threads; subjects are rendered on each call (matrix
products, one gather, a few vectorised passes per image), so a task is the same
on any thread, in any order, with a cold or a warm cache.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import numpy as np

from useg.data.augment import noise_bank
from useg.errors import ConfigError

FAMILIES = 1000
SUBJECTS = 100  # per family
LABELS = 16  # per family
MIN_AREA, MAX_AREA = 0.01, 0.6  # the fraction of its target a task's label covers (when the family has one)
CACHE_BYTES = 256 * 2**20  # all 1,000 families at 128 px take about 170 MB
SHAPE_CELLS = (2, 7)  # label shapes: noise on 2..6 cells across the image, from big blobs to many small ones
WARP_CELLS = 3  # subjects' deformations are smooth over a third of the image
WARP_STRENGTH = (0.03, 0.08)  # std of the deformation's control points (about twice the displacement's), per family
WARP_LIMIT = 2.5  # control points clipped at 2.5 std: no displacement beyond it, so the template's margin is bounded
SHADING_CELLS = 2
FAMILY_TAG = 0x53594E46  # keeps the families' random streams apart from other uses of the seed


@dataclass(frozen=True)
class Family:
    """One family's template and everything its subjects are made of.

    The template is stored with a margin of repeated edge pixels at least as wide as any
    of its subjects' displacements, so a deformed pixel reads it without a bounds check:
    the same as clamping positions to the image, at a fraction of the cost.
    """

    labels: np.ndarray  # (H + 2 margin, W + 2 margin) uint8 label map of the template
    image: np.ndarray  # (H + 2 margin, W + 2 margin) float32 template image
    margin: int
    warps: np.ndarray  # (subjects, 2, G, G) float32 control points of each pixel's (row, column) in the template
    shading: np.ndarray  # (subjects, 2, G', G') float32 control points of gain - 1 and of the offset
    noise_std: float
    noise_places: np.ndarray  # (subjects,) float64 in [0, 1): where each subject's noise starts in the bank

    @property
    def size(self) -> int:
        return self.labels.shape[0] - 2 * self.margin

    @property
    def template(self) -> tuple[np.ndarray, np.ndarray]:
        """The undeformed (H, W) image and label map."""
        inner = slice(self.margin, self.margin + self.size)
        return self.image[inner, inner], self.labels[inner, inner]

    @property
    def nbytes(self) -> int:
        return sum(part.nbytes for part in (self.labels, self.image, self.warps, self.shading, self.noise_places))


class SyntheticTasks:
    """Tasks of `families` synthetic families of `subjects` subjects each, `image_size` pixels square."""

    def __init__(self, seed: int, image_size: int, *, families: int = FAMILIES, subjects: int = SUBJECTS,
                 cache_bytes: int = CACHE_BYTES) -> None:
        if seed < 0:
            raise ConfigError(f"--seed must be 0 or more, not {seed}")
        if image_size < 8:
            raise ConfigError(f"synthetic tasks need images of at least 8 pixels, not {image_size}")
        if families < 1 or subjects < 2:
            raise ConfigError(f"synthetic tasks need at least 1 family and 2 subjects, not {families} and {subjects}")
        self.seed, self.image_size, self.families, self.subjects = seed, image_size, families, subjects
        self.cache = ByteBoundedCache(cache_bytes)
        self._bank: np.ndarray | None = None
        self._bank_lock = threading.Lock()

    def task(self, rng: np.random.Generator, support_size: int) -> tuple[np.ndarray, np.ndarray]:
        """images (1 + S, H, W) float32 in [0, 1] and labels (1 + S, H, W) bool: the target first, then S
        supports, all of one label of one family, each a different subject (a subject repeats only when S
        is at least the family's subjects). A pure function of (seed, image_size, the draws from `rng`)."""
        if support_size < 1:
            raise ConfigError(f"--support-size must be at least 1, not {support_size}")
        family_index = int(rng.integers(self.families))
        subjects = draw_subjects(rng, self.subjects, support_size)
        label_order = rng.permutation(LABELS)
        images, label_maps = self.render(family_index, subjects)
        return images, label_maps == choose_label(label_maps, label_order)

    def family(self, index: int) -> Family:
        """Family `index` (0 <= index < families), from the cache or built."""
        return self.cache.get(index, lambda: make_family(self.seed, self.image_size, index, self.subjects))

    def render(self, family_index: int, subjects) -> tuple[np.ndarray, np.ndarray]:
        """Images (N, H, W) float32 and label maps (N, H, W) uint8 of the given subjects of one family."""
        family = self.family(family_index)
        return render_subjects(family, np.asarray(subjects, dtype=np.int64), self._noise_bank())

    def _noise_bank(self) -> np.ndarray:
        with self._bank_lock:  # built once, by whichever thread gets here first
            if self._bank is None:
                self._bank = noise_bank(self.seed, self.image_size**2)
            return self._bank


def draw_subjects(rng: np.random.Generator, subjects: int, support_size: int) -> np.ndarray:
    """The target's subject, then the supports': never the target's, all different while there are enough."""
    target = int(rng.integers(subjects))
    others = np.delete(np.arange(subjects), target)
    supports = rng.choice(others, size=support_size, replace=support_size > len(others))
    return np.concatenate([[target], supports]).astype(np.int64)


def choose_label(label_maps: np.ndarray, order: np.ndarray) -> int:
    """The first label in `order` that covers MIN_AREA..MAX_AREA of the target and is in every subject.

    A safety net when none does (make_family keeps several labels in range, but a deformation
    can push one out of view): the largest label of the target that is in every subject.
    """
    area = np.bincount(label_maps[0].ravel(), minlength=LABELS) / label_maps[0].size
    for label in order:
        if MIN_AREA <= area[label] <= MAX_AREA and present_everywhere(label_maps, label):
            return int(label)
    for label in np.argsort(-area, kind="stable"):
        if 0 < area[label] < 1 and present_everywhere(label_maps, label):
            return int(label)
    raise ValueError("no label of this synthetic family is in every subject; make_family should prevent that")


def present_everywhere(label_maps: np.ndarray, label: int) -> bool:
    return bool((label_maps == label).any(axis=(1, 2)).all())


def make_family(seed: int, image_size: int, index: int, subjects: int = SUBJECTS) -> Family:
    """Family `index`: a pure function of its arguments."""
    rng = np.random.default_rng([seed, FAMILY_TAG, image_size, index])
    labels = label_map(rng, image_size)
    image = template_image(rng, labels)
    warps = rng.standard_normal((subjects, 2, WARP_CELLS + 3, WARP_CELLS + 3), dtype=np.float32)
    np.clip(warps, -WARP_LIMIT, WARP_LIMIT, out=warps)
    warps *= np.float32(rng.uniform(*WARP_STRENGTH) * image_size)
    margin = int(np.ceil(np.abs(warps).max(initial=0.0))) + 1  # B-splines never exceed their largest control point
    warps += undisplaced_control_points(image_size, WARP_CELLS + 3, margin)
    shading = rng.standard_normal((subjects, 2, SHADING_CELLS + 3, SHADING_CELLS + 3), dtype=np.float32)
    shading *= np.asarray([rng.uniform(0.02, 0.2), rng.uniform(0.01, 0.08)], dtype=np.float32)[:, None, None]
    image, labels = (np.pad(part, margin, mode="edge") for part in (image, labels))
    return Family(labels, image, margin, warps, shading, float(rng.uniform(0.0, 0.06)), rng.random(subjects))


def label_map(rng: np.random.Generator, image_size: int) -> np.ndarray:
    """(H, W) uint8: the argmax of LABELS smooth noise fields, redrawn until 4 labels or more have a usable size."""
    cells = int(rng.integers(*SHAPE_CELLS))
    while True:
        fields = smooth_noise(rng, (LABELS,), image_size, cells)
        fields += rng.normal(0.0, 0.3, size=(LABELS, 1, 1)).astype(np.float32)  # some labels larger than others
        labels = fields.argmax(axis=0).astype(np.uint8)
        area = np.bincount(labels.ravel(), minlength=LABELS) / labels.size
        if np.count_nonzero((area >= 2 * MIN_AREA) & (area <= MAX_AREA)) >= 4:
            return labels


def template_image(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """(H, W) float32: per label a mean intensity plus its own mix of a fine and a coarse texture, edges softened."""
    image_size = labels.shape[0]
    centre, spread = rng.uniform(0.3, 0.7), rng.uniform(0.2, 0.8)  # families differ in brightness and contrast
    means = centre + spread * rng.uniform(-0.5, 0.5, size=LABELS)
    fine, coarse = fine_noise(rng, image_size), smooth_noise(rng, (), image_size, 6)
    amplitudes = rng.uniform(0.0, 0.12) * rng.uniform(0.0, 1.0, size=(2, LABELS))
    image = means[labels] + amplitudes[0][labels] * fine + amplitudes[1][labels] * coarse
    return soften(image.astype(np.float32))


def soften(image: np.ndarray) -> np.ndarray:
    """A [1, 2, 1] / 4 blur along both axes (edges repeated): boundaries a pixel wide, as a scanner blurs them."""
    for axis in (0, 1):
        padded = np.pad(image, [(1, 1) if a == axis else (0, 0) for a in (0, 1)], mode="edge")
        lower, middle, upper = (np.take(padded, range(k, k + image.shape[axis]), axis=axis) for k in range(3))
        image = (lower + 2 * middle + upper) * np.float32(0.25)
    return image


def fine_noise(rng: np.random.Generator, image_size: int) -> np.ndarray:
    """(H, W) float32 noise of unit variance, smooth over about 3 pixels: white noise softened twice.
    (A B-spline field this fine would take a matrix product big enough for the BLAS to start threads.)"""
    noise = soften(soften(rng.standard_normal((image_size, image_size), dtype=np.float32)))
    return noise / np.float32(noise.std())


def smooth_noise(rng: np.random.Generator, batch: tuple[int, ...], image_size: int, cells: int) -> np.ndarray:
    """`batch` + (H, W) float32 fields of unit variance, smooth over image_size / cells pixels."""
    coarse = rng.standard_normal(batch + (cells + 3, cells + 3), dtype=np.float32)
    basis = unit_variance_basis(image_size, cells + 3)
    return basis @ coarse @ basis.T


def upsample(coarse: np.ndarray, image_size: int) -> np.ndarray:
    """(..., G, G) control points -> (..., H, W) smooth fields (cubic B-splines)."""
    basis = spline_basis(image_size, coarse.shape[-1])
    return basis @ coarse @ basis.T


@functools.lru_cache(maxsize=32)
def spline_basis(image_size: int, control_points: int) -> np.ndarray:
    """(H, G) float32 uniform cubic B-spline weights of G control points at each pixel's centre.

    The weights are non-negative and sum to 1, so a field never exceeds its largest control
    point, and they reproduce straight lines (see undisplaced_control_points).
    """
    position = (np.arange(image_size) + 0.5) / image_size * (control_points - 3)  # in cells
    cell = np.minimum(np.floor(position).astype(np.int64), control_points - 4)
    t = position - cell
    weights = np.stack([(1 - t) ** 3, 3 * t**3 - 6 * t**2 + 4, -3 * t**3 + 3 * t**2 + 3 * t + 1, t**3]) / 6
    basis = np.zeros((image_size, control_points))
    for k in range(4):
        basis[np.arange(image_size), cell + k] = weights[k]
    return read_only(basis.astype(np.float32))


@functools.lru_cache(maxsize=32)
def unit_variance_basis(image_size: int, control_points: int) -> np.ndarray:
    """spline_basis with each row scaled to unit norm: independent unit-variance control points then give a
    unit-variance field everywhere (plain B-splines vary less between control points than on them)."""
    basis = spline_basis(image_size, control_points)
    return read_only(basis / np.linalg.norm(basis, axis=1, keepdims=True))


def read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False  # cached, so shared by every caller
    return array


def undisplaced_control_points(image_size: int, control_points: int, margin: int) -> np.ndarray:
    """(2, G, G) float32 control points whose field is each pixel's own (row, column) in the padded template
    plus 0.5: cubic B-splines reproduce straight lines, so these plus a displacement's control points give
    positions in one upsampling, and truncating a position rounds it to the nearest pixel."""
    basis = spline_basis(image_size, control_points).astype(np.float64)
    line = np.linalg.lstsq(basis, np.arange(image_size) + margin + 0.5, rcond=None)[0]  # exact up to rounding
    return np.stack(np.broadcast_arrays(line[:, None], line[None, :])).astype(np.float32)


def render_subjects(family: Family, subjects: np.ndarray, bank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W) float32 in [0, 1] and label maps (N, H, W) uint8: the template, deformed and shaded."""
    flat = warped_positions(family, subjects)
    labels = np.take(family.labels, flat)
    images = np.take(family.image, flat)
    shading = upsample(family.shading[subjects], family.size)  # (N, 2, H, W): gain - 1, then offset
    shading[:, 0] *= images
    images += shading[:, 0]
    images += shading[:, 1]
    noise = noise_windows(bank, family.noise_places[subjects], images.shape)
    noise *= np.float32(family.noise_std)
    images += noise
    return np.clip(images, 0.0, 1.0, out=images), labels


def warped_positions(family: Family, subjects: np.ndarray) -> np.ndarray:
    """(N, H, W) int32 flat indices into the padded template: for each pixel, the template pixel nearest to
    its displaced position (in the margin, where edge pixels repeat, when pushed past the image's edge)."""
    positions = upsample(family.warps[subjects], family.size)  # (N, 2, H, W): row and column, plus 0.5
    whole = positions.astype(np.int32)  # every position is above 0, so truncating is rounding down
    flat = whole[:, 0] * np.int32(family.labels.shape[1])
    flat += whole[:, 1]
    return flat


def noise_windows(bank: np.ndarray, places: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """(N, H, W) windows of the noise bank (a copy), each starting at its place (a fraction of the bank)."""
    pixels = shape[1] * shape[2]
    starts = (places * (len(bank) - pixels + 1)).astype(np.int64)
    return np.lib.stride_tricks.sliding_window_view(bank, pixels)[starts].reshape(shape)


class ByteBoundedCache:
    """A thread-safe least-recently-used cache of values with an `nbytes`, holding at most `max_bytes`.

    A value is built outside the lock (two threads may build the same one at once; they build
    equal values and the first stored is kept), so one build never holds up the other threads.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._values: OrderedDict = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key, build: Callable):
        with self._lock:
            if key in self._values:
                self._values.move_to_end(key)
                return self._values[key]
        value = build()
        with self._lock:
            if key not in self._values:
                self._values[key] = value
                self._bytes += value.nbytes
                self._evict()
            return self._values.get(key, value)

    def _evict(self) -> None:
        while self._bytes > self.max_bytes and self._values:
            _, oldest = self._values.popitem(last=False)
            self._bytes -= oldest.nbytes

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._bytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._values)
