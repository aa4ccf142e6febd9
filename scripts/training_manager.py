#!/usr/bin/env python3
"""The original scripts' interactive training manager: `useg menu` under its old name.

    training_manager.py [--run-dir DIR]
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    try:
        from useg.cli import main as useg_main
    except ImportError:
        print("error: useg is not installed for this Python; run `make install` and use .venv/bin/python", file=sys.stderr)
        return 2
    return useg_main(["menu", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
