"""`useg menu`: typed at a real pseudo-terminal, fed through a pipe, and each option's flow."""

from __future__ import annotations

import fcntl
import importlib.util
import io
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from useg.checkpoint import list_checkpoints
from tiny import train_tiny
from useg.cli import main

PROMPT = b"Choose an option:"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One tiny 3-epoch run shared by the module (periodic files for epochs 1, 2, 3)."""
    return train_tiny(tmp_path_factory.mktemp("shared") / "run", 3)


def menu(monkeypatch, capsys, run: Path, answers: str) -> tuple[int, str]:
    """Drive the menu in-process with `answers` as stdin (a pipe, as far as it can tell)."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(answers))
    code = main(["menu", "--run-dir", str(run)])
    return code, capsys.readouterr().out


def periodic_names(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").glob("epoch_*.pt"))


def read_until(fd: int, marker: bytes, seen: bytearray, timeout: float = 60) -> None:
    """Read the terminal's output into `seen` until `marker` appears after what was there."""
    start, deadline = len(seen), time.monotonic() + timeout
    while marker not in seen[start:]:
        assert time.monotonic() < deadline, f"no {marker!r} in {bytes(seen[start:])!r}"
        if select.select([fd], [], [], 1)[0]:
            seen += os.read(fd, 65536)


def read_to_end(fd: int, seen: bytearray) -> None:
    while select.select([fd], [], [], 30)[0]:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the child closed its side of the terminal
            return
        if not chunk:
            return
        seen += chunk


def start_in_terminal(run: Path) -> tuple[subprocess.Popen, int]:
    """`useg menu` on a real pseudo-terminal (120 columns); returns the child and our side of the terminal."""
    controller, terminal = os.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 120, 0, 0))
    child = subprocess.Popen([sys.executable, "-m", "useg", "menu", "--run-dir", str(run)],
                             stdin=terminal, stdout=terminal, stderr=terminal, start_new_session=True,
                             env={**os.environ, "TERM": "xterm-256color"})
    os.close(terminal)
    return child, controller


def tiny_config(folder: Path) -> Path:
    """A config file with the tiny model sizes, as a user would pass to option 1."""
    config = folder / "tiny.yaml"
    config.write_text("widths: [8, 8]\nbatch_size: 2\nsamples_per_epoch: 6\nvis_count: 1\nnum_threads: 1\n"
                      "quiet: true\n")
    return config


