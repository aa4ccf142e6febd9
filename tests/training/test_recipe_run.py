"""The in-context recipe in a run: saved as resolved, checked in one line, kept by a resume."""

from __future__ import annotations

import shutil
from pathlib import Path

from useg.cli import main
from useg.data import recipe
from tiny import RECIPE_OFF as OFF
from tiny import TINY, assert_same_training, error_line, final_state, rewrite_saved_config, train_tiny

def test_a_new_run_saves_the_recipe_it_resolved_and_draws_version_3(tmp_path: Path) -> None:
    config_file = tmp_path / "recipe.yaml"
    config_file.write_text("task_augmentation:\n  label_inversion: 0.75\nin_task_augmentation: off\n")
    state = final_state(train_tiny(tmp_path / "run", 1, "--config", str(config_file), "--synthetic-tasks", "0.5"))
    config = state["config"]
    assert config["task_augmentation"] == {**recipe.settings_from("task", True), "label_inversion": 0.75}
    assert config["in_task_augmentation"] is False and config["synthetic_tasks"] == 0.5
    assert state["sampler_state"]["draw_version"] == 3


def test_bad_recipe_settings_are_one_line_and_leave_nothing_behind(tmp_path: Path, capsys) -> None:
    config_file = tmp_path / "recipe.yaml"
    config_file.write_text("task_augmentation:\n  label_inversion: 1.5\n")
    for extra, words in ((("--config", str(config_file)), "label_inversion"),
                         (("--synthetic-tasks", "1.5"), "--synthetic-tasks must be a fraction from 0 to 1")):
        capsys.readouterr()
        assert main(["train", "--run-dir", str(tmp_path / "run"), *TINY, "--quiet", *extra]) != 0
        assert words in error_line(capsys)
        assert not (tmp_path / "run").exists()


def test_a_resume_keeps_the_recipe_and_refuses_to_change_it(tmp_path: Path, capsys) -> None:
    run = train_tiny(tmp_path / "run", 1, "--synthetic-tasks", "0.5")
    capsys.readouterr()
    assert main(["resume", "--run-dir", str(run), "--epochs", "2", "--quiet", "--task-augmentation", "off"]) != 0
    assert "task_augmentation" in error_line(capsys)
    assert main(["resume", "--run-dir", str(run), "--epochs", "2", "--quiet", "--vis-every", "0"]) == 0
    assert final_state(run)["config"]["synthetic_tasks"] == 0.5


def test_an_old_checkpoint_without_the_recipe_resumes_with_todays_draws(tmp_path: Path) -> None:
    # A checkpoint of a useg before the recipe: no recipe keys, draw version 2. It must resume with
    # the recipe off and draw what it drew, so the run ends bit-identical to an uninterrupted one.
    whole = train_tiny(tmp_path / "whole", 2, *OFF)
    run = Path(shutil.copytree(whole, tmp_path / "run"))
    rewrite_saved_config(run / "checkpoints" / "epoch_001_checkpoint.pt", position={"draw_version": 2},
                         task_augmentation=None, in_task_augmentation=None, synthetic_tasks=None)
    assert main(["resume", "1", "--run-dir", str(run), "--quiet", "--vis-every", "0"]) == 0
    resumed = final_state(run)
    assert resumed["sampler_state"]["draw_version"] == 2 and resumed["config"]["task_augmentation"] is False
    assert_same_training(final_state(whole), resumed)


def test_a_recipe_saved_before_inverted_pairs_resumes_drawing_none(tmp_path: Path) -> None:
    # A run of a useg whose task settings had no `inverted_pairs`: it drew no pairs, and must go on so.
    config_file = tmp_path / "recipe.yaml"
    config_file.write_text("task_augmentation:\n  label_inversion: 0.5\n  inverted_pairs: 0\n")
    whole = train_tiny(tmp_path / "whole", 2, "--config", str(config_file))
    run = Path(shutil.copytree(whole, tmp_path / "run"))
    older = {key: value for key, value in final_state(whole)["config"]["task_augmentation"].items()
             if key != "inverted_pairs"}
    rewrite_saved_config(run / "checkpoints" / "epoch_001_checkpoint.pt", task_augmentation=older)
    assert main(["resume", "1", "--run-dir", str(run), "--quiet", "--vis-every", "0"]) == 0
    resumed = final_state(run)
    assert resumed["config"]["task_augmentation"] == {**older, "inverted_pairs": 0.0}
    assert_same_training(final_state(whole), resumed)
