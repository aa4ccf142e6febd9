"""Where the recipe sampler's time goes, and how its resampling is computed (compiled, numpy or torch).

Stages: `sampler.batch(0, i, 4)` with every augmentation of the paper's recipe on and a quarter
synthetic tasks (the sampler benchmark's RECIPE case), with each stage of useg.data.recipe_pixels
and the synthetic renderer timed by the thread's CPU time while it runs (nested stages count in
their caller too: blur, sharpness and tone are part of _intensity).

Resampling: one chunk of the recipe (3 images of 128x128 under one rotation and zoom, bilinear
for the images, nearest for the labels) by the compiled loop (numba), by its numpy version and by
torch's `grid_sample` (the two calls a torch version would make), one thread each, interleaved.
Then whether each gives the same bits under every CPU instruction set it can be made to use on
this machine: numba's code generated for NUMBA_CPU_NAME, numpy's loops limited by
NPY_DISABLE_CPU_FEATURES, torch's kernels chosen by ATEN_CPU_CAPABILITY, each in a fresh process.
Batches are a pure function of (seed, epoch, index) only if they do.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import time

import numpy as np

from .common import REPO, Row, Section, Settings, interleaved, median, spread

SIZE, CHUNK = 128, 3
STAGES = {"recipe_pixels": ("resample", "_intensity", "blur", "sharpen", "tone", "_linear_intensity",
                            "_changed_labels", "_upsample", "_control_maps", "_affine_maps", "_draw"),
          "synthetic_tasks": ("render_subjects", "make_family")}
TORCH_CAPABILITIES = ("default", "avx2", "avx512")
NUMBA_CPUS = ("host", "generic", "haswell")  # this CPU's features, plain x86-64, AVX2 without AVX-512
_AVX512 = "AVX512F AVX512CD AVX512_SKX AVX512_CLX AVX512_CNL AVX512_ICL AVX512_SPR"
NUMPY_FEATURES_OFF = {"all": "", "no avx512": _AVX512, "no avx2, avx512": f"AVX2 FMA3 {_AVX512}"}


def run(settings: Settings) -> list[Section]:
    started = time.perf_counter()
    stages = _stage_section(batches=16 if settings.quick else 48)
    choice = _resample_section(rounds=20 if settings.quick else 60)
    stages.seconds = choice.seconds = time.perf_counter() - started
    return [stages, choice]


def _stage_section(batches: int) -> Section:
    from useg.data import recipe_pixels, synthetic_tasks

    from .sampler import IMAGES_PER_BATCH, RECIPE, RECIPE_GOAL_PER_CORE, official_sampler

    sampler = official_sampler(RECIPE)
    sampler.batch(0, 0, 4)  # the noise banks and caches: once per run
    spent: collections.Counter = collections.Counter()
    modules = {"recipe_pixels": recipe_pixels, "synthetic_tasks": synthetic_tasks}
    originals = {(module, name): getattr(modules[module], name) for module, names in STAGES.items() for name in names}
    for (module, name), function in originals.items():
        setattr(modules[module], name, _timed(function, name, spent))
    try:
        begin = time.thread_time()
        for index in range(1, batches + 1):
            sampler.batch(0, index, 4)
        total = time.thread_time() - begin
    finally:
        for (module, name), function in originals.items():
            setattr(modules[module], name, function)
    section = Section("Recipe sampler: where a core's time goes (128x128, support 64, batch 4, every augmentation on)",
                      "CPU seconds", "share of the batch")
    for name, seconds in spent.most_common():
        section.rows.append(Row(case=name, command=f"{batches} batches, thread CPU time inside the call",
                                ours=f"{seconds:.3f} s", baseline=f"{100 * seconds / total:.1f} %", ratio="-"))
    rate = batches * IMAGES_PER_BATCH / total
    needed = 1 - rate / RECIPE_GOAL_PER_CORE
    larger = [name for name, seconds in spent.items() if seconds / total > needed]
    section.reading.append(
        f"{batches} batches took {total:.2f} CPU s ({rate:,.0f} images/s; the timing adds a little). "
        + (f"{RECIPE_GOAL_PER_CORE:,} images/s needs {100 * needed:.0f} % of this time gone: more than any stage "
           f"but {', '.join(larger) or 'none'} takes, so one of those would have to become several times cheaper, "
           "or every stage much cheaper." if needed > 0 else f"That meets {RECIPE_GOAL_PER_CORE:,} images/s."))
    return section


def _timed(function, name: str, spent: collections.Counter):
    def timed(*args, **kwargs):
        begin = time.thread_time()
        try:
            return function(*args, **kwargs)
        finally:
            spent[name] += time.thread_time() - begin
    return timed


def _resample_section(rounds: int) -> Section:
    import torch
    from torch.nn.functional import grid_sample

    from useg.data.resampling import resample, resample_numpy

    images, labels, rows, cols = _chunk()
    grid = _grid(rows, cols)
    images_t, labels_t = torch.from_numpy(images)[:, None], torch.from_numpy(labels.astype(np.float32))[:, None]
    part = np.arange(CHUNK)

    def timed(function):
        def one() -> float:
            r, c = rows.copy(), cols.copy()  # the resampling overwrites its maps
            begin = time.thread_time()
            function(images, labels, part, r, c)
            return (time.thread_time() - begin) * 1e6
        return one

    def torch_version() -> float:
        begin = time.thread_time()
        grid_sample(images_t, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        grid_sample(labels_t, grid, mode="nearest", padding_mode="zeros", align_corners=True)
        return (time.thread_time() - begin) * 1e6

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        timings = interleaved({"compiled": timed(resample), "numpy": timed(resample_numpy), "torch": torch_version},
                              rounds, warmup=3)
    finally:
        torch.set_num_threads(threads)
    hashes = {"compiled": {cpu: _fresh_hash("compiled", {"NUMBA_CPU_NAME": cpu}) for cpu in NUMBA_CPUS},
              "numpy": {name: _fresh_hash("numpy", {"NPY_DISABLE_CPU_FEATURES": off})
                        for name, off in NUMPY_FEATURES_OFF.items()},
              "torch": {cap: _fresh_hash("torch", {"ATEN_CPU_CAPABILITY": cap}) for cap in TORCH_CAPABILITIES}}
    same = len({next(iter(hashes["compiled"].values())), *hashes["numpy"].values()}) == 1
    section = Section("Recipe resampling: compiled (numba) and numpy, against torch's grid_sample "
                      "(3 images of 128x128)",
                      "compiled (useg.data.resampling.resample)", "numpy (resample_numpy)")
    compiled_us, numpy_us, torch_us = (median(timings[name]) for name in ("compiled", "numpy", "torch"))
    section.rows.append(Row(case="one chunk, bilinear images and nearest labels, one thread",
                            command="`resample(...)` vs `resample_numpy(...)`, thread CPU time, interleaved",
                            ours=spread(timings["compiled"], _microseconds),
                            baseline=spread(timings["numpy"], _microseconds),
                            ratio=f"{compiled_us / numpy_us:.2f}x the time"))
    section.rows.append(Row(case="torch's grid_sample on the same chunk", command="`grid_sample(bilinear)` + "
                            "`grid_sample(nearest)`, one torch thread, in the same rounds", ours="-",
                            baseline=spread(timings["torch"], _microseconds),
                            ratio=f"{torch_us / numpy_us:.2f}x numpy's time"))
    section.rows.append(Row(case="same bits under every CPU instruction set here",
                            command="fresh process per setting: NUMBA_CPU_NAME / NPY_DISABLE_CPU_FEATURES "
                                    "(baseline column: numpy; torch below)",
                            ours=_agreement(hashes["compiled"]), baseline=_agreement(hashes["numpy"]),
                            ratio="compiled = numpy" if same else "**compiled != numpy**"))
    section.rows.append(Row(case="torch's grid_sample, same bits?", command="fresh process per ATEN_CPU_CAPABILITY",
                            ours="-", baseline=_agreement(hashes["torch"]), ratio="-"))
    section.reading.append(
        f"The compiled loop resamples a chunk in {compiled_us / numpy_us:.2f}x numpy's time and gives "
        f"{'the same bits as numpy' if same else 'OTHER bits than numpy'} under every instruction set tried, so "
        "batches do not depend on whether numba is installed nor on the CPU. torch's grid_sample takes "
        f"{torch_us / numpy_us:.2f}x numpy's time, but gives {_agreement(hashes['torch'])}: batches would follow "
        "the CPU a run, or its resume, lands on.")
    return section


def _chunk() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Three images, their labels and a rotation-and-zoom map (rows, cols + 1: in _resample's padded source)."""
    rng = np.random.default_rng(0)
    images = rng.random((CHUNK, SIZE, SIZE), dtype=np.float32)
    labels = (rng.random((CHUNK, SIZE, SIZE)) > 0.5).astype(np.uint8)
    row, col = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    angle, zoom = 0.3, 0.9
    rows = (np.cos(angle) * row + np.sin(angle) * col) * zoom + 5 + 1
    cols = (-np.sin(angle) * row + np.cos(angle) * col) * zoom + 40 + 1
    return images, labels, *(np.repeat(m[None], CHUNK, 0).astype(np.float32) for m in (rows, cols))


