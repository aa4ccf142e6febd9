"""Mixed precision on the CPU: bf16 autocast and the fp16 loss scaler, exact resume, skipped steps, exports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import useg.training.setup
from tiny import TINY
from useg import faults
from useg.cli import main
from useg.compute.precision import make_scaler, optimizer_step

FLAGS = ["--epochs", "2", *TINY, "--quiet", "--vis-every", "0"]


def latest(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "latest_checkpoint.pt", weights_only=True)


def same_weights(a: dict, b: dict) -> bool:
    return all(torch.equal(tensor, b["model_state_dict"][name]) for name, tensor in a["model_state_dict"].items())


def interrupted_then_resumed(run: Path, monkeypatch, *flags: str) -> None:
    """Ctrl+C at the 4th step (epoch 2, batch 1 of 3), in this process, then `useg resume latest`."""
    monkeypatch.setattr(faults, "_hits", {})
    monkeypatch.setenv("USEG_KILL_AT", "step:4:SIGINT")
    assert main(["train", "--run-dir", str(run), *FLAGS, *flags]) == 130
    assert latest(run)["sampler_state"]["batch_index"] == 1
    monkeypatch.delenv("USEG_KILL_AT")
    assert main(["resume", "latest", "--run-dir", str(run), "--quiet"]) == 0


def test_bf16_autocast_run_resumed_mid_epoch_equals_the_uninterrupted_run(tmp_path, monkeypatch):
    fp32, straight, stopped = tmp_path / "fp32", tmp_path / "straight", tmp_path / "stopped"
    assert main(["train", "--run-dir", str(fp32), *FLAGS]) == 0
    assert main(["train", "--run-dir", str(straight), *FLAGS, "--precision", "bf16"]) == 0
    interrupted_then_resumed(stopped, monkeypatch, "--precision", "bf16")
    assert same_weights(latest(straight), latest(stopped))
    assert latest(straight)["history"]["train_loss"] == latest(stopped)["history"]["train_loss"]
    assert not same_weights(latest(straight), latest(fp32)), "bf16 autocast computed exactly what fp32 did"
    assert latest(stopped)["config"]["precision"] == "bf16"
    for name in ("latest_checkpoint.pt", "best_model.pt"):  # fp32 master weights, whatever autocast did
        state = torch.load(stopped / "checkpoints" / name, weights_only=True)
        assert {tensor.dtype for tensor in state["model_state_dict"].values()} == {torch.float32}


def test_fp16_scaler_state_is_saved_and_restored_on_resume(tmp_path, monkeypatch):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert main(["train", "--run-dir", str(straight), *FLAGS, "--precision", "fp16"]) == 0
    interrupted_then_resumed(stopped, monkeypatch, "--precision", "fp16")
    saved = latest(straight)["grad_scaler_state_dict"]
    assert saved["scale"] > 0 and saved["_growth_tracker"] == 6  # six steps without an overflow
    # A fresh scaler after the resume would count its growth from 0 again.
    assert latest(stopped)["grad_scaler_state_dict"] == saved
    assert same_weights(latest(straight), latest(stopped))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One epoch at the CPU's default precision, shared by the tests that only read it."""
    run = tmp_path_factory.mktemp("fp32") / "run"
    assert main(["train", "--run-dir", str(run), *FLAGS, "--epochs", "1"]) == 0
    return run


def test_cpu_default_is_fp32_with_an_empty_scaler_state(trained):
    assert latest(trained)["grad_scaler_state_dict"] == {} and latest(trained)["config"]["precision"] == "fp32"


def test_steps_skipped_by_the_scaler_are_counted_and_are_not_divergence(tmp_path, monkeypatch, capsys):
    # A scale of 2**40 overflows fp16 gradients, so the scaler skips every step and halves the scale.
    monkeypatch.setattr(useg.training.setup, "make_scaler", lambda precision, device: torch.amp.GradScaler(
        device.type, init_scale=2.0 ** 40))
    run = tmp_path / "run"
    flags = ["--epochs", "1", *TINY, "--vis-every", "0", "--precision", "fp16"]
    assert main(["train", "--run-dir", str(run), *flags]) == 0
    state = latest(run)
    assert state["history"]["skipped_steps"] == [3] and state["skipped_steps"] == 3
    assert state["optimizer_state_dict"]["state"] == {}  # no step was taken: Adam never ran
    assert state["grad_scaler_state_dict"]["scale"] == 2.0 ** 37
    assert "3 step(s) skipped by the fp16 loss scaler" in capsys.readouterr().out
    [log] = (run / "logs").glob("training_*.json")
    assert json.loads(log.read_text())["epochs"][0]["skipped_steps"] == 3


def test_optimizer_step_reports_a_skipped_step_and_leaves_the_weights():
    layer = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    scaler = make_scaler("fp16", torch.device("cpu"))
    before = layer.weight.detach().clone()
    loss = layer(torch.tensor([[1.0, float("inf")]])).sum() * 0  # finite loss, inf gradient
    assert not optimizer_step(loss, optimizer, scaler)
    assert torch.equal(layer.weight, before)
    optimizer.zero_grad()
    assert optimizer_step(layer(torch.ones(1, 2)).sum(), optimizer, scaler)
    assert not torch.equal(layer.weight, before)
    assert make_scaler("bf16", torch.device("cpu")) is None


@pytest.mark.parametrize("dtype, torch_dtype", [(None, torch.float32), ("bf16", torch.bfloat16),
                                                ("fp16", torch.float16)])
def test_export_writes_fp32_unless_dtype_says_otherwise(trained, tmp_path, dtype, torch_dtype):
    run = trained
    out = tmp_path / "weights.safetensors"
    extra = ["--dtype", dtype] if dtype else []
    assert main(["checkpoints", "export", str(run / "checkpoints" / "best_model.pt"), str(out), *extra]) == 0
    weights = load_file(out)
    assert {tensor.dtype for tensor in weights.values()} == {torch_dtype}
    assert json.loads((tmp_path / "weights.safetensors.json").read_text())["dtype"] == (dtype or "fp32")
    original = latest(run)["model_state_dict"]
    for name, tensor in weights.items():
        assert torch.equal(tensor, original[name].to(torch_dtype))
