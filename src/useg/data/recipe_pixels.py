"""UniverSeg's training recipe on the pixels: one task augmented as its settings (useg.data.recipe) say.

`augment` (or `augment_into`, which writes into a batch's arrays) works in three steps:
1. Geometry. An image's own elastic warp and affine, then the task's elastic warp, affine and
   flips are composed into one map from output pixels to source pixels, and the image is
   resampled once: bilinear for the image, nearest for the label (a label never blurs). What the
   map takes from outside the source is 0 in the image (so 1 after an intensity inversion) and 0
   in the label.
2. Label change (task level): the Sobel boundary band of the warped label (`task_kinds.edges`),
   then inversion (`task_kinds.inverted`); so an inverted task's outside is foreground in the
   target and in every support.
3. Intensity, from the images alone (a label never reaches an image): blur and sharpness (linear
   filters: their order matters only at the borders), then intensity inversion and the task's and
   the image's brightness/contrast as one gain and offset per image, then Gaussian noise (a task's
   and an image's own add up to one draw of their combined std), then clipping to [0, 1] once.
   The paper's order adds noise before the blur and sharpness; here it comes last, so it is white.

Elastic warp as kornia's RandomElasticTransform defines it: uniform(-1, 1) noise smoothed by a
Gaussian of `sigma` pixels, times `alpha`, is the displacement in normalised coordinates ([-1, 1]
spans the image). Here the noise is drawn on control points at most CONTROL_SPACING pixels apart,
smoothed there (sigma in control-point units, reflected at the border), scaled by 1 / spacing so
that the field's std matches kornia's full-resolution one, and the whole composed map is
interpolated bilinearly between control points (exact for the affine part).

Randomness comes only from `rng`; the noise values are windows of a fixed table (`noise_bank`) at
offsets drawn from `rng`, as draw version 2 does, because drawing a Gaussian per pixel alone costs
more than all the rest. The per-pixel work runs on CHUNK images at a time so that its temporaries
stay in a core's cache (whole 65-image stacks made every pass about three times slower).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from useg.data.recipe import InTaskAugmentation, TaskAugmentation, probability_names
from useg.data.filters import blur, sharpen, tone
from useg.data.resampling import resample
from useg.data.task_kinds import EDGES, INVERTED, edges, inverted

CHUNK = 3  # images warped and filtered together: their 64 KB (at 128 px) temporaries stay in the cache
CONTROL_SPACING = 4  # pixels between elastic control points
ELASTIC_REACH = 4.0  # the elastic smoothing kernel spans +-4 sigma (kornia's 63-tap kernel at sigma 8)
BLUR_REACH = 2.0  # the blur kernel spans +-2 sigma: 5 taps at sigma 1.1, the paper's kernel size 5


# ------------------------------------------------------------------ augment


def augment(rng: np.random.Generator, images: np.ndarray, labels: np.ndarray,
            task: TaskAugmentation | None, in_task: InTaskAugmentation | None,
            ) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Augment one task: `images` (K, H, W) in [0, 1] and 0/1 `labels` (K, H, W), the target first.

    Returns float32 images in [0, 1], float32 0/1 labels and the task's label changes applied
    ("edges", "inverted", in that order). A pure function of `rng`'s state and the inputs.
    """
    out_images, out_labels = np.empty(np.shape(images), np.float32), np.empty(np.shape(images), np.float32)
    names = augment_into(rng, images, labels, task, in_task, [out_images], [out_labels])
    return out_images, out_labels, names


