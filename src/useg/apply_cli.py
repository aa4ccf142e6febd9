"""`useg evaluate` and `useg predict`: apply a trained model (registered into the main parser)."""

from __future__ import annotations

import argparse


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register `evaluate` and `predict`."""
