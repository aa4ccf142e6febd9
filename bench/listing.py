"""Row (d): `useg checkpoints list` over 100 checkpoints of a ~50 MiB state.

The real CheckpointManager writes one checkpoint; 99 more periodic ones are made the
way the manager stores identical periodic files, as hard links with their own sidecar
(epoch and kind changed). Listing reads sidecars and stat() only, so it must not depend
on the files' size; the bytes it reads are counted to show that.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from useg.checkpoint import CheckpointManager, list_checkpoints

from .common import MIB, Row, Section, Settings, child_env, interleaved, median, mib, run_timed, seconds, shell, spread, useg_args
from .states import training_state

COUNT = 100
GOAL_S = 1.0


def run(settings: Settings) -> list[Section]:
    section = Section("`useg checkpoints list` with 100 checkpoints", "100 checkpoints", "1 checkpoint")
    started = time.perf_counter()
    state = training_state(50 * MIB)
    many = _make_run(settings.workdir / "list_100", state, COUNT)
    one = _make_run(settings.workdir / "list_1", state, 1)
    del state
    list_many = useg_args("checkpoints", "list", "--run-dir", str(many))
    list_one = useg_args("checkpoints", "list", "--run-dir", str(one))
    env = child_env()
    runs = 3 if settings.quick else 5
    import_torch = [sys.executable, "-c", "import torch"]
    times = interleaved({"many": lambda: run_timed(list_many, env=env)[0],
                         "one": lambda: run_timed(list_one, env=env)[0],
                         "torch": lambda: run_timed(import_torch, env=env)[0]}, runs, warmup=1)
    in_process, bytes_read, total_bytes = _list_in_process(many / "checkpoints")
    ratio = median(times["many"]) / median(times["one"])
    section.rows.append(Row(
        case=f"{COUNT} periodic + latest, {mib(total_bytes / (COUNT + 1))} each",
        command=f"`{shell(list_many).replace(str(many), 'RUN')}` (vs a run with 1 checkpoint)",
        ours=spread(times["many"]), baseline=spread(times["one"]), ratio=f"{ratio:.2f}x",
        goal=f"< {GOAL_S:.0f} s", verdict="met" if median(times["many"]) < GOAL_S else "**missed**",
    ))
    section.rows.append(Row(
        case="the listing alone, in process",
        command="`list_checkpoints(RUN/checkpoints)`",
        ours=spread(in_process), baseline="-", ratio="-",
        goal="reads no tensors", verdict="met" if bytes_read < total_bytes / 1000 else "**missed**",
    ))
    section.reading.append(
        f"Listing {COUNT + 1} checkpoints takes {seconds(median(times['many']))} from the shell, "
        f"{seconds(median(times['many']) - median(times['one']))} more than listing one: the rest is "
        "Python's start-up and the CLI's imports. The listing path does not import torch (the "
        "`useg.checkpoint` package loads its modules on first use and only the commands that read "
        f"checkpoint bytes import torch): `python -c 'import torch'` alone takes {seconds(median(times['torch']))} here. "
        f"In process the listing itself takes "
        f"{seconds(median(in_process))} and reads {bytes_read / 1024:,.0f} KiB (the sidecars) of files "
        f"holding {total_bytes / 2**30:.1f} GiB."
    )
    section.seconds = time.perf_counter() - started
    return [section]


def _make_run(run_dir: Path, state, count: int) -> Path:
    """A run folder with `count` periodic checkpoints (epochs 1..count) and latest."""
    folder = run_dir / "checkpoints"
    with CheckpointManager(folder, total_epochs=count, periodic_percentages=(100,)) as manager:
        manager.save(state.parts(), epoch=count)  # writes epoch_<count> and latest (one file, two names)
    source = folder / f"epoch_{count:03d}_checkpoint.pt"
    sidecar = json.loads((folder / (source.name + ".json")).read_text())
    for epoch in range(1, count):
        name = f"epoch_{epoch:03d}_checkpoint.pt"
        os.link(source, folder / name)
        (folder / (name + ".json")).write_text(json.dumps({**sidecar, "epoch": epoch}, indent=2))
    return run_dir


def _list_in_process(folder: Path) -> tuple[list[float], int, int]:
    times, bytes_read = [], 0
    for _ in range(5):
        before = _bytes_read()
        begin = time.perf_counter()
        infos = list_checkpoints(folder)
        times.append(time.perf_counter() - begin)
        bytes_read = _bytes_read() - before
    assert len(infos) == COUNT + 1 and all(info.valid for info in infos), [i.reason for i in infos if not i.valid]
    return times, bytes_read, sum(info.size_bytes for info in infos)


def _bytes_read() -> int:
    """Bytes this process has read through read() calls (rchar), cached or not."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return 0
