"""Synthetic tasks at the official configuration: images/s per core, warm and cold, and the cache's memory.

`python -m bench.synthetic_rate [--quick]` prints the table; `run` is the `python -m bench` entry.
One task is 65 images (a target and 64 supports) of 128x128 px. Per core: one thread,
timed by its own CPU time (time.thread_time), so other work on a shared machine slows the
wall clock but not the figure. Warm: every family already in the cache (all 1,000 fit in
its bound at 128 px). Cold: a cache of 0 bytes, so every task builds its family first, as
the first tasks of a run do. Both run interleaved with the task sampler on the embedded
synthetic ultrasound set (draw version 2), per image, for scale: the sampler also stacks
the batch into tensors, which synthetic tasks leave to their caller.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from useg.data.synthetic_tasks import CACHE_BYTES, FAMILIES, SyntheticTasks

from .common import Row, Section, Settings, interleaved, median, mib, seconds, spread, verdict
from .sampler import BATCH, IMAGE_SIZE, SUPPORT, official_sampler

IMAGES_PER_TASK = SUPPORT + 1
GOAL_PER_CORE = 3_000  # images/s per worker core, the whole pipeline's goal (issue 26)
CONFIG = f"{IMAGE_SIZE}x{IMAGE_SIZE}, support {SUPPORT}"


def run(settings: Settings) -> list[Section]:
    section = Section(f"Synthetic tasks at the official configuration ({CONFIG})", "synthetic images/s",
                      "task sampler images/s (embedded data)")
    started = time.perf_counter()
    warm, build_s = warm_source()
    cold = SyntheticTasks(0, IMAGE_SIZE, cache_bytes=0)
    sampler = official_sampler(2)
    rates = per_core({"warm": warm, "cold": cold}, sampler, 8 if settings.quick else 24)
    warm_rate, cold_rate = median(rates["warm"]), median(rates["cold"])
    section.rows += [
        Row(case="warm cache, per core", command="`SyntheticTasks(0, 128).task(rng, 64)` on one thread, per CPU second",
            ours=spread(rates["warm"], images_per_s), baseline=spread(rates["sampler"], images_per_s),
            ratio=f"{warm_rate / median(rates['sampler']):.2f}x", goal=f">= {GOAL_PER_CORE:,} images/s per core",
            verdict=verdict(warm_rate >= GOAL_PER_CORE)),
        Row(case="cold cache (each task builds its family), per core", command="the same with `cache_bytes=0`",
            ours=spread(rates["cold"], images_per_s), baseline=spread(rates["warm"], images_per_s),
            ratio=f"{cold_rate / warm_rate:.2f}x warm"),
        Row(case=f"all {FAMILIES:,} families in the cache", command="`source.family(i)` for every family, once",
            ours=f"{mib(warm.cache.nbytes)} in {seconds(build_s)}", baseline=f"bound {mib(CACHE_BYTES)}",
            ratio=f"{warm.cache.nbytes / CACHE_BYTES:.0%} of the bound"),
    ]
    section.reading.append(
        f"One core renders {warm_rate:,.0f} images/s of synthetic tasks at {CONFIG} with the families cached "
        f"({verdict(warm_rate >= GOAL_PER_CORE)} against {GOAL_PER_CORE:,}) and {cold_rate:,.0f} when every task "
        f"first builds its family; a run builds each of the {FAMILIES:,} families once ({seconds(build_s)} in all "
        f"here), after which the cache ({mib(warm.cache.nbytes)}) holds them all. Per image, a subject costs two "
        "small matrix products (its deformation and its shading, upsampled from coarse grids), one gather of the "
        "template's image and label map, and a few vectorised passes (shading, noise, clipping).")
    section.seconds = time.perf_counter() - started
    return [section]


def warm_source() -> tuple[SyntheticTasks, float]:
    source = SyntheticTasks(0, IMAGE_SIZE)
    begin = time.perf_counter()
    for index in range(source.families):
        source.family(index)
    return source, time.perf_counter() - begin


def per_core(sources: dict[str, SyntheticTasks], sampler, rounds: int) -> dict[str, list[float]]:
    """images/s per CPU second of one task (synthetic) or one batch (the sampler), interleaved."""
    tasks = iter(range(10**6))
    sampler.batch(0, 0, BATCH)  # builds the sampler's mirror copy and noise bank: once per run

    def synthetic(source: SyntheticTasks):
        def one() -> float:
            rng = np.random.default_rng([1, next(tasks)])
            begin = time.thread_time()
            source.task(rng, SUPPORT)
            return IMAGES_PER_TASK / (time.thread_time() - begin)
        return one

    def real() -> float:
        begin = time.thread_time()
        sampler.batch(0, next(tasks), BATCH)
        return BATCH * IMAGES_PER_TASK / (time.thread_time() - begin)

    return interleaved({**{name: synthetic(source) for name, source in sources.items()}, "sampler": real},
                       rounds, warmup=2)


def images_per_s(value: float) -> str:
    return f"{value:,.0f} images/s"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.synthetic_rate", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    args = parser.parse_args()
    for section in run(Settings(quick=args.quick, workdir=None)):
        print(f"## {section.title} ({section.seconds:.0f} s)")
        for row in section.rows:
            print(f"- {row.case}: {row.ours} against {row.baseline}: {row.ratio}"
                  f"{f' | goal {row.goal}: {row.verdict}' if row.goal else ''}")
        print(*section.reading, sep="\n")


if __name__ == "__main__":
    main()
