"""Evaluation time per 100 held-out targets at support size 64, 128 px, official widths (issue 14); and a
volume against the same slices stored one file each (issue 24).

A labelled folder of 100 synthetic scans (one patient each, 128x128, one class) is
scored by a run of the official size (widths 64,64,64,64, 128 px; trained for one
step, as the weights do not change the cost). Each target draws 64 supports from
the other 99 patients. Baseline: the same command at support size 8, for scale.
The command's wall time is given, start-up and data loading included.

Volumes: one 32x32x2000 NIfTI (and its mask volume) against 2,000 single-slice NIfTI
files of the same slices, scored by a tiny run with supports from a small PNG folder;
the two must give the same scores, and the volume at most twice the files' time.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from useg.data import make_synthetic

from .common import Row, Section, Settings, child_env, median, run_timed, shell, spread, useg_args, verdict

TARGETS = 100
SIZE = 128
SUPPORT = 64
BASELINE_SUPPORT = 8
TRAIN = ["--epochs", "1", "--samples-per-epoch", "2", "--batch-size", "2", "--support-size", "2",
         "--image-size", str(SIZE), "--widths", "64,64,64,64", "--vis-every", "0", "--quiet"]


def run(settings: Settings) -> list[Section]:
    return [held_out_section(settings), volume_section(settings)]


def held_out_section(settings: Settings) -> Section:
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
        "Forward passes hold at most 128 support images (useg.apply.evaluate.SUPPORTS_PER_BATCH) to bound memory. "
        "The machine is shared with other engineers' tests: see the load averages under Machine.")
    section.seconds = time.perf_counter() - started
    return section


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


VOLUME_SLICES = 2000
VOLUME_PX = 32
VOLUME_TRAIN = ["--epochs", "1", "--samples-per-epoch", "4", "--batch-size", "2", "--support-size", "2",
                "--image-size", str(VOLUME_PX), "--widths", "8,8", "--vis-every", "0", "--num-threads", "1",
                "--quiet"]
SCORE_COLUMNS = ("class", "dice", "iou", "truth_pixels", "predicted_pixels")
# Measured once with the code before the fix (commit 34883f1, which cut every slice of the mask volume and
# read the whole volume again for each slice scored), same machine, 2026-12-05; the issue's own figures too.
BEFORE_FIX = ("Before the fix (commit 34883f1), on this machine, a volume of this kind took {before}; issue 24 "
              "reported 14 / 38 / 321 s at 100 / 200 / 400 slices and nothing printed for over 500 s at 2,000.")
BEFORE_FIGURES = ("28 s at 200 slices and 604 s at 400 slices (`python -m useg evaluate --data VOLUME --support "
                  "SUPPORT --json`, one run each, load average about 3; this code: 2.3 s at 400 slices)")


def volume_section(settings: Settings) -> Section:
    """One 2,000-slice NIfTI volume against the same slices as 2,000 single-slice files, side by side."""
    section = Section(f"Evaluation on volumes: one {VOLUME_PX}x{VOLUME_PX}x{VOLUME_SLICES} NIfTI against "
                      f"{VOLUME_SLICES:,} single-slice files",
                      f"`useg evaluate --data VOLUME` (one .nii.gz of {VOLUME_SLICES:,} slices and its mask volume)",
                      f"`--data FILES` ({VOLUME_SLICES:,} .nii.gz files of one slice each, the same slices)")
    started = time.perf_counter()
    root = settings.workdir / "volumes"
    volume, files, support = write_volume_folders(root)
    run_dir = root / "run"
    run_timed(useg_args("train", "--run-dir", str(run_dir), "--data", str(support), *VOLUME_TRAIN), env=child_env())
    runs = 1 if settings.quick else 3
    times: dict[str, list[float]] = {"volume": [], "files": []}
    scored: dict[str, list[tuple]] = {}
    for round_index in range(runs):
        order = ["volume", "files"] if round_index % 2 == 0 else ["files", "volume"]
        for name in order:  # alternating, so background load hits both alike
            data = volume if name == "volume" else files
            elapsed, scored[name] = evaluate_folder(run_dir, data, support, root / f"{name}.csv")
            times[name].append(elapsed)
    ratio = median(times["volume"]) / median(times["files"])
    same = scored["volume"] == scored["files"]
    section.rows.append(Row(
        case=f"{len(scored['volume'])} scored slices, tiny run (widths 8,8, {VOLUME_PX} px, S=2), supports from 8 PNGs",
        command=f"`{shell(volume_command('RUN', 'VOLUME', 'SUPPORT', 'RUN/volume.csv'))}`",
        ours=spread(times["volume"]), baseline=spread(times["files"]), ratio=f"{ratio:.2f}x",
        goal="< 2x", verdict=verdict(ratio < 2 and same)))
    section.reading.append(
        f"The volume is scored in {ratio:.2f}x the time of the same {VOLUME_SLICES:,} slices stored one file each "
        f"(start-up, loading and scoring included), with {'the same' if same else '**different**'} scores in "
        "every row (HD95 to 6 decimals): evaluation reads each mask volume once (useg.data.medical.keeping_last_mask) instead of once "
        "per slice, and cuts one plane where it used to cut them all. What remains is the model's forward "
        "passes and HD95, the same for both.")
    section.reading.append(BEFORE_FIX.format(before=BEFORE_FIGURES))
    section.results = {"ratio": ratio, "same_scores": same}
    section.seconds = time.perf_counter() - started
    return section


def volume_command(run_dir: str, data: str, support: str, csv_path: str) -> list[str]:
    return useg_args("evaluate", "--run-dir", run_dir, "--data", data, "--support", support, "--json",
                     "--csv", csv_path)


def evaluate_folder(run_dir: Path, data: Path, support: Path, csv_path: Path) -> tuple[float, list[tuple]]:
    """Wall time of one evaluate command and its rows' scores (image names left out: they differ)."""
    elapsed, _ = run_timed(volume_command(str(run_dir), str(data), str(support), str(csv_path)), env=child_env())
    with open(csv_path, newline="") as handle:
        rows = [steady(row) for row in csv.DictReader(handle)]
    return elapsed, rows


