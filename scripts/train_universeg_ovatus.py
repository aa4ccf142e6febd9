#!/usr/bin/env python3
"""The original training script, kept as a thin wrapper over `useg train`.

    train_universeg_ovatus.py [useg train flags, e.g. --data DIR --run-dir runs/ovatus --epochs 50]

RESUME_FROM_CHECKPOINT is no longer edited in this file. Set it in the environment
(`RESUME_FROM_CHECKPOINT=latest train_universeg_ovatus.py ...`) or as
`resume_from_checkpoint: latest` in the YAML/TOML file given with --config; the
environment wins, an explicit --resume wins over both. Values: latest, best, an
epoch number or a checkpoint path; empty, none or false start a new run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

FILE_KEY = "resume_from_checkpoint"
NO_RESUME = ("", "none", "null", "false", "no", "0")


def read_file_values(path: str | None) -> dict | None:
    """The config file as a dict, or None when useg itself should read (and judge) it."""
    if not path or not Path(path).is_file():
        return None
    try:
        if path.endswith(".toml"):
            import tomllib

            return tomllib.loads(Path(path).read_text(encoding="utf-8"))
        import yaml

        values = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except Exception:  # noqa: BLE001 - `useg train` reports a bad file in one clear line
        return None
    return values if isinstance(values, dict) else None


def resume_value(setting: object) -> str | None:
    """`--resume` for a RESUME_FROM_CHECKPOINT setting; None for a new run."""
    if setting is True:
        return "latest"
    if setting is None or setting is False or str(setting).strip().lower() in NO_RESUME:
        return None
    return str(setting).strip()


def train_arguments(argv: list[str], environ: dict, scratch: Path) -> list[str]:
    """`useg train` arguments; a config file holding the resume key is passed on without it."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--config")
    parser.add_argument("--resume", nargs="?", const="latest")
    known, rest = parser.parse_known_args(argv)
    values = read_file_values(known.config)
    config = ["--config", known.config] if known.config else []
    setting = None
    if values is not None and (FILE_KEY in values or FILE_KEY.replace("_", "-") in values):
        setting = values.pop(FILE_KEY, values.pop(FILE_KEY.replace("_", "-"), None))
        config = ["--config", write_yaml(values, scratch / "config.yaml")]
    if "RESUME_FROM_CHECKPOINT" in environ:
        setting = environ["RESUME_FROM_CHECKPOINT"]
    resume = known.resume if known.resume is not None else resume_value(setting)
    return ["train", *rest, *config, *(["--resume", resume] if resume else [])]


def write_yaml(values: dict, path: Path) -> str:
    import yaml

    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return str(path)


def main(argv: list[str] | None = None) -> int:
    try:
        from useg.cli import main as useg_main
    except ImportError:
        print("error: useg is not installed for this Python; run `make install` and use .venv/bin/python", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="useg-config-") as scratch:
        arguments = train_arguments(sys.argv[1:] if argv is None else argv, dict(os.environ), Path(scratch))
        return useg_main(arguments)


if __name__ == "__main__":
    raise SystemExit(main())
