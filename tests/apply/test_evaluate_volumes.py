"""`useg evaluate` on 3-D volumes: each mask volume read once (not once per slice), the same scores as the
same slices stored one file each, and a progress bar on stderr in a terminal only."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import nibabel
import numpy as np
import pytest
from PIL import Image
from rich.console import Console
from tiny import train_tiny

import useg.data.medical as medical
import useg.apply.targets as eval_data
from useg.cli import main
from useg.cli.evaluate_report import ScoringProgress
from useg.data import make_synthetic
from useg.data.medical import keeping_last_mask, read_medical_mask, slices
from useg.apply.evaluate import evaluate
from useg.apply.predict import load_trained

SLICES = 5  # per volume
SCORES = ("support_size", "class", "dice", "iou", "truth_pixels", "predicted_pixels", "hd95_px")


def scans(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(count, 40, 32) images in [0, 1] and binary masks: not square and not the model's 32 px.

    Each image has a black first row and a white last row, so that scaling per file (a slice stored alone)
    and per volume give the same values: only the file layout differs.
    """
    data = make_synthetic(image_size=40, seed=seed, n_patients=count, images_per_patient=1)
    images, masks = data.images[:, :, 4:36].copy(), data.masks.any(axis=1)[:, :, 4:36]
    images[:, 0], images[:, -1] = 0.0, 1.0
    return images.astype(np.float32), masks.astype(np.uint8)


def steady(row: dict) -> tuple:
    """A row's scores, HD95 to 6 decimals: torch.cdist's threaded products vary in the 10th digit from run to
    run."""
    hd95 = row["hd95_px"]
    return tuple(row.get(key) for key in SCORES[:-1]) + (round(float(hd95), 6) if hd95 not in ("", None) else None,)


def make_dirs(root: Path) -> Path:
    for kind in ("images", "masks"):
        (root / kind).mkdir(parents=True)
    return root


def save_nifti(path: Path, array: np.ndarray) -> None:
    nibabel.save(nibabel.Nifti1Image(array, np.eye(4)), path)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """Two volumes of SLICES slices; the same slices as single-slice files; a PNG support folder."""
    root = tmp_path_factory.mktemp("volumes")
    images, masks = scans(2 * SLICES, seed=7)
    volumes, files = make_dirs(root / "volumes"), make_dirs(root / "files")
    for number, name in enumerate(("a", "b")):
        part = slice(number * SLICES, (number + 1) * SLICES)
        save_nifti(volumes / "images" / f"{name}.nii.gz", np.moveaxis(images[part], 0, -1))
        save_nifti(volumes / "masks" / f"{name}.nii.gz", np.moveaxis(masks[part], 0, -1))
    for number, (image, mask) in enumerate(zip(images, masks)):
        save_nifti(files / "images" / f"s{number:02d}.nii.gz", image)
        save_nifti(files / "masks" / f"s{number:02d}.nii.gz", mask)
    support = make_dirs(root / "support")
    support_images, support_masks = scans(6, seed=8)
    for number, (image, mask) in enumerate(zip(support_images, support_masks)):
        Image.fromarray((image * 255).astype(np.uint8)).save(support / "images" / f"s{number}.png")
        Image.fromarray(mask * 255).save(support / "masks" / f"s{number}.png")
    return {"volumes": volumes, "files": files, "support": support}


@pytest.fixture(scope="module")
def run(tmp_path_factory, folders) -> Path:
    return train_tiny(tmp_path_factory.mktemp("run") / "run", 1, "--data", str(folders["support"]))


def test_each_mask_volume_is_read_once_while_scoring(run, folders, monkeypatch):
    reads = []
    read = medical.read_medical

    def counting(path, name, *, as_mask):
        reads.append((Path(path).name, as_mask))
        return read(path, name, as_mask=as_mask)

    monkeypatch.setattr(medical, "read_medical", counting)
    scoring_starts = []  # evaluate reports (0, total) once the data is loaded, just before scoring
    result = evaluate(load_trained(run), data=str(folders["volumes"]), support=str(folders["support"]),
                      progress=lambda done, total: scoring_starts.append(len(reads)) if done == 0 else None)
    assert len(result.rows) >= 2 * SLICES - 2  # nearly every slice shows a lesion: several slices per volume
    assert reads[scoring_starts[0]:] == [("a.nii.gz", True), ("b.nii.gz", True)]


