"""Several datasets in one run (issue 27): what drawing tasks from many datasets costs, and what training on
several buys on a dataset the run never saw.

`python -m bench --only many_datasets_sampling`: `TaskSampler.batch` with the recipe on as a default run
draws it (task and in-task augmentation `on`), at 128 px, on ten synthetic datasets merged as a run merges
them (useg.data.collection.merge, each split by patient on its own) against one synthetic dataset of the
same number of images. Per core: each batch is built on one thread and timed by that thread's CPU time
(time.thread_time), the two sides interleaved, so load from other work slows both alike. Goal: the ten
datasets within 10 % of the one.

`python -m bench --only many_datasets_held_out`: three dataset families written by the tests' own helper
(tests/medical_files.write_family_folder: round bright blobs on a smooth background, thin dark streaks on
speckle, rings on an intensity gradient; one class each, 64 px). One default `useg train` run (the
in-context recipe on) trains on blobs and streaks and holds rings out; two more train on blobs alone and on
streaks alone with the same settings. `useg evaluate` scores each run on its own test split and on every
rings image (supports from rings itself), at support 4 (as trained) and 16. Goals: the held-out Dice >= 0.8 x
the trained datasets' test Dice, and above each one-dataset run's held-out Dice. Rings are bright like blobs, so
the same runs are also scored on `dark_rings` (the same annuli, dark on a bright ramp, like streaks' objects):
which one-dataset run transfers depends on which polarity the held-out family has, and the rows show whether
the two-dataset run holds up on both. About 15 minutes on 2 free cores (two runs at a time, one thread each).
"""

from __future__ import annotations

import time
from pathlib import Path

from useg.data import TaskSampler, make_synthetic, split_by_patient
from useg.data.collection import merge
from useg.data.recipe import settings_from
from useg.data.tasks import Recipe

from .common import (Row, Section, Settings, child_env, evaluate_json as evaluate, interleaved, median, run_timed,
                     side_by_side, spread, training_history, useg_args, verdict)

# Sampling: ten datasets of 48 patients x 6 images (2,880 images) against one of 480 patients x 6 images.
IMAGE_SIZE, DATASETS, PATIENTS_EACH, BATCH = 128, 10, 48, 4
SUPPORT_SIZES = (4, 64)  # a default run's; the official configuration's
RATE_GOAL = 0.90  # ten datasets' rate / one dataset's (issue 27: within 10 %)
DRAWS_PER_TIMING = 2_000
BATCHES_PER_TIMING = {4: 32, 64: 8}  # 2,000-2,600 images a timing: tasks differ in what the recipe draws

# Held out: families of 60 images (one patient each), trained on TRAINED, scored on HELD_OUT.
FAMILY_IMAGES, FAMILY_SEED = 60, 0
TRAINED, HELD_OUT = ("blobs", "streaks"), "rings"
OTHER_POLARITY = "dark_rings"  # scored too, never trained on or validated: rings with streaks' polarity
TRAIN = ["--quiet", "--num-threads", "1", "--vis-every", "0"]
TRAIN_SHOWN = "useg train --run-dir RUN --num-threads 1 --vis-every 0"
SUPPORT_SIZES_SCORED = (4, 16)  # the runs' own support size, and more supports (the unseen-class goal's size)
DICE_RATIO_GOAL = 0.8


