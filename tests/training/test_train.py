"""End-to-end training: run layout, exact resume across processes, extension, refusals."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from tiny import TINY, assert_same_training, final_state, useg
from useg.cli import main


def test_tiny_run_writes_the_run_layout(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), "--epochs", "2", *TINY, "--quiet"]) == 0
    names = sorted(p.name for p in (run / "checkpoints").glob("*.pt"))
    assert names == ["best_model.pt", "epoch_001_checkpoint.pt", "epoch_002_checkpoint.pt", "latest_checkpoint.pt"]
    state = torch.load(run / "checkpoints" / "latest_checkpoint.pt", weights_only=True)
    assert {"epoch", "model_state_dict", "optimizer_state_dict", "scheduler_state_dict", "history", "rng_state",
            "sampler_state", "config", "versions", "format_version", "created"} <= state.keys()
    assert state["epoch"] == 2 and len(state["history"]["train_loss"]) == 2
    best = torch.load(run / "checkpoints" / "best_model.pt", weights_only=True)
    assert "optimizer_state_dict" not in best and best["epoch"] == best["history"]["best_epoch"]
    assert not {"scheduler_state_dict", "rng_state", "rng_state_per_rank", "sampler_state"} & best.keys()
    [log_path] = (run / "logs").glob("training_*.json")
    log = json.loads(log_path.read_text())
    assert [row["epoch"] for row in log["epochs"]] == [1, 2]
    assert log["history"]["val_dice"] == state["history"]["val_dice"]
    pictures = sorted((run / "visualizations_training").glob("*.png"))
    assert [p.name for p in pictures] == ["epoch_001_batch_000.png", "epoch_002_batch_000.png"]
    assert Image.open(pictures[0]).format == "PNG"
    assert "val Dice" in capsys.readouterr().out


def test_a_failed_background_save_stops_training_at_the_next_step_not_the_next_save(tmp_path, monkeypatch, capsys):
    import useg.training.loop
    from useg.checkpoint import manager as manager_module
    from useg.errors import CheckpointError

    def full_disk(*args, **kwargs):
        raise CheckpointError("not enough space in the test's folder")

    monkeypatch.setattr(manager_module, "publish_state", full_disk)
    steps = []
    real_kill_point = useg.training.loop.kill_point
    monkeypatch.setattr(useg.training.loop, "kill_point", lambda name: (steps.append(name), real_kill_point(name)))
    flags = [*TINY, "--samples-per-epoch", "40", "--quiet", "--vis-every", "0"]  # 20 steps an epoch
    code = main(["train", "--run-dir", str(tmp_path / "run"), "--epochs", "3", *flags])
    assert code == 2
    assert "not enough space in the test's folder" in capsys.readouterr().err
    done = steps.count("step")
    assert 20 <= done < 40, f"{done} steps: the epoch-1 save failed, so epoch 2 should have stopped at once"


def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    args = ["--epochs", "5", *TINY, "--quiet", "--vis-every", "0"]
    assert useg("train", "--run-dir", str(straight), *args).returncode == 0
    # Killed with SIGKILL right after epoch 3 (between the periodic epochs 2 and 4 of 5... and 3 itself).
    died = useg("train", "--run-dir", str(killed), *args, env={"USEG_KILL_AT": "epoch-end:3"})
    assert died.returncode == -9
    # The point means what its name says (and the guide promises): epoch 3 is saved, no save is cut.
    assert json.loads((killed / "checkpoints" / "latest_checkpoint.pt.json").read_text())["epoch"] == 3
    assert not [p.name for p in (killed / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    resumed = useg("resume", "latest", "--run-dir", str(killed), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_training(final_state(straight), final_state(killed))
    assert final_state(killed)["history"]["resumed_at"] == [3]


def test_ctrl_c_mid_epoch_saves_position_and_resume_is_exact(tmp_path):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    args = ["--epochs", "2", *TINY, "--quiet", "--vis-every", "0"]
    assert useg("train", "--run-dir", str(straight), *args).returncode == 0
    interrupted = useg("train", "--run-dir", str(stopped), *args, env={"USEG_KILL_AT": "step:4:SIGINT"})
    assert interrupted.returncode == 130, interrupted.stderr
    assert "--resume latest" in interrupted.stderr
    position = final_state(stopped)["sampler_state"]
    assert (final_state(stopped)["epoch"], position["batch_index"]) == (1, 1)
    assert useg("train", "--run-dir", str(stopped), "--resume", "--quiet").returncode == 0
    assert_same_training(final_state(straight), final_state(stopped))


def test_resume_from_periodic_truncates_history_and_extension_continues(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), "--epochs", "5", *TINY, "--quiet", "--vis-every", "0"]) == 0
    assert main(["resume", "2", "--run-dir", str(run), "--quiet"]) == 0
    state = final_state(run)
    assert state["epoch"] == 5 and len(state["history"]["train_loss"]) == 5
    assert main(["resume", "latest", "--run-dir", str(run), "--epochs", "10", "--quiet"]) == 0
    state = final_state(run)
    assert state["epoch"] == 10 and len(state["history"]["val_dice"]) == 10
    periodic = sorted(p.name for p in (run / "checkpoints").glob("epoch_*.pt"))
    assert periodic == [f"epoch_{n:03d}_checkpoint.pt" for n in (1, 2, 3, 4, 5, 6, 8, 10)]
    [log_path] = (run / "logs").glob("training_*.json")
    sessions = json.loads(log_path.read_text())["sessions"]
    assert [s["resumed_from"] for s in sessions] == [None, "epoch_002_checkpoint.pt", "latest_checkpoint.pt"]
    assert sessions[2]["config_changes"]["epochs"] == [5, 10]


def test_resume_with_other_widths_is_refused_naming_the_key(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), "--epochs", "1", *TINY, "--quiet", "--vis-every", "0"]) == 0
    assert main(["resume", "--run-dir", str(run), "--widths", "16,16"]) == 2
    err = capsys.readouterr().err.strip()
    assert "widths" in err and len(err.splitlines()) == 1


def test_training_into_a_used_run_folder_is_refused_until_told(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--run-dir", str(run), "--epochs", "1", *TINY, "--quiet", "--vis-every", "0"]
    assert main(args) == 0
    before = (run / "checkpoints" / "latest_checkpoint.pt").read_bytes()
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    assert (run / "checkpoints" / "latest_checkpoint.pt").read_bytes() == before
    assert main(args + ["--overwrite"]) == 0
    [kept] = run.glob("checkpoints_replaced_*")
    assert (kept / "latest_checkpoint.pt").read_bytes() == before


def test_resume_with_nothing_to_resume_is_one_clear_error(tmp_path, capsys):
    assert main(["resume", "--run-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no checkpoint") and len(err.splitlines()) == 1


def test_every_file_written_loads_with_weights_only(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), "--epochs", "2", *TINY, "--quiet", "--vis-every", "0"]) == 0
    for path in (run / "checkpoints").glob("*.pt"):
        assert isinstance(torch.load(path, weights_only=True), dict)


@pytest.mark.parametrize("flags, words", [
    (["--data", "/nonexistent/folder"], "/nonexistent/folder"),
    (["--image-size", "31"], "--image-size"),
])
def test_bad_training_input_is_one_line_and_exit_2(tmp_path, capsys, flags, words):
    assert main(["train", "--run-dir", str(tmp_path / "run"), *TINY, *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1
