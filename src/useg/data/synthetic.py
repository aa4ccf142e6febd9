"""A seeded, in-memory ultrasound-like dataset for demos and tests.

Each image is a fan-shaped B-mode scan: smooth tissue echogenicity with
multiplicative speckle, depth attenuation, unlabelled small dark and bright
structures (so no threshold separates lesions from tissue), and one lesion
(sometimes two of different kinds) of three kinds:

- `cyst`: dark (anechoic) ellipse, bright thin rim, brighter tissue below it
  (posterior acoustic enhancement);
- `septated_cyst`: the same with bright septa lines crossing it;
- `solid`: irregular-edged, heterogeneous mass that can be barely brighter than
  tissue, sometimes with an acoustic shadow below it.

Every patient has one main lesion kind and lesion seen again in each of its
images (moved, rescaled and turned a little), plus its own gain, speckle and
fan, so images of one patient look alike, as in real scans. Lesion radii are
about 8-25% of the image size. Everything is computed in image-size-relative
coordinates, so any `image_size` gives the same scenes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from useg.data.dataset import SegDataset, class_report, image_id, select_classes

SYNTHETIC_CLASSES = ["cyst", "septated_cyst", "solid"]
_SECOND_LESION_PROBABILITY = 0.3
_FAN_APEX = (0.5, -0.15)  # (x, y) above the image's top edge


@dataclass(frozen=True)
class Lesion:
    kind: int  # index into SYNTHETIC_CLASSES
    centre: tuple[float, float]  # (x, y), relative to the image size
    radius: float
    aspect: float  # minor / major axis
    angle: float
    shape_seed: int  # fixes the irregular outline and texture of solid masses


@dataclass(frozen=True)
class Patient:
    gain: float
    speckle_looks: float  # gamma shape: lower means stronger speckle
    fan_half_angle: float
    attenuation: float
    lesion: Lesion


def make_synthetic(
    image_size: int = 128, seed: int = 0, *, n_patients: int = 24, images_per_patient: int = 6,
    classes: list[str] | None = None,
) -> SegDataset:
    """`n_patients * images_per_patient` images; the same seed always gives the same data."""
    selected = select_classes(SYNTHETIC_CLASSES, classes)
    grid = _grid(image_size)
    main_kinds = np.random.default_rng([seed, 0]).permutation(np.resize(np.arange(3), n_patients))
    images, masks = [], []
    for patient_index in range(n_patients):
        patient = _patient(np.random.default_rng([seed, 1, patient_index]), int(main_kinds[patient_index]))
        for image_index in range(images_per_patient):
            rng = np.random.default_rng([seed, 2, patient_index, image_index])
            image, lesion_masks = _render(rng, grid, patient)
            images.append(image)
            masks.append(lesion_masks[selected])
    mask_array = np.stack(masks)
    names = [SYNTHETIC_CLASSES[i] for i in selected]
    patients = np.repeat(np.arange(n_patients, dtype=np.int64), images_per_patient)
    return SegDataset(
        images=np.stack(images).astype(np.float32),
        masks=mask_array,
        classes=names,
        patients=patients,
        ids=[image_id(p, i) for p in range(n_patients) for i in range(images_per_patient)],
        source="synthetic",
        report={"patients": n_patients, "images": len(images), **class_report(mask_array, names)},
    )


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    centres = (np.arange(size, dtype=np.float32) + 0.5) / size
    return centres[None, :].repeat(size, 0), centres[:, None].repeat(size, 1)  # x, y


def _patient(rng: np.random.Generator, kind: int) -> Patient:
    lesion = Lesion(
        kind=kind,
        centre=(rng.uniform(0.32, 0.68), rng.uniform(0.3, 0.68)),
        radius=rng.uniform(0.10, 0.22),
        aspect=rng.uniform(0.6, 1.0),
        angle=rng.uniform(0, np.pi),
        shape_seed=int(rng.integers(2**31)),
    )
    return Patient(
        gain=rng.uniform(0.8, 1.15), speckle_looks=rng.uniform(2.5, 5.0),
        fan_half_angle=np.deg2rad(rng.uniform(32, 45)), attenuation=rng.uniform(0.2, 0.5), lesion=lesion,
    )


def _moved(rng: np.random.Generator, lesion: Lesion) -> Lesion:
    """The patient's lesion as seen in another image of the same scan."""
    x, y = lesion.centre
    return Lesion(
        kind=lesion.kind,
        centre=(float(np.clip(x + rng.normal(0, 0.05), 0.28, 0.72)),
                float(np.clip(y + rng.normal(0, 0.05), 0.26, 0.74))),
        radius=float(np.clip(lesion.radius * rng.uniform(0.8, 1.2), 0.09, 0.25)),
        aspect=float(np.clip(lesion.aspect * rng.uniform(0.9, 1.1), 0.5, 1.0)),
        angle=lesion.angle + rng.normal(0, 0.3),
        shape_seed=lesion.shape_seed,
    )