def augment_into(rng: np.random.Generator, images: np.ndarray, labels: np.ndarray,
                 task: TaskAugmentation | None, in_task: InTaskAugmentation | None,
                 out_images: list[np.ndarray], out_labels: list[np.ndarray]) -> tuple[str, ...]:
    """`augment`, written straight into a batch's arrays: out_images[0] gets the first images (e.g. the
    target's (1, H, W)), out_images[1] the next ones (the supports' (S, H, W)), and so on; the same for
    the labels. Returns the label changes applied. Draws exactly what `augment` draws."""
    images = np.asarray(images, dtype=np.float32)
    labels = np.asarray(labels)
    labels = (labels if labels.dtype == bool else labels > 0.5).view(np.uint8)
    plan = _draw(rng, images.shape, task or _NO_TASK, in_task or _NO_IN_TASK)
    starts = np.cumsum([0] + [len(out) for out in out_images])
    # Chunk by chunk of images that are warped alike, each chunk all the way to its output: its
    # temporaries stay in the core's cache between the steps.
    for part, warped in _chunks(plan, images, labels):
        warped_images, warped_labels = warped()
        _intensity(plan, warped_images, part)
        warped_labels = _changed_labels(plan, warped_labels)
        for out_image, out_label, start, stop in zip(out_images, out_labels, starts, starts[1:]):
            inside = (part >= start) & (part < stop)
            if inside.all():
                out_image[part - start], out_label[part - start] = warped_images, warped_labels
            elif inside.any():
                out_image[part[inside] - start] = warped_images[inside]
                out_label[part[inside] - start] = warped_labels[inside]
    return tuple(name for name, on in ((EDGES, plan.edges), (INVERTED, plan.inverted)) if on)


def _never(cls: type) -> TaskAugmentation | InTaskAugmentation:
    """Settings whose probabilities are all 0: what `None` means (its draws are made all the same)."""
    return cls(**{name: 0.0 for name in probability_names(cls)})


_NO_TASK, _NO_IN_TASK = _never(TaskAugmentation), _never(InTaskAugmentation)


@dataclass
class _Plan:
    """Everything one task draws, per image (K of them) where it differs between images."""

    shape: tuple[int, int, int]
    edges: bool
    inverted: bool
    flips: tuple[bool, bool]  # left-right, up-down
    task_matrix: np.ndarray  # (3, 3) sampling map of the task's affine and flips, in (row, col, 1)
    own_matrices: np.ndarray  # (K, 3, 3) each image's own affine (applied to the image before the task's)
    task_field: np.ndarray | None  # (2, Gh, Gw) elastic displacement in pixels at the control points
    own_fields: np.ndarray  # (E, 2, Gh, Gw) of the images with an elastic warp of their own, and one more of 0
    own_field_of: np.ndarray  # (K,) which of them is the image's (-1: none)
    warped: np.ndarray  # (K,) bool: needs resampling (else flips only)
    elastic: np.ndarray  # (K,) bool: its map has an elastic part
    blur_sigma: np.ndarray  # (K,) 0: none; a task's and an image's blur combined
    blur_reach: int
    sharpness: tuple[np.ndarray, np.ndarray]  # the task's and each image's factor (K,), 1: none
    inversion: bool
    contrast: np.ndarray  # (K,) the task's and the image's contrast multiplied (1: none)
    brightness: np.ndarray  # (K,) the task's and the image's added
    noise_std: np.ndarray  # (K,) 0: none
    noise_offsets: np.ndarray  # (K,)


