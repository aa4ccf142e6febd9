"""What a researcher reads in the terminal: one way to say a run's position, the finished-run
message, --quiet per session, the live bar's labels and warnings on their own line, --version, help."""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import shlex
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from tiny import TINY, assert_rate_matches
from useg import faults
from useg.cli import build_parser, main
from useg.training.progress import position_text, remaining_text, remaining_time, slowdown_note, whole_epoch_time

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


def epoch_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if re.match(r"epoch +\d+/\d+  loss", line)]


def test_a_resumed_epoch_reports_the_samples_it_trained_and_the_run_its_remaining_time(tmp_path, capsys,
                                                                                        monkeypatch):
    # Stopped after batch 2 of 3: the resumed session trains one batch (2 samples) of epoch 1, then epoch 2.
    run = tmp_path / "my run"
    monkeypatch.setattr(faults, "_hits", {})
    monkeypatch.setenv("USEG_KILL_AT", "step:2:SIGTERM")
    assert main(["train", "--run-dir", str(run), "--epochs", "2", *FLAGS, "--quiet"]) == 143
    monkeypatch.delenv("USEG_KILL_AT")
    capsys.readouterr()
    assert main(["resume", "latest", "--run-dir", str(run)]) == 0
    out = capsys.readouterr().out
    [log_path] = (run / "logs").glob("training_*.json")
    epochs = json.loads(log_path.read_text())["epochs"]
    assert [row["samples_trained"] for row in epochs] == [2, 6]  # not a whole epoch's 6 for the resumed one
    for row in epochs:  # the rate is those samples over the epoch's time
        assert_rate_matches(row)
    first, last = epoch_lines(out)
    assert f"{epochs[0]['samples_per_s']:.1f} samples/s" in first, first
    assert re.search(r"samples/s  ~\d+ (s|min) left", first), first  # one epoch to go
    assert "left" not in last, last  # nothing after the last epoch
    lines = out.splitlines()
    done = next(index for index, line in enumerate(lines) if line.startswith("Done: 2 epochs"))
    quoted = shlex.quote(str(run))
    assert lines[done + 1] == f"Next: useg history --run-dir {quoted} | useg evaluate --run-dir {quoted}", out


def test_next_steps_name_the_pictures_when_the_run_drew_some(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), "--epochs", "1", *TINY, "--vis-every", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    done = next(index for index, line in enumerate(lines) if line.startswith("Done: 1 epoch"))
    assert lines[done + 1] == (f"Next: useg history --run-dir {run} | useg evaluate --run-dir {run} | "
                               f"pictures in {run / 'visualizations_training'}")
    assert "left" not in epoch_lines("\n".join(lines))[0]  # a one-epoch run has nothing left after it


@pytest.mark.parametrize("seconds, text", [
    (0.2, "~1 s left"), (40.4, "~40 s left"), (59.6, "~1 min left"), (725, "~12 min left"),
    (7500, "~2 h 5 min left"),
])
def test_remaining_time_reads_in_the_largest_sensible_unit(seconds, text):
    assert remaining_text(seconds) == text


def test_the_remaining_time_scales_a_partial_epoch_to_a_whole_one():
    # 1 s of steps for 2 of 6 samples, 2 s of validation and save: a whole epoch is 3 s of steps + 2 s.
    assert whole_epoch_time(3.0, 1.0, 2, 6) == pytest.approx(5.0)
    assert remaining_time([5.0, 4.0, 100.0], 3) == pytest.approx(15.0)  # the median, not one slow epoch
    assert remaining_time([5.0], 0) is None


def test_a_resumed_partial_epoch_is_not_called_slow():
    # Its rate pays a whole validation for a third of the samples: lower, with nothing else on the cores.
    assert slowdown_note([48.0, 50.0, 52.0, 5.0], [6, 6, 6, 2], 6) == ""
    assert "SLOW" in slowdown_note([48.0, 50.0, 52.0, 5.0], [6, 6, 6, 6], 6)
    assert slowdown_note([48.0, 5.0, 50.0, 52.0, 49.0], [6, 2, 6, 6, 6], 6) == ""


def test_pretrained_help_names_every_kind_of_file_it_takes():
    train_help = next(parser for name, parser in parsers(build_parser()) if name == "useg train").format_help()
    text = " ".join(train_help.split())
    assert "a useg checkpoint such as best_model.pt, or a useg export" in text, text
