"""CHECKPOINT_GUIDE.md works as written: every ```bash block runs, in order, in a fresh folder."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tiny import TINY

from useg.cli.checkpoint_actions import RECORD_KEYS

REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO / "CHECKPOINT_GUIDE.md"
TINY_FLAGS = " ".join([*TINY, "--vis-every", "0"])
TRAINING = re.compile(r"(useg train|scripts/train_universeg_ovatus\.py)(?=\s)")
EXPECT_FAIL = "# expect-fail"


def bash_blocks(text: str) -> list[str]:
    """The guide's ```bash blocks, in order."""
    return re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M)


def with_tiny_sizes(block: str) -> str:
    """The block with tiny model sizes added to each training command (the guide's only rewrite)."""
    return TRAINING.sub(lambda match: f"{match.group(1)} {TINY_FLAGS}", block)


def guide_env() -> dict[str, str]:
    """The project's `useg` and `python` first on PATH, as with the virtual environment active."""
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
            "USEG_PYTHON": sys.executable, "MPLBACKEND": "Agg"}


def test_guide_commands_run_in_order_and_exit_as_marked(tmp_path):
    (tmp_path / "scripts").symlink_to(REPO / "scripts")
    (tmp_path / "examples").symlink_to(REPO / "examples")
    blocks = bash_blocks(GUIDE.read_text(encoding="utf-8"))
    assert len(blocks) >= 15, "the guide lost its runnable examples"
    for number, block in enumerate(blocks, 1):
        result = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", with_tiny_sizes(block)], cwd=tmp_path,
                                env=guide_env(), capture_output=True, text=True, timeout=300)
        expect_fail = block.startswith(EXPECT_FAIL)
        report = f"block {number}:\n{block}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
        assert (result.returncode != 0) == expect_fail, report
        assert "Traceback" not in result.stderr, report
        if expect_fail:
            assert result.stderr.startswith("error: ") or "BAD" in result.stdout, report


@pytest.mark.parametrize("key", RECORD_KEYS)
def test_guide_documents_every_json_record_field(key):
    assert f"`{key}`" in GUIDE.read_text(encoding="utf-8")


def test_guide_covers_every_workflow_of_the_seed():
    text = GUIDE.read_text(encoding="utf-8").lower()
    for topic in ("--epochs", "ctrl+c", "sigterm", "kill -9", "fallback", "best_model.pt", "periodic", "clean --keep",
                  "--dry-run", "verify", "sha256", "weights_only", "export", "--json", "20, 40, 60, 80",
                  "resume_from_checkpoint"):
        assert topic in text, topic


def test_guide_pictures_exist_and_are_pngs():
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", GUIDE.read_text(encoding="utf-8"))
    assert {"docs/guide_training_figure.png", "docs/guide_overlay.png"} <= set(pictures)
    for picture in pictures:
        assert (REPO / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", picture