def _draw(rng: np.random.Generator, shape: tuple[int, int, int], task: TaskAugmentation,
          own: InTaskAugmentation) -> _Plan:
    count, height, width = shape
    t = _coins(rng, task, 1)
    task_values = _uniforms(rng, task, 1)
    o = _coins(rng, own, count)
    own_values = _uniforms(rng, own, count)
    flips = (bool(t["flip_left_right"][0]), bool(t["flip_up_down"][0]))
    task_field = _elastic_fields(rng, task_values, shape)[0] if t["elastic"][0] else None
    own_fields = _elastic_fields(rng, own_values[o["elastic"]], shape)
    own_fields = np.concatenate([own_fields, np.zeros((1, *own_fields.shape[1:]))])
    own_field_of = np.where(o["elastic"], np.cumsum(o["elastic"]) - 1, -1)  # -1: the last, all zero
    task_values, t = task_values[0], {name: bool(coin[0]) for name, coin in t.items()}

    def either(column: int, name: str) -> tuple[float, np.ndarray]:  # the task's and each image's value, 0: not drawn
        return task_values[column] * t[name], own_values[:, column] * o[name]

    return _Plan(
        shape=shape, edges=t["edges"], inverted=t["label_inversion"], flips=flips,
        task_matrix=_flip_matrix(flips, height, width) @ _affine_matrices(task_values[None], t["affine"], shape)[0],
        own_matrices=_affine_matrices(own_values, o["affine"], shape), task_field=task_field, own_fields=own_fields,
        own_field_of=own_field_of,
        warped=o["affine"] | o["elastic"] | t["affine"] | t["elastic"], elastic=o["elastic"] | t["elastic"],
        blur_sigma=np.hypot(*either(8, "blur")),
        blur_reach=_blur_reach(task, own),
        sharpness=(np.where(t["sharpness"], task_values[10], 1.0).repeat(count),
                   np.where(o["sharpness"], own_values[:, 10], 1.0)),
        inversion=t["intensity_inversion"],
        contrast=np.where(t["brightness_contrast"], task_values[7], 1.0) * np.where(
            o["brightness_contrast"], own_values[:, 7], 1.0),
        brightness=np.add(*either(6, "brightness_contrast")), noise_std=np.hypot(*either(9, "noise")),
        noise_offsets=rng.integers(0, _bank_size(height * width) - height * width + 1, count),
    )


def _blur_reach(task: TaskAugmentation, own: InTaskAugmentation) -> int:
    """Taps on each side of the blur kernel, from the settings alone (so an image's blur never depends
    on what the other images drew)."""
    widest = max(task.blur_sigma[1] * (task.blur > 0), own.blur_sigma[1] * (own.blur > 0))
    return max(1, int(BLUR_REACH * widest))


def _coins(rng: np.random.Generator, settings: TaskAugmentation | InTaskAugmentation,
           count: int) -> dict[str, np.ndarray]:
    """For each probability of `settings` (in field order), (count,) bools: drawn or not."""
    names = probability_names(settings)
    drawn = rng.random((count, len(names))) < [getattr(settings, name) for name in names]
    return dict(zip(names, drawn.T))


def _uniforms(rng: np.random.Generator, settings: TaskAugmentation | InTaskAugmentation, count: int) -> np.ndarray:
    """(count, 11): rotation (degrees), scale, row and column shift (fractions), elastic alpha and sigma,
    brightness, contrast, blur sigma, noise std, sharpness factor."""
    shift = settings.max_translation
    ranges = [settings.rotation_degrees, settings.scale, (-shift, shift), (-shift, shift), settings.elastic_alpha,
              settings.elastic_sigma, settings.brightness, settings.contrast, settings.blur_sigma,
              settings.noise_std, settings.sharpness_factor]
    low, high = np.asarray(ranges).T
    return rng.uniform(low, high, size=(count, len(ranges)))


# ------------------------------------------------------------------ geometry


