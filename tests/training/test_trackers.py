"""Experiment trackers: what a run logs, read back with each tracker's own reader, continued across resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import numpy as np
from PIL import Image
from tiny import TINY, train_tiny, useg

from useg.checkpoint import read_metadata
from useg.cli import main
from useg.cli.runs import compare_runs
from useg.data import make_synthetic
from useg.training.trackers import STATE_NAME, Start, plan_start

QUIET = [*TINY, "--quiet", "--vis-every", "0"]


def tracker_state(run: Path) -> dict:
    return json.loads((run / "logs" / STATE_NAME).read_text())["trackers"]


def newest_log(run: Path) -> dict:
    return json.loads(sorted((run / "logs").glob("training_*.json"))[-1].read_text())


def mlflow_client(run: Path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{run.resolve() / 'logs' / 'mlflow.db'}")


def metric_steps(client, run_id: str, key: str = "val_dice") -> list[tuple[int, float]]:
    return sorted((metric.step, metric.value) for metric in client.get_metric_history(run_id, key))


def tensorboard_scalars(run: Path, key: str = "val_dice") -> list[tuple[int, float]]:
    """What TensorBoard shows: its own reader, purged steps hidden."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "logs" / "tensorboard"))
    events.Reload()
    return [(event.step, event.value) for event in events.Scalars(key)]


def same_points(actual: list[tuple[int, float]], expected: list[tuple[int, float]]) -> bool:
    """The same steps with the same values (TensorBoard keeps float32)."""
    return ([step for step, _ in actual] == [step for step, _ in expected]
            and [value for _, value in actual] == pytest.approx([value for _, value in expected], rel=1e-6))


def warnings_in(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("warning:")]


# --- where a tracker starts: continue, catch up, branch ---------------------------------------------


@pytest.mark.parametrize("name, entry, saved_id, epoch, fresh, expected", [
    ("mlflow", {"run_id": "a", "logged_through": 5}, "a", 5, True, Start()),  # a new run (or --overwrite)
    ("mlflow", {"run_id": "a", "logged_through": 5}, "a", 5, False, Start("a", 5)),  # resumed where it was
    ("mlflow", {"run_id": "a", "logged_through": 4}, "a", 5, False, Start("a", 4)),  # killed before logging 5
    ("mlflow", {"run_id": "a", "logged_through": 5}, "a", 2, False,
     Start(branch_epoch=2, abandoned=5, branch_of="a")),  # resumed from an older epoch
    ("mlflow", None, "a", 3, False, Start("a", 3)),  # run folder's record lost: the checkpoint's id
    ("mlflow", None, None, 3, False, Start()),  # asked for on this resume: a new run, given epochs 1-3
    ("tensorboard", {"logged_through": 5}, None, 2, False, Start(logged=2, branch_epoch=2, abandoned=5)),
    ("tensorboard", {"logged_through": 1}, None, 3, False, Start(logged=1, abandoned=1)),
])
def test_where_a_tracker_starts(name, entry, saved_id, epoch, fresh, expected):
    assert plan_start(name, entry, saved_id, epoch, fresh) == expected


# --- MLflow and TensorBoard read back -----------------------------------------------------------------


def test_mlflow_and_tensorboard_hold_the_runs_params_epochs_and_results(tmp_path):
    run = train_tiny(tmp_path / "run", 2, "--tracker", "mlflow", "--tensorboard", "--lr", "3e-4")
    client = mlflow_client(run)
    run_id = tracker_state(run)["mlflow"]["run_id"]
    tracked = client.get_run(run_id)
    history = newest_log(run)["history"]
    assert tracked.info.status == "FINISHED" and tracked.info.run_name == "run"
    assert tracked.data.params["lr"] == "0.0003" and tracked.data.params["support_size"] == "2"
    assert not {"data", "run_dir", "split_file", "annotations", "pretrained"} & set(tracked.data.params)
    assert tracked.data.tags["useg.data_layout"] == "synthetic"
    assert tracked.data.tags["useg.classes"] == ",".join(newest_log(run)["data"]["classes"])
    best = run / "checkpoints" / "best_model.pt"
    assert tracked.data.tags["useg.best_checkpoint"] == "checkpoints/best_model.pt"
    assert tracked.data.tags["useg.best_checkpoint_sha256"] == read_metadata(best)["sha256"]
    expected = [(0, history["initial_val_dice"]), (1, history["val_dice"][0]), (2, history["val_dice"][1])]
    assert same_points(metric_steps(client, run_id), expected)
    assert [step for step, _ in metric_steps(client, run_id, "train_loss")] == [1, 2]
    assert {"lr", "samples_per_s", "epoch_time_s", "routine_saves", "coalesced_saves",
            "deferred_saves"} <= set(tracked.data.metrics)
    assert [artifact.path for artifact in client.list_artifacts(run_id)] == ["training_curves.png"]
    assert newest_log(run)["history"]["tracker_runs"] == {"mlflow": run_id}  # and so in every checkpoint
    assert same_points(tensorboard_scalars(run), expected)


