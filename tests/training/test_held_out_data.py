"""--held-out-data scored at every validation (issue 27): held_out_dice in the epoch line, the history, the
JSON log, `useg history`, the curves and the trackers' scalars; --best-metric held_out_dice choosing
best_model.pt; a run without held-out data recorded as before."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.medical_files import write_synthetic_folder
from tests.tiny import TINY, error_line, final_state, train_tiny
from useg.checkpoint import read_metadata
from useg.cli import main
from useg.config import TrainConfig
from useg.data.collection import load_held_out
from useg.model import build_universeg
from useg.training import loop
from useg.training.history import EPOCH_KEYS, plot_curves
from useg.training.setup import held_out_validation_tasks
from useg.training.trackers import epoch_metrics, steps_to_log
from useg.training.validation import validate

QUIET = ["--quiet", "--vis-every", "0"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Two training datasets and a third, dissimilar in size, held out."""
    root = tmp_path_factory.mktemp("held_out_data")
    return {"a": write_synthetic_folder(root / "a", 10, seed=3, size=(40, 26)),
            "b": write_synthetic_folder(root / "b", 10, seed=4, size=(30, 30)),
            "c": write_synthetic_folder(root / "c", 10, seed=5, size=(36, 36))}


def datasets(folders) -> list[str]:
    return ["--data", str(folders["a"]), "--data", str(folders["b"]), "--held-out-data", str(folders["c"])]


def train(run, epochs: int, *extra: str) -> None:
    assert main(["train", "--run-dir", str(run), "--epochs", str(epochs), *TINY, "--vis-every", "0", *extra]) == 0


def latest_log(run) -> dict:
    [path] = (run / "logs").glob("training_*.json")
    return json.loads(path.read_text())


