"""What every benchmark shares: rows of results, interleaved timing, subprocess timing, the machine."""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from useg.training.history import latest_log, read_log

MIB = 1024 * 1024
REPO = Path(__file__).resolve().parents[1]
SIDE_BY_SIDE = 2  # training runs at once, one thread each: the 2 cores the quality benchmarks assume


@dataclass
class Row:
    """One line of a results table: what ran, its median against a baseline's, side by side."""

    case: str
    command: str
    ours: str
    baseline: str
    ratio: str
    goal: str = ""
    verdict: str = ""


@dataclass
class Section:
    """One benchmark's table and a short reading of it, generated from the numbers."""

    title: str
    ours_label: str
    baseline_label: str
    rows: list[Row] = field(default_factory=list)
    reading: list[str] = field(default_factory=list)
    seconds: float = 0.0
    results: dict = field(default_factory=dict)  # raw numbers later sections may use


@dataclass
class Settings:
    """Options of one `python -m bench` run."""

    quick: bool
    workdir: Path  # scratch space on the disk under test; removed at the end
    done: dict[str, list[Section]] = field(default_factory=dict)  # sections measured so far, by benchmark


def median(values: list[float]) -> float:
    return statistics.median(values)


def interleaved(candidates: dict[str, Callable[[], float]], runs: int, warmup: int = 0) -> dict[str, list[float]]:
    """Call each candidate once per round, in alternating order, and collect what each returns.

    Candidates time themselves (so per-run setup stays out of the number). Alternating the
    order cancels drift on a machine that other work shares; the first `warmup` rounds are dropped.
    """
    results: dict[str, list[float]] = {name: [] for name in candidates}
    names = list(candidates)
    for round_index in range(warmup + runs):
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            value = candidates[name]()
            if round_index >= warmup:
                results[name].append(value)
    return results


def run_timed(args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None,
              expect: tuple[int, ...] = (0,)) -> tuple[float, subprocess.CompletedProcess]:
    """Wall time of one subprocess from launch to exit; raises when it ends with an unexpected code."""
    started = time.perf_counter()
    done = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode not in expect:
        raise RuntimeError(f"{shell(args)} exited with {done.returncode}:\n{done.stderr[-2000:]}")
    return elapsed, done


def side_by_side(function: Callable[[Any], Any], items: Iterable) -> list:
    """`function` over `items`, SIDE_BY_SIDE at a time (each a subprocess that computes on one thread)."""
    with ThreadPoolExecutor(SIDE_BY_SIDE) as pool:
        return list(pool.map(function, items))


def evaluate_json(run_dir: Path, *args: str) -> dict:
    """`useg evaluate --run-dir RUN --json ARGS`, read."""
    _, done = run_timed(useg_args("evaluate", "--run-dir", str(run_dir), "--json", *args), env=child_env())
    return json.loads(done.stdout)


def training_history(run_dir: Path) -> dict:
    """The history of a run's newest JSON log."""
    return read_log(latest_log(run_dir / "logs"))["history"]


def useg_args(*args: str) -> list[str]:
    """`python -m useg ARGS` with this interpreter."""
    return [sys.executable, "-m", "useg", *args]


def shell(args: list[str]) -> str:
    """A command as one would type it (interpreter shortened to `python`)."""
    shown = ["python" if arg == sys.executable else arg for arg in args]
    return " ".join(shlex.quote(arg) for arg in shown)


def child_env(**extra: str) -> dict[str, str]:
    """The environment for child processes: ours, with src/ importable even without an install."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), str(REPO), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def seconds(value: float) -> str:
    if value >= 10:
        return f"{value:.1f} s"
    if value >= 1:
        return f"{value:.2f} s"
    if value >= 0.01:
        return f"{value * 1000:.0f} ms"
    return f"{value * 1000:.1f} ms"


def mib(nbytes: float) -> str:
    return f"{nbytes / MIB:,.0f} MiB" if nbytes >= 10 * MIB else f"{nbytes / MIB:.1f} MiB"


def rate(nbytes: float, elapsed: float) -> str:
    return f"{nbytes / MIB / elapsed:,.0f} MiB/s"


def spread(values: list[float], unit: Callable[[float], str] = seconds) -> str:
    """`median (min-max, n runs)`: the median is the result, the range shows the noise."""
    if len(values) == 1:
        return f"{unit(values[0])} (1 run)"
    return f"{unit(median(values))} ({unit(min(values))}-{unit(max(values))}, {len(values)} runs)"


def verdict(met: bool) -> str:
    return "met" if met else "**missed**"


def free_bytes(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def available_memory() -> int:
    """MemAvailable from /proc/meminfo (bytes); 0 when unknown."""
    return _meminfo("MemAvailable")


def machine() -> dict[str, str]:
    """What the numbers depend on."""
    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "CPU": f"{cpu}, {usable} usable cores, torch uses {torch.get_num_threads()} threads",
        "Memory": f"{_meminfo('MemTotal') / 2**30:.0f} GiB",
        "GPU": "none used (CPU benchmarks)",
        "Software": f"Python {platform.python_version()}, torch {torch.__version__}, {platform.platform()}",
        "Load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def _meminfo(key: str) -> int:
    """One field of /proc/meminfo in bytes; 0 when unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
