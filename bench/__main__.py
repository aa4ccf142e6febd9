"""python -m bench [--quick] [--only NAME,...] [--merge] [--dir DIR] [--output FILE]: run the benchmarks,
print the report and write it to BENCHMARKS.md."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import traceback
from types import SimpleNamespace
from pathlib import Path

from . import (checkpoint_io, compile_step, demo, evaluation, gpu_report, in_context, listing, many_datasets,
               model_step, precision_cpu, resample_choice, resume, sampler, save_overhead, synthetic_rate,
               thread_choice, trackers, training)
from .common import REPO, Section, Settings, machine
from .report import merge, render

# name -> module with run(settings) -> list[Section]; in this order (training uses the model's numbers)
DEFAULT = {"checkpoint": checkpoint_io, "resume": resume, "listing": listing, "model": model_step,
           "training": training, "sampler": sampler, "synthetic": synthetic_rate, "saves": save_overhead, "demo": demo, "evaluation": evaluation,
           "precision": precision_cpu, "threads": thread_choice, "trackers": trackers,
           "many_datasets_sampling": SimpleNamespace(run=many_datasets.run_sampling), "gpu": gpu_report}
# in_context and unseen_class: six and two default training runs (about 25 and 8 minutes on 2 cores);
# many_datasets_held_out: three, two at a time (about 15 minutes); resample_choice: why the sampler resamples
# in numpy (about a minute)
OPTIONAL = {"compile": compile_step, "in_context": in_context,
            "unseen_class": SimpleNamespace(run=in_context.run_unseen_class),
            "many_datasets_held_out": SimpleNamespace(run=many_datasets.run_held_out),
            "resample_choice": resample_choice}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split(":")[0])
    parser.add_argument("--quick", action="store_true", help="skip the 1 GiB state, fewer runs (~2 min)")
    parser.add_argument("--only", help=f"comma-separated subset of {', '.join([*DEFAULT, *OPTIONAL])} "
                                       f"(default: {', '.join(DEFAULT)})")
    parser.add_argument("--dir", help="where to write scratch files: the disk to benchmark (default: the system temp folder)")
    parser.add_argument("--output", default=str(REPO / "BENCHMARKS.md"), help="report file (default BENCHMARKS.md)")
    parser.add_argument("--merge", action="store_true",
                        help="replace only the sections this run measures in the existing report file, keeping "
                             "the others (each replaced section names the command and time that measured it)")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(DEFAULT)
    unknown = [name for name in names if name not in {**DEFAULT, **OPTIONAL}]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join([*DEFAULT, *OPTIONAL])}")
    args.names = names
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    started = time.perf_counter()
    machine_info = machine()
    workdir = Path(tempfile.mkdtemp(prefix="useg-bench-", dir=args.dir))
    settings = Settings(quick=args.quick, workdir=workdir)
    sections: list[Section] = []
    failed = False
    try:
        for name in args.names:
            print(f"[bench] {name} ...", file=sys.stderr, flush=True)
            try:
                settings.done[name] = {**DEFAULT, **OPTIONAL}[name].run(settings)
            except Exception:  # report it and go on: the other numbers are still worth having
                failed = True
                settings.done[name] = [Section(f"{name}: FAILED", "-", "-", reading=[
                    "```\n" + traceback.format_exc()[-3000:] + "```"])]
            sections += settings.done[name]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    command = " ".join(["python -m bench", *argv])
    text = render(sections, command, args.quick, time.perf_counter() - started, workdir, machine_info)
    output = Path(args.output)
    if args.merge and output.exists():
        text = merge(output.read_text(encoding="utf-8"), sections, command, machine_info)
    print(text)
    Path(args.output).write_text(text, encoding="utf-8")
    print(f"[bench] wrote {args.output}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