def test_volume_scores_equal_those_of_the_same_slices_stored_one_file_each(run, folders, capsys, tmp_path):
    def rows(data: Path) -> list[tuple]:
        capsys.readouterr()
        assert main(["evaluate", "--run-dir", str(run), "--data", str(data), "--support", str(folders["support"]),
                     "--support-size", "1,2", "--json", "--csv", str(tmp_path / f"{data.name}.csv")]) == 0
        report = json.loads(capsys.readouterr().out)  # stdout is the JSON alone
        with open(report["csv"], newline="") as handle:
            return [steady(row) for row in csv.DictReader(handle)]

    from_volumes = rows(folders["volumes"])
    assert from_volumes and from_volumes == rows(folders["files"])


def test_scores_stay_the_same_when_the_kept_truth_is_dropped_between_sweep_points(run, folders, monkeypatch):
    def sweep() -> list[list[dict]]:
        result = evaluate(load_trained(run), data=str(folders["volumes"]), support=str(folders["support"]),
                          support_size=[1, 2])
        return [[steady(row) for row in point.rows] for point in result.points]

    kept = sweep()
    monkeypatch.setattr(eval_data, "NATIVE_MASK_BYTES", 1)  # keep only the last target's truth
    assert sweep() == kept


def test_progress_bar_on_a_terminal_after_a_while_and_nothing_otherwise():
    def shown(is_terminal: bool, wait: float) -> str:
        out = io.StringIO()
        progress = ScoringProgress(Console(file=out, force_terminal=is_terminal, width=100))
        progress.created -= wait  # as if the command had run `wait` seconds
        with progress:
            for done in (0, 5, 10):
                progress(done, 10)
        return out.getvalue()

    assert "tasks" in shown(True, 10.0) and "10/10" in shown(True, 10.0)
    assert shown(True, 0.0) == ""  # a quick evaluation adds nothing
    assert shown(False, 10.0) == ""  # a log or a pipe: nothing


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slices_cut_one_plane_at_a_time_as_np_take_did(axis):
    volume = np.asfortranarray(np.arange(3 * 4 * 5).reshape(3, 4, 5))  # NIfTI arrays are Fortran-ordered
    planes = slices(volume, axis)
    assert len(planes) == volume.shape[axis]
    for index, plane in enumerate(planes):
        assert np.array_equal(plane, np.take(volume, index, axis=axis)) and plane.flags.c_contiguous
    assert np.array_equal(planes[-1], np.take(volume, -1, axis=axis))
    planes[0][...] = -1  # a copy: changing it leaves the volume as it was
    assert (volume >= 0).all()
    image = np.zeros((4, 5))
    assert len(slices(image, 2)) == 1 and slices(image, 2)[0] is image


def test_a_mask_is_kept_only_inside_the_block_and_read_again_once_changed(tmp_path, monkeypatch):
    path = tmp_path / "m.nii.gz"
    save_nifti(path, np.zeros((4, 4, 3), dtype=np.uint8))
    reads = []
    read = medical.read_medical
    monkeypatch.setattr(medical, "read_medical", lambda *args, **kw: reads.append(1) or read(*args, **kw))
    read_medical_mask(path, "m")
    read_medical_mask(path, "m")
    assert len(reads) == 2  # outside the block: nothing kept
    with keeping_last_mask():
        first = read_medical_mask(path, "m")
        assert read_medical_mask(path, "m") is first and len(reads) == 3
        with pytest.raises(ValueError):
            first[0, 0, 0] = 1  # shared with later reads: read-only
        save_nifti(path, np.ones((4, 4, 5), dtype=np.uint8))
        assert read_medical_mask(path, "m").shape == (4, 4, 5) and len(reads) == 4


def test_other_data_is_cut_along_the_axis_the_run_was_trained_on(monkeypatch):
    # A run trained on volumes cut along axis 0 is scored on slices along axis 0 of other data too,
    # as predict applies it (was: always axis 2).
    from useg.apply.predict import TrainedModel
    from useg.errors import DataError

    seen = []

    def loading(data, **options):
        seen.append(options)
        raise DataError("stop here: only the options matter")

    monkeypatch.setattr(eval_data, "load_dataset", loading)
    trained = TrainedModel(None, Path("best_model.pt"), 1, {"image_size": 32, "support_size": 2, "slice_axis": 0},
                           ["foreground"], None)
    with pytest.raises(DataError):
        eval_data.held_out(trained, "volumes", None, None, {})
    assert seen[0]["slice_axis"] == 0
