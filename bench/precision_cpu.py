"""Mixed precision on the CPU: a training step with bf16 autocast against fp32, at the default configuration.

Why fp32 stays the CPU default: on CPUs without AMX or AVX512-BF16 (the benchmark machine has
neither) bf16 convolutions run through conversions and are slower than fp32. Same model, same inputs, one process, interleaved rounds; the thread
count is the one `useg train` picks here.
"""

from __future__ import annotations

import time

import torch

from useg.compute.device import default_threads, usable_cores
from useg.training.losses import segmentation_loss
from useg.model import build_universeg
from useg.compute.precision import autocast

from .common import Row, Section, Settings, interleaved, median, spread
from .model_step import TRAINING, step_inputs


def run(settings: Settings) -> list[Section]:
    section = Section("Mixed precision on the CPU: bf16 autocast vs fp32 (training default)", "bf16 autocast", "fp32")
    started = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(default_threads(usable_cores()))
    try:
        times = _time_steps(5 if settings.quick else 9)
    finally:
        torch.set_num_threads(threads)
    ratio = median(times["bf16"]) / median(times["fp32"])
    section.rows.append(Row(
        case=f"{TRAINING.name}: forward, loss, backward, Adam step",
        command=f"`python -m bench --only precision`: one step under `autocast('cpu', torch.bfloat16)` vs none, "
                f"{default_threads(usable_cores())} thread(s)",
        ours=spread(times["bf16"]), baseline=spread(times["fp32"]), ratio=f"{ratio:.2f}x the time of fp32",
    ))
    section.reading.append(
        f"bf16 autocast makes a default training step {ratio:.2f}x as long as fp32 on this CPU, which is why "
        "`--precision` defaults to fp32 on the CPU; on CUDA it defaults to bf16 (rows of `bench/gpu.sh`).")
    section.seconds = time.perf_counter() - started
    return [section]


def _time_steps(runs: int) -> dict[str, list[float]]:
    torch.manual_seed(0)
    model = build_universeg((TRAINING.width,) * 4)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    target, images, labels = step_inputs(TRAINING)
    truth = (target > 0.5).float()
    device = torch.device("cpu")

    def step(precision: str):
        def timed() -> float:
            begin = time.perf_counter()
            with autocast(precision, device):
                loss = segmentation_loss(model(target, images, labels).float(), truth)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return time.perf_counter() - begin
        return timed

    return interleaved({"bf16": step("bf16"), "fp32": step("fp32")}, runs, warmup=1)