def run_sampling(settings: Settings) -> list[Section]:
    section = Section(f"Many datasets: task sampling from {DATASETS} datasets against one ({IMAGE_SIZE} px, recipe on)",
                      f"{DATASETS} datasets, images/s per core", "1 dataset of as many images, images/s per core")
    started = time.perf_counter()
    one, several = one_dataset(), merged_datasets()
    rounds = 8 if settings.quick else 40
    task_rate = 0.0  # tasks/s with their images at the first support size
    for support in SUPPORT_SIZES:
        samplers = {"one": recipe_sampler(one, support), "several": recipe_sampler(several, support)}
        rates = per_core(samplers, support, rounds)
        ratio = median(rates["several"]) / median(rates["one"])
        section.rows.append(Row(
            case=f"support {support}, batch {BATCH}" + (" (a default run's)" if support == 4 else " (official)"),
            command=f"`sampler.batch(0, i, {BATCH})` on one thread, {BATCHES_PER_TIMING[support]} batches a timing, "
                    "interleaved; recipe `on` as `useg train` draws it",
            ours=spread(rates["several"], images_per_s), baseline=spread(rates["one"], images_per_s),
            ratio=f"{ratio:.3f}", goal=f">= {RATE_GOAL:.2f}", verdict=verdict(ratio >= RATE_GOAL)))
        section.results[support] = ratio
        task_rate = task_rate or median(rates["several"]) / (support + 1)
    samplers = {"one": recipe_sampler(one, SUPPORT_SIZES[0]), "several": recipe_sampler(several, SUPPORT_SIZES[0])}
    draws = draw_rates(samplers, rounds)
    section.rows.append(Row(
        case=f"the draws alone (support {SUPPORT_SIZES[0]}: dataset, class, target, supports; no images)",
        command=f"`sampler.task(0, i)` on one thread, {DRAWS_PER_TIMING:,} tasks a timing, interleaved",
        ours=spread(draws["several"], tasks_per_s), baseline=spread(draws["one"], tasks_per_s),
        ratio=f"{median(draws['several']) / median(draws['one']):.3f}"))
    extra = 1 / median(draws["several"]) - 1 / median(draws["one"])  # seconds a task's draws differ by
    section.reading += [
        f"Both sides hold {len(one):,} synthetic images of {IMAGE_SIZE} px: one dataset of "
        f"{PATIENTS_EACH * DATASETS} patients, or {DATASETS} of {PATIENTS_EACH} patients (other seeds) merged by "
        "useg.data.collection.merge with their own patient splits, as `useg train --data A --data B ...` merges "
        "them: tasks draw a dataset (uniform weights) before a class, and a class's targets and supports come "
        "from its own dataset. The images copied and augmented are the same size either way.",
        f"Where a difference could come from: the draws of ten datasets take {extra * 1e6:+.1f} µs a task "
        f"against {1e6 / task_rate:,.0f} µs for a whole task with its images at support {SUPPORT_SIZES[0]} "
        f"({extra * task_rate:+.2%}); the rest of a row's difference is noise (each side's tasks draw other "
        "augmentations, which cost more or less).",
        "Timed by the sampling thread's CPU time while other helpers' tests and training runs shared the 2 cores; "
        "the sides alternate timing by timing, so load and drift hit both alike, but the ranges are wide."]
    section.seconds = time.perf_counter() - started
    return [section]


def one_dataset():
    return make_synthetic(image_size=IMAGE_SIZE, seed=0, n_patients=PATIENTS_EACH * DATASETS)


def merged_datasets():
    """Ten datasets merged the way load_data merges several --data folders (each split by patient on its own)."""
    parts = [make_synthetic(image_size=IMAGE_SIZE, seed=index + 1, n_patients=PATIENTS_EACH)
             for index in range(DATASETS)]
    splits = [split_by_patient(part, seed=0) for part in parts]
    return merge(parts, [f"d{index + 1}" for index in range(DATASETS)], [1.0] * DATASETS, splits)


def recipe_sampler(dataset, support: int) -> TaskSampler:
    """The sampler a default `useg train` builds (recipe on, no synthetic tasks) over `dataset`'s training split."""
    recipe = Recipe(settings_from("task", "on"), settings_from("in_task", "on"), 0.0)
    return TaskSampler(dataset, split_by_patient(dataset, seed=0).train, support_size=support, seed=0,
                       samples_per_epoch=10**6, recipe=recipe)


def per_core(samplers: dict[str, TaskSampler], support: int, rounds: int) -> dict[str, list[float]]:
    """Images per CPU second of the sampling thread, BATCHES_PER_TIMING[support] batches a timing, the sides
    interleaved; each side draws the same batch indices."""
    count = BATCHES_PER_TIMING[support]
    images = BATCH * (support + 1) * count
    starts = {name: iter(range(0, 10**6, count)) for name in samplers}

    def timed(name: str):
        def one() -> float:
            first = next(starts[name])
            begin = time.thread_time()
            for index in range(first, first + count):
                samplers[name].batch(0, index, BATCH)
            return images / (time.thread_time() - begin)
        return one

    return interleaved({name: timed(name) for name in samplers}, rounds, warmup=2)