def test_held_out_dice_is_scored_and_shown_everywhere(folders, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    train(run, 2, *datasets(folders))
    out = capsys.readouterr().out
    assert "val Dice before training: " in out and ", held-out Dice " in out
    epoch_lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == 2 and all("  held-out Dice 0." in line for line in epoch_lines)
    assert "Done: 2 epochs, best val Dice" in out  # the best is still chosen by val Dice

    history = final_state(run)["history"]
    held_out = history["held_out_dice"]
    assert len(held_out) == 2 and all(0.0 <= value <= 1.0 for value in held_out)
    assert history["held_out_dice_per_dataset"] == [{"c": value} for value in held_out]  # one held-out dataset
    assert history["initial_held_out_dice"] is not None
    for per_class, per_dataset in zip(history["val_dice_per_class"], history["val_dice_per_dataset"]):
        assert per_dataset == {name: per_class[f"{name}/foreground"] for name in ("a", "b")}  # one class each
    assert history["best_val_dice"] == max(history["val_dice"]) and "best_metric" not in history

    # The JSON log has it per epoch, as the checkpoint's history.
    log = latest_log(run)
    assert [row["held_out_dice"] for row in log["epochs"]] == held_out == log["history"]["held_out_dice"]

    # The number is the held-out dataset's own Dice: c's val patients as targets, its train patients as supports.
    state = final_state(run)
    model = build_universeg((8, 8))
    model.load_state_dict(state["model_state_dict"])
    [held] = load_held_out([str(folders["c"])], image_size=32, seed=0, saved=state["split"]["held_out"])
    tasks = held_out_validation_tasks(held, TrainConfig(support_size=2, seed=0))
    assert validate(model, held.dataset, tasks, 4, torch.device("cpu"))["val_dice"] == pytest.approx(held_out[-1])

    # useg history: a held-out column in the table, the numbers in its JSON.
    assert main(["history", "--run-dir", str(run)]) == 0
    assert "held-out Dice" in capsys.readouterr().out
    assert main(["history", "--run-dir", str(run), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [row["held_out_dice"] for row in shown["epochs"]] == held_out and "best_metric" not in shown

    # The curves picture has a held-out line of its own.
    drawn = []
    monkeypatch.setattr("useg.viz.save_figure", lambda fig, path, **_: drawn.append(fig) or path)
    plot_curves(history, tmp_path / "curves.png")
    labels = [line.get_label() for line in drawn[0].axes[1].get_lines()]
    assert "held-out Dice" in labels and "val Dice" in labels

    # The trackers' scalars (TensorBoard, MLflow, W&B log these): held_out_dice from step 0 on.
    steps = dict(steps_to_log(history, 0, None))
    assert steps[0]["held_out_dice"] == history["initial_held_out_dice"]
    assert steps[2]["held_out_dice"] == held_out[1] and steps[2]["held_out_dice_per_dataset/c"] == held_out[1]
    assert steps[2]["val_dice_per_dataset/a"] == history["val_dice_per_dataset"][1]["a"]


def test_a_run_without_held_out_data_records_what_it_did_before(tmp_path, capsys):
    run = train_tiny(tmp_path / "run", 2)
    state = final_state(run)
    history = state["history"]
    for key in ("held_out_dice", "held_out_dice_per_dataset", "val_dice_per_dataset"):
        assert history[key] == [None, None], key  # the lists every history has, and no values
    new_keys = {"initial_held_out_dice", "initial_held_out_dice_per_dataset", "best_metric", "best_value"}
    assert not new_keys & set(history)
    old_keys = EPOCH_KEYS[:EPOCH_KEYS.index("samples_trained") + 1]
    assert all(len(history[key]) == 2 for key in old_keys)
    assert all(value is not None for key in ("train_loss", "val_dice", "val_dice_per_class", "lr")
               for value in history[key])
    assert history["best_val_dice"] == max(history["val_dice"])
    assert read_metadata(run / "checkpoints" / "best_model.pt")["metrics"].keys() == {"val_dice", "train_loss"}
    assert "held_out" not in state["split"]
    assert all("held_out" not in name for _, metrics in steps_to_log(history, 0, None) for name in metrics)
    assert epoch_metrics({"epoch": 1, **{key: history[key][0] for key in EPOCH_KEYS}}).keys().isdisjoint(
        {"held_out_dice", "val_dice_per_dataset"})

    capsys.readouterr()
    assert main(["history", "--run-dir", str(run)]) == 0
    assert "held-out" not in capsys.readouterr().out


def test_best_metric_held_out_dice_chooses_best_model_by_held_out_dice(folders, tmp_path, capsys):
    run = tmp_path / "run"
    train(run, 3, *datasets(folders), "--best-metric", "held_out_dice")
    out = capsys.readouterr().out
    history = final_state(run)["history"]
    held_out = history["held_out_dice"]
    best_epoch = int(np.argmax(held_out)) + 1  # the first of equal values: a tie is not strictly better
    assert history["best_epoch"] == best_epoch and history["best_value"] == max(held_out)
    assert history["best_metric"] == "held_out_dice" and history["best_val_dice"] is None  # never a held-out value
    sidecar = read_metadata(run / "checkpoints" / "best_model.pt")
    assert sidecar["epoch"] == best_epoch and sidecar["metrics"]["held_out_dice"] == max(held_out)
    assert f"Done: 3 epochs, best held-out Dice {max(held_out):.4f} at epoch {best_epoch}" in out
    assert "best val Dice" not in out

    assert main(["history", "--run-dir", str(run), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["best_metric"], shown["best_value"], shown["best_epoch"]) == ("held_out_dice", max(held_out),
                                                                                best_epoch)
    assert main(["history", "--run-dir", str(run)]) == 0
    [starred] = [line for line in capsys.readouterr().out.splitlines() if "* best" in line]
    assert starred.split("│")[1].strip() == str(best_epoch)

    assert main(["checkpoints", "info", str(run / "checkpoints" / "latest_checkpoint.pt"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["best_metric"], info["best_value"], info["best_epoch"]) == ("held_out_dice", max(held_out),
                                                                             best_epoch)
    assert main(["checkpoints", "info", str(run / "checkpoints" / "latest_checkpoint.pt")]) == 0
    assert f"held-out Dice {max(held_out):.4f} at epoch {best_epoch}" in capsys.readouterr().out


def test_the_best_follows_held_out_dice_where_val_dice_disagrees(folders, tmp_path, monkeypatch):
    """Held-out Dice scripted to rank the epochs opposite to val Dice: best_model.pt is the epoch of the
    lowest val Dice, the best held-out one."""
    seen: list[float] = []
    real_validate = loop.validate

    def validate_and_remember(*args, **kwargs):
        record = real_validate(*args, **kwargs)
        seen.append(record["val_dice"])
        return record

    monkeypatch.setattr(loop, "validate", validate_and_remember)
    monkeypatch.setattr(loop, "score_held_out", lambda *args: {"held_out_dice": 1.0 - seen[-1],
                                                               "held_out_dice_per_dataset": {"c": 1.0 - seen[-1]}})
    run = tmp_path / "run"
    train(run, 3, *datasets(folders), "--best-metric", "held_out_dice", "--quiet")
    history = final_state(run)["history"]
    val = history["val_dice"]
    assert len(set(val)) == 3
    assert history["best_epoch"] == int(np.argmin(val)) + 1 != int(np.argmax(val)) + 1
    assert read_metadata(run / "checkpoints" / "best_model.pt")["epoch"] == history["best_epoch"]


def test_best_metric_held_out_dice_without_held_out_data_is_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), "--epochs", "1", *TINY, *QUIET,
                 "--best-metric", "held_out_dice"]) != 0
    assert "--held-out-data" in error_line(capsys)
    assert not run.exists()


def test_resume_continues_the_held_out_numbers(folders, tmp_path):
    """A 2-epoch run resumed to 3 keeps its 2 epochs' held-out numbers and adds a third; its best (by held-out
    Dice) is the manager's best_model.pt."""
    run = tmp_path / "run"
    train(run, 2, *datasets(folders), "--best-metric", "held_out_dice", *QUIET)
    before = final_state(run)["history"]
    assert main(["resume", "--run-dir", str(run), "--epochs", "3", "--quiet"]) == 0
    after = final_state(run)["history"]
    assert len(after["held_out_dice"]) == 3 and after["held_out_dice"][:2] == before["held_out_dice"]
    assert after["held_out_dice_per_dataset"][:2] == before["held_out_dice_per_dataset"]
    assert after["initial_held_out_dice"] == before["initial_held_out_dice"]
    assert after["best_metric"] == "held_out_dice" and after["best_val_dice"] is None
    assert after["best_value"] == max(after["held_out_dice"])
    assert after["best_epoch"] == int(np.argmax(after["held_out_dice"])) + 1
    assert read_metadata(run / "checkpoints" / "best_model.pt")["epoch"] == after["best_epoch"]


def test_resuming_an_epoch_again_gives_the_same_held_out_numbers(folders, tmp_path):
    """`useg resume 2` of a 3-epoch run trains epoch 3 again: the same held-out Dice, and the best stays the
    one best_model.pt holds."""
    run = tmp_path / "run"
    train(run, 3, *datasets(folders), "--best-metric", "held_out_dice", *QUIET)
    first = final_state(run)["history"]
    assert main(["resume", "2", "--run-dir", str(run), "--quiet"]) == 0
    again = final_state(run)["history"]
    for key in ("held_out_dice", "held_out_dice_per_dataset", "val_dice", "val_dice_per_dataset", "best_epoch",
                "best_value", "best_metric"):
        assert again[key] == first[key], key
    assert again["resumed_at"] == [2]


def test_held_out_tasks_keep_targets_out_of_their_supports_and_draw_supports_from_train_patients(folders):
    [held] = load_held_out([str(folders["c"])], image_size=32, seed=0)
    tasks = held_out_validation_tasks(held, TrainConfig(support_size=2, seed=0))
    assert tasks
    train, val = set(held.split.train.tolist()), set(held.split.val.tolist())
    patients = held.dataset.patients
    for task in tasks:
        supports = task.supports.tolist()
        assert task.target in val and task.target not in supports
        assert set(supports) <= train  # never a val or test patient's image
        assert patients[task.target] not in {patients[index] for index in supports}


def test_runs_compare_shows_the_held_out_dice_scored_while_training(folders, tmp_path, capsys):
    held, plain = tmp_path / "held", tmp_path / "plain"
    train(held, 2, *datasets(folders), "--best-metric", "held_out_dice", *QUIET)
    train(plain, 2, "--data", str(folders["a"]), *QUIET)
    capsys.readouterr()
    assert main(["runs", "compare", str(held), str(plain), "--out", str(tmp_path / "c.png"), "--json"]) == 0
    rows = {row["run"]: row for row in json.loads(capsys.readouterr().out)["runs"]}
    history = final_state(held)["history"]
    best = history["best_epoch"]
    assert rows["held"]["held_out_dice_at_best"] == history["held_out_dice"][best - 1] == rows["held"]["best_value"]
    assert rows["held"]["held_out_dice_last"] == history["held_out_dice"][-1]
    assert (rows["held"]["best_metric"], rows["held"]["best_val_dice"]) == ("held_out_dice", None)
    assert rows["held"]["held_out_dice"] is None  # `useg evaluate`'s held-out CSV: not written
    assert (rows["plain"]["best_metric"], rows["plain"]["held_out_dice_at_best"]) == ("val_dice", None)
    assert rows["plain"]["best_value"] == rows["plain"]["best_val_dice"] is not None

    assert main(["runs", "compare", str(held), str(plain), "--out", str(tmp_path / "c.png")]) == 0
    table = capsys.readouterr().out
    assert "Dice at" in table and f"{rows['held']['held_out_dice_at_best']:.4f}" in table
    assert "--best-metric held_out_dice" in table  # the caption says what chose the held-out run's best


def test_no_dataset_folder_reaches_the_trackers_parameters(tmp_path):
    from types import SimpleNamespace

    from useg.training.trackers import describe_run

    config = {"lr": 1e-4, "data": [str(tmp_path / "lab" / "a"), {"path": str(tmp_path / "b"), "weight": 2.0}],
              "held_out_data": [str(tmp_path / "clinic" / "mri")], "best_metric": "held_out_dice"}
    about = describe_run(SimpleNamespace(root=tmp_path / "run"), {"config": config, "data": {}})
    assert about.params["lr"] == 1e-4 and about.params["best_metric"] == "held_out_dice"
    assert str(tmp_path) not in json.dumps(about.params)