def steady(row: dict[str, str]) -> tuple:
    """A CSV row's scores, HD95 to 6 decimals: torch.cdist's threaded products vary in the 10th digit."""
    hd95 = round(float(row["hd95_px"]), 6) if row["hd95_px"] else None
    return (*(row[key] for key in SCORE_COLUMNS), hd95)


def volume_slices(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(count, 32, 32) float32 images and uint8 binary masks. A black first row and a white last row give
    every slice the volume's 0.5th/99.5th percentiles, so a slice scaled alone equals it scaled in the volume."""
    data = make_synthetic(image_size=VOLUME_PX, seed=seed, n_patients=count // 10, images_per_patient=10)
    images = data.images.astype(np.float32)
    images[:, 0], images[:, -1] = 0.0, 1.0
    return images, data.masks.any(axis=1).astype(np.uint8)


def write_volume_folders(root: Path) -> tuple[Path, Path, Path]:
    """VOLUME/ (one image and one mask volume), FILES/ (one file per slice) and SUPPORT/ (8 PNG scans)."""
    import nibabel

    folders = [root / "volume", root / "files", root / "support"]
    for folder in folders:
        for kind in ("images", "masks"):
            (folder / kind).mkdir(parents=True)
    volume, files, support = folders
    images, masks = volume_slices(VOLUME_SLICES, seed=21)
    for kind, array in (("images", images), ("masks", masks)):
        nibabel.save(nibabel.Nifti1Image(np.moveaxis(array, 0, -1), np.eye(4)), volume / kind / "scan.nii.gz")
        for number, plane in enumerate(array):
            nibabel.save(nibabel.Nifti1Image(plane, np.eye(4)), files / kind / f"slice{number:04d}.nii.gz")
    support_images, support_masks = volume_slices(10, seed=22)
    for number, (image, mask) in enumerate(zip(support_images[:8], support_masks[:8])):
        Image.fromarray((image * 255).astype(np.uint8)).save(support / "images" / f"scan{number}.png")
        Image.fromarray(mask * 255).save(support / "masks" / f"scan{number}.png")
    return volume, files, support


def main(argv: list[str]) -> int:
    """`python -m bench.evaluation volumes [--quick]`: the volume section alone (the held-out one takes about
    20 min), printed as `python -m bench --merge` would write it into BENCHMARKS.md."""
    import os
    import shutil
    import tempfile
    from datetime import datetime, timezone

    from .common import machine
    from .report import _section

    if argv[:1] != ["volumes"] or not set(argv[1:]) <= {"--quick"}:
        print("usage: python -m bench.evaluation volumes [--quick]", file=sys.stderr)
        return 2
    info = machine()
    load = info["Load average at start"]
    workdir = Path(tempfile.mkdtemp(prefix="useg-bench-"))
    try:
        section = volume_section(Settings(quick="--quick" in argv, workdir=workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = _section(section)
    lines[3:3] = ["", f"Measured by `python -m bench.evaluation {' '.join(argv)}` on {now} ({info['CPU']}; load "
                      f"average {load} -> {' '.join(f'{x:.2f}' for x in os.getloadavg())}), not by the run named "
                      "at the top."]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
