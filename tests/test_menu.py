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


def test_menu_through_a_pipe_prints_history_and_exits_0(trained):
    result = subprocess.run([sys.executable, "-m", "useg", "menu", "--run-dir", str(trained)],
                            input="6\nq\n", capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Training history" in result.stdout and "* best" in result.stdout
    assert result.stdout.count("Choose an option: ") == 2
    assert (trained / "training_curves.png").is_file()


def test_menu_typed_at_a_real_terminal_shows_history_and_quits_with_0(trained):
    has_readline = importlib.util.find_spec("readline") is not None
    controller, terminal = os.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 120, 0, 0))
    child = subprocess.Popen([sys.executable, "-m", "useg", "menu", "--run-dir", str(trained)],
                             stdin=terminal, stdout=terminal, stderr=terminal, start_new_session=True,
                             env={**os.environ, "TERM": "xterm-256color"})
    os.close(terminal)
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


def test_menu_answers_bad_input_and_keeps_going(run, monkeypatch, capsys):
    code, out = menu(monkeypatch, capsys, run, "x\n5\n0\n5\nmany\n4\n99\n")
    assert code == 0  # input ran out: the menu ends cleanly
    assert "Unknown option 'x'" in out
    assert out.count("Please give a whole number of at least 1") == 2
    assert "No checkpoint number '99'" in out
    assert len(periodic_names(run)) == 3


def test_info_option_shows_the_chosen_checkpoint(run, monkeypatch, capsys):
    names = [info.name for info in list_checkpoints(run / "checkpoints")]
    number = names.index("latest_checkpoint.pt") + 1
    code, out = menu(monkeypatch, capsys, run, f"4\n{number}\nq\n")
    assert code == 0 and "kind:          latest" in out and f"useg resume latest --run-dir {run}" in out


def test_resume_option_refuses_best_and_resumes_a_chosen_periodic_checkpoint(run, monkeypatch, capfd):
    import torch

    names = [info.name for info in list_checkpoints(run / "checkpoints")]
    best, second = names.index("best_model.pt") + 1, names.index("epoch_002_checkpoint.pt") + 1
    # capfd, not capsys: the training runs as a child process writing to the real stdout
    code, out = menu(monkeypatch, capfd, run, f"3\n{best}\n3\n{second}\n4\nq\n")
    assert code == 0
    assert "best_model.pt holds weights only" in out
    assert "$ useg resume" in out and "epoch   4/4" in out
    state = torch.load(run / "checkpoints" / "latest_checkpoint.pt", weights_only=True)
    assert state["epoch"] == 4 and state["history"]["resumed_at"] == [2]


def test_history_option_on_a_folder_without_a_run_says_so(tmp_path, monkeypatch, capsys):
    code, out = menu(monkeypatch, capsys, tmp_path, "6\nq\n")
    assert code == 0 and "error: no training history" in out
