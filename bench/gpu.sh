#!/usr/bin/env bash
# Issue 17's GPU measurements in under 5 minutes on one GPU; results in OUT_DIR/gpu_results.{md,json}.
#   bench/gpu.sh [OUT_DIR] [--dry-run]     (--dry-run: every part tiny on the CPU, to check the script)
# Uses $USEG_PYTHON, else .venv/bin/python, else python3; that Python needs a CUDA build of torch.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench-gpu-results}"
shift || true
python="${USEG_PYTHON:-}"
if [ -z "$python" ]; then
    if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python=python3; fi
fi
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"
# The script keeps to a 270 s budget itself; timeout is the backstop that keeps the promise of 5 minutes.
# A dry run on a small, busy CPU machine is slower than the real thing on a GPU: it gets 15 minutes.
limit=290 budget=270
case " $* " in *" --dry-run "*) limit=900 budget=850 ;; esac
timeout --signal=TERM --kill-after=10 "$limit" "$python" -m bench.gpu --out "$out" --budget-s "$budget" "$@"
