import shutil
from pathlib import Path

import pytest


@pytest.fixture
def run(trained, tmp_path) -> Path:
    """A private copy of the module's shared `trained` run, for tests that change files."""
    return Path(shutil.copytree(trained, tmp_path / "run"))