def draw_rates(samplers: dict[str, TaskSampler], rounds: int) -> dict[str, list[float]]:
    """Tasks drawn per CPU second (class, target and supports only), the sides interleaved."""
    starts = {name: iter(range(0, 10**9, DRAWS_PER_TIMING)) for name in samplers}

    def timed(name: str):
        def one() -> float:
            first = next(starts[name])
            begin = time.thread_time()
            for index in range(first, first + DRAWS_PER_TIMING):
                samplers[name].task(0, index)
            return DRAWS_PER_TIMING / (time.thread_time() - begin)
        return one

    return interleaved({name: timed(name) for name in samplers}, rounds, warmup=2)


def tasks_per_s(value: float) -> str:
    return f"{value:,.0f} tasks/s"


def images_per_s(value: float) -> str:
    return f"{value:,.0f} images/s"


def run_held_out(settings: Settings) -> list[Section]:
    section = Section(f"Many datasets: a dataset never trained on ({HELD_OUT}, synthetic families)",
                      f"trained on {' + '.join(TRAINED)}", f"trained on one of them alone ({'; '.join(TRAINED)})")
    if settings.quick:
        section.reading.append("Skipped with --quick (three default training runs take about 15 minutes).")
        return [section]
    started = time.perf_counter()
    families = write_families(settings.workdir / "families")
    runs = {"several": TRAINED, **{family: (family,) for family in TRAINED}}
    folders = dict(zip(runs, side_by_side(
        lambda name: train(settings.workdir / f"many_datasets_{name}", [families[f] for f in runs[name]],
                           families[HELD_OUT]), runs)))
    sizes = ",".join(map(str, SUPPORT_SIZES_SCORED))
    own = {name: evaluate(folder, "--support-size", sizes) for name, folder in folders.items()}
    held = {name: evaluate(folder, "--data", str(families[HELD_OUT]), "--support-size", sizes)
            for name, folder in folders.items()}
    other = {name: evaluate(folder, "--data", str(families[OTHER_POLARITY]), "--support-size", sizes)
             for name, folder in folders.items()}
    command = (f"`{TRAIN_SHOWN} --data {' --data '.join(TRAINED)} --held-out-data {HELD_OUT}`, then "
               f"`useg evaluate --run-dir RUN --support-size {sizes} --json` and the same with `--data {HELD_OUT}`")
    singles = [f"`--data {family}`" for family in TRAINED]
    for size in SUPPORT_SIZES_SCORED:
        ratio = dice_at(held["several"], size) / dice_at(own["several"], size)
        section.rows.append(Row(
            case=f"held-out Dice ({HELD_OUT}, every image) / trained datasets' test Dice, support {size}"
                 + (" (as trained)" if size == SUPPORT_SIZES_SCORED[0] else ""),
            command=command if size == SUPPORT_SIZES_SCORED[0] else "the same",
            ours=f"{ratio:.2f} ({dice_at(held['several'], size):.4f} / {dice_at(own['several'], size):.4f})",
            baseline="; ".join(f"{family} {dice_at(held[family], size) / dice_at(own[family], size):.2f} "
                               f"({dice_at(held[family], size):.4f} / {dice_at(own[family], size):.4f})"
                               for family in TRAINED),
            ratio="-", goal=f">= {DICE_RATIO_GOAL:.2f}", verdict=verdict(ratio >= DICE_RATIO_GOAL)))
    for size in SUPPORT_SIZES_SCORED:
        gains = gains_over_singles(held, size)
        section.rows.append(Row(
            case=f"held-out Dice ({HELD_OUT}), support {size}: two training datasets against each one alone",
            command=f"the same, and each of {' and '.join(singles)} alone with the same settings"
                    if size == SUPPORT_SIZES_SCORED[0] else "the same",
            ours=f"{dice_at(held['several'], size):.4f}",
            baseline="; ".join(f"{family} {dice_at(held[family], size):.4f}" for family in TRAINED),
            ratio="; ".join(f"{gain:+.4f}" for gain in gains.values()),
            goal="> each", verdict=verdict(min(gains.values()) > 0)))
    for size in SUPPORT_SIZES_SCORED:
        section.rows.append(Row(
            case=f"{OTHER_POLARITY} (rings dark like streaks' objects, never trained), support {size}: the same runs",
            command=f"the same runs, `useg evaluate --run-dir RUN --data {OTHER_POLARITY} --support-size {sizes} "
                    "--json`" if size == SUPPORT_SIZES_SCORED[0] else "the same",
            ours=f"{dice_at(other['several'], size):.4f}",
            baseline="; ".join(f"{family} {dice_at(other[family], size):.4f}" for family in TRAINED),
            ratio="; ".join(f"{gain:+.4f}" for gain in gains_over_singles(other, size).values()),
            goal="", verdict=""))
    section.reading += held_out_reading(folders, own)
    section.reading.append(polarity_reading(held, other))
    section.results = {"own": own, "held": held, "other_polarity": other}
    section.seconds = time.perf_counter() - started
    return [section]


