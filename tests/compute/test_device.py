"""Where and how a run computes: --device, --deterministic and its fallback, threads, --compile."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import useg.compute.device
import useg.training.setup
import useg.training.loop
from tiny import TINY
from useg.cli import main
from useg.compute.device import (choose_device, default_data_workers, default_threads, missing_deterministic_kernels,
                                 split_cores, to_device, usable_cores)
from useg.errors import ConfigError
from useg.training.progress import slowdown_note

FLAGS = ["--epochs", "1", *TINY, "--quiet", "--vis-every", "0"]


def latest(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "latest_checkpoint.pt", weights_only=True)


# --- --device ------------------------------------------------------------------------------------

@pytest.mark.parametrize("device, words", [("cuda", "no CUDA device is available here"),
                                           ("cuda:1", "no CUDA device is available here"),
                                           ("gpu", "--device must be cpu, cuda or cuda:N")])
def test_an_unavailable_or_unknown_device_is_one_line_and_exit_2(tmp_path, capsys, device, words):
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), *FLAGS, "--device", device]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1, err
    assert not run.exists()  # refused before anything was created


def test_a_gpu_index_beyond_the_machine_names_the_gpus_there(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert choose_device("cuda:1") == torch.device("cuda", 1)
    assert choose_device(None, local_rank=1) == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match=r"--device cuda:2: this machine has 2 CUDA device\(s\), cuda:0 to cuda:1"):
        choose_device("cuda:2")
    with pytest.raises(ConfigError, match="pass --device cuda"):
        choose_device("cuda:0", distributed=True)


def test_batches_stay_where_they_are_on_the_cpu():
    from useg.data.tasks import Batch

    batch = Batch(*(torch.zeros(1) for _ in range(7)))
    assert to_device(batch, torch.device("cpu")) is batch


# --- --deterministic -------------------------------------------------------------------------------

def test_deterministic_is_the_default_saved_shown_and_the_process_settings_come_back(tmp_path, capsys):
    run = tmp_path / "run"
    before = torch.are_deterministic_algorithms_enabled()
    assert main(["train", "--run-dir", str(run), *FLAGS]) == 0
    assert torch.are_deterministic_algorithms_enabled() == before
    assert latest(run)["config"]["deterministic"] is True
    capsys.readouterr()
    assert main(["checkpoints", "info", str(run / "checkpoints" / "latest_checkpoint.pt")]) == 0
    assert "deterministic: yes: a resume is bit-identical" in capsys.readouterr().out


def test_no_deterministic_is_saved_inherited_on_resume_and_the_resume_says_not_bit_identical(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), *FLAGS, "--no-deterministic"]) == 0
    assert latest(run)["config"]["deterministic"] is False
    capsys.readouterr()
    assert main(["resume", "latest", "--run-dir", str(run), "--epochs", "2", "--quiet"]) == 0
    assert "continues correctly, not bit-identical" in capsys.readouterr().err
    assert latest(run)["config"]["deterministic"] is False
    assert main(["checkpoints", "info", str(run / "checkpoints" / "latest_checkpoint.pt")]) == 0
    assert "deterministic: no: a resume continues correctly, not bit-identical" in capsys.readouterr().out
    # Asking for it again on a later resume turns it back on.
    assert main(["resume", "latest", "--run-dir", str(run), "--epochs", "3", "--quiet", "--deterministic"]) == 0
    assert latest(run)["config"]["deterministic"] is True


def test_the_real_model_has_deterministic_kernels_for_every_op_on_the_cpu():
    from useg.config import build_config
    from useg.model import build_universeg
    from useg.training.setup import probe_step

    cfg = build_config({"widths": [4, 4], "precision": "fp32"})
    model = build_universeg((4, 4))
    torch.use_deterministic_algorithms(True)
    try:
        assert missing_deterministic_kernels(lambda: probe_step(model, cfg, torch.device("cpu"))) == []
    finally:
        torch.use_deterministic_algorithms(False)
    assert all(parameter.grad is None for parameter in model.parameters())


def op_without_deterministic_kernel() -> None:
    """max_unpool2d has no deterministic kernel on any device: what bilinear upsampling's backward was on CUDA."""
    values, indices = torch.nn.functional.max_pool2d(torch.rand(1, 1, 4, 4), 2, return_indices=True)
    torch.nn.functional.max_unpool2d(values, indices, 2)


