"""What a researcher reads in the terminal: one way to say a run's position, the finished-run
message, --quiet per session, the live bar's labels and warnings on their own line, --version, help."""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from tiny import TINY
from useg import faults
from useg.cli import build_parser, main
from useg.training.progress import position_text

FLAGS = [*TINY, "--vis-every", "0"]  # 6 samples per epoch in batches of 2: 3 batches per epoch


@pytest.mark.parametrize("args, text", [
    ((3, 82, 128, 8), "epoch 4 of 8, batch 82 of 128 (3 epochs complete)"),
    ((0, 2, 3, 2), "epoch 1 of 2, batch 2 of 3 (0 epochs complete)"),
    ((1, 1, 3, 2), "epoch 2 of 2, batch 1 of 3 (1 epoch complete)"),
    ((3, 0, 3, 8), "3 of 8 epochs complete"),
    ((1, 0, None, 1), "1 of 1 epoch complete"),
    ((2, 0, None, None), "2 epochs complete"),
    ((4, 0, None, 3), "4 epochs complete"),  # resumed with a smaller --epochs
])
def test_position_text_names_the_epoch_in_progress_and_counts_complete_epochs(args, text):
    assert position_text(*args) == text


def test_version_comes_from_the_package_metadata(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"useg {version('useg')}"


def parsers(parser: argparse.ArgumentParser, name: str = "useg"):
    """The parser and every subcommand's parser below it, with their command names."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command, child in action.choices.items():
                yield from parsers(child, f"{name} {command}")


def test_every_positional_argument_has_a_help_text():
    bare = [f"{name}: {action.dest}" for name, parser in parsers(build_parser()) for action in parser._actions
            if not action.option_strings and not isinstance(action, argparse._SubParsersAction)
            and not action.help]
    assert not bare, f"positional arguments without help: {bare}"
    resume_help = next(parser for name, parser in parsers(build_parser()) if name == "useg resume").format_help()
    assert re.search(r"WHICH\s+latest \(default\), best, an epoch number", resume_help), resume_help


def files_of(run: Path) -> dict[str, int]:
    """The run's files and their modification times (not the lock and verification caches, dot files
    that any command touches)."""
    return {str(path.relative_to(run)): path.stat().st_mtime_ns for path in sorted(run.rglob("*"))
            if path.is_file() and not path.name.startswith(".")}


def test_resuming_a_finished_run_says_it_is_complete_and_how_to_extend_it(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), "--epochs", "1", *FLAGS]) == 0
    assert "Done: 1 epoch, best val Dice" in capsys.readouterr().out
    before = files_of(run)
    for quiet in ([], ["--quiet"]):  # the outcome is shown even to a quiet session
        assert main(["resume", "latest", "--run-dir", str(run), *quiet]) == 0
        out = capsys.readouterr().out
        assert "The run is complete: 1 of 1 epoch trained" in out, out
        assert f"useg resume latest --run-dir {run} --epochs 2" in out, out
        assert "Done:" not in out and "Data:" not in out
    assert files_of(run) == before  # nothing trained, nothing written


def test_preempted_run_says_the_same_position_when_stopped_listed_and_resumed(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    monkeypatch.setattr(faults, "_hits", {})
    monkeypatch.setenv("USEG_KILL_AT", "step:2:SIGTERM")
    assert main(["train", "--run-dir", str(run), "--epochs", "2", *FLAGS, "--quiet"]) == 143
    where = "epoch 1 of 2, batch 2 of 3 (0 epochs complete)"
    assert f"SIGTERM received: saving the position at {where}" in capsys.readouterr().err
    monkeypatch.delenv("USEG_KILL_AT")
    assert main(["checkpoints", "latest", "--run-dir", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"position:      {where}" in out and "best so far:   none yet" in out, out
    assert main(["checkpoints", "latest", "--run-dir", str(run), "--json"]) == 0
    details = json.loads(capsys.readouterr().out)
    assert (details["kind"], details["epoch"], details["batch"], details["batches_per_epoch"]) == ("interrupt", 0, 2, 3)
    assert main(["checkpoints", "list", "--run-dir", str(run)]) == 0
    assert re.search(r"latest_checkpoint\.pt <\s+interrupt\s+0 \+2/3", capsys.readouterr().out)
    assert main(["resume", "latest", "--run-dir", str(run)]) == 0
    assert f"latest_checkpoint.pt at {where}" in capsys.readouterr().out


def read_terminal(master: int, process: subprocess.Popen) -> str:
    output = bytearray()
    while True:
        if select.select([master], [], [], 0.1)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
        elif process.poll() is not None:
            break
    return output.decode(errors="replace")


def test_on_a_terminal_the_bar_is_labelled_and_a_warning_gets_its_own_line(tmp_path):
    # Ctrl+C at step 2 while the live bar is drawn: the warning must not continue the bar's line.
    master, slave = os.openpty()
    env = {**os.environ, "USEG_KILL_AT": "step:2:SIGINT", "COLUMNS": "200", "TERM": "xterm"}
    process = subprocess.Popen([sys.executable, "-m", "useg", "train", "--run-dir", str(tmp_path / "run"),
                                "--epochs", "1", *FLAGS, "--samples-per-epoch", "12"],
                               stdin=slave, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    try:
        screen = read_terminal(master, process)
    finally:
        os.close(master)
    assert process.wait(120) == 130, screen
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen)  # colours and cursor moves out
    segments = re.split(r"[\r\n]+", plain)
    bar = [segment for segment in segments if segment.startswith("epoch 1/1") and "samples/s" in segment]
    assert bar and "elapsed" in bar[-1] and "remaining" in bar[-1], plain
    assert "it/s" not in plain
    warnings = [segment for segment in segments if "SIGINT received" in segment]
    assert warnings and all(segment.startswith("warning: SIGINT received") for segment in warnings), warnings
