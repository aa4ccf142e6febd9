"""What `useg evaluate` writes: the CSV in the checkpoint's run, earlier results kept, the worst and best targets
drawn (`--pictures N`), sweep pictures that say what they scored; every file named on the screen."""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import nibabel
import numpy as np
import pytest
from PIL import Image
from medical_files import write_synthetic_folder
from tiny import train_tiny, error_line

from useg.apply import outputs
from useg.apply.evaluate import evaluate
from useg.apply.predict import load_trained
from useg.apply.target_pictures import native_image
from useg.cli import main
from useg.data.medical import read_medical_image
from useg.errors import UsegError

WIDE = (40, 26)  # (width, height): neither square nor the model's 32 px
STAMPED = re.compile(r"evaluation_test_\d{8}_\d{6}(_\d+)?\.csv")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("outputs") / "run", 1)


@pytest.fixture(scope="module")
def patient_folder(tmp_path_factory) -> Path:
    """images/ + masks/ of 8 synthetic scans at 40x26, in a folder named like a patient."""
    return write_synthetic_folder(tmp_path_factory.mktemp("held") / "Nguyen_Thi_B", 8, seed=3, size=WIDE)


def rows_of(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_checkpoint_path_without_run_dir_writes_the_csv_into_its_run(run, tmp_path, monkeypatch, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    (run / "evaluation_test.csv").unlink(missing_ok=True)
    capsys.readouterr()
    assert main(["evaluate", str(run / "checkpoints" / "best_model.pt")]) == 0
    assert list(elsewhere.iterdir()) == []
    assert (run / "evaluation_test.csv").is_file()
    assert f"rows written to {run / 'evaluation_test.csv'}" in capsys.readouterr().out


def test_a_relative_checkpoint_path_also_writes_into_its_run(run, monkeypatch, capsys):
    monkeypatch.chdir(run / "checkpoints")
    (run / "evaluation_val.csv").unlink(missing_ok=True)
    assert main(["evaluate", "best_model.pt", "--split", "val"]) == 0
    assert (run / "evaluation_val.csv").is_file() and not (run / "checkpoints" / "evaluation_val.csv").exists()


def test_an_explicit_run_dir_still_decides_where_the_csv_goes(run, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    assert main(["evaluate", str(run / "checkpoints" / "best_model.pt"), "--run-dir", str(other)]) == 0
    assert (other / "evaluation_test.csv").is_file()


def test_a_second_evaluation_keeps_the_first_csv_under_its_time(run, tmp_path, capsys):
    csv_path = tmp_path / "scores" / "evaluation_test.csv"
    assert main(["evaluate", "--run-dir", str(run), "--csv", str(csv_path)]) == 0
    first = csv_path.read_bytes()
    capsys.readouterr()
    assert main(["evaluate", "--run-dir", str(run), "--csv", str(csv_path), "--classes", "cyst"]) == 0
    out = capsys.readouterr().out
    kept = [path for path in csv_path.parent.iterdir() if STAMPED.fullmatch(path.name)]
    assert len(kept) == 1 and kept[0].read_bytes() == first and csv_path.read_bytes() != first
    assert f"earlier evaluation_test.csv kept as {kept[0]}" in out
    assert main(["evaluate", "--run-dir", str(run), "--csv", str(csv_path), "--classes", "cyst"]) == 0  # same rows
    assert len([path for path in csv_path.parent.iterdir() if STAMPED.fullmatch(path.name)]) == 1
    assert "kept as" not in capsys.readouterr().out


def test_json_names_the_kept_csv_on_stderr_and_stays_parseable(run, tmp_path, capsys):
    csv_path = tmp_path / "evaluation_test.csv"
    csv_path.write_text("an earlier result\n")
    capsys.readouterr()
    assert main(["evaluate", "--run-dir", str(run), "--csv", str(csv_path), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["csv"] == str(csv_path)
    kept = [path for path in tmp_path.iterdir() if STAMPED.fullmatch(path.name)]
    assert [path.read_text() for path in kept] == ["an earlier result\n"]
    assert f"earlier evaluation_test.csv kept as {kept[0]}" in captured.err


def picture_text(path: Path) -> dict[str, str]:
    return Image.open(path).text


def test_pictures_show_the_worst_and_best_targets_with_their_dice(run, patient_folder, tmp_path, capsys):
    csv_path = tmp_path / "evaluation_test.csv"
    capsys.readouterr()
    assert main(["evaluate", "--run-dir", str(run), "--data", str(patient_folder), "--csv", str(csv_path),
                 "--pictures", "2"]) == 0
    folder = tmp_path / "evaluation_test_pictures"
    assert f"4 pictures of the worst and best targets written to {folder}" in capsys.readouterr().out
    names = sorted(path.name for path in folder.iterdir())
    assert [name[:7] for name in names] == ["best_01", "best_02", "worst_0", "worst_0"]
    dice = {(row["image"], row["class"]): float(row["dice"]) for row in rows_of(csv_path)}
    shown = {}
    for name in names:
        text = picture_text(folder / name)
        kind, rank, image, cls = re.fullmatch(r"(worst|best)_(\d\d)_(p\d{3}_i\d{3})_(\w+)\.png", name).groups()
        assert text["Title"].startswith(f"{kind} {int(rank)} of 2 · {image} · class {cls} · Dice ")
        assert float(text["Title"].rsplit("Dice ", 1)[1]) == pytest.approx(dice[(image, cls)], abs=5e-4)
        assert "native size 40x26" in text["Description"]
        assert "Nguyen" not in text["Title"] + text["Description"] and "scan" not in text["Description"]
        shown[(kind, int(rank))] = dice[(image, cls)]
    ordered = sorted(dice.values())
    assert [shown[("worst", 1)], shown[("worst", 2)]] == ordered[:2]
    assert [shown[("best", 1)], shown[("best", 2)]] == ordered[::-1][:2]


def test_with_paths_names_the_file_in_the_picture(run, patient_folder, tmp_path):
    csv_path = tmp_path / "evaluation_test.csv"
    assert main(["evaluate", "--run-dir", str(run), "--data", str(patient_folder), "--csv", str(csv_path),
                 "--pictures", "1", "--with-paths"]) == 0
    files = {row["image"]: row["file"] for row in rows_of(csv_path)}
    for path in (tmp_path / "evaluation_test_pictures").iterdir():
        image = re.search(r"p\d{3}_i\d{3}", path.name).group()
        assert picture_text(path)["Description"].endswith(f" · {files[image]}")


def test_fewer_pictures_on_a_rerun_leave_no_stale_picture_and_keep_the_earlier_ones(run, tmp_path, capsys):
    csv_path = tmp_path / "evaluation_test.csv"
    folder = tmp_path / "evaluation_test_pictures"
    assert main(["evaluate", "--run-dir", str(run), "--csv", str(csv_path), "--pictures", "2"]) == 0
    earlier = sorted(path.name for path in folder.iterdir())
    capsys.readouterr()
    assert main(["evaluate", "--run-dir", str(run), "--csv", str(csv_path), "--pictures", "1", "--json"]) == 0
    captured = capsys.readouterr()
    now = sorted(path.name for path in folder.iterdir())
    assert len(earlier) == 4 and len(now) == 2
    assert sorted(json.loads(captured.out)["pictures"]) == sorted(str(folder / name) for name in now)
    kept = [path for path in tmp_path.iterdir() if path.name.startswith("evaluation_test_pictures_")]
    assert len(kept) == 1 and sorted(path.name for path in kept[0].iterdir()) == earlier
    assert f"kept in {kept[0]}" in captured.err


def test_negative_pictures_is_one_line_and_exit_2(run, capsys):
    assert main(["evaluate", "--run-dir", str(run), "--pictures", "-1"]) == 2
    assert "--pictures must be 0 or more" in error_line(capsys)


@pytest.mark.parametrize("data, scored", [(None, "the run's test split"), ("held", "a held-out folder")])
def test_the_sweep_picture_title_names_what_it_scored_without_a_path(data, scored, run, patient_folder, tmp_path):
    where = [] if data is None else ["--data", str(patient_folder)]
    assert main(["evaluate", "--run-dir", str(run), *where, "--support-size", "1,2", "--csv",
                 str(tmp_path / "scores.csv")]) == 0
    title = picture_text(tmp_path / "evaluation_support_sweep.png")["Title"]
    assert scored in title and "Nguyen" not in title and os.sep not in title


def test_an_earlier_sweep_picture_is_kept(run, tmp_path, capsys):
    picture = tmp_path / "evaluation_support_sweep.png"
    picture.write_bytes(b"earlier")
    capsys.readouterr()
    assert main(["evaluate", "--run-dir", str(run), "--support-size", "1,2", "--csv", str(tmp_path / "s.csv")]) == 0
    kept = [path for path in tmp_path.iterdir() if path.name.startswith("evaluation_support_sweep_")]
    assert [path.read_bytes() for path in kept] == [b"earlier"]
    assert f"earlier evaluation_support_sweep.png kept as {kept[0]}" in capsys.readouterr().out


def test_picture_images_are_the_files_at_their_own_size(run, patient_folder):
    result = evaluate(load_trained(run), data=str(patient_folder))
    task = result.main.tasks[0]
    file = patient_folder / result.data.files[task.target]
    image = native_image(result.data, task.target, (WIDE[1], WIDE[0]), slice_axis=2)
    assert np.allclose(image, np.asarray(Image.open(file).convert("L"), dtype=np.float32) / 255)


def test_picture_images_of_a_volume_are_its_slices_at_their_own_size(run, patient_folder, tmp_path):
    volume = np.random.default_rng(0).random((40, 36, 4)).astype(np.float32)
    masks = np.zeros(volume.shape, dtype=np.uint8)
    masks[10:30, 8:20] = 1
    for kind, array in (("images", volume), ("masks", masks)):
        (tmp_path / "ct" / kind).mkdir(parents=True)
        nibabel.save(nibabel.Nifti1Image(array, np.eye(4)), tmp_path / "ct" / kind / "scan.nii.gz")
    result = evaluate(load_trained(run), data=str(tmp_path / "ct"), support=str(patient_folder))
    task = result.main.tasks[-1]
    number = int(result.data.files[task.target].rsplit("#slice=", 1)[1])
    expected = read_medical_image(tmp_path / "ct" / "images" / "scan.nii.gz", "scan")[:, :, number]
    assert np.allclose(native_image(result.data, task.target, (40, 36), slice_axis=2), expected)


def test_a_failed_write_leaves_the_earlier_csv_in_place_and_no_kept_copy(tmp_path, monkeypatch):
    path = tmp_path / "evaluation_test.csv"
    path.write_text("earlier")

    def full_disk(target, *args, **kwargs):
        raise UsegError(f"cannot write {target}: the disk is full")

    monkeypatch.setattr(outputs, "write_file_atomically", full_disk)
    with pytest.raises(UsegError, match="the disk is full"):
        outputs.write_keeping_earlier(path, b"new rows", then="run useg evaluate again")
    assert os.listdir(tmp_path) == ["evaluation_test.csv"] and path.read_text() == "earlier"