def test_menu_through_a_pipe_prints_history_and_exits_0(trained):
    result = subprocess.run([sys.executable, "-m", "useg", "menu", "--run-dir", str(trained)],
                            input="6\nq\n", capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Training history" in result.stdout and "* best" in result.stdout
    assert result.stdout.count("Choose an option: ") == 2
    assert (trained / "training_curves.png").is_file()


def test_menu_typed_at_a_real_terminal_shows_history_and_quits_with_0(trained):
    has_readline = importlib.util.find_spec("readline") is not None
    child, controller = start_in_terminal(trained)
    seen = bytearray()
    try:
        read_until(controller, PROMPT, seen)
        os.write(controller, b"6\r")  # Enter sends a carriage return; the terminal turns it into a newline
        read_until(controller, PROMPT, seen)
        if has_readline:
            os.write(controller, b"\x1b[A\r")  # the up arrow recalls the previous answer, 6
            read_until(controller, PROMPT, seen)
        os.write(controller, b"q\r")
        read_to_end(controller, seen)
        assert child.wait(timeout=60) == 0
    finally:
        child.kill()
        os.close(controller)
    screen = ANSI.sub("", seen.decode(errors="replace"))
    assert "Choose an option: 6" in screen  # echoed by the terminal, not by the menu
    assert screen.count("Training history") == (2 if has_readline else 1) and "* best" in screen


def test_clean_option_shows_what_goes_and_n_removes_nothing(run, monkeypatch, capsys):
    code, out = menu(monkeypatch, capsys, run, "5\n1\nn\nq\n")
    assert code == 0
    assert "will remove epoch_001_checkpoint.pt" in out and "will remove epoch_002_checkpoint.pt" in out
    assert "Nothing removed." in out
    assert periodic_names(run) == ["epoch_001_checkpoint.pt", "epoch_002_checkpoint.pt", "epoch_003_checkpoint.pt"]


def test_clean_option_with_y_removes_and_reports_space_freed(run, monkeypatch, capsys):
    code, out = menu(monkeypatch, capsys, run, "5\n1\ny\nq\n")
    assert code == 0 and "Removed 2 file(s), freed" in out
    assert periodic_names(run) == ["epoch_003_checkpoint.pt"]
    assert (run / "checkpoints" / "latest_checkpoint.pt").is_file() and (run / "checkpoints" / "best_model.pt").is_file()


def test_clean_option_says_what_it_keeps_when_a_file_is_damaged(run, monkeypatch, capsys):
    damaged = run / "checkpoints" / "epoch_003_checkpoint.pt"
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    code, out = menu(monkeypatch, capsys, run, "5\n1\nn\nq\n")
    assert code == 0
    assert "left epoch_003_checkpoint.pt in place, not counted toward --keep: corrupt" in out
    assert "kept epoch_002_checkpoint.pt: what resume falls back to" in out
    assert "will remove epoch_001_checkpoint.pt" in out and "will remove epoch_002" not in out


def test_menu_answers_bad_input_by_asking_again(run, monkeypatch, capsys):
    code, out = menu(monkeypatch, capsys, run, "x\n5\n0\nmany\n\n4\n99\n\n3\nabc\n")
    assert code == 0  # input ran out: the menu ends cleanly
    assert "Unknown option 'x'" in out
    assert out.count("Please give a whole number of at least 1") == 2
    assert out.count("Keep how many periodic checkpoints?") == 3  # asked again until Enter went back
    assert "No checkpoint number '99'" in out and "No checkpoint number 'abc'" in out
    assert out.count("Checkpoint number (1-5") == 2 and out.count("Checkpoint number (1-4") == 2
    assert len(periodic_names(run)) == 3


def test_info_option_shows_the_chosen_checkpoint(run, monkeypatch, capsys):
    names = [info.name for info in list_checkpoints(run / "checkpoints")]
    number = names.index("latest_checkpoint.pt") + 1
    code, out = menu(monkeypatch, capsys, run, f"4\n{number}\nq\n")
    assert code == 0 and "kind:          latest" in out and f"useg resume latest --run-dir {run}" in out


def resume_numbers(out: str) -> dict[str, int]:
    """The number each file has in option 3's table, as printed."""
    return {name: int(number) for number, name in re.findall(r"^ +(\d+) +(\S+\.pt)", out, flags=re.M)}


def test_resume_option_lists_only_resume_points_and_names_best_apart(run, monkeypatch, capsys):
    code, out = menu(monkeypatch, capsys, run, "3\n\nq\n")
    assert code == 0
    assert sorted(resume_numbers(out)) == ["epoch_001_checkpoint.pt", "epoch_002_checkpoint.pt",
                                           "epoch_003_checkpoint.pt", "latest_checkpoint.pt"]
    assert resume_numbers(out)["latest_checkpoint.pt"] == 1  # the order resume tries them
    assert "best: best_model.pt (epoch 3" in out and "cannot resume" in out


def test_resume_option_leaves_out_a_damaged_file_and_says_why(run, monkeypatch, capsys):
    damaged = run / "checkpoints" / "epoch_001_checkpoint.pt"
    damaged.write_bytes(damaged.read_bytes()[:-10])
    code, out = menu(monkeypatch, capsys, run, "3\n\nq\n")
    assert code == 0 and "not listed: epoch_001_checkpoint.pt is not valid" in out
    assert "epoch_001_checkpoint.pt" not in resume_numbers(out)


def test_going_back_says_what_is_left_behind_and_no_starts_nothing(run, monkeypatch, capsys):
    before = {p.name: p.read_bytes() for p in (run / "checkpoints").glob("*.pt")}
    code, out = menu(monkeypatch, capsys, run, "3\n3\nn\nq\n")  # 3: epoch_002 (latest, 003, 002, 001)
    assert code == 0
    assert "Going back to epoch_002_checkpoint.pt (epoch 2) leaves newer saves behind:" in out
    assert "latest_checkpoint.pt (latest, epoch 3, step 9): replaced by the first save from epoch_002" in out
    assert "epoch_003_checkpoint.pt (periodic, epoch 3" in out and "abandoned branch" in out
    assert "Nothing started." in out and "$ useg" not in out
    assert {p.name: p.read_bytes() for p in (run / "checkpoints").glob("*.pt")} == before


def test_going_back_after_extending_keeps_the_runs_current_total_on_enter(run, monkeypatch, capfd):
    import torch

    assert main(["resume", "latest", "--run-dir", str(run), "--epochs", "4", "--quiet"]) == 0  # total now 4
    capfd.readouterr()
    code, out = menu(monkeypatch, capfd, run, "3\n4\ny\n\nq\n")  # 4: epoch_002 (latest, 004, 003, 002, 001)
    assert code == 0
    assert "Going back to epoch_002_checkpoint.pt" in out and "Total epochs (Enter keeps the run's total, 4)" in out
    assert re.search(r"\$ useg resume \S+epoch_002_checkpoint\.pt --run-dir \S+ --epochs 4$", out, flags=re.M)
    state = torch.load(run / "checkpoints" / "latest_checkpoint.pt", weights_only=True)
    assert state["epoch"] == 4 and state["config"]["epochs"] == 4 and state["history"]["resumed_at"] == [2]


def test_start_option_on_a_run_asks_first_and_offers_to_resume_it(run, monkeypatch, capsys):
    code, out = menu(monkeypatch, capsys, run, "1\nmaybe\n\n1\nr\n")  # input ends at the epochs question
    assert code == 0
    assert out.count("already holds a run (latest: 3 of 3 epochs complete)") == 2
    assert "Type r, o, or Enter to go back (got 'maybe')" in out
    assert "Config file" not in out  # no question about a new run before the folder was settled
    assert out.rstrip().endswith("Total epochs (Enter keeps the run's total, 3):")  # option 2's question


def test_start_option_on_a_lone_best_model_offers_only_to_start_afresh(tmp_path, monkeypatch, capsys):
    run = train_tiny(tmp_path / "run", 1)
    for path in (run / "checkpoints").glob("*.pt*"):
        if not path.name.startswith("best_model.pt"):
            path.unlink()  # what a first epoch killed after best, before latest, leaves
    code, out = menu(monkeypatch, capsys, run, "1\nr\n\nq\n")
    assert code == 0
    assert f"{run / 'checkpoints'} holds best_model.pt but no checkpoint to resume from." in out
    assert "resume it" not in out and "Type o, or Enter to go back (got 'r')" in out
    assert "Config file" not in out  # Enter went back to the menu


def test_start_option_asks_the_settings_of_a_run_and_checks_each(tmp_path, monkeypatch, capfd):
    import torch

    config, run = tiny_config(tmp_path), tmp_path / "new run"
    answers = f"1\nmissing.yaml\n{config}\n{tmp_path / 'nowhere'}\n\nsolid\n0\n1\n31\n32\nmany\n2\nq\n"
    code, out = menu(monkeypatch, capfd, run, answers)
    assert code == 0
    assert "config file missing.yaml not found" in out and "is not a folder" in out
    assert "--epochs must be a positive integer; got 0" in out and "--image-size 31 must be divisible by 2" in out
    assert "--support-size must be a positive integer; got 'many'" in out
    assert "Label-map masks" not in out  # the embedded set has no label maps
    assert f"--config {config} --classes solid --epochs 1 --image-size 32 --support-size 2" in out
    state = torch.load(run / "checkpoints" / "latest_checkpoint.pt", weights_only=True)
    assert state["classes"] == ["solid"] and state["config"]["widths"] == [8, 8]
    assert (state["config"]["image_size"], state["config"]["support_size"], state["epoch"]) == (32, 2, 1)


def test_start_option_overwrite_typed_at_a_terminal_sets_the_run_and_its_pictures_aside(run, tmp_path):
    (run / "visualizations_training").mkdir()
    (run / "visualizations_training" / "epoch_003_batch_000.png").write_bytes(b"old picture")
    old_latest = (run / "checkpoints" / "latest_checkpoint.pt").read_bytes()
    child, controller = start_in_terminal(run)
    seen = bytearray()
    try:
        read_until(controller, PROMPT, seen)
        os.write(controller, b"1\r")
        read_until(controller, b"[r/o]", seen)
        os.write(controller, b"o\r")
        read_until(controller, b"Config file", seen)
        os.write(controller, f"{tiny_config(tmp_path)}\r".encode())
        for question in (b"Data folder", b"Classes", b"Epochs", b"Image size", b"Support"):
            read_until(controller, question, seen)
            os.write(controller, b"1\r" if question == b"Epochs" else b"\r")
        read_until(controller, PROMPT, seen, timeout=120)
        os.write(controller, b"q\r")
        read_to_end(controller, seen)
        assert child.wait(timeout=60) == 0
    finally:
        child.kill()
        os.close(controller)
    screen = ANSI.sub("", seen.decode(errors="replace"))
    assert "--overwrite" in screen and "moved the previous checkpoints (and pictures) to" in screen
    [kept] = run.glob("checkpoints_replaced_*")
    assert (kept / "latest_checkpoint.pt").read_bytes() == old_latest
    assert (kept / "visualizations_training" / "epoch_003_batch_000.png").read_bytes() == b"old picture"
    assert not (run / "visualizations_training" / "epoch_003_batch_000.png").exists()
    assert sorted(p.name for p in (run / "checkpoints").glob("epoch_*.pt")) == ["epoch_001_checkpoint.pt"]


def test_history_option_on_a_folder_without_a_run_says_so(tmp_path, monkeypatch, capsys):
    code, out = menu(monkeypatch, capsys, tmp_path, "6\nq\n")
    assert code == 0 and "error: no training history" in out
