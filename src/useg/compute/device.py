"""Where and how a run computes: the device, deterministic kernels, CPU threads, pinned copies, torch.compile."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import statistics
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import torch

from useg.errors import ConfigError

# cuBLAS is deterministic only with a fixed workspace (CUDA >= 10.2); torch refuses cuBLAS calls
# under use_deterministic_algorithms(True) without it. Read when the first cuBLAS handle is made.
CUBLAS_WORKSPACE = ":4096:8"
NO_DETERMINISTIC_KERNEL = re.compile(r"(\S+) does not have a deterministic implementation")
MAX_DEFAULT_WORKERS = 4  # batch-building threads: past this the loader outruns any model step we measured


def choose_device(requested: str | None, local_rank: int = 0, distributed: bool = False) -> torch.device:
    """The device a run uses: `requested` (cpu, cuda, cuda:N), or CUDA when present.

    With several processes, `cuda` means each process's own GPU (its local rank).
    An unavailable device is one ConfigError naming the flag.
    """
    if requested is None:
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if requested == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        build = " (this torch is a CPU-only build)" if torch.version.cuda is None else ""
        raise ConfigError(f"--device {requested}: no CUDA device is available here{build}; use --device cpu")
    if distributed and requested != "cuda":
        raise ConfigError(f"--device {requested}: with several processes each one uses the GPU of its local "
                          "rank; pass --device cuda")
    index = int(requested.split(":")[1]) if ":" in requested else local_rank
    count = torch.cuda.device_count()
    if index >= count:
        raise ConfigError(f"--device {requested}: this machine has {count} CUDA device(s), cuda:0 to "
                          f"cuda:{count - 1}; pass one of them")
    return torch.device("cuda", index)


def set_deterministic(on: bool) -> None:
    """Deterministic kernels (and cuDNN without autotuning) when `on`; the fastest kernels otherwise."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = not on


@contextmanager
def compute_settings(threads: int, deterministic: bool):
    """Threads and determinism for one run; the process's previous settings come back afterwards
    (a notebook or test that trains twice is not left with the first run's choices)."""
    previous = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.set_num_threads(threads)
    set_deterministic(deterministic)
    try:
        yield
    finally:
        torch.set_num_threads(previous[0])
        torch.use_deterministic_algorithms(previous[1], warn_only=previous[2])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = previous[3], previous[4]


def missing_deterministic_kernels(step: Callable[[], None]) -> list[str]:
    """Run `step` (one forward and backward) with deterministic algorithms in warn-only mode;
    the ops torch reports as having no deterministic kernel (empty: the run can be exact).

    Warn-only mode lists every such op instead of stopping at the first; a RuntimeError that
    still names determinism (e.g. the cuBLAS workspace check) counts as one more.
    """
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    found: list[str] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                step()
            except RuntimeError as error:
                if "deterministic" not in str(error):
                    raise
                found.append(operation_name(str(error)))
        found += [operation_name(str(w.message)) for w in caught if "deterministic" in str(w.message)]
    finally:
        torch.use_deterministic_algorithms(True, warn_only=warn_only)
    return sorted(set(found))


def settle_determinism(probe, cfg, device: torch.device, anywhere, warn) -> None:
    """With --deterministic, run `probe` (one training step at tiny inputs: the ops of a real step) and fall
    back to --no-deterministic, in cfg too (so the checkpoint records it), if some op has no deterministic kernel.

    `anywhere(flag)` is True when any process says so: every rank must make the same choice.
    """
    if not cfg.deterministic:
        return
    missing = missing_deterministic_kernels(probe)
    if anywhere(bool(missing)):
        cfg.deterministic = False
        set_deterministic(False)
        warn(f"--deterministic: {', '.join(missing) or 'an op on another process'} has no deterministic kernel on "
             f"{device}; continuing as --no-deterministic (recorded in the checkpoint)")


def operation_name(message: str) -> str:
    """The op a determinism alert names ("upsample_bilinear2d_backward_out_cuda"), else its first line."""
    match = NO_DETERMINISTIC_KERNEL.search(message)
    return match.group(1) if match else message.strip().splitlines()[0][:120]


def describe_compute(cfg) -> str:
    """The start-up line's part on how the run computes: ", bf16, deterministic, 3 CPU threads".

    "deterministic" only while the run is bit-identical to an uninterrupted one: a resume that
    changed how it computes (cfg.bit_identical False) is said here too."""
    if not cfg.deterministic:
        exactness = "not deterministic"
    elif cfg.bit_identical:
        exactness = "deterministic"
    else:
        exactness = "deterministic kernels, not bit-identical to an uninterrupted run (a resume changed settings)"
    parts = [cfg.precision or "fp32", exactness]
    if cfg.compile:
        parts.append("compiled")
    return ", " + ", ".join(parts) + f", {torch.get_num_threads()} CPU threads"


# --- CPU cores: torch's threads and the batch-building threads ---------------------------------

