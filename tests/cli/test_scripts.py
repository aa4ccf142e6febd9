"""The original scripts' names: thin wrappers that do what the `useg` subcommands do."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tiny import TINY, train_tiny

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"


def load_script(name: str):
    """Import scripts/NAME.py as a module, to call its main() in-process."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(command: list[str], cwd: Path, stdin: str = "", env: dict | None = None):
    """Run a script the way a user does, from another folder than the repository."""
    return subprocess.run(command, cwd=cwd, input=stdin, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "USEG_PYTHON": sys.executable, "MPLBACKEND": "Agg", **(env or {})})


def latest_epoch(run: Path) -> int:
    return torch.load(run / "checkpoints" / "latest_checkpoint.pt", weights_only=True)["epoch"]


def resumed_at(run: Path) -> list[int]:
    """Epochs the run was resumed from, as its latest checkpoint records them."""
    return torch.load(run / "checkpoints" / "latest_checkpoint.pt", weights_only=True)["history"]["resumed_at"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One tiny 2-epoch run shared by the module."""
    return train_tiny(tmp_path_factory.mktemp("shared") / "run", 2)


# --- checkpoint_manager.py -----------------------------------------------------------------


def test_checkpoint_manager_list_runs_as_a_script(trained, tmp_path):
    result = run_script([sys.executable, str(SCRIPTS / "checkpoint_manager.py"), "--list", "--run-dir", str(trained)],
                        cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "latest_checkpoint.pt <" in result.stdout and "best_model.pt *" in result.stdout


def test_checkpoint_manager_flags_map_to_the_subcommands(run, capsys):
    manager = load_script("checkpoint_manager")
    assert manager.main(["--latest", "--json", "--run-dir", str(run)]) == 0
    assert json.loads(capsys.readouterr().out)["resume_command"] == f"useg resume latest --run-dir {run}"
    assert manager.main(["--clean", "--keep", "1", "--dry-run", "--run-dir", str(run)]) == 0
    assert "would remove" in capsys.readouterr().out and (run / "checkpoints" / "epoch_001_checkpoint.pt").exists()
    assert manager.main(["--clean", "--keep", "1", "--run-dir", str(run)]) == 0
    assert not (run / "checkpoints" / "epoch_001_checkpoint.pt").exists()
    assert manager.main(["--clean", "--keep", "0", "--run-dir", str(run)]) == 2
    assert capsys.readouterr().err.startswith("error: --keep must be at least 1")
    assert manager.main(["--resume", "--run-dir", str(run), "--epochs", "3", "--quiet"]) == 0
    assert latest_epoch(run) == 3


def test_checkpoint_manager_usage_errors_exit_2(run):
    manager = load_script("checkpoint_manager")
    for argv in (["--clean"], [], ["--list", "--latest"], ["--list", "--epochs", "3"]):
        with pytest.raises(SystemExit) as stop:
            manager.main(argv + ["--run-dir", str(run)])
        assert stop.value.code == 2, argv


def test_checkpoint_manager_resume_takes_a_path(run, capsys):
    manager = load_script("checkpoint_manager")
    path = run / "checkpoints" / "epoch_001_checkpoint.pt"
    assert manager.main(["--resume", str(path), "--run-dir", str(run), "--quiet"]) == 0
    assert latest_epoch(run) == 2 and resumed_at(run) == [1]


# --- train_universeg_ovatus.py -------------------------------------------------------------


def test_training_script_trains_and_resumes_from_the_environment(tmp_path):
    script = [sys.executable, str(SCRIPTS / "train_universeg_ovatus.py"), "--run-dir", "run", *TINY,
              "--quiet", "--vis-every", "0"]
    first = run_script(script + ["--epochs", "1"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    resumed = run_script(script + ["--epochs", "2"], cwd=tmp_path, env={"RESUME_FROM_CHECKPOINT": "latest"})
    assert resumed.returncode == 0, resumed.stderr
    assert latest_epoch(tmp_path / "run") == 2 and resumed_at(tmp_path / "run") == [1]


def test_training_script_reads_resume_from_checkpoint_in_the_config_file(run, tmp_path, monkeypatch):
    monkeypatch.delenv("RESUME_FROM_CHECKPOINT", raising=False)
    config = tmp_path / "train.yaml"
    config.write_text("resume_from_checkpoint: latest\nepochs: 3\nquiet: true\nvis_every: 0\n")
    assert load_script("train_universeg_ovatus").main(["--config", str(config), "--run-dir", str(run)]) == 0
    assert latest_epoch(run) == 3
    assert "resume_from_checkpoint" in config.read_text()  # the user's file is never rewritten


@pytest.mark.parametrize("argv, environ, file_text, expected", [
    (["--epochs", "3"], {}, None, ["train", "--epochs", "3"]),
    ([], {"RESUME_FROM_CHECKPOINT": "latest"}, None, ["train", "--resume", "latest"]),
    ([], {"RESUME_FROM_CHECKPOINT": "none"}, None, ["train"]),
    ([], {"RESUME_FROM_CHECKPOINT": "4"}, "resume_from_checkpoint: best\n", ["train", "--config", "*", "--resume", "4"]),
    (["--resume", "2"], {"RESUME_FROM_CHECKPOINT": "latest"}, None, ["train", "--resume", "2"]),
    ([], {}, "resume_from_checkpoint: runs/a/checkpoints/epoch_004_checkpoint.pt\nepochs: 9\n",
     ["train", "--config", "*", "--resume", "runs/a/checkpoints/epoch_004_checkpoint.pt"]),
    ([], {}, "resume_from_checkpoint: null\nepochs: 9\n", ["train", "--config", "*"]),
    ([], {}, "epochs: 9\n", ["train", "--config", "<given>"]),
])
def test_training_script_maps_resume_settings_to_useg_train(tmp_path, argv, environ, file_text, expected):
    script = load_script("train_universeg_ovatus")
    given = tmp_path / "given.yaml"
    if file_text is not None:
        given.write_text(file_text)
        argv = argv + ["--config", str(given)]
    arguments = script.train_arguments(argv, environ, tmp_path)
    shown = ["<given>" if a == str(given) else "*" if a.startswith(str(tmp_path)) else a for a in arguments]
    assert shown == expected
    if "*" in shown:
        rewritten = Path(arguments[arguments.index("--config") + 1]).read_text()
        assert "resume_from_checkpoint" not in rewritten and "epochs: 9" in rewritten or rewritten == "{}\n"


# --- training_manager.py, resume_training.sh, QUICK_COMMANDS.sh ----------------------------


def test_training_manager_is_the_menu(trained, tmp_path):
    result = run_script([sys.executable, str(SCRIPTS / "training_manager.py"), "--run-dir", str(trained)],
                        cwd=tmp_path, stdin="6\nq\n")
    assert result.returncode == 0, result.stderr
    assert "UniverSeg training manager" in result.stdout and "Training history" in result.stdout


def test_resume_training_sh_resumes_latest_of_the_given_run_with_extra_flags(run, tmp_path):
    result = run_script(["bash", str(SCRIPTS / "resume_training.sh"), str(run), "--epochs", "3", "--quiet"],
                        cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert latest_epoch(run) == 3


def test_resume_training_sh_defaults_to_the_current_folder(run):
    result = run_script(["bash", str(SCRIPTS / "resume_training.sh"), "--epochs", "3"], cwd=run)
    assert result.returncode == 0, result.stderr
    assert latest_epoch(run) == 3 and resumed_at(run) == [2]


def test_quick_commands_run_end_to_end_on_a_tiny_demo(tmp_path):
    result = run_script(["bash", str(REPO / "QUICK_COMMANDS.sh"), str(tmp_path / "demo")], cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for command in ("$ useg train", "$ useg checkpoints list", "$ useg checkpoints verify", "$ useg checkpoints clean",
                    "$ useg checkpoints export", "useg menu"):
        assert command in result.stdout, command
    assert (tmp_path / "demo" / "export" / "best.safetensors").is_file()