def _second_lesion(rng: np.random.Generator, first: Lesion) -> Lesion:
    """A smaller lesion of another kind, placed apart from the first when possible."""
    kind = int(rng.choice([k for k in range(3) if k != first.kind]))
    radius = rng.uniform(0.09, 0.14)
    for _ in range(10):
        centre = (rng.uniform(0.25, 0.75), rng.uniform(0.25, 0.78))
        if np.hypot(centre[0] - first.centre[0], centre[1] - first.centre[1]) > first.radius + radius + 0.02:
            break
    return Lesion(kind, centre, radius, rng.uniform(0.6, 1.0), rng.uniform(0, np.pi), int(rng.integers(2**31)))


def _render(rng: np.random.Generator, grid, patient: Patient) -> tuple[np.ndarray, np.ndarray]:
    x, y = grid
    lesions = [_moved(rng, patient.lesion)]
    if rng.random() < _SECOND_LESION_PROBABILITY:
        lesions.append(_second_lesion(rng, lesions[0]))
    fan, depth = _fan(x, y, patient.fan_half_angle)
    echo = _tissue(rng, x, y)
    masks = np.zeros((3, *x.shape), dtype=bool)
    for lesion in lesions:
        mask = _draw_lesion(rng, echo, x, y, lesion) & (fan > 0.5)
        masks[lesion.kind] |= mask
    echo *= 1.0 - patient.attenuation * depth
    echo *= _speckle(rng, x.shape, patient.speckle_looks)
    echo = echo * fan * patient.gain + rng.normal(0, rng.uniform(0.01, 0.035), x.shape)
    return np.clip(echo, 0.0, 1.0).astype(np.float32), masks


