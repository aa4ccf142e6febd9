"""After a resume from an older epoch, the best the screen names is the one best_model.pt holds.

A run of 8 epochs reaches its best late; `useg resume 3` with a lower --lr starts a branch that
never gets there. best_model.pt keeps the better weights of the epochs the run has left (it is
replaced only by a strictly better val Dice), so the Done line, every epoch line,
`checkpoints info best_model.pt` and `evaluate best` must all name that file's epoch and Dice.
"""

from __future__ import annotations

import json
import re

import pytest
from rich.console import Console

from tiny import RECIPE_OFF, TINY
from useg.cli import main
from useg.training.history import append_epoch, history_table, new_history, set_best

# A periodic file for every one of the 8 epochs, so that `useg resume 3` has epoch_003 to start from.
EVERY_EPOCH = "periodic_percentages: [12, 25, 37, 50, 62, 75, 87, 100]\n"
DONE = re.compile(r"^Done: .*best val Dice (\d\.\d{4}) at epoch (\d+)", re.M)
EPOCH_LINE = re.compile(r"^epoch +(\d+)/\d+ .*val Dice \d\.\d{4}( \*best\*| \(best (\d\.\d{4}) @ (\d+)\))", re.M)


def run_cli(capsys, *args: str) -> str:
    capsys.readouterr()
    assert main(list(args)) == 0
    return capsys.readouterr().out


def test_the_screen_best_model_and_evaluate_name_the_same_best_after_resuming_an_older_epoch(tmp_path, capsys):
    run, config = tmp_path / "run", tmp_path / "every_epoch.yaml"
    config.write_text(EVERY_EPOCH)
    flags = [*TINY, "--quiet", "--vis-every", "0"]
    run_cli(capsys, "train", "--run-dir", str(run), "--epochs", "8", "--config", str(config), "--lr", "3e-3", *flags,
            *RECIPE_OFF)  # the scenario (a best reached late) was built on these dynamics
    resumed = run_cli(capsys, "resume", "3", "--run-dir", str(run), "--lr", "3e-4")  # not --quiet: the Done line

    info = json.loads(run_cli(capsys, "checkpoints", "info", str(run / "checkpoints" / "best_model.pt"), "--json"))
    [log_path] = (run / "logs").glob("training_*.json")
    log = json.loads(log_path.read_text())
    # The scenario the test is about: the branch after epoch 3 never reaches the best of the epochs it left.
    assert info["epoch"] > 3 and max(log["history"]["val_dice"][3:]) < info["val_dice"], (info, log["history"])

    [(printed_dice, printed_epoch)] = DONE.findall(resumed)
    assert (int(printed_epoch), float(printed_dice)) == (info["epoch"], round(info["val_dice"], 4)), resumed
    assert (log["history"]["best_epoch"], log["history"]["best_val_dice"]) == (info["epoch"], info["val_dice"])

    # Every epoch line after the resume: *best* exactly when best_model.pt was written, else the file's best.
    written = {row["epoch"]: "best_model.pt" in row["checkpoints_written"] for row in log["epochs"]}
    lines = EPOCH_LINE.findall(resumed)
    assert [int(epoch) for epoch, *_ in lines] == [4, 5, 6, 7, 8], resumed
    for epoch, mark, best_dice, best_epoch in lines:
        assert (mark == " *best*") == written[int(epoch)], (epoch, mark)
        if mark != " *best*":
            assert (int(best_epoch), float(best_dice)) == (info["epoch"], round(info["val_dice"], 4)), mark

    evaluated = json.loads(run_cli(capsys, "evaluate", "best", "--run-dir", str(run), "--split", "val", "--json"))
    assert evaluated["checkpoint"].endswith("best_model.pt") and evaluated["epoch"] == info["epoch"]
    assert evaluated["mean_dice"] == pytest.approx(info["val_dice"], abs=1e-6)


def test_the_table_stars_no_row_when_the_best_is_an_epoch_of_a_branch_the_run_left():
    history = new_history()
    for dice in (0.2, 0.3, 0.25):
        append_epoch(history, {"train_loss": 0.5, "val_dice": dice})
    set_best(history, 0.9, 3)  # best_model.pt holds epoch 3 of the epochs before `useg resume 2`
    console = Console(width=120, record=True)
    console.print(history_table(history))
    assert "* best" not in console.export_text()
