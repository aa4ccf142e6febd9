"""The rows `bench/gpu.sh` measures on a GPU, in BENCHMARKS.md: from bench/gpu_results.json when a GPU
run's results were committed there, else marked as not measured yet (this machine has no GPU)."""

from __future__ import annotations

import json
import time

from .common import REPO, Row, Section, Settings
from .gpu import STEP_CASES

RESULTS = REPO / "bench" / "gpu_results.json"
NOT_MEASURED = "not measured yet (no GPU lent)"
COMMAND = "`bench/gpu.sh OUT` (then copy OUT/gpu_results.json to bench/)"


def run(settings: Settings) -> list[Section]:
    started = time.perf_counter()
    results = json.loads(RESULTS.read_text(encoding="utf-8")) if RESULTS.is_file() else None
    section = Section("On a GPU (`bench/gpu.sh`)", "as named per row", "-")
    steps = {(row["precision"], row["deterministic"], row["compiled"]): row for row in (results or {}).get("steps", [])}
    for case in STEP_CASES:
        section.rows.append(step_row(case, steps.get(case)))
    section.rows += other_rows(results)
    where = f"measured on {results['machine']}" if results else "no GPU has been lent to this project yet"
    section.reading.append(f"Step rows: 128 px, support 64, batch 4, widths 64 (the official size), forward + "
                           f"loss + backward + Adam step, one process per row; {where}.")
    section.seconds = time.perf_counter() - started
    return [section]


def step_row(case: tuple, row: dict | None) -> Row:
    precision, deterministic, compiled = case
    name = f"step at 128 px / S 64 / B 4: {precision}, deterministic {'on' if deterministic else 'off'}, " \
           f"{'compiled' if compiled else 'eager'}"
    if not row or row.get("median_ms") is None:
        return Row(case=name, command=COMMAND, ours=(row or {}).get("status", NOT_MEASURED) if row else NOT_MEASURED,
                   baseline="-", ratio="-")
    return Row(case=name, command=COMMAND, ours=f"{row['median_ms']:.1f} ms ({row['steps']} steps)",
               baseline="-", ratio=f"peak {row['peak_mib']:,.0f} MiB")


def other_rows(results: dict | None) -> list[Row]:
    if not results:
        return [Row(case=case, command=COMMAND, ours=NOT_MEASURED, baseline="-", ratio="-") for case in (
            "task sampler images/s at 128 px / S 64 / B 4", "checkpoint stall, default state on the GPU (pinned copies)",
            "checkpoint stall, 1 GiB state on the GPU (pinned copies)",
            "kill -9 mid-epoch and resume with --deterministic: bitwise equal")]
    sampler, resume = results["sampler"], results["kill_and_resume"]
    rows = [Row(case="task sampler images/s at 128 px / S 64 / B 4", command=COMMAND,
                ours=f"{sampler['images_per_s']:,.0f} images/s", baseline="-", ratio="-")]
    rows += [Row(case=f"checkpoint stall, {row['state']} on the GPU (pinned copies)", command=COMMAND,
                 ours=f"{row['save_ms']:.1f} ms", baseline=f"{row['torch_save_ms']:.1f} ms (torch.save)",
                 ratio=f"{row['save_ms'] / row['torch_save_ms']:.1%} of torch.save") for row in results["stall"]]
    rows.append(Row(case="kill -9 mid-epoch and resume with --deterministic: bitwise equal", command=COMMAND,
                    ours="equal" if resume["equal"] else "NOT equal", baseline="-", ratio="-",
                    verdict="met" if resume["equal"] else "**missed**"))
    return rows