def usable_cores(cgroup_root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")) -> int:
    """How many cores this process may really use: its CPU affinity, capped by a cgroup CPU quota
    (a container limited to 2 CPUs on a 64-core host sees 64 in os.cpu_count())."""
    cores = affinity_cores()
    quota = cgroup_cpu_quota(cgroup_root, proc_cgroup)
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return cores


def affinity_cores() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def cgroup_cpu_quota(root: Path, proc_cgroup: Path) -> float | None:
    """The tightest CPU quota (in cores) over this process's cgroup and its parents; None if unlimited.

    cgroup v2 holds it in cpu.max ("200000 100000" or "max 100000"), v1 in cpu.cfs_quota_us and
    cpu.cfs_period_us (-1: none). A cgroup path not visible inside a container falls back to the root.
    """
    quotas = [quota for folder in cgroup_folders(root, proc_cgroup) if (quota := read_quota(folder)) is not None]
    return min(quotas) if quotas else None


def cgroup_folders(root: Path, proc_cgroup: Path) -> list[Path]:
    """The folders that may hold this process's CPU limits: its cgroup's folder and the parents up to
    the mount (v2: one line "0::/path"; v1: the line whose controllers include cpu)."""
    try:
        lines = proc_cgroup.read_text(encoding="utf-8").splitlines()
    except OSError:
        lines = []
    folders: list[Path] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, relative = parts
        if controllers == "":
            base = root
        elif "cpu" in controllers.split(","):
            base = root / "cpu" if (root / "cpu").is_dir() else root / controllers
        else:
            continue
        folders += folder_and_parents(base, relative)
    return folders or [root]


def folder_and_parents(base: Path, relative: str) -> list[Path]:
    folder = base / relative.strip("/")
    if not folder.is_dir():
        return [base]  # a host path that this container does not mount: its root holds the limit
    chain = [folder]
    while chain[-1] != base:
        chain.append(chain[-1].parent)
    return chain


def read_quota(folder: Path) -> float | None:
    """The CPU quota in cores that `folder` sets (v2 or v1 files), None when it sets none."""
    try:
        if (folder / "cpu.max").is_file():
            quota, period = (folder / "cpu.max").read_text(encoding="utf-8").split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        if (folder / "cpu.cfs_quota_us").is_file():
            quota = int((folder / "cpu.cfs_quota_us").read_text(encoding="utf-8"))
            period = int((folder / "cpu.cfs_period_us").read_text(encoding="utf-8"))
            return None if quota <= 0 else quota / period
    except (OSError, ValueError, ZeroDivisionError):
        return None
    return None


class CoreSplit(NamedTuple):
    threads: int  # torch's compute threads
    workers: int  # threads building batches ahead of the training step (useg.data.prefetch)


def split_cores(num_threads: int, data_workers: int | None) -> CoreSplit:
    """How a run uses the CPU: --num-threads unless 0 and --data-workers when given; what they leave
    open comes from the cores this process may use, the workers' share first, threads from the rest.

    The one place that decides both numbers; the data package is only handed the worker count."""
    cores = usable_cores()
    workers = default_data_workers(cores) if data_workers is None else data_workers
    return CoreSplit(num_threads or default_threads(cores, workers), workers)


def choose_threads(requested: int, workers: int | None) -> int:
    """The CPU thread count a run computes with: `requested` (--num-threads) unless 0, else what this
    machine suggests for the cores this process may use and its data workers (--data-workers).

    A resume keeps the count saved in its checkpoint (training_state), which this function then only
    compares with, since the count changes a step's result."""
    return split_cores(requested, workers).threads


NEAR_TIE = 1.03  # counts within 3 % of the fastest are a tie, won by fewer threads (cores left for the rest)


def thread_candidates(cores: int) -> list[int]:
    """The thread counts worth timing on `cores` usable cores: 1, 2, 4, ... and `cores` itself."""
    counts = {cores}
    count = 1
    while count < cores:
        counts.add(count)
        count *= 2
    return sorted(counts)


def fastest_thread_count(step: Callable[[], None], candidates: list[int],
                         repeats: int = 2) -> tuple[int, dict[int, float]]:
    """Time `step` at each thread count (one untimed warm-up, then the median of `repeats`) and return
    the fastest count with the seconds per step of each; the caller's count is restored.

    Measured, not derived from the core count: an idle machine runs fastest on every core, while one
    core taken by another process makes torch's spinning threads wait for it (a step of the default
    model took 5.6 s with 2 threads and 0.57 s with 1 on a shared 2-core machine)."""
    previous = torch.get_num_threads()
    seconds: dict[int, float] = {}
    try:
        for count in candidates:
            torch.set_num_threads(count)
            step()
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                step()
                times.append(time.perf_counter() - started)
            seconds[count] = statistics.median(times)
    finally:
        torch.set_num_threads(previous)
    fastest = min(seconds.values())
    return min(count for count, value in seconds.items() if value <= fastest * NEAR_TIE), seconds


def default_data_workers(cores: int) -> int:
    """One batch-building thread per core beyond the one training runs on (at least one, at most 4).

    On one core a worker only adds switching, so there the loop builds its own batches.
    """
    return 0 if cores <= 1 else min(MAX_DEFAULT_WORKERS, max(1, cores // 2))


def default_threads(cores: int, data_workers: int = 0) -> int:
    """torch's threads when --num-threads is 0: the usable cores minus one per data worker and one
    for the checkpoint writer and the Python thread that feeds the model.

    Why not every core: torch's OpenMP threads spin while they wait for each other, so one core
    taken by anything else (another run, the writer) makes every step wait for it. On the shared
    2-core machine a default-config step took 5.6 s with 2 threads against 0.57 s with 1.
    """
    return max(1, cores - data_workers - 1)


# --- moving batches, compiling -----------------------------------------------------------------

def to_device(batch, device: torch.device):
    """The batch (a dataclass of tensors) on `device`: through pinned host memory with non-blocking
    copies on CUDA, so the copy overlaps the previous step's kernels; unchanged on the CPU."""
    if device.type != "cuda":
        return batch
    return dataclasses.replace(batch, **{f.name: getattr(batch, f.name).pin_memory().to(device, non_blocking=True)
                                         for f in dataclasses.fields(batch)})


def compile_model(model: torch.nn.Module, backend: str = "inductor") -> torch.nn.Module:
    """`model` compiled by torch.compile for training steps. The caller keeps the plain model for
    state_dict(): the compiled wrapper names every parameter `_orig_mod.<name>`."""
    return torch.compile(model, backend=backend)