def _affine_matrices(values: np.ndarray, on: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """(n, 3, 3) sampling maps (output pixel -> source pixel, in (row, col, 1)) of a rotation by values[:, 0]
    degrees and a zoom by values[:, 1] about the centre, then a shift by values[:, 2:4] of the image's
    side; the identity where `on` is False."""
    _, height, width = shape
    angle, scale = np.radians(values[:, 0]), values[:, 1]
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
    linear = np.stack([np.stack([cos, sin], -1), np.stack([-sin, cos], -1)], -2)  # inverse rotation and zoom
    centre = np.array([(height - 1) / 2, (width - 1) / 2])
    shifted = centre + values[:, 2:4] * [height, width]
    matrices = np.zeros((len(values), 3, 3))
    matrices[:, :2, :2] = linear
    matrices[:, :2, 2] = centre - np.einsum("nij,nj->ni", linear, shifted)
    matrices[:, 2, 2] = 1
    matrices[~np.asarray(on, dtype=bool).reshape(-1)] = np.eye(3)
    return matrices


def _flip_matrix(flips: tuple[bool, bool], height: int, width: int) -> np.ndarray:
    left_right, up_down = flips
    matrix = np.eye(3)
    if up_down:
        matrix[0, 0], matrix[0, 2] = -1.0, height - 1.0
    if left_right:
        matrix[1, 1], matrix[1, 2] = -1.0, width - 1.0
    return matrix


def _control_points(size: int) -> int:
    """Control points at 0, S, 2S, ... (S = CONTROL_SPACING) up to the first beyond the last pixel."""
    return (size - 1) // CONTROL_SPACING + 2


def _elastic_fields(rng: np.random.Generator, values: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """(n, 2, Gh, Gw) row and column displacements in pixels at the control points, for alpha values[:, 4]
    and sigma values[:, 5]: kornia's field (see the module's docstring) drawn at control-point resolution."""
    _, height, width = shape
    noise = rng.uniform(-1.0, 1.0, size=(len(values), 2, _control_points(height), _control_points(width)))
    if not len(values):
        return noise
    sigma = values[:, 5] / CONTROL_SPACING
    smooth_rows = _smoothing(sigma, noise.shape[2])[:, None]
    smooth_cols = _smoothing(sigma, noise.shape[3])[:, None]
    field = smooth_rows @ noise @ smooth_cols.transpose(0, 1, 3, 2)
    # std as if drawn per pixel (1 / spacing), and normalised units -> pixels ([-1, 1] spans the side)
    field *= (values[:, 4] / CONTROL_SPACING)[:, None, None, None]
    field[:, 0] *= height / 2
    field[:, 1] *= width / 2
    return field


def _smoothing(sigmas: np.ndarray, size: int) -> np.ndarray:
    """(n, size, size): Gaussian smoothing of a line of `size` values, reflected at both ends (as kornia's
    'reflect' padding: -1 -> 1), one matrix per sigma."""
    reach = math.ceil(ELASTIC_REACH * float(sigmas.max()))
    kernels = np.exp(-0.5 * (np.arange(-reach, reach + 1) / sigmas[:, None]) ** 2)
    kernels /= kernels.sum(axis=1, keepdims=True)
    return (kernels @ _reflected_taps(size, reach).reshape(2 * reach + 1, -1)).reshape(len(sigmas), size, size)


@lru_cache(maxsize=16)
def _reflected_taps(size: int, reach: int) -> np.ndarray:
    """(2 * reach + 1, size, size): 1 where value j is what position i + offset reads, the line reflected."""
    period = 2 * (size - 1)
    read = (np.arange(size)[None, :] + np.arange(-reach, reach + 1)[:, None]) % period
    read = np.where(read <= size - 1, read, period - read)
    return _read_only((read[:, :, None] == np.arange(size)).astype(np.float64))


def _chunks(plan: _Plan, images: np.ndarray, labels: np.ndarray):
    """(images' indices, a function that returns their warped images and labels), CHUNK images at a time:
    those only flipped (copies), those whose map is affine, those whose map has an elastic part."""
    rows, cols = slice(None, None, -1 if plan.flips[1] else 1), slice(None, None, -1 if plan.flips[0] else 1)
    plain = np.flatnonzero(~plan.warped)
    for start in range(0, len(plain), CHUNK):
        part = plain[start:start + CHUNK]
        yield part, lambda part=part: (images[part][:, rows, cols], labels[part][:, rows, cols])
    affine = np.flatnonzero(plan.warped & ~plan.elastic)
    for start in range(0, len(affine), CHUNK):
        part = affine[start:start + CHUNK]
        yield part, lambda part=part: resample(images, labels, part, *_affine_maps(plan, part))
    elastic = np.flatnonzero(plan.elastic)
    for start in range(0, len(elastic), 4 * CHUNK):  # control maps are small: fewer, larger calls
        group = elastic[start:start + 4 * CHUNK]
        controls = _control_maps(plan, group)
        for first in range(0, len(group), CHUNK):
            def warped(part=group[first:first + CHUNK], maps=controls[first:first + CHUNK]):
                return resample(images, labels, part, *_upsample(maps, plan.shape))
            yield group[first:first + CHUNK], warped


def _affine_maps(plan: _Plan, part: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, H, W) source rows and columns (+ 1: in the padded source) of images whose map is affine: one
    broadcast sum each."""
    _, height, width = plan.shape
    matrices = plan.task_matrix @ plan.own_matrices[part]
    row, col = np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64)
    maps = []
    for axis in (0, 1):
        along_rows = (matrices[:, axis, 0, None] * row).astype(np.float32)[:, :, None]
        along_cols = (matrices[:, axis, 1, None] * col + matrices[:, axis, 2, None] + 1).astype(np.float32)[:, None, :]
        maps.append(along_rows + along_cols)
    return maps[0], maps[1]


def _control_maps(plan: _Plan, part: np.ndarray) -> np.ndarray:
    """(n, 2, Gh, Gw) source rows and columns (+ 1: in the padded source) at the control points: the
    image's own elastic warp and affine, then the task's elastic warp (its field read where the image's
    map lands), affine and flips."""
    _, height, width = plan.shape
    maps = np.mgrid[0:_control_points(height), 0:_control_points(width)] * float(CONTROL_SPACING)
    maps = maps + plan.own_fields[plan.own_field_of[part]]
    maps = _apply(plan.own_matrices[part], maps)
    if plan.task_field is not None:
        maps += _sample_field(plan.task_field, maps)
    return (_apply(plan.task_matrix[None], maps) + 1).astype(np.float32)  # + 1: in the padded source


def _apply(matrices: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(n, 3, 3) or (1, 3, 3) affine maps of (n, 2, Gh, Gw) row/column positions."""
    m = matrices[:, :, :, None, None]
    rows, cols = points[:, 0], points[:, 1]
    return np.stack([m[:, 0, 0] * rows + m[:, 0, 1] * cols + m[:, 0, 2],
                     m[:, 1, 0] * rows + m[:, 1, 1] * cols + m[:, 1, 2]], axis=1)


def _sample_field(field: np.ndarray, points: np.ndarray) -> np.ndarray:
    """The (2, Gh, Gw) control-point `field` at pixel positions `points` (n, 2, ...), bilinearly; held
    constant beyond the outermost control points."""
    _, tall, wide = field.shape
    rows = np.clip(points[:, 0] / CONTROL_SPACING, 0, tall - 1)
    cols = np.clip(points[:, 1] / CONTROL_SPACING, 0, wide - 1)
    top, left = np.minimum(rows.astype(np.intp), tall - 2), np.minimum(cols.astype(np.intp), wide - 2)
    rows -= top
    cols -= left
    index = top * wide + left
    flat = field.reshape(2, -1)
    upper, right = flat.take(index, axis=1), flat.take(index + 1, axis=1)
    upper += (right - upper) * cols
    lower, right = flat.take(index + wide, axis=1), flat.take(index + wide + 1, axis=1)
    lower += (right - lower) * cols
    upper += (lower - upper) * rows
    return np.moveaxis(upper, 0, 1)


def _upsample(maps: np.ndarray, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(n, 2, Gh, Gw) -> rows and columns (n, H, W), bilinearly between control points (exact for affine
    maps); one coordinate after the other, to keep few full-size arrays alive."""
    _, height, width = shape
    (row_below, _), (col_below, col_fraction) = _between(height), _between(width)
    row_fraction = _row_fractions(height, width)
    upsampled = []
    for coordinate in maps.transpose(1, 0, 2, 3):
        wide = np.diff(coordinate, axis=2).take(col_below, axis=2)  # (n, Gh, W): small
        wide *= col_fraction
        wide += coordinate.take(col_below, axis=2)
        full = np.diff(wide, axis=1).take(row_below, axis=1)
        full *= row_fraction
        full += wide.take(row_below, axis=1)
        upsampled.append(full)
    return upsampled[0], upsampled[1]


@lru_cache(maxsize=8)
def _between(size: int) -> tuple[np.ndarray, np.ndarray]:
    """For each pixel 0..size-1: the control point at or before it, and how far it is towards the next (0..1)."""
    low = np.arange(size) // CONTROL_SPACING
    fraction = ((np.arange(size) - low * CONTROL_SPACING) / CONTROL_SPACING).astype(np.float32)
    return _read_only(low), _read_only(fraction)


@lru_cache(maxsize=8)
def _row_fractions(height: int, width: int) -> np.ndarray:
    """_between(height)'s fractions repeated along each row: a full-size operand is faster than a broadcast one."""
    return _read_only(np.repeat(_between(height)[1][:, None], width, axis=1))


# ------------------------------------------------------------------ labels and intensity


def _changed_labels(plan: _Plan, labels: np.ndarray) -> np.ndarray:
    if plan.edges:
        labels = edges(labels)
    if plan.inverted:
        labels = inverted(labels)
    return labels


def _intensity(plan: _Plan, images: np.ndarray, part: np.ndarray) -> None:
    """Blur, sharpness, inversion with brightness/contrast, noise, clipping: in place on a chunk."""
    sigmas = plan.blur_sigma[part]
    if sigmas.any():
        _on_chosen(images, sigmas > 0, lambda stack: blur(stack, sigmas[sigmas > 0], plan.blur_reach))
    for factors in plan.sharpness:
        if (factors[part] != 1).any():
            chosen = factors[part] != 1
            _on_chosen(images, chosen, lambda stack: sharpen(stack, factors[part][chosen]))
    linear = _linear_intensity(plan, images, part)
    _, height, width = images.shape
    tone(images, linear, _noise_bank(height * width), plan.noise_offsets[part], plan.noise_std[part])


def _on_chosen(images: np.ndarray, chosen: np.ndarray, change) -> None:
    """images[chosen] = change(images[chosen]) (which may change its argument in place), without the
    copies when every image is chosen."""
    if not chosen.all():
        images[chosen] = change(images[chosen])
    elif (changed := change(images)) is not images:
        images[...] = changed


def _linear_intensity(plan: _Plan, images: np.ndarray, part: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Inversion (1 - x), then contrast around the mean and brightness (the task's and the image's
    composed), as one float32 gain and shift per image; None where no image changes."""
    contrast, brightness = plan.contrast[part], plan.brightness[part]
    if not plan.inversion and (contrast == 1).all() and not brightness.any():
        return None
    gain, offset = np.ones(len(images)), np.zeros(len(images))
    if plan.inversion:
        gain, offset = -gain, offset + 1
    if (contrast != 1).any():
        mean = images.reshape(len(images), -1).mean(axis=1, dtype=np.float64) * gain + offset
        gain, offset = gain * contrast, (offset - mean) * contrast + mean
    return gain.astype(np.float32), (offset + brightness).astype(np.float32)


def _bank_size(pixels: int) -> int:
    return max(2**20, 16 * pixels)


@lru_cache(maxsize=4)
def _noise_bank(pixels: int) -> np.ndarray:
    """Fixed N(0, 1) values that an image's noise is a window of (a constant table, not a random draw)."""
    return _read_only(np.random.default_rng(0x7265636970).standard_normal(_bank_size(pixels), dtype=np.float32))


def _read_only(array: np.ndarray) -> np.ndarray:
    """Cached arrays are shared by every thread: make any write to them an error."""
    array.flags.writeable = False
    return array
