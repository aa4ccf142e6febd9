#!/usr/bin/env bash
# The original resume script: continue a run from its latest checkpoint.
#   scripts/resume_training.sh [RUN_DIR] [useg resume flags, e.g. --epochs 20]
# RUN_DIR defaults to the current folder (also when the first argument is a flag).
# Python: $USEG_PYTHON, else the checkout's .venv, else python3.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${USEG_PYTHON:-$repo/.venv/bin/python}"
[[ -x "$python" ]] || python=python3
run_dir=.
if [[ $# -gt 0 && "$1" != -* ]]; then
    run_dir="$1"
    shift
fi
exec "$python" -m useg resume latest --run-dir "$run_dir" "$@"
