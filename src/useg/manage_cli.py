"""`useg checkpoints ...`, `useg history`, `useg menu`: thin front ends over useg.checkpoint."""

from __future__ import annotations

import argparse


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register the management subcommands."""