def write_families(root: Path) -> dict[str, Path]:
    """The three family folders, by the tests' own helper (tests/ is a folder of the repository, not a package)."""
    from tests.medical_files import FAMILIES, write_family_folder

    return {family: write_family_folder(root / family, family, FAMILY_IMAGES, FAMILY_SEED) for family in FAMILIES}


def train(run_dir: Path, data: list[Path], held_out: Path) -> Path:
    """One default `useg train` run over `data`, scoring `held_out` at every validation."""
    flags = [arg for folder in data for arg in ("--data", str(folder))]
    run_timed(useg_args("train", "--run-dir", str(run_dir), *flags, "--held-out-data", str(held_out), *TRAIN),
              env=child_env())
    return run_dir


def dice_at(record: dict, support_size: int) -> float:
    return next(point["mean_dice"] for point in record["sweep"] if point["support_size"] == support_size)


def held_out_reading(folders: dict[str, Path], own: dict[str, dict]) -> list[str]:
    several = own["several"].get("datasets", {})
    lines = [
        f"Families of {FAMILY_IMAGES} images of 64 px, one patient each, split 60/20/20 by patient per dataset; "
        "default `useg train` settings (12 epochs of 512 tasks, support 4, task and in-task augmentation `on`, "
        "1 thread each, two at a time), best_model.pt (best val Dice) scored. The trained side's test Dice is "
        "over its datasets' "
        f"test patients (" + ", ".join(f"{name} {record['mean_dice']:.4f}" for name, record in several.items())
        + f" at the largest support size); the held-out Dice is over every {HELD_OUT} image with supports from "
        f"other {HELD_OUT} patients."]
    curves, largest_move = [], 0.0
    for name, folder in folders.items():
        values = [value for value in training_history(folder).get("held_out_dice") or [] if value is not None]
        if values:
            curves.append(f"{name}: " + " ".join(f"{value:.2f}" for value in values))
            largest_move = max([largest_move, *(abs(b - a) for a, b in zip(values, values[1:]))])
    if curves:
        lines.append(f"`held_out_dice` by epoch during training (the {HELD_OUT} validation patients, support 4): "
                     + "; ".join(curves) + f". It moves by up to {largest_move:.2f} from one epoch to the next, so "
                     "which epoch a run keeps (best val Dice) weighs on the comparison.")
    return lines


def gains_over_singles(records: dict[str, dict], size: int) -> dict[str, float]:
    """The two-dataset run's Dice minus each one-dataset run's, at one support size."""
    return {family: dice_at(records["several"], size) - dice_at(records[family], size) for family in TRAINED}


def polarity_reading(held: dict[str, dict], other: dict[str, dict]) -> str:
    """Each run's held-out Dice on both ring families, and which runs segment both."""
    size = SUPPORT_SIZES_SCORED[0]
    scores = {name: (dice_at(held[name], size), dice_at(other[name], size)) for name in held}
    safest = max(scores, key=lambda name: min(scores[name]))
    return (f"Held-out Dice at support {size} on {HELD_OUT} / {OTHER_POLARITY} (the same annuli, bright or dark): "
            + "; ".join(f"{name} {bright:.2f} / {dark:.2f}" for name, (bright, dark) in scores.items())
            + f". The best worst case of the two: {safest} ({min(scores[safest]):.2f}).")
