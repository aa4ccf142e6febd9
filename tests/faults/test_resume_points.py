"""A valid resume point through a run's whole life: cleaning after bit rot, going back to an earlier
epoch, divergence, extending a run, moved data, a clean killed half-way."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from faultkit import RUN_FLAGS, TINY, assert_every_checkpoint_verifies, checkpoints, final_state
from test_bad_inputs import write_pairs
from useg.checkpoint import resolve_checkpoint, verify_checkpoint
# Settings that make the tiny model's loss NaN within a step or two (dice+bce with an absurd lr).
DIVERGING = ["--loss", "dice+bce", "--lr", "1e6"]


def flip_byte_in_tensor_data(path: Path) -> None:
    """One flipped byte near the middle of the file: same size, same mtime resolution aside, other bytes."""
    with open(path, "r+b") as handle:
        handle.seek(os.path.getsize(path) // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))


def periodic_names(run: Path) -> set[str]:
    return {p.name for p in checkpoints(run).glob("epoch_*_checkpoint.pt")}


def strict_json(text: str):
    def refuse(constant):
        raise ValueError(f"bare {constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


# --- cleaning ------------------------------------------------------------------------------------

def test_clean_after_the_newest_file_rots_keeps_valid_resume_points(cli, finished_run, ledger):
    # epoch_004 and latest share their bytes (a hard link): one flipped byte hits both names.
    flip_byte_in_tensor_data(checkpoints(finished_run) / "epoch_004_checkpoint.pt")
    ledger.faults["bit rot of the newest file, then clean --keep 1"] += 1
    dry = cli("checkpoints", "clean", "--keep", "1", "--run-dir", finished_run, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    planned = strict_json(dry.stdout)
    cleaned = cli("checkpoints", "clean", "--keep", "1", "--run-dir", finished_run)
    assert cleaned.returncode == 0, cleaned.stderr
    assert "latest_checkpoint.pt is corrupt" in cleaned.stdout and "resume uses epoch_003" in cleaned.stdout
    assert "left epoch_004_checkpoint.pt in place" in cleaned.stdout
    # The newest valid state (3) and its fallback (2) stay; the rotten file is left, not counted.
    assert periodic_names(finished_run) == {"epoch_002_checkpoint.pt", "epoch_003_checkpoint.pt",
                                           "epoch_004_checkpoint.pt"}
    assert [r["name"] for r in planned["removed"]] == ["epoch_001_checkpoint.pt"]
    assert planned["resume_point"] == "epoch_003_checkpoint.pt" and planned["fallback"] == "epoch_002_checkpoint.pt"
    assert resolve_checkpoint(checkpoints(finished_run), "latest", warn=lambda m: None).name == "epoch_003_checkpoint.pt"
    resumed = cli("resume", "latest", "--run-dir", finished_run, "--epochs", "4")
    assert resumed.returncode == 0, resumed.stderr


def test_clean_counts_a_hard_linked_twin_of_latest_as_one_state(cli, finished_run):
    cleaned = cli("checkpoints", "clean", "--keep", "1", "--run-dir", finished_run, "--json")
    plan = strict_json(cleaned.stdout)
    # epoch_004 is latest's own bytes, so it is no backup: epoch_003 stays as the fallback.
    assert periodic_names(finished_run) == {"epoch_003_checkpoint.pt", "epoch_004_checkpoint.pt"}
    assert plan["fallback"] == "epoch_003_checkpoint.pt"
    listed = strict_json(cli("checkpoints", "list", "--run-dir", finished_run, "--json").stdout)
    twins = {row["name"] for row in listed if row["same_as_latest"]}
    assert twins == {"epoch_004_checkpoint.pt"}
    table = cli("checkpoints", "list", "--run-dir", finished_run).stdout
    assert "same file as latest" in table


def test_list_hashes_files_so_a_same_size_flip_is_never_shown_valid(cli, finished_run):
    listed = strict_json(cli("checkpoints", "list", "--run-dir", finished_run, "--json").stdout)
    assert all(r["valid"] for r in listed)  # copied with its file times: the trainer's hashes still hold
    (checkpoints(finished_run) / ".verified.json").unlink()
    listed = strict_json(cli("checkpoints", "list", "--run-dir", finished_run, "--json").stdout)
    assert {r["status"] for r in listed} == {"unchecked"}  # never hashed as far as this folder knows
    assert cli("checkpoints", "verify", "--run-dir", finished_run).returncode == 0  # hashes and remembers
    listed = strict_json(cli("checkpoints", "list", "--run-dir", finished_run, "--json").stdout)
    assert all(r["valid"] for r in listed)
    flip_byte_in_tensor_data(checkpoints(finished_run) / "epoch_002_checkpoint.pt")
    listed = strict_json(cli("checkpoints", "list", "--run-dir", finished_run, "--json").stdout)
    row = next(r for r in listed if r["name"] == "epoch_002_checkpoint.pt")
    assert row["valid"] is False and row["status"] == "unchecked"
    assert all(verify_checkpoint(r["path"]).ok for r in listed if r["valid"])
    verified = strict_json(cli("checkpoints", "verify", "--run-dir", finished_run, "--json").stdout)
    assert [r["name"] for r in verified if not r["valid"]] == ["epoch_002_checkpoint.pt"]


def test_a_run_just_trained_lists_valid_without_hashing_again(cli, tmp_path):
    run = tmp_path / "run"
    assert cli("train", "--run-dir", run, *RUN_FLAGS, "--epochs", "2").returncode == 0
    listed = strict_json(cli("checkpoints", "list", "--run-dir", run, "--json").stdout)
    assert listed and all(r["valid"] for r in listed), [(r["name"], r["reason"]) for r in listed]


def test_a_clean_killed_between_file_and_sidecar_is_tidied_by_the_next_command(cli, finished_run):
    # What a kill -9 between the two unlinks of a clean leaves: a sidecar without its file.
    (checkpoints(finished_run) / "epoch_001_checkpoint.pt").unlink()
    assert cli("checkpoints", "verify", "--run-dir", finished_run).returncode == 1
    assert cli("checkpoints", "clean", "--keep", "3", "--run-dir", finished_run).returncode == 0
    assert not (checkpoints(finished_run) / "epoch_001_checkpoint.pt.json").exists()
    assert cli("checkpoints", "verify", "--run-dir", finished_run).returncode == 0


def test_a_sidecar_field_of_the_wrong_type_is_shown_as_unknown_not_a_crash(cli, finished_run):
    sidecar = checkpoints(finished_run) / "epoch_002_checkpoint.pt.json"
    meta = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**meta, "val_dice": "0.5", "epoch": "two", "best_val_dice": [1]}))
    for command in (["checkpoints", "list"], ["checkpoints", "list", "--json"], ["checkpoints", "latest"]):
        result = cli(*command, "--run-dir", finished_run)
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    info = cli("checkpoints", "info", checkpoints(finished_run) / "epoch_002_checkpoint.pt")
    assert info.returncode == 0, info.stderr


# --- going back to an earlier epoch ---------------------------------------------------------------

def test_going_back_to_an_earlier_epoch_leaves_the_old_branch_out_of_fallback_and_clean(cli, finished_run):
    back = cli("resume", "2", "--run-dir", finished_run, "--epochs", "3")  # writes a new epoch_003 and latest
    assert back.returncode == 0, back.stderr
    # The new epoch_003 is latest's twin: one flip damages both, and the old epoch_004 is left over.
    flip_byte_in_tensor_data(checkpoints(finished_run) / "latest_checkpoint.pt")
    warnings: list[str] = []
    chosen = resolve_checkpoint(checkpoints(finished_run), "latest", warn=warnings.append)
    assert chosen.name == "epoch_002_checkpoint.pt", warnings
    listed = strict_json(cli("checkpoints", "list", "--run-dir", finished_run, "--json").stdout)
    assert {r["name"] for r in listed if r["abandoned"]} == {"epoch_004_checkpoint.pt"}
    assert "abandoned branch" in cli("checkpoints", "list", "--run-dir", finished_run).stdout
    plan = strict_json(cli("checkpoints", "clean", "--keep", "1", "--dry-run", "--json",
                           "--run-dir", finished_run).stdout)
    assert "epoch_004_checkpoint.pt" in {r["name"] for r in plan["removed"]}
    assert plan["resume_point"] == "epoch_002_checkpoint.pt"


# --- divergence ----------------------------------------------------------------------------------

def test_divergence_stops_before_anything_is_written_and_says_how_to_go_on(cli, finished_run, ledger):
    before = {p.name: p.read_bytes() for p in checkpoints(finished_run).glob("*.pt*")}
    failed = cli("resume", "latest", "--run-dir", finished_run, "--epochs", "6", *DIVERGING)
    ledger.faults["divergence (NaN loss) after a resume"] += 1
    assert failed.returncode == 3, failed.stderr
    [line] = failed.error_lines
    assert "diverged in epoch 5" in line and "latest_checkpoint.pt still holds the last finite state" in line
    assert "useg resume latest" in line and "--lr" in line
    assert any("no longer as originally planned" in w for w in failed.stderr.splitlines()), failed.stderr
    after = {p.name: p.read_bytes() for p in checkpoints(finished_run).glob("*.pt*")}
    assert after == before  # no NaN state became latest, periodic or best
    for log in (finished_run / "logs").glob("training_*.json"):
        strict_json(log.read_text())


def test_divergence_in_the_first_epoch_writes_no_checkpoint_and_no_best(cli, tmp_path):
    run = tmp_path / "run"
    failed = cli("train", "--run-dir", run, "--epochs", "2", *TINY, "--quiet", "--vis-every", "0", *DIVERGING)
    assert failed.returncode == 3, failed.stderr
    [line] = failed.error_lines
    assert "no checkpoint was written" in line and "useg train" in line
    assert not list(checkpoints(run).glob("*.pt"))


def test_a_non_finite_state_is_refused_by_the_writer_and_latest_keeps_the_last_finite_one(tmp_path):
    from useg.checkpoint import CheckpointManager
    from useg.errors import DivergedError

    with CheckpointManager(tmp_path, total_epochs=3, warn=lambda m: None) as manager:
        manager.save({"model_state_dict": {"w": torch.ones(3)}}, epoch=1, val_dice=0.5)
        manager.wait()
        manager.save({"model_state_dict": {"w": torch.tensor([1.0, float("nan"), 1.0])}}, epoch=2, val_dice=0.0)
        with pytest.raises(DivergedError, match="model_state_dict.w holds NaN or inf"):
            manager.wait()
    state = torch.load(tmp_path / "latest_checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and torch.isfinite(state["model_state_dict"]["w"]).all()
    assert not (tmp_path / "epoch_002_checkpoint.pt").exists()
    assert torch.load(tmp_path / "best_model.pt", weights_only=True)["epoch"] == 1


# --- the schedule of an extended or retuned run ---------------------------------------------------

def lrs(run: Path) -> list[float]:
    return final_state(run)["history"]["lr"]


def test_an_extended_run_has_the_lr_of_a_fresh_run_of_the_new_total(cli, reference_run, tmp_path):
    fresh = tmp_path / "fresh"
    assert cli("train", "--run-dir", fresh, *RUN_FLAGS, "--epochs", "8").returncode == 0
    extended = tmp_path / "extended"
    shutil.copytree(reference_run, extended)  # 4 of 4 epochs done
    assert cli("resume", "latest", "--run-dir", extended, "--epochs", "8").returncode == 0
    assert lrs(extended)[4:] == lrs(fresh)[4:]
    assert len(set(lrs(fresh)[4:])) == 4  # still decaying: not stuck at the floor
    early = tmp_path / "early"
    shutil.copytree(reference_run, early)
    assert cli("resume", "2", "--run-dir", early, "--epochs", "8").returncode == 0
    assert lrs(early)[2:] == lrs(fresh)[2:]


def test_a_lower_lr_on_resume_is_allowed_with_a_warning_and_recorded(cli, finished_run, tmp_path):
    resumed = cli("resume", "2", "--run-dir", finished_run, "--lr", "3e-5")
    assert resumed.returncode == 0, resumed.stderr
    assert "lr 0.0003 -> 3e-05" in resumed.stderr and "no longer as originally planned" in resumed.stderr
    fresh = tmp_path / "fresh"
    assert cli("train", "--run-dir", fresh, *RUN_FLAGS, "--lr", "3e-5").returncode == 0
    assert lrs(finished_run)[2:] == lrs(fresh)[2:]  # the schedule of a run planned with that lr
    [log] = (finished_run / "logs").glob("training_*.json")
    sessions = json.loads(log.read_text())["sessions"]
    assert sessions[-1]["config_changes"]["lr"] == [3e-4, 3e-5]


# --- data that moved -----------------------------------------------------------------------------

def test_a_moved_data_folder_with_the_same_images_resumes(cli, tmp_path):
    data, run = tmp_path / "ds", tmp_path / "run"
    write_pairs(data, (40, 40), (40, 40), count=6)
    assert cli("train", "--run-dir", run, "--data", data, "--epochs", "1", *TINY, "--quiet",
               "--vis-every", "0").returncode == 0
    moved = tmp_path / "elsewhere" / "ds"
    moved.parent.mkdir()
    shutil.move(data, moved)
    gone = cli("resume", "latest", "--run-dir", run, "--epochs", "2")
    assert gone.returncode == 2 and "pass --data" in gone.stderr, gone.stderr
    resumed = cli("resume", "latest", "--run-dir", run, "--data", moved, "--epochs", "2")
    assert resumed.returncode == 0, resumed.stderr
    assert final_state(run)["epoch"] == 2
    assert_every_checkpoint_verifies(run)


def test_without_latest_the_newest_branch_is_found_from_the_periodic_files_alone(tmp_path):
    from checkpoint_kit import manager, train

    trainer = train(tmp_path, 5, total=5)  # epoch_001 .. epoch_005
    with manager(tmp_path, total=4) as mgr:  # go back to epoch 2 and train a 4-epoch run from there
        mgr.load(2)
        for epoch in (3, 4):
            trainer.step()
            mgr.save(trainer.state(epoch), epoch=epoch, val_dice=0.1)
    for name in ("latest_checkpoint.pt", "latest_checkpoint.pt.json"):
        (tmp_path / name).unlink()
    warnings: list[str] = []
    assert resolve_checkpoint(tmp_path, "latest", warn=warnings.append).name == "epoch_004_checkpoint.pt"
    from useg.checkpoint import resume_points

    abandoned = [p.path.name for p in resume_points(tmp_path) if p.abandoned]
    assert abandoned == ["epoch_005_checkpoint.pt"]


def test_resuming_after_an_epochs_last_step_prints_no_torch_warning(cli, tmp_path):
    run = tmp_path / "run"
    stopped = cli("train", "--run-dir", run, *RUN_FLAGS, env={"USEG_KILL_AT": "step:3:SIGINT"})  # epoch 1's last step
    assert stopped.returncode == 130, stopped.stderr
    resumed = cli("resume", "latest", "--run-dir", run)
    assert resumed.returncode == 0, resumed.stderr
    assert "Warning" not in resumed.stderr, resumed.stderr  # found by the long lifecycle run


def test_a_fallback_to_an_older_file_keeps_the_runs_current_total(cli, finished_run):
    extended = cli("resume", "3", "--run-dir", finished_run, "--epochs", "5")  # the run is now 5 epochs long
    assert extended.returncode == 0, extended.stderr
    for name in ("latest_checkpoint.pt", "epoch_004_checkpoint.pt"):  # latest is epoch_005's twin
        flip_byte_in_tensor_data(checkpoints(finished_run) / name)  # every file after epoch 3 rots
    assert not verify_checkpoint(checkpoints(finished_run) / "epoch_005_checkpoint.pt").ok
    resumed = cli("resume", "latest", "--run-dir", finished_run)  # falls back to epoch_003 (written for 4)
    assert resumed.returncode == 0, resumed.stderr
    assert final_state(finished_run)["epoch"] == 5  # found by the long lifecycle run: it stopped at 4
