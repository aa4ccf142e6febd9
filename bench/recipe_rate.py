"""The in-context recipe's augmentation (useg.data.recipe_pixels): images/s per core at the official configuration.

One task is 65 images of 128x128 (a target and 64 supports, one class of the synthetic set the
sampler benchmark uses). Per core: each task is augmented on one thread, timed by that thread's
CPU time (time.thread_time), so other work on a shared machine slows the wall clock but not the
figure (caches and memory bandwidth are still shared). Both sides write into the same preallocated
target and support arrays, as the sampler does (allocating a batch costs both alike). Cases run
interleaved: the recipe at its defaults, every change drawn (all probabilities 1), the geometry
alone and the intensity alone (where the time goes), against draw version 2's augmentation of the
same tasks (flips, quarter turns, intensity jitter: what runs today; it reads a left-right flip
from a mirrored copy of the data, here the same arrays, which costs the same).
Run alone: `python -m bench.recipe_rate [--quick]`; on a shared machine pin it to one core
(`taskset -c 1 python -m bench.recipe_rate`).
"""

from __future__ import annotations

import sys
import time
from dataclasses import fields, replace

import numpy as np

from useg.data import make_synthetic
from useg.data.augment import augment_into as augment_into_2, noise_bank as draw_2_bank
from useg.data.recipe import InTaskAugmentation, TaskAugmentation
from useg.data.recipe_pixels import augment_into

from .common import Row, Section, Settings, interleaved, median, spread, verdict

IMAGE_SIZE, SUPPORT = 128, 64
IMAGES_PER_TASK = SUPPORT + 1
GOAL_PER_CORE = 3_000  # images/s with every augmentation on (issue 26)
GEOMETRY = ("flip_left_right", "flip_up_down", "affine", "elastic")


def run(settings: Settings) -> list[Section]:
    section = Section(f"Recipe augmentation per core ({IMAGE_SIZE}x{IMAGE_SIZE}, {IMAGES_PER_TASK} images a task)",
                      "recipe images/s", "draw version 2 images/s")
    started = time.perf_counter()
    rates = measure(rounds=6 if settings.quick else 40)  # tasks differ (an elastic task costs more): many rounds
    today = median(rates["draw version 2"])
    for case, text in CASES.items():
        ours = median(rates[case])
        goal = case == "defaults"  # the recipe switched on, as a run draws it
        section.rows.append(Row(
            case=case, command=text, ours=spread(rates[case], _per_s), baseline=spread(rates["draw version 2"], _per_s),
            ratio=f"{ours / today:.2f}x", goal=f">= {GOAL_PER_CORE:,} images/s" if goal else "",
            verdict=verdict(ours >= GOAL_PER_CORE) if goal else ""))
    section.reading.append(_reading({case: median(values) for case, values in rates.items()}))
    section.seconds = time.perf_counter() - started
    return [section]


CASES = {
    "defaults": "`augment_into(rng, images, labels, TaskAugmentation(), InTaskAugmentation(), ...)`",
    "everything drawn": "the same with every probability 1 (label changes at their defaults)",
    "geometry alone": "defaults with every intensity probability 0",
    "intensity alone": "defaults with every geometric probability 0",
}


def measure(rounds: int) -> dict[str, list[float]]:
    """images/s per CPU second of one thread, per case, over `rounds` interleaved rounds of one task each."""
    dataset = make_synthetic(image_size=IMAGE_SIZE, seed=0, n_patients=96)
    rng = np.random.default_rng(0)
    count = len(dataset.images)
    tasks = [(rng.choice(count, IMAGES_PER_TASK, replace=False), int(rng.integers(dataset.masks.shape[1])))
             for _ in range(16)]
    stacks = [(dataset.images[members], dataset.masks[members, cls]) for members, cls in tasks]
    settings = _settings()
    bank = draw_2_bank(0, IMAGE_SIZE * IMAGE_SIZE)
    serial = iter(range(10**9))
    shape = (IMAGE_SIZE, IMAGE_SIZE)
    out_images = [np.empty((1, *shape), np.float32), np.empty((SUPPORT, *shape), np.float32)]
    out_labels = [np.empty_like(part) for part in out_images]

    def timed(work):
        def one() -> float:
            index = next(serial)
            images, labels = stacks[index % len(stacks)]
            begin = time.thread_time()
            work(np.random.default_rng(index), images, labels)
            return IMAGES_PER_TASK / (time.thread_time() - begin)
        return one

    candidates = {case: timed(lambda r, i, l, s=settings[case]: augment_into(r, i, l, *s, out_images, out_labels))
                  for case in CASES}
    candidates["draw version 2"] = timed(
        lambda r, i, l: augment_into_2(r, lambda mirrored: i, lambda mirrored: l, bank, out_images, out_labels))
    return interleaved(candidates, rounds, warmup=2)


def _settings() -> dict[str, tuple[TaskAugmentation, InTaskAugmentation]]:
    task, own = TaskAugmentation(), InTaskAugmentation()

    def probabilities(settings, keep) -> dict[str, float]:  # the probabilities, as `keep` says
        names = [field.name for field in fields(settings) if isinstance(getattr(settings, field.name), float)
                 and field.name != "max_translation"]
        return {name: keep(name, getattr(settings, name)) for name in names}

    everything = lambda name, value: value if name in ("label_inversion", "edges") else 1.0
    geometry = lambda name, value: value if name in GEOMETRY or name in ("label_inversion", "edges") else 0.0
    intensity = lambda name, value: 0.0 if name in GEOMETRY else value
    return {"defaults": (task, own)} | {
        case: (replace(task, **probabilities(task, keep)), replace(own, **probabilities(own, keep)))
        for case, keep in (("everything drawn", everything), ("geometry alone", geometry),
                           ("intensity alone", intensity))}


def _per_s(value: float) -> str:
    return f"{value:,.0f} images/s"


def _reading(rates: dict[str, float]) -> str:
    on = rates["defaults"]
    return (f"One core augments {on:,.0f} images/s with the recipe at its defaults ({verdict(on >= GOAL_PER_CORE)} "
            f"against {GOAL_PER_CORE:,}) and {rates['everything drawn']:,.0f} with every change drawn, against "
            f"{rates['draw version 2']:,.0f} for draw version 2's flips and jitter. The geometry alone runs at "
            f"{rates['geometry alone']:,.0f} images/s and the intensity changes alone at "
            f"{rates['intensity alone']:,.0f}: most of the time is the one bilinear resampling per warped image "
            "(four gathers and the index arithmetic), then the blur and sharpness filters.")


if __name__ == "__main__":
    from pathlib import Path

    for found in run(Settings(quick="--quick" in sys.argv, workdir=Path("."))):
        print(found.title)
        for row in found.rows:
            print(f"  {row.case:18s} {row.ours:45s} vs {row.baseline:40s} {row.ratio:7s} {row.verdict}")
        print(*found.reading, sep="\n")