@pytest.mark.parametrize("how", ["warning", "error"])
def test_an_op_without_a_deterministic_kernel_falls_back_in_one_line_and_is_recorded(tmp_path, monkeypatch,
                                                                                     capsys, how):
    real_probe = useg.training.setup.probe_step

    def probe_with_such_an_op(model, cfg, device):
        real_probe(model, cfg, device)
        if how == "warning":
            op_without_deterministic_kernel()  # torch warns: the probe runs in warn-only mode
        else:  # a RuntimeError even so, as torch's cuBLAS workspace check raises
            raise RuntimeError("upsample_bilinear2d_backward_out_cuda does not have a deterministic implementation, "
                               "but you set 'torch.use_deterministic_algorithms(True)'.")

    monkeypatch.setattr(useg.training.setup, "probe_step", probe_with_such_an_op)
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), *FLAGS]) == 0
    op = "max_unpooling2d_forward_out" if how == "warning" else "upsample_bilinear2d_backward_out_cuda"
    [line] = [line for line in capsys.readouterr().err.splitlines() if "deterministic" in line]
    assert line == (f"warning: --deterministic: {op} has no deterministic kernel on cpu; continuing as "
                    "--no-deterministic (recorded in the checkpoint)")
    assert latest(run)["config"]["deterministic"] is False
    assert not torch.are_deterministic_algorithms_enabled()


def test_a_probe_error_about_something_else_is_not_hidden():
    def broken():
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        missing_deterministic_kernels(broken)


# --- threads ----------------------------------------------------------------------------------------

def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_usable_cores_honour_a_cgroup_v2_quota_of_the_process_or_its_parents(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    root = tmp_path / "cgroup"
    write(root / "cpu.max", "max 100000\n")
    write(root / "user.slice" / "cpu.max", "250000 100000\n")  # 2.5 CPUs for the slice
    write(root / "user.slice" / "job" / "cpu.max", "max 100000\n")
    proc = tmp_path / "proc_cgroup"
    write(proc, "0::/user.slice/job\n")
    assert usable_cores(root, proc) == 3
    write(root / "user.slice" / "job" / "cpu.max", "150000 100000\n")
    assert usable_cores(root, proc) == 2
    write(proc, "0::/\n")
    assert usable_cores(root, proc) == 16


def test_usable_cores_read_cgroup_v1_and_fall_back_to_the_mount_for_a_host_path(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5})
    root = tmp_path / "cgroup"
    write(root / "cpu" / "cpu.cfs_quota_us", "200000\n")
    write(root / "cpu" / "cpu.cfs_period_us", "100000\n")
    proc = tmp_path / "proc_cgroup"
    write(proc, "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n")  # not mounted inside the container
    assert usable_cores(root, proc) == 2
    write(root / "cpu" / "cpu.cfs_quota_us", "-1\n")
    assert usable_cores(root, proc) == 6
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    assert usable_cores(root, tmp_path / "missing") == 1


def test_default_threads_leave_a_core_for_the_writer_and_one_per_data_worker():
    assert default_threads(2) == 1
    assert default_threads(1) == 1
    assert default_threads(16, data_workers=3) == 12
    assert default_threads(2, data_workers=4) == 1


def test_default_workers_leave_a_core_for_training():
    assert [default_data_workers(cores) for cores in (1, 2, 3, 4, 8, 64)] == [0, 1, 1, 2, 4, 4]


