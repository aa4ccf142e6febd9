"""Peak memory of one UniverSeg forward+backward, in a fresh process; prints one JSON line.

python -m bench.peak_memory --impl split --size 128 --width 64 --batch 4 --support 8
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from useg.model import build_universeg

from .model_step import Config, step_inputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", choices=["split", "concat"], required=True)
    for flag in ("--size", "--width", "--batch", "--support"):
        parser.add_argument(flag, type=int, required=True)
    args = parser.parse_args()
    config = Config("", args.size, args.width, args.batch, args.support)
    torch.manual_seed(0)
    model = build_universeg((config.width,) * 4, cross_impl=args.impl)
    inputs = step_inputs(config)
    before = _status_bytes("VmRSS")
    model(*inputs).square().mean().backward()
    peak = _status_bytes("VmHWM")
    print(json.dumps({"impl": args.impl, "before_mib": before / 2**20, "peak_mib": peak / 2**20,
                      "step_mib": (peak - before) / 2**20}))


def _status_bytes(field: str) -> int:
    """VmRSS (now) or VmHWM (peak) of this process. Not ru_maxrss: Linux carries that over from
    the parent through fork and exec, so a child of a big process would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # kB
    raise RuntimeError(f"no {field} in /proc/self/status")


if __name__ == "__main__":
    main()
