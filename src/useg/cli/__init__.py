"""The `useg` command line: argument parsing and the commands' terminal faces over the library."""

from useg.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
