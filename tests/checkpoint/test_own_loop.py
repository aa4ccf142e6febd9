"""examples/own_loop.py: a plain PyTorch loop on useg's checkpoint library survives SIGKILL exactly."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "own_loop.py"
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}


def own_loop(run: Path, *extra: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(EXAMPLE), "--run-dir", str(run), "--epochs", "2", *extra],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def useg(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "useg", *args], env=ENV, capture_output=True, text=True, timeout=300)


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "latest_checkpoint.pt", weights_only=True)["model_state_dict"]


def kill_mid_training(run: Path, rng: random.Random) -> bool:
    """Start the loop, SIGKILL it at a random moment once it has saved; False when it finished first."""
    process = own_loop(run)
    latest = run / "checkpoints" / "latest_checkpoint.pt"
    deadline = time.monotonic() + 240
    while not latest.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(rng.uniform(0.0, 0.4))
    if process.poll() is not None:
        process.communicate()
        return False
    process.send_signal(signal.SIGKILL)
    process.communicate()
    return True


def test_sigkilled_own_loop_resumes_to_the_uninterrupted_weights_bit_for_bit(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    out, err = own_loop(straight).communicate(timeout=300)
    assert "epoch 2/2" in out, err
    rng = random.Random(16)
    kills = sum(kill_mid_training(killed, rng) for _ in range(3))
    assert kills >= 1
    resumed = own_loop(killed)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert "resumed from" in out or "epoch 1/2" in out
    expected, got = final_weights(straight), final_weights(killed)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[name], got[name]) for name in expected)


def test_sigterm_saves_an_interrupt_checkpoint_and_the_rerun_continues(tmp_path):
    run = tmp_path / "run"
    process = own_loop(run)
    latest = run / "checkpoints" / "latest_checkpoint.pt"
    while not latest.exists() and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=300)
    if process.returncode == 0:  # it finished before the signal arrived: nothing to check here
        return
    assert process.returncode == 128 + signal.SIGTERM, err
    sidecar = json.loads((run / "checkpoints" / "latest_checkpoint.pt.json").read_text())
    assert sidecar["kind"] == "interrupt"
    rerun = own_loop(run)
    out, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0 and "resumed from latest_checkpoint.pt" in out


def test_useg_checkpoint_commands_work_on_the_loops_run_folder(tmp_path):
    run = tmp_path / "run"
    process = own_loop(run, "--epochs", "3")  # periodic files 1, 2, 3: clean --keep 1 removes epoch 1
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    listed = useg("checkpoints", "list", "--run-dir", str(run), "--json")
    assert listed.returncode == 0, listed.stderr
    records = {record["name"]: record for record in json.loads(listed.stdout)}
    assert {"latest_checkpoint.pt", "best_model.pt", "epoch_001_checkpoint.pt", "epoch_003_checkpoint.pt"} <= set(records)
    assert records["latest_checkpoint.pt"]["metrics"]["val_loss"] > 0
    verified = useg("checkpoints", "verify", "--run-dir", str(run))
    assert verified.returncode == 0, verified.stderr
    cleaned = useg("checkpoints", "clean", "--run-dir", str(run), "--keep", "1")
    assert cleaned.returncode == 0, cleaned.stderr
    assert not (run / "checkpoints" / "epoch_001_checkpoint.pt").exists()
    assert (run / "checkpoints" / "epoch_002_checkpoint.pt").exists()  # what resume falls back to
    exported = useg("checkpoints", "export", str(run / "checkpoints" / "best_model.pt"), str(tmp_path / "w.safetensors"))
    assert exported.returncode == 0, exported.stderr
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "w.safetensors")
    best = torch.load(run / "checkpoints" / "best_model.pt", weights_only=True)
    assert "optimizer_state_dict" not in best and "position" not in best
    assert all(torch.equal(weights[name], best["model_state_dict"][name]) for name in weights)
