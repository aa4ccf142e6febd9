"""Row (e): UniverSeg forward+backward, `cross_impl="split"` (ours) vs `"concat"` (the reference).

Time: both models with the same weights and inputs in one process, interleaved. Peak
memory: a fresh process per implementation (`python -m bench.peak_memory ...`) reports its
peak RSS (VmHWM) and its RSS just before the step; the difference is what the step needs.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass

import torch

from useg.model import build_universeg

from .common import Row, Section, Settings, child_env, interleaved, median, run_timed, seconds, shell, spread

SPEED_GOAL = 1.4
MAX_DIFFERENCE = 1e-4


@dataclass(frozen=True)
class Config:
    name: str
    size: int
    width: int
    batch: int
    support: int

    def flags(self) -> list[str]:
        return ["--size", str(self.size), "--width", str(self.width), "--batch", str(self.batch),
                "--support", str(self.support)]


OFFICIAL = Config("official v1: 128x128, widths 64, B=4, S=8", 128, 64, 4, 8)
TRAINING = Config("training default: 64x64, widths 32, B=4, S=4", 64, 32, 4, 4)


def run(settings: Settings) -> list[Section]:
    section = Section("UniverSeg forward+backward: split (ours) vs concat (reference)",
                      'cross_impl="split"', 'cross_impl="concat"')
    started = time.perf_counter()
    runs = {OFFICIAL: 1 if settings.quick else 3, TRAINING: 5 if settings.quick else 9}
    for config, count in runs.items():
        times, difference = _time_step(config, count)
        speedup = median(times["concat"]) / median(times["split"])
        section.rows.append(Row(
            case=f"{config.name}: time",
            command=f"`model(target, images, labels)` + `.backward()`, max abs output difference {difference:.1e}",
            ours=spread(times["split"]), baseline=spread(times["concat"]), ratio=f"{speedup:.2f}x faster",
            goal=f">= {SPEED_GOAL}x" if config is OFFICIAL else "",
            verdict=_speed_verdict(config, speedup, difference),
        ))
        section.results[config] = times
        peaks = _peak_memory(config)
        split_step, concat_step = peaks["split"]["step_mib"], peaks["concat"]["step_mib"]
        section.rows.append(Row(
            case=f"{config.name}: peak memory of the step",
            command=f"`{shell(_peak_args('split', config))}` (and `--impl concat`)",
            ours=f"{split_step:,.0f} MiB (peak RSS {peaks['split']['peak_mib']:,.0f} MiB)",
            baseline=f"{concat_step:,.0f} MiB (peak RSS {peaks['concat']['peak_mib']:,.0f} MiB)",
            ratio=f"{split_step / concat_step:.0%} of concat",
            goal="lower" if config is OFFICIAL else "", verdict=_memory_verdict(config, split_step, concat_step),
        ))
    section.reading += _reading(section)
    section.seconds = time.perf_counter() - started
    return [section]


def _time_step(config: Config, runs: int) -> tuple[dict[str, list[float]], float]:
    torch.manual_seed(0)
    models = {impl: build_universeg((config.width,) * 4, cross_impl=impl) for impl in ("split", "concat")}
    models["concat"].load_state_dict(models["split"].state_dict())
    inputs = step_inputs(config)
    with torch.no_grad():
        difference = (models["split"](*inputs) - models["concat"](*inputs)).abs().max().item()

    def step(impl: str):
        def timed() -> float:
            models[impl].zero_grad(set_to_none=True)
            begin = time.perf_counter()
            models[impl](*inputs).square().mean().backward()
            return time.perf_counter() - begin
        return timed

    return interleaved({"split": step("split"), "concat": step("concat")}, runs, warmup=1), difference


def step_inputs(config: Config) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    shape = (config.batch, config.support, 1, config.size, config.size)
    target = torch.rand(config.batch, 1, config.size, config.size, generator=generator)
    images = torch.rand(shape, generator=generator)
    labels = (torch.rand(shape, generator=generator) > 0.5).float()
    return target, images, labels


def _peak_args(impl: str, config: Config) -> list[str]:
    return [sys.executable, "-m", "bench.peak_memory", "--impl", impl, *config.flags()]


def _peak_memory(config: Config) -> dict[str, dict[str, float]]:
    """One fresh process per implementation: the peak of a step varies by a few MiB at most."""
    peaks = {}
    for impl in ("split", "concat"):
        _, done = run_timed(_peak_args(impl, config), env=child_env())
        peaks[impl] = json.loads(done.stdout.strip().splitlines()[-1])
    return peaks


def _speed_verdict(config: Config, speedup: float, difference: float) -> str:
    same = difference <= MAX_DIFFERENCE
    if config is not OFFICIAL:
        return "outputs equal" if same else "**outputs differ**"
    return ("met" if speedup >= SPEED_GOAL else "**missed**") + ("" if same else ", **outputs differ**")


def _memory_verdict(config: Config, split_step: float, concat_step: float) -> str:
    if config is not OFFICIAL:
        return ""
    return "met" if split_step < concat_step else "**missed**"


def _reading(section: Section) -> list[str]:
    official = section.results.get(OFFICIAL)
    lines = []
    if official:
        speedup = median(official["concat"]) / median(official["split"])
        lines.append(f"At the official size the split implementation takes {seconds(median(official['split']))} "
                     f"per forward+backward against {seconds(median(official['concat']))}: {speedup:.2f}x "
                     f"(goal {SPEED_GOAL}x).")
    lines.append(
        "What makes split faster, all exact up to float rounding: (1) the cross conv over cat(target, "
        "support) is a conv of the target part plus a conv of the support part, so the target half runs "
        "once per target instead of once per pair; (2) only the target output of the last decoder block "
        "is used, and it is the mean over the support set of a linear cross conv, which equals the cross "
        "conv of the mean support (the mean also commutes with the bilinear upsampling before it), so "
        "that block convolves one averaged support element instead of S at full resolution; (3) support "
        "features are kept channels-last, which oneDNN's CPU convolutions run faster; (4) the target part "
        "is added out of place, because an in-place add on a view makes autograd copy the gradient back. "
        "Peak memory falls mostly through (2): the largest tensors of the reference are the S "
        "full-resolution pairs of the last block. torch.compile is not used; `python -m bench --only "
        "compile` measures what it would give."
    )
    return lines