def test_split_cores_gives_the_workers_their_share_first_and_keeps_what_the_flags_say(monkeypatch):
    monkeypatch.setattr(useg.compute.device, "usable_cores", lambda: 8)
    assert split_cores(0, None) == (3, 4)  # 8 cores: 4 workers, 1 for the writer, 3 threads
    assert split_cores(0, 1) == (6, 1)
    assert split_cores(2, None) == (2, 4)
    assert split_cores(5, 0) == (5, 0)


def test_num_threads_0_uses_the_detected_default_for_the_run_only(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(useg.compute.device, "usable_cores", lambda: 3)  # what choose_threads asks
    real = useg.training.loop.build_run
    monkeypatch.setattr(useg.training.loop, "build_run", lambda *a: (seen.append(torch.get_num_threads()), real(*a))[1])
    before = torch.get_num_threads()
    for workers in ("0", "1"):  # the last --num-threads wins
        assert main(["train", "--run-dir", str(tmp_path / workers), *FLAGS, "--num-threads", "0",
                     "--data-workers", workers]) == 0
    assert seen == [2, 1] and torch.get_num_threads() == before  # 3 cores - the writer's - the workers


def test_an_epoch_under_a_third_of_the_runs_median_speed_is_flagged():
    assert "SLOW: under a third of this run's 50.0 samples/s" in slowdown_note([48.0, 50.0, 52.0, 1.4])
    assert slowdown_note([48.0, 50.0, 52.0, 20.0]) == ""
    assert slowdown_note([50.0, 1.4]) == ""  # one earlier epoch is no baseline
    assert slowdown_note([None, 50.0, 1.4]) == ""


# --- --compile ----------------------------------------------------------------------------------------

class CompiledStandIn(torch.nn.Module):
    """Names its child `_orig_mod`, as torch.compile's wrapper does; counts the steps run through it."""

    calls = 0

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self._orig_mod = model

    def forward(self, *inputs):
        CompiledStandIn.calls += 1
        return self._orig_mod(*inputs)


def test_compile_trains_through_the_wrapper_and_saves_plain_parameter_names(tmp_path, monkeypatch):
    monkeypatch.setattr(useg.training.setup, "compile_model", CompiledStandIn)  # where the run is built
    plain, compiled = tmp_path / "plain", tmp_path / "compiled"
    assert main(["train", "--run-dir", str(plain), *FLAGS]) == 0
    assert main(["train", "--run-dir", str(compiled), *FLAGS, "--compile"]) == 0
    assert CompiledStandIn.calls == 3  # the 3 training steps; validation uses the plain model
    assert list(latest(compiled)["model_state_dict"]) == list(latest(plain)["model_state_dict"])
    best = torch.load(compiled / "checkpoints" / "best_model.pt", weights_only=True)
    assert not any(name.startswith("_orig_mod") for name in best["model_state_dict"])
    assert latest(compiled)["config"]["compile"] is True


# --- bench/gpu.sh -------------------------------------------------------------------------------------

def test_the_gpu_benchmark_script_parses_and_reports_parts_it_did_not_reach():
    import subprocess

    from bench.gpu import STEP_CASES, markdown

    repo = Path(__file__).resolve().parents[2]
    assert subprocess.run(["bash", "-n", str(repo / "bench" / "gpu.sh")]).returncode == 0
    assert len(STEP_CASES) == 12  # 3 precisions x deterministic on/off x eager/compiled
    row = {"precision": "fp16", "deterministic": True, "compiled": False, "median_ms": 12.5, "min_ms": 12.0,
           "max_ms": 13.0, "steps": 10, "first_step_s": 0.5, "peak_mib": 2048.0,
           "missing_deterministic_kernels": [], "skipped_steps": 0, "status": "ok"}
    text = markdown({"machine": "test", "dry_run": False, "steps": [row], "seconds": 3})
    assert "| fp16 | on | no | 12.5 ms (12.0-13.0, 10 steps) | 0.50 s | 2,048 MiB | none | ok |" in text
    assert "Sampler: not reached" in text and "Kill and resume: not reached" in text
