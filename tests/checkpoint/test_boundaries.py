"""The checkpoint library knows nothing about the model, trainer, data or CLI."""

import subprocess
import sys

FORBIDDEN = ("useg.model", "useg.training.loop", "useg.cli", "useg.data")


def test_importing_useg_checkpoint_pulls_in_no_model_trainer_data_or_cli():
    code = (
        "import sys, useg.checkpoint\n"
        f"loaded = [m for m in {FORBIDDEN!r} if m in sys.modules]\n"
        "print(','.join(loaded))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