def test_killed_run_resumes_the_same_mlflow_run_without_duplicate_steps(tmp_path):
    pytest.importorskip("mlflow")
    run = tmp_path / "run"
    # Killed once epoch 2's checkpoint is durable, before the tracker got epoch 2: the resume gives it.
    killed = useg("train", "--run-dir", str(run), "--epochs", "4", *QUIET, "--tracker", "mlflow",
                  env={"USEG_KILL_AT": "epoch-end:2"})
    assert killed.returncode == -signal.SIGKILL
    assert killed.stderr == ""  # MLflow's own lines ("Creating initial MLflow database tables") stay off the screen
    run_id = tracker_state(run)["mlflow"]["run_id"]
    assert tracker_state(run)["mlflow"]["logged_through"] == 1
    resumed = useg("resume", "latest", "--run-dir", str(run), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert not [line for line in warnings_in(resumed.stderr) if "mlflow" in line]
    client = mlflow_client(run)
    assert [r.info.run_id for r in client.search_runs([client.get_experiment_by_name("useg").experiment_id])] == [run_id]
    history = newest_log(run)["history"]
    assert same_points(metric_steps(client, run_id), [(0, history["initial_val_dice"]),
                                                     *enumerate(history["val_dice"], 1)])
    assert client.get_run(run_id).info.status == "FINISHED"


def test_resume_from_an_older_epoch_branches_mlflow_and_purges_tensorboard(tmp_path):
    run = train_tiny(tmp_path / "run", 3, "--tracker", "mlflow", "--tracker", "tensorboard")
    first_id = tracker_state(run)["mlflow"]["run_id"]
    first_values = dict(tensorboard_scalars(run))
    # From epoch 1 with another lr: epochs 2 and 3 again, other values.
    assert main(["resume", "1", "--run-dir", str(run), "--quiet", "--lr", "1e-3"]) == 0
    history = newest_log(run)["history"]
    branch = list(enumerate(history["val_dice"], 1))
    assert branch[1][1] != first_values[2]
    # TensorBoard: one line, the abandoned epochs 2-3 hidden by its purge.
    assert same_points(tensorboard_scalars(run), [(0, first_values[0]), *branch])
    # MLflow: a new run holding epochs 1-3 of the branch, both runs tagged with the branch point.
    client = mlflow_client(run)
    new_id = tracker_state(run)["mlflow"]["run_id"]
    assert new_id != first_id and history["tracker_runs"]["mlflow"] == new_id
    assert same_points(metric_steps(client, new_id), [(0, history["initial_val_dice"]), *branch])
    assert client.get_run(new_id).data.tags["useg.branch_of"] == first_id
    assert client.get_run(new_id).data.tags["useg.branch_epoch"] == "1"
    assert client.get_run(first_id).data.tags["useg.continued_in"] == new_id
    assert [step for step, _ in metric_steps(client, first_id)] == [0, 1, 2, 3]  # the old run stays as it was


# --- W&B, offline, read from its own files ---------------------------------------------------------


def wandb_records(path: Path) -> list:
    """The records of a W&B run file (LevelDB log blocks of 32 KiB after a 7-byte header)."""
    from wandb.proto import wandb_internal_pb2

    data, records, pending, position = path.read_bytes(), [], b"", 7
    assert data[:4] == b":W&B"
    while position + 7 <= len(data):
        if 32768 - position % 32768 < 7:  # a block's tail too short for a header is padding
            position += 32768 - position % 32768
            continue
        length, kind = int.from_bytes(data[position + 4:position + 6], "little"), data[position + 6]
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind == 0:
            break
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_wandb_runs_offline_and_a_resume_continues_its_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    run = train_tiny(tmp_path / "run", 2, "--tracker", "wandb")
    run_id = tracker_state(run)["wandb"]["run_id"]
    assert main(["resume", "latest", "--run-dir", str(run), "--quiet", "--epochs", "3"]) == 0
    assert tracker_state(run)["wandb"] == {"run_id": run_id, "logged_through": 3, "outcome": "finished"}
    import wandb

    wandb.teardown()  # what exiting does: W&B's own process finishes writing its files
    files = sorted(path for path in (run / "logs" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2 and all(path.name == f"run-{run_id}.wandb" for path in files)  # one run, two sessions
    records = [record for path in files for record in wandb_records(path)]
    steps = [record.history.step.num for record in records if record.WhichOneof("record_type") == "history"
             and any(item.key == "val_dice" or list(item.nested_key) == ["val_dice"] for item in record.history.item)]
    assert steps == [0, 1, 2, 3]
    config = {item.key: json.loads(item.value_json) for record in records
              if record.WhichOneof("record_type") == "run" for item in record.run.config.update}
    assert config["lr"] == 3e-4 and "data" not in config and "run_dir" not in config
    assert str(tmp_path).encode() not in b"".join(path.read_bytes() for path in files)  # no local path leaves


# --- a tracker that is missing or breaks never stops training -------------------------------------------


def test_missing_tracker_package_is_one_warning_and_training_goes_on(tmp_path, monkeypatch, capsys):
    for name in [name for name in sys.modules if name.split(".")[0] == "mlflow"] + ["mlflow"]:
        monkeypatch.setitem(sys.modules, name, None)  # importing mlflow now raises ImportError, as if not installed
    run = train_tiny(tmp_path / "run", 2, "--tracker", "mlflow")
    lines = warnings_in(capsys.readouterr().err)
    assert lines == ["warning: --tracker mlflow needs the mlflow package (pip install 'useg[mlflow]'); "
                     "continuing without it"]
    assert newest_log(run)["history"]["val_dice"][1] is not None
    assert not (run / "logs" / "mlflow.db").exists()


def wait_until_stopped(pid: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "T":
        assert time.monotonic() < deadline, "the trainer never reached the epoch's end"
        time.sleep(0.05)


def small_disk(folder: Path) -> Path:
    """A 4 MiB tmpfs at `folder` (root only; skips where mount is not allowed), unmounted by the caller."""
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    return folder


def fill_up(folder: Path) -> None:
    with open(folder / "filler", "wb") as filler:
        try:
            while True:
                filler.write(b"\0" * 65536)
                filler.flush()
        except OSError:  # ENOSPC: the disk is full
            pass


@pytest.mark.parametrize("fault", ["disk full", "store damaged"])
def test_tracker_failing_mid_run_is_one_warning_and_checkpoints_stay_whole(tmp_path, fault):
    pytest.importorskip("mlflow")
    run = tmp_path / "run"
    env = {**os.environ, "USEG_KILL_AT": "epoch-end:1:SIGSTOP"}  # the trainer stops itself after epoch 1's save
    if fault == "disk full":  # MLflow's store on its own small disk; the run folder elsewhere
        store = small_disk(tmp_path / "disk") / "mlflow.db"
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{store}"
    else:
        store = run / "logs" / "mlflow.db"
    child = subprocess.Popen([sys.executable, "-m", "useg", "train", "--run-dir", str(run), "--epochs", "3", *QUIET,
                              "--tracker", "mlflow", "--tracker", "tensorboard"], env=env, cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until_stopped(child.pid)
        if fault == "disk full":
            fill_up(store.parent)
        else:
            store.write_bytes(b"not a database" * 512)  # in place: the open connection sees it too
        child.send_signal(signal.SIGCONT)
        out, err = child.communicate(timeout=300)
    finally:
        child.kill()
        subprocess.run(["umount", "-l", str(tmp_path / "disk")], capture_output=True)
    assert child.returncode == 0, err
    failures = warnings_in(err)
    assert len(failures) == 1 and failures[0].startswith("warning: mlflow tracking failed (")
    assert "it is off for the rest of this run" in failures[0]
    assert useg("checkpoints", "verify", "--run-dir", str(run)).returncode == 0
    assert read_metadata(run / "checkpoints" / "latest_checkpoint.pt")["epoch"] == 3
    assert [step for step, _ in tensorboard_scalars(run)] == [0, 1, 2, 3]  # the other tracker carried on
    # It broke before epoch 1 reached it (the trainer stopped before handing the epoch over): a resume
    # would give it epochs 1-3.
    assert tracker_state(run)["mlflow"]["logged_through"] == 0


def test_unknown_tracker_is_refused_naming_the_choices(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--run-dir", str(tmp_path / "run"), "--tracker", "comet"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown tracker 'comet'; choose from tensorboard, mlflow, wandb" in err
    assert not (tmp_path / "run").exists()


# --- useg evaluate gives the run's tracked runs its Dice -------------------------------------------------


def evaluate_json(run: Path, capsys, *args: str) -> tuple[dict, list[str]]:
    """`useg evaluate --run-dir RUN --json ARGS` in this process: its JSON (stdout must parse) and its warnings."""
    capsys.readouterr()
    assert main(["evaluate", "--run-dir", str(run), "--json", "--support-size", "1,2", *args]) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out), warnings_in(captured.err)


def class_dice(report: dict) -> dict[str, float]:
    return {name: stats["dice"]["mean"] for name, stats in report["per_class"].items()}


@pytest.mark.parametrize("ending", ["finished", "interrupted"])
def test_evaluate_gives_mlflow_and_tensorboard_the_test_dice_at_the_checkpoints_epoch_keeping_the_status(
        tmp_path, capsys, ending):
    pytest.importorskip("mlflow")
    run = tmp_path / "run"
    flags = ["--tracker", "mlflow", "--tracker", "tensorboard"]
    if ending == "finished":
        train_tiny(run, 2, *flags)
    else:  # Ctrl+C after epoch 1: the tracked run is KILLED
        stopped = useg("train", "--run-dir", str(run), "--epochs", "3", *QUIET, *flags,
                       env={"USEG_KILL_AT": "epoch-end:1:SIGINT"})
        assert stopped.returncode != 0 and tracker_state(run)["mlflow"]["outcome"] == "interrupted", stopped.stderr
    client = mlflow_client(run)
    run_id = tracker_state(run)["mlflow"]["run_id"]
    before = client.get_run(run_id).info
    assert before.status == {"finished": "FINISHED", "interrupted": "KILLED"}[ending]
    val_steps = [step for step, _ in tensorboard_scalars(run)]

    report, warned = evaluate_json(run, capsys)

    assert warned == []
    epoch, mean = report["epoch"], report["mean_dice"]
    assert metric_steps(client, run_id, "evaluation/test_dice") == [(epoch, pytest.approx(mean))]
    for name, value in class_dice(report).items():
        assert metric_steps(client, run_id, f"evaluation/test_dice/{name}") == [(epoch, pytest.approx(value))]
    after = client.get_run(run_id).info
    assert (after.status, after.end_time) == (before.status, before.end_time)
    assert [item.path for item in client.list_artifacts(run_id, f"evaluation/test/epoch_{epoch}")] == [
        f"evaluation/test/epoch_{epoch}/evaluation_support_sweep.png"]
    assert same_points(tensorboard_scalars(run, "evaluation/test_dice"), [(epoch, mean)])
    assert [step for step, _ in tensorboard_scalars(run)] == val_steps  # nothing of the training hidden
    assert compare_runs([run])["runs"][0]["test_dice"] == pytest.approx(mean)  # the compare table's test Dice


def test_evaluate_resumes_the_wandb_run_offline_and_ends_it_as_it_ended(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    run = train_tiny(tmp_path / "run", 2, "--tracker", "wandb")
    run_id = tracker_state(run)["wandb"]["run_id"]
    # A fresh process, as a user runs it: nothing of W&B's (nor of its service process) reaches stdout.
    done = useg("evaluate", "--run-dir", str(run), "--json", "--support-size", "1,2")
    assert done.returncode == 0 and warnings_in(done.stderr) == [], done.stderr
    report = json.loads(done.stdout)
    files = sorted((run / "logs" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2 and files[-1].name == f"run-{run_id}.wandb"  # the same run, one more session
    records = wandb_records(files[-1])
    logged = {tuple(item.nested_key) or (item.key,): item for record in records
              if record.WhichOneof("record_type") == "history" for item in record.history.item}
    steps = [record.history.step.num for record in records if record.WhichOneof("record_type") == "history"]
    assert steps == [report["epoch"]]
    assert json.loads(logged[("evaluation/test_dice",)].value_json) == pytest.approx(report["mean_dice"])
    assert ("evaluation/test/support_sweep", "_type") in logged  # the sweep picture
    exits = [record.exit for record in records if record.WhichOneof("record_type") == "exit"]
    assert len(exits) == 1 and exits[0].exit_code == 0  # finished, as its training ended
    assert str(tmp_path).encode() not in files[-1].read_bytes()


def test_wandb_run_whose_ending_is_unknown_is_left_as_it_is(tmp_path, monkeypatch, capsys):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    run = train_tiny(tmp_path / "run", 1, "--tracker", "wandb", "--tracker", "tensorboard")
    state = json.loads((run / "logs" / STATE_NAME).read_text())
    del state["trackers"]["wandb"]["outcome"]  # as a run killed with -9 leaves it (or one trained before useg kept it)
    (run / "logs" / STATE_NAME).write_text(json.dumps(state))
    report, warned = evaluate_json(run, capsys)
    assert warned == ["warning: the evaluation is not logged to wandb: its training did not record how it ended "
                      "(still training, or killed); finishing it again would change its state"]
    assert len(list((run / "logs" / "wandb").glob("offline-run-*"))) == 1
    assert same_points(tensorboard_scalars(run, "evaluation/test_dice"), [(report["epoch"], report["mean_dice"])])


@pytest.mark.parametrize("fault", ["package missing", "store damaged"])
def test_tracker_that_cannot_take_the_evaluation_is_one_warning(tmp_path, monkeypatch, capsys, fault):
    pytest.importorskip("mlflow")
    run = train_tiny(tmp_path / "run", 1, "--tracker", "mlflow")
    if fault == "package missing":
        for name in [name for name in sys.modules if name.split(".")[0] == "mlflow"] + ["mlflow"]:
            monkeypatch.setitem(sys.modules, name, None)  # importing mlflow now raises ImportError
        expected = ["warning: the evaluation is not logged to mlflow: it needs the mlflow package "
                    "(pip install 'useg[mlflow]')"]
    else:
        (run / "logs" / "mlflow.db").write_bytes(b"not a database" * 512)
        expected = None
    report, warned = evaluate_json(run, capsys)  # exit 0 and the JSON parses
    if expected:
        assert warned == expected
    else:
        assert len(warned) == 1 and warned[0].startswith("warning: the evaluation is not logged to mlflow (")
    assert report["csv"] == str(run / "evaluation_test.csv") and Path(report["csv"]).is_file()
    assert report["pictures"] == [str(run / "evaluation_support_sweep.png")]


def labelled_folder(root: Path) -> Path:
    """images/ + masks/ of six synthetic scans, one class (foreground) that the run never saw."""
    data = make_synthetic(image_size=32, seed=3, n_patients=6, images_per_patient=1)
    for kind in ("images", "masks"):
        (root / kind).mkdir(parents=True)
    for index, (image, mask) in enumerate(zip(data.images, data.masks.any(axis=1))):
        Image.fromarray((image * 255).astype(np.uint8)).save(root / "images" / f"scan{index}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"scan{index}.png")
    return root


def test_evaluate_on_another_folder_logs_held_out_dice(tmp_path, capsys):
    run = train_tiny(tmp_path / "run", 1, "--tracker", "tensorboard")
    report, warned = evaluate_json(run, capsys, "--data", str(labelled_folder(tmp_path / "other")))
    assert warned == [] and report["held_out"]
    assert same_points(tensorboard_scalars(run, "evaluation/held_out_dice"), [(report["epoch"], report["mean_dice"])])
    assert same_points(tensorboard_scalars(run, "evaluation/held_out_dice/foreground"),
                       [(report["epoch"], class_dice(report)["foreground"])])
    assert compare_runs([run])["runs"][0]["held_out_dice"] == pytest.approx(report["mean_dice"])


def test_a_run_without_trackers_logs_nothing_to_those_of_the_run_it_replaced(tmp_path, capsys):
    run = train_tiny(tmp_path / "run", 1, "--tracker", "tensorboard")
    train_tiny(run, 1, "--overwrite")  # logs/trackers.json still names the replaced run's trackers
    capsys.readouterr()
    assert main(["evaluate", "--run-dir", str(run)]) == 0
    assert "logged at step" not in capsys.readouterr().out
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "logs" / "tensorboard"))
    events.Reload()
    assert "evaluation/test_dice" not in events.Tags()["scalars"]
