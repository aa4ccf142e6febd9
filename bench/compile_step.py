"""Optional (`python -m bench --only compile`): torch.compile of the split model vs eager, and its compile time.

Not in the default run: compiling takes tens of seconds on a small CPU machine.
"""

from __future__ import annotations

import time

import torch

from useg.model import build_universeg

from .common import Row, Section, Settings, interleaved, median, seconds, spread
from .model_step import OFFICIAL, TRAINING, step_inputs


def run(settings: Settings) -> list[Section]:
    section = Section("torch.compile of the split model (CPU)", "compiled", "eager")
    started = time.perf_counter()
    for config, runs in ((TRAINING, 5), (OFFICIAL, 1 if settings.quick else 3)):
        torch.manual_seed(0)
        model = build_universeg((config.width,) * 4)
        compiled = torch.compile(model)
        inputs = step_inputs(config)

        def step(module):
            def timed() -> float:
                model.zero_grad(set_to_none=True)
                begin = time.perf_counter()
                module(*inputs).square().mean().backward()
                return time.perf_counter() - begin
            return timed

        first_call = step(compiled)()
        times = interleaved({"compiled": step(compiled), "eager": step(model)}, runs, warmup=1)
        saved = median(times["eager"]) - median(times["compiled"])
        section.rows.append(Row(
            case=config.name, command="`torch.compile(model)` vs `model`, forward+backward",
            ours=spread(times["compiled"]), baseline=spread(times["eager"]),
            ratio=f"{median(times['eager']) / median(times['compiled']):.2f}x faster",
            goal="", verdict=f"first call {seconds(first_call)}",
        ))
        if saved > 0:
            outcome = f"saves {seconds(saved)} per step, so it pays off after {first_call / saved:,.0f} steps"
        else:
            outcome = f"makes each step {seconds(-saved)} slower, so it never pays off"
        section.reading.append(f"{config.name}: compiling costs {seconds(first_call)} once and {outcome}.")
        torch._dynamo.reset()
    section.seconds = time.perf_counter() - started
    return [section]
