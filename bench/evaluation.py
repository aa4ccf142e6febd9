"""Evaluation time per 100 held-out targets at support size 64, 128 px, official widths (issue 14).

A labelled folder of 100 synthetic scans (one patient each, 128x128, one class) is
scored by a run of the official size (widths 64,64,64,64, 128 px; trained for one
step, as the weights do not change the cost). Each target draws 64 supports from
the other 99 patients. Baseline: the same command at support size 8, for scale.
The command's wall time is given, start-up and data loading included.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from useg.data import make_synthetic

from .common import Row, Section, Settings, child_env, median, run_timed, shell, spread, useg_args

TARGETS = 100
SIZE = 128
SUPPORT = 64
BASELINE_SUPPORT = 8
TRAIN = ["--epochs", "1", "--samples-per-epoch", "2", "--batch-size", "2", "--support-size", "2",
         "--image-size", str(SIZE), "--widths", "64,64,64,64", "--vis-every", "0", "--quiet"]


def run(settings: Settings) -> list[Section]:
    section = Section(f"Held-out evaluation: {TARGETS} targets at support {SUPPORT}, {SIZE} px",
                      f"`useg evaluate --support-size {SUPPORT}`", f"`--support-size {BASELINE_SUPPORT}`")
    started = time.perf_counter()
    data = write_folder(settings.workdir / "eval_data")
    run_dir = settings.workdir / "eval_run"
    run_timed(useg_args("train", "--run-dir", str(run_dir), *TRAIN), env=child_env())
    runs = 1 if settings.quick else 3
    times = {SUPPORT: [], BASELINE_SUPPORT: []}
    for _ in range(runs):
        for support in times:  # alternating, so background load hits both alike
            times[support].append(evaluate_once(run_dir, data, support))
    ours, baseline = median(times[SUPPORT]), median(times[BASELINE_SUPPORT])
    section.rows.append(Row(
        case=f"{TARGETS} targets (one class), widths 64,64,64,64, {SIZE}x{SIZE}, CPU threads: torch default",
        command=f"`{shell(command('RUN', 'DATA', SUPPORT))}`",
        ours=spread(times[SUPPORT]), baseline=spread(times[BASELINE_SUPPORT]),
        ratio=f"{ours / baseline:.1f}x the S={BASELINE_SUPPORT} time"))
    section.reading.append(
        f"Scoring {TARGETS} held-out targets with {SUPPORT} supports each takes {ours:.0f} s per 100 targets on this "
        f"machine ({baseline:.0f} s at S={BASELINE_SUPPORT}), start-up and loading the folder included; the "
        f"cost grows about linearly with the support size (UniverSeg's cross-convolutions run once per support "
        f"image), so a sweep `--support-size 1,2,4,8,16,32,64` costs about twice the S={SUPPORT} time. "
        "Forward passes hold at most 128 support images (useg.evaluate.SUPPORTS_PER_BATCH) to bound memory. "
        "The machine is shared with other engineers' tests: see the load averages under Machine.")
    section.seconds = time.perf_counter() - started
    return [section]


def command(run_dir: str, data: str, support: int) -> list[str]:
    return useg_args("evaluate", "--run-dir", run_dir, "--data", data, "--support-size", str(support), "--json",
                     "--csv", f"{run_dir}/bench.csv")


def evaluate_once(run_dir: Path, data: Path, support: int) -> float:
    """Wall time of one evaluate command, scaled to 100 targets."""
    elapsed, done = run_timed(command(str(run_dir), str(data), support), env=child_env())
    tasks = json.loads(done.stdout)["sweep"][0]["tasks"]
    return elapsed * 100 / tasks


def write_folder(root: Path) -> Path:
    """images/ + masks/ of TARGETS synthetic scans, one patient each, every lesion in one binary mask."""
    scans = make_synthetic(image_size=SIZE, seed=11, n_patients=TARGETS, images_per_patient=1)
    for kind in ("images", "masks"):
        (root / kind).mkdir(parents=True)
    for number, (image, masks) in enumerate(zip(scans.images, scans.masks)):
        Image.fromarray((image * 255).astype(np.uint8)).save(root / "images" / f"scan{number:03d}.png")
        Image.fromarray(masks.any(axis=0).astype(np.uint8) * 255).save(root / "masks" / f"scan{number:03d}.png")
    return root
