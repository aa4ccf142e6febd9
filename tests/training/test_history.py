"""The training log, history table, curves and prediction pictures a researcher reads."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from rich.console import Console

from tiny import assert_rate_matches
from useg.cli import main
from useg.training.history import append_epoch, epoch_rows, history_table, new_history, plot_curves, set_best

TINY = ["--widths", "8,8", "--image-size", "32", "--support-size", "2", "--batch-size", "2",
        "--samples-per-epoch", "6", "--vis-count", "2", "--num-threads", "1", "--quiet"]
EPOCH_FIELDS = {"epoch", "train_loss", "val_dice", "val_dice_per_class", "val_dice_std", "val_dice_min",
                "val_dice_max", "lr", "epoch_time_s", "samples_per_s", "checkpoint_time_s", "checkpoints_written",
                "samples_trained"}


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory):
    """3 epochs, then resumed to 5: one log that spans both sessions."""
    run = tmp_path_factory.mktemp("history") / "run"
    assert main(["train", "--run-dir", str(run), "--epochs", "3", *TINY]) == 0
    assert main(["resume", "--run-dir", str(run), "--epochs", "5", "--vis-every", "2", "--quiet"]) == 0
    return run


def read_only_log(run):
    [path] = (run / "logs").glob("training_*.json")
    assert path.name[len("training_"):-len(".json")].replace("_", "").isdigit()
    return json.loads(path.read_text())


def test_log_schema_and_history_survive_resume(resumed_run):
    log = read_only_log(resumed_run)
    assert {"config", "environment", "sessions", "epochs", "history", "data"} <= log.keys()
    assert {"torch", "python", "device", "threads"} <= log["environment"].keys()
    assert [row["epoch"] for row in log["epochs"]] == [1, 2, 3, 4, 5]
    assert all(EPOCH_FIELDS <= row.keys() for row in log["epochs"])
    history = log["history"]
    assert len(history["train_loss"]) == len(history["val_dice"]) == 5
    assert history["best_val_dice"] == max(history["val_dice"])
    assert history["val_dice"][history["best_epoch"] - 1] == history["best_val_dice"]
    assert [s["start_epoch"] for s in log["sessions"]] == [0, 3]
    assert log["sessions"][1]["resumed_from"] == "latest_checkpoint.pt"
    assert log["sessions"][1]["config_changes"]["epochs"] == [3, 5]
    assert "latest_checkpoint.pt" in log["epochs"][0]["checkpoints_written"]
    first = log["epochs"][0]
    assert set(first["val_dice_per_class"]) == {"cyst", "septated_cyst", "solid"}
    for row in log["epochs"]:  # whole epochs, before and after the resume: samples/s is 6 over the epoch's time
        assert row["samples_trained"] == 6
        assert_rate_matches(row)
    assert first["val_dice_min"] <= first["val_dice"] <= first["val_dice_max"]


def test_log_never_names_patients(resumed_run):
    text = json.dumps(read_only_log(resumed_run))
    assert "patient_name" not in text


def test_prediction_pictures_are_pngs_of_the_expected_size(resumed_run):
    pictures = sorted(p.name for p in (resumed_run / "visualizations_training").glob("*.png"))
    # Every epoch in the first session, every 2nd (epoch 4) after the resume.
    assert pictures == [f"epoch_{e:03d}_batch_{b:03d}.png" for e in (1, 2, 3, 4) for b in (0, 1)]
    with Image.open(resumed_run / "visualizations_training" / pictures[0]) as image:
        assert image.format == "PNG" and image.size == (720, 400)


def test_history_command_prints_table_json_and_curves(resumed_run, capsys):
    assert main(["history", "--run-dir", str(resumed_run)]) == 0
    out = capsys.readouterr().out
    assert "* best" in out and "resumed" in out
    with Image.open(resumed_run / "training_curves.png") as image:
        assert image.format == "PNG"
    assert main(["history", "--run-dir", str(resumed_run), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [row["epoch"] for row in data["epochs"]] == [1, 2, 3, 4, 5]
    assert data["resumed_at"] == [3]


def test_history_of_a_missing_run_is_one_clear_error(tmp_path, capsys):
    assert main(["history", "--run-dir", str(tmp_path / "nope")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_table_marks_best_epoch():
    history = new_history()
    for loss, dice in ((0.9, 0.2), (0.7, 0.6), (0.6, 0.5)):
        append_epoch(history, {"train_loss": loss, "val_dice": dice, "lr": 1e-4, "epoch_time_s": 1.0})
    assert history["best_epoch"] is None  # the checkpoint manager decides (test_best_after_resume.py)
    set_best(history, 0.6, 2)
    console = Console(width=120, record=True)
    console.print(history_table(history))
    lines = [line for line in console.export_text().splitlines() if "* best" in line]
    assert len(lines) == 1 and "0.6000" in lines[0]
    assert [row["epoch"] for row in epoch_rows(history)] == [1, 2, 3]


def test_curves_png_is_written(tmp_path):
    history = new_history()
    for dice in (0.1, 0.3):
        append_epoch(history, {"train_loss": 1 - dice, "val_dice": dice})
    set_best(history, 0.3, 2)
    with Image.open(plot_curves(history, tmp_path / "curves.png")) as image:
        assert image.format == "PNG" and image.size == (1000, 400)
