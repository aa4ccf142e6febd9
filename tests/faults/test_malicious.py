"""Malicious file: a checkpoint whose pickle would run code, with a *valid* sidecar (so only the
pickle check can catch it), is refused by every command that reads checkpoints, and never runs."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from faultkit import checkpoints
from useg.checkpoint.integrity import sha256_bytes


class RunsShellCommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class RunsPython:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


PAYLOADS = {
    "os.system": (RunsShellCommand, True),
    "builtins.exec": (RunsPython, True),
    "os.system, legacy torch.save format": (RunsShellCommand, False),
}


def plant(path: Path, real: Path, payload: str, marker: Path) -> None:
    """Write a real checkpoint plus a code-running object at `path`, and a sidecar that matches its bytes."""
    make, zip_format = PAYLOADS[payload]
    state = torch.load(real, weights_only=True)
    state["history"]["note"] = make(marker)
    torch.save(state, path, _use_new_zipfile_serialization=zip_format)
    data = path.read_bytes()
    sidecar = json.loads(Path(f"{real}.json").read_text())
    sidecar.update(sha256=sha256_bytes(data), size_bytes=len(data), inode=path.stat().st_ino)
    Path(f"{path}.json").write_text(json.dumps(sidecar))


@pytest.fixture
def planted(reference_run, tmp_path):
    """(run folder holding only a malicious latest_checkpoint.pt, marker, payload) per payload."""

    def make(payload: str) -> tuple[Path, Path]:
        run, marker = tmp_path / "run", tmp_path / "code_ran"
        checkpoints(run).mkdir(parents=True)
        plant(checkpoints(run) / "latest_checkpoint.pt", checkpoints(reference_run) / "latest_checkpoint.pt",
              payload, marker)
        return run, marker

    return make


@pytest.mark.parametrize("payload", PAYLOADS)
def test_every_command_that_reads_checkpoints_refuses_it_and_never_runs_it(cli, planted, tmp_path, payload, ledger):
    run, marker = planted(payload)
    evil = checkpoints(run) / "latest_checkpoint.pt"
    status = "unsafe" if PAYLOADS[payload][1] else "corrupt"  # a legacy file is not even a zip archive
    commands = {
        "list": (["checkpoints", "list", "--run-dir", run], 0, "latest_checkpoint.pt"),
        "list --json": (["checkpoints", "list", "--json", "--run-dir", run], 0, "latest_checkpoint.pt"),
        "info": (["checkpoints", "info", evil], 0, status),
        "latest": (["checkpoints", "latest", "--run-dir", run], 0, status),
        "verify": (["checkpoints", "verify", "--run-dir", run], 1, status),
        "verify PATH": (["checkpoints", "verify", evil], 1, status),
        "export": (["checkpoints", "export", evil, tmp_path / "w.safetensors"], 2, status),
        "resume PATH": (["resume", evil, "--run-dir", run], 2, status),
        "resume latest": (["resume", "latest", "--run-dir", run], 2, "no checkpoint to resume from"),
        "train --resume": (["train", "--resume", "latest", "--run-dir", run], 2, "no checkpoint to resume from"),
        "train --pretrained": (["train", "--pretrained", evil, "--run-dir", tmp_path / "new", "--epochs", "1"], 2,
                               "refused" if PAYLOADS[payload][1] else "weight file"),
        "history": (["history", "--run-dir", run], 2, status),
        "evaluate": (["evaluate", evil, "--run-dir", run], 2, status),
        "menu: view info": (["menu", "--run-dir", run], 0, status, "4\n1\nq\n"),
    }
    for name, (args, code, words, *stdin) in commands.items():
        result = cli(*args, stdin=stdin[0] if stdin else "")
        ledger.faults[f"malicious pickle ({payload}) read by a command"] += 1
        output = result.stdout + result.stderr
        assert not marker.exists(), f"`useg {name}` ran the pickle's code"
        assert result.returncode == code, (name, result.returncode, output[-2000:])
        assert words in output, (name, output[-2000:])
        assert "Traceback" not in output, (name, output[-2000:])
        if code == 2:
            assert len(result.error_lines) == 1, (name, result.stderr)
    assert evil.exists()  # refused, reported, and left for the user to inspect


def test_menu_resume_options_refuse_it_too(cli, planted, ledger):
    run, marker = planted("os.system")
    for keys in ("2\n\nq\n", "3\n1\n\nq\n"):  # resume latest / checkpoint #1, Enter: the run's epochs
        result = cli("menu", "--run-dir", run, stdin=keys)
        ledger.faults["malicious pickle (os.system) resumed from the menu"] += 1
        assert result.returncode == 0 and not marker.exists()
        assert "unsafe" in result.stderr or "no checkpoint to resume from" in result.stderr, result.stderr


def test_resume_latest_skips_a_malicious_latest_and_names_it(cli, reference_run, tmp_path, ledger):
    run, marker = tmp_path / "run", tmp_path / "code_ran"
    shutil.copytree(reference_run, run)
    latest = checkpoints(run) / "latest_checkpoint.pt"
    latest.unlink()
    plant(latest, checkpoints(reference_run) / "latest_checkpoint.pt", "os.system", marker)
    result = cli("resume", "latest", "--run-dir", run)
    ledger.faults["malicious latest among good checkpoints, resumed"] += 1
    assert not marker.exists()
    assert result.returncode == 0, result.stderr
    assert "skipped latest_checkpoint.pt: unsafe" in result.stderr and "posix.system" in result.stderr
    assert "resuming from epoch_004_checkpoint.pt" in result.stderr
