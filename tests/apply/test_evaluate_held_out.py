"""`useg evaluate` on data the run was not trained on: every image a target, other folders' supports, sweeps,
native-resolution scores, the run's image index and `--with-paths`."""

from __future__ import annotations

import csv
import json
import re
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from medical_files import write_synthetic_folder
from tiny import error_line, evaluate_json, train_tiny

from useg.cli import main
from useg.data.index import INDEX_NAME

WIDE = (40, 26)  # (width, height): neither square nor the model's 32 px


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("held_out")
    return {"data": write_synthetic_folder(root / "data", 8, seed=3, size=WIDE),
            "other": write_synthetic_folder(root / "other", 6, seed=4, size=WIDE),
            "single": write_synthetic_folder(root / "single", 1, seed=5, size=WIDE)}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A tiny run trained on the synthetic classes (cyst, septated_cyst, solid): `foreground` is held out."""
    return train_tiny(tmp_path_factory.mktemp("run") / "run", 1)


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory, folders) -> Path:
    """A tiny run trained on a folder of `foreground` masks."""
    return train_tiny(tmp_path_factory.mktemp("folder_run") / "run", 1, "--data", str(folders["data"]))


def native_mask(folder: Path, stem: str) -> np.ndarray:
    return np.asarray(Image.open(folder / "masks" / f"{stem}.png")) > 0


def test_other_data_scores_every_image_once_per_class_of_its_own_names(run, folders, capsys, tmp_path):
    report = evaluate_json(run, capsys, "--data", str(folders["data"]), "--csv", str(tmp_path / "held.csv"))
    assert report["held_out"] is True and report["split"] == "all"
    assert report["classes"] == {"foreground": "held-out"}
    assert sorted(row["image"] for row in report["rows"]) == sorted(f"p{i:03d}_i000" for i in range(8))
    assert {row["class"] for row in report["rows"]} == {"foreground"}
    assert list(report["per_class"]) == ["foreground"] and report["per_class"]["foreground"]["dice"]["n"] == 8
    assert report["mean_dice"] == pytest.approx(np.mean([row["dice"] for row in report["rows"]]))


def test_label_map_folder_scores_each_named_class(run, folders, capsys, tmp_path):
    labelled = tmp_path / "labelled"
    for kind in ("images", "masks"):
        (labelled / kind).mkdir(parents=True)
    for image in sorted((folders["data"] / "images").iterdir()):
        (labelled / "images" / image.name).write_bytes(image.read_bytes())
        lesion = native_mask(folders["data"], image.stem)
        values = np.where(lesion, 200, 0).astype(np.uint8)
        values[:, :6] = 100  # a band on the left: a second class in every image
        Image.fromarray(values).save(labelled / "masks" / image.name)
    report = evaluate_json(run, capsys, "--data", str(labelled), "--class-names", "100=band,200=lesion")
    assert report["classes"] == {"band": "held-out", "lesion": "held-out"}
    assert {row["class"] for row in report["rows"]} == {"band", "lesion"} and len(report["rows"]) == 16
    picked = evaluate_json(run, capsys, "--data", str(labelled), "--label", "200")
    assert list(picked["per_class"]) == ["label_200"] and len(picked["rows"]) == 8
    by_name = evaluate_json(run, capsys, "--data", str(labelled), "--class-names", "100=band,200=lesion",
                            "--classes", "lesion")
    assert list(by_name["per_class"]) == ["lesion"]


def test_class_the_model_was_trained_on_is_marked_trained(folder_run, folders, capsys):
    report = evaluate_json(folder_run, capsys, "--data", str(folders["other"]))
    assert report["classes"] == {"foreground": "trained"} and len(report["rows"]) == 6
    assert main(["evaluate", "--run-dir", str(folder_run)]) == 0  # the run's own data: its test split
    assert "trained" in capsys.readouterr().out


def test_support_folder_gives_supports_to_a_folder_that_has_none(run, folders, capsys):
    assert main(["evaluate", "--run-dir", str(run), "--data", str(folders["single"])]) == 2
    assert "none of the 1 target images has a class with a support image" in error_line(capsys)
    report = evaluate_json(run, capsys, "--data", str(folders["single"]), "--support", str(folders["other"]))
    assert report["support_data"] == str(folders["other"]) and [row["image"] for row in report["rows"]] == [
        "p000_i000"]


def test_support_size_sweep_records_picture_and_skipped_sizes(run, folders, capsys, tmp_path):
    csv_path = tmp_path / "sweep" / "scores.csv"
    capsys.readouterr()
    assert main(["evaluate", "--run-dir", str(run), "--json", "--data", str(folders["data"]),
                 "--support-size", "1,2,4,64", "--csv", str(csv_path)]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert [record["support_size"] for record in report["sweep"]] == [1, 2, 4]
    assert report["skipped_support_sizes"] == [{"support_size": 64, "available": 7}]
    assert "support size 64 skipped: only 7 support images" in captured.err
    targets = [sorted((row["image"], row["class"]) for row in report["rows"])]
    for record in report["sweep"]:
        assert record["tasks"] == 8 and record["per_class"]["foreground"]["dice"]["n"] == 8  # same targets
    assert report["support_size"] == 4 and len(targets[0]) == 8
    picture = csv_path.parent / "evaluation_support_sweep.png"
    assert picture.is_file() and Image.open(picture).format == "PNG"
    assert str(picture) in report["pictures"]
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted({int(row["support_size"]) for row in rows}) == [1, 2, 4] and len(rows) == 24


def test_ensemble_sweep_averages_more_draws(run, folders, capsys, tmp_path):
    csv_path = tmp_path / "scores.csv"
    report = evaluate_json(run, capsys, "--data", str(folders["data"]), "--support-size", "2",
                           "--ensembles", "1..3", "--csv", str(csv_path))
    assert [record["ensembles"] for record in report["sweep"]] == [1, 2, 3]
    single = evaluate_json(run, capsys, "--data", str(folders["data"]), "--support-size", "2")
    assert report["sweep"][0]["mean_dice"] == pytest.approx(single["mean_dice"])  # first draw = single draw
    assert report["ensembles"] == 3 and (tmp_path / "evaluation_ensemble_sweep.png").is_file()
    listed = evaluate_json(run, capsys, "--data", str(folders["data"]), "--support-size", "2", "--ensembles", "1,3")
    assert [record["mean_dice"] for record in listed["sweep"]] == pytest.approx(
        [report["sweep"][0]["mean_dice"], report["sweep"][2]["mean_dice"]])


def test_scores_are_at_each_images_native_size(run, folders, capsys):
    report = evaluate_json(run, capsys, "--data", str(folders["data"]), "--with-paths")
    for row in report["rows"]:
        truth = native_mask(folders["data"], Path(row["file"]).stem)
        assert truth.shape == (WIDE[1], WIDE[0])
        assert row["truth_pixels"] == int(truth.sum())  # not the 32x32 resized count
        assert row["predicted_pixels"] <= WIDE[0] * WIDE[1]



def test_run_folder_index_is_owner_only_and_names_the_files(folder_run, folders, capsys, tmp_path):
    index_path = folder_run / INDEX_NAME
    assert stat.S_IMODE(index_path.stat().st_mode) == 0o600
    index = json.loads(index_path.read_text())
    assert index["data"] == str(folders["data"].resolve())
    files = {entry["image"] for entry in index["images"].values()}
    assert files == {f"images/scan{i}.png" for i in range(8)}
    csv_path = tmp_path / "paths.csv"
    assert main(["evaluate", "--run-dir", str(folder_run), "--with-paths", "--csv", str(csv_path)]) == 0
    with open(csv_path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and list(rows[0])[-1] == "file"
    for row in rows:  # one numbering: the CSV's id and the index agree on the file
        assert row["file"] == index["images"][row["image"]]["image"]
    assert main(["evaluate", "--run-dir", str(folder_run), "--csv", str(tmp_path / "plain.csv")]) == 0
    with open(tmp_path / "plain.csv", newline="") as handle:
        assert "file" not in next(csv.reader(handle))  # paths only when asked


def test_a_changed_image_is_named_by_the_id_the_index_maps_to_its_file(folder_run, folders, capsys):
    index = json.loads((folder_run / INDEX_NAME).read_text())
    changed = folders["data"] / "images" / "scan5.png"
    original = changed.read_bytes()
    pixels = np.asarray(Image.open(changed)).copy()
    pixels[0, 0] = 255 - pixels[0, 0]
    try:
        Image.fromarray(pixels).save(changed)
        assert main(["evaluate", "--run-dir", str(folder_run)]) == 2
        named = re.search(r"image (p\d{3}_i\d{3}) ", error_line(capsys)).group(1)
    finally:
        changed.write_bytes(original)
    assert index["images"][named]["image"] == "images/scan5.png"  # one numbering: the error, the index


@pytest.mark.parametrize("args, expected", [
    (["--ensembles", "0"], "--ensembles must be at least 1"),
    (["--ensembles", "1..x"], "--ensembles 1..x is not a number"),
    (["--support-size", "0,2"], "--support-size must be at least 1"),
    (["--label", "-3"], "--label must be an integer >= 0"),
    (["--class-names", "128"], "--class-names must be comma-separated VALUE=NAME pairs"),
    (["--support-size", "64,128"], "every --support-size (64, 128) is larger than the 7 supports"),
    (["--support", "{nowhere}"], "does not exist"),
])
def test_bad_input_is_one_line_and_exit_2(args, expected, run, folders, capsys, tmp_path):
    args = [arg.replace("{nowhere}", str(tmp_path / "nowhere")) for arg in args]
    assert main(["evaluate", "--run-dir", str(run), "--data", str(folders["data"]), *args]) == 2
    assert expected in error_line(capsys)