def _grid(rows: np.ndarray, cols: np.ndarray):
    """grid_sample's (n, H, W, 2) grid of (x, y) in [-1, 1] (align_corners) for the same source positions."""
    import torch

    x, y = (cols - 1) / (SIZE - 1) * 2 - 1, (rows - 1) / (SIZE - 1) * 2 - 1
    return torch.from_numpy(np.stack([x, y], -1).astype(np.float32))


_HASH_SCRIPT = """
import hashlib, sys
import numpy as np
from bench.resample_choice import CHUNK, _chunk, _grid
images, labels, rows, cols = _chunk()
if sys.argv[1] == "torch":
    import torch
    from torch.nn.functional import grid_sample
    torch.set_num_threads(1)
    out = grid_sample(torch.from_numpy(images)[:, None], _grid(rows, cols), mode="bilinear", padding_mode="zeros",
                      align_corners=True).numpy()
else:
    from useg.data.resampling import resample, resample_numpy
    function = resample if sys.argv[1] == "compiled" else resample_numpy
    out = function(images, labels, np.arange(CHUNK), rows, cols)[0]
print(hashlib.sha256(np.ascontiguousarray(out).tobytes()).hexdigest()[:12])
"""


def _fresh_hash(library: str, env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "-c", _HASH_SCRIPT, library], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "src")]), **env},
                          timeout=300)
    return done.stdout.strip() if done.returncode == 0 else "unavailable"


def _agreement(hashes: dict[str, str]) -> str:
    tried = {setting: value for setting, value in hashes.items() if value != "unavailable"}
    if len(set(tried.values())) == 1:
        return f"the same bits under all {len(tried)} settings: {', '.join(tried)}"
    groups = collections.defaultdict(list)
    for setting, value in tried.items():
        groups[value].append(setting)
    return f"{len(groups)} different results over {len(tried)} settings: " + " | ".join(
        ", ".join(settings) for settings in groups.values())


def _microseconds(value: float) -> str:
    return f"{value:,.0f} us"

