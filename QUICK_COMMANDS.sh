#!/usr/bin/env bash
# Quick reference, runnable: every command is printed, then run against a demo run it trains first.
#   bash QUICK_COMMANDS.sh [DEMO_RUN_DIR]      (default: a new temporary folder)
# Tiny model and data sizes so it finishes in seconds; drop "${TINY[@]}" for a real run.
# The full story (crash recovery, choosing a checkpoint, --json schemas) is in CHECKPOINT_GUIDE.md.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${USEG_PYTHON:-$repo/.venv/bin/python}"
[[ -x "$python" ]] || python=python3
run="${1:-$(mktemp -d)/demo}"
TINY=(--widths 8,8 --image-size 32 --support-size 2 --batch-size 2 --samples-per-epoch 6 --vis-every 0 --num-threads 1)

useg() { "$python" -m useg "$@"; }
show() { printf '\n$ %s\n' "$*"; "$@"; }

# --- Train, then extend the same run -------------------------------------------------------
show useg train --run-dir "$run" --epochs 5 --quiet "${TINY[@]}"
show useg resume latest --run-dir "$run" --epochs 6 --quiet     # continue to 6 epochs in total

# --- Look at what the run holds --------------------------------------------------------------
show useg checkpoints list --run-dir "$run"                      # sidecars only, no tensors loaded; add --json for scripts
show useg checkpoints latest --run-dir "$run"                    # details + the exact resume command
show useg checkpoints info "$run/checkpoints/best_model.pt"
show useg checkpoints verify --run-dir "$run"                     # sha256 + safety check; exit 1 if any is bad
show useg history --run-dir "$run"                               # table + training_curves.png

# --- Go back to an older checkpoint (epoch 2's periodic file) and train on from there ---------
show useg resume 2 --run-dir "$run" --epochs 6 --quiet

# --- Free disk, share weights ------------------------------------------------------------------
show useg checkpoints clean --keep 2 --dry-run --run-dir "$run"   # what would go
show useg checkpoints clean --keep 2 --run-dir "$run"
show useg checkpoints export "$run/checkpoints/best_model.pt" "$run/export/best.safetensors"

# --- The seed's script names still work ---------------------------------------------------------
show "$python" "$repo/scripts/checkpoint_manager.py" --latest --run-dir "$run"
show "$repo/scripts/resume_training.sh" "$run" --epochs 7 --quiet
printf '\n$ printf "6\\nq\\n" | useg menu --run-dir %s\n' "$run"
printf '6\nq\n' | useg menu --run-dir "$run"

printf '\nDemo run left in %s\n' "$run"