def _fan(x, y, half_angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Sector of the probe (soft edge) and depth from the probe in [0, 1]."""
    dx, dy = x - _FAN_APEX[0], y - _FAN_APEX[1]
    radius, angle = np.hypot(dx, dy), np.arctan2(dx, dy)
    inside = np.clip((half_angle - np.abs(angle)) * 40, 0, 1) * np.clip((1.12 - radius) * 40, 0, 1)
    inside *= np.clip((radius - 0.2) * 40, 0, 1)
    depth = np.clip((radius - 0.15) / 0.97, 0, 1)
    return inside.astype(np.float32), depth.astype(np.float32)


def _waves(rng: np.random.Generator, x, y, count: int, low: float, high: float) -> np.ndarray:
    """Sum of random plane waves with `low`..`high` cycles per image: a smooth field in about [-1, 1]."""
    field = np.zeros_like(x)
    for _ in range(count):
        cycles, direction, phase = rng.uniform(low, high), rng.uniform(0, 2 * np.pi), rng.uniform(0, 2 * np.pi)
        field += np.cos(2 * np.pi * cycles * (x * np.cos(direction) + y * np.sin(direction)) + phase)
    return field / np.sqrt(count)


def _tissue(rng: np.random.Generator, x, y) -> np.ndarray:
    """Background echogenicity with unlabelled dark and bright structures."""
    echo = 0.45 + 0.09 * _waves(rng, x, y, 4, 0.5, 2.5)
    for _ in range(rng.integers(1, 4)):  # small anechoic structures (vessels, follicles)
        blob = _ellipse(x, y, (rng.uniform(0.2, 0.8), rng.uniform(0.25, 0.9)), rng.uniform(0.02, 0.06),
                        rng.uniform(0.5, 1.0), rng.uniform(0, np.pi)) <= 1
        echo[blob] *= rng.uniform(0.15, 0.5)
    for _ in range(rng.integers(0, 3)):  # bright specular lines (fascia, bowel walls)
        line = _band(x, y, (rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.9)), rng.uniform(-0.4, 0.4), 0.008)
        echo += line * rng.uniform(0.2, 0.5) * (_ellipse(x, y, (0.5, 0.5), 0.5, 1, 0) < 1)
    return echo.astype(np.float32)


def _ellipse(x, y, centre, radius: float, aspect: float, angle: float) -> np.ndarray:
    """Normalised elliptic distance: 1 on the outline."""
    dx, dy = x - centre[0], y - centre[1]
    along = dx * np.cos(angle) + dy * np.sin(angle)
    across = -dx * np.sin(angle) + dy * np.cos(angle)
    return np.sqrt((along / radius) ** 2 + (across / (radius * aspect)) ** 2)


def _band(x, y, through, angle: float, half_width: float) -> np.ndarray:
    """Soft line of `half_width` through a point, `angle` from horizontal."""
    distance = -(x - through[0]) * np.sin(angle) + (y - through[1]) * np.cos(angle)
    return np.clip(1.5 - np.abs(distance) / half_width, 0, 1)


def _draw_lesion(rng: np.random.Generator, echo, x, y, lesion: Lesion) -> np.ndarray:
    """Paint the lesion into `echo` in place and return its mask."""
    distance = _ellipse(x, y, lesion.centre, lesion.radius, lesion.aspect, lesion.angle)
    if lesion.kind == 2:
        distance = distance / _outline(x, y, lesion)
    mask = distance <= 1
    below = _below(x, y, lesion) * ~mask
    if lesion.kind == 2:
        texture = 1 + 0.2 * _waves(np.random.default_rng(lesion.shape_seed), x, y, 6, 4, 10)
        echo[mask] *= (rng.uniform(1.6, 2.2) * texture)[mask]
        if rng.random() < 0.5:
            echo *= 1 - rng.uniform(0.2, 0.5) * below
        return mask
    echo[mask] = echo[mask] * rng.uniform(0.08, 0.35)
    rim = (np.abs(distance - 1) * lesion.radius < rng.uniform(0.006, 0.014)) & ~mask
    echo[rim] *= rng.uniform(1.3, 1.8)
    echo *= 1 + rng.uniform(0.2, 0.6) * below
    if lesion.kind == 1:
        for _ in range(rng.integers(1, 4)):
            offset = rng.uniform(-0.5, 0.5) * lesion.radius
            x0, y0 = lesion.centre
            through = (x0 - offset * np.sin(lesion.angle), y0 + offset * np.cos(lesion.angle))
            septum = _band(x, y, through, lesion.angle + rng.normal(0, 0.6), rng.uniform(0.005, 0.01)) * mask
            echo += septum * rng.uniform(0.3, 0.6)
    return mask


def _outline(x, y, lesion: Lesion) -> np.ndarray:
    """Radius factor by direction that makes a solid mass's edge irregular."""
    shape = np.random.default_rng(lesion.shape_seed)
    direction = np.arctan2(y - lesion.centre[1], x - lesion.centre[0])
    factor = np.ones_like(x)
    for order in range(2, 7):
        factor += shape.uniform(0, 0.12) / np.sqrt(order - 1) * np.cos(order * direction + shape.uniform(0, 2 * np.pi))
    return factor


def _below(x, y, lesion: Lesion) -> np.ndarray:
    """Soft column under the lesion, fading with depth: where enhancement or shadow shows."""
    half_width = lesion.radius * 0.9
    across = np.clip((half_width - np.abs(x - lesion.centre[0])) / 0.02, 0, 1)
    depth = y - lesion.centre[1]
    return across * np.where(depth > 0, np.exp(-depth / 0.3), 0.0).astype(np.float32)


def _speckle(rng: np.random.Generator, shape, looks: float) -> np.ndarray:
    """Gamma-distributed multiplicative noise with a grain of about two pixels."""
    noise = rng.gamma(looks, 1.0 / looks, size=(shape[0] + 1, shape[1] + 1)).astype(np.float32)
    return (noise[:-1, :-1] + noise[1:, :-1] + noise[:-1, 1:] + noise[1:, 1:]) / 4
