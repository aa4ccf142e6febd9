"""Capturing and restoring every random generator (rng.py)."""

from __future__ import annotations

import random

import numpy as np
import torch

from useg.checkpoint import capture_rng_state, restore_rng_state


def _draw() -> tuple:
    return random.random(), float(np.random.rand()), float(np.random.randn()), torch.rand(3).tolist()


def test_rng_state_restores_every_generator_exactly_after_a_weights_only_round_trip(tmp_path):
    np.random.randn()  # leave a cached gaussian in NumPy's legacy state
    saved = capture_rng_state()
    first = _draw()
    torch.save({"rng_state": saved}, tmp_path / "rng.pt")
    restored = torch.load(tmp_path / "rng.pt", weights_only=True)["rng_state"]
    restore_rng_state(restored)
    assert _draw() == first
