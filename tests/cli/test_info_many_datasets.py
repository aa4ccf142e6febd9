"""A run over several datasets (a config file's `data` list with a weight and an option of its own, and
--held-out-data): the data line at training start and `useg checkpoints info` say each dataset."""

from __future__ import annotations

import json
from contextlib import redirect_stderr, redirect_stdout
from io import StringIO
from pathlib import Path

import pytest
from medical_files import write_synthetic_folder
from tiny import TINY

from useg.cli import main
from useg.cli.checkpoint_actions import run_datasets
from useg.cli.display import dataset_lines


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, str]:
    """The run and what its training printed."""
    root = tmp_path_factory.mktemp("info")
    for name, seed in (("us", 3), ("mri", 4), ("ct", 5)):
        write_synthetic_folder(root / name, 6, seed=seed, size=(30, 30))
    config = root / "run.yaml"
    config.write_text(f"data:\n  - {root / 'us'}\n  - path: {root / 'mri'}\n    weight: 2\n    label: 255\n"
                      f"held_out_data:\n  - {root / 'ct'}\n")
    run = root / "run"
    out = StringIO()
    with redirect_stdout(out), redirect_stderr(out):
        assert main(["train", "--config", str(config), "--run-dir", str(run), "--epochs", "1", *TINY,
                     "--vis-every", "0"]) == 0
    return run, out.getvalue()


def test_the_data_line_names_the_datasets_the_held_out_one_and_the_memory(trained):
    _, printed = trained
    line = next(line for line in printed.splitlines() if line.startswith("Data: "))
    assert ("datasets: d1 us 6 images of 6 patients, split 4/1/1, weight 1; "
            "d2 mri 6 images of 6 patients, split 4/1/1, weight 2; held out: ct 6 images of 6 patients, split "
            "4/1/1; arrays ") in line
    assert "scan" not in line


def test_checkpoints_info_lists_each_dataset_with_its_folder_weight_and_options(trained, capsys):
    run, _ = trained
    best = run / "checkpoints" / "best_model.pt"
    root = run.parent
    capsys.readouterr()
    assert main(["checkpoints", "info", str(best)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("config:        data=2 datasets, image_size=32") for line in lines)
    start = next(index for index, line in enumerate(lines) if line.startswith("datasets:"))
    assert lines[start:start + 3] == [f"datasets:      d1 us: {root / 'us'} (weight 1)",
                                      f"               d2 mri: {root / 'mri'} (weight 2, label 255)",
                                      f"held out:      ct: {root / 'ct'}"]
    assert main(["checkpoints", "info", str(best), "--json"]) == 0
    datasets = json.loads(capsys.readouterr().out)["datasets"]
    assert datasets == {
        "trained": [{"id": "d1", "name": "us", "data": str(root / "us"), "weight": 1.0, "options": {}},
                    {"id": "d2", "name": "mri", "data": str(root / "mri"), "weight": 2.0, "options": {"label": 255}}],
        "held_out": [{"name": "ct", "data": str(root / "ct"), "options": {}}]}


def test_a_one_dataset_run_s_info_is_unchanged():
    assert run_datasets({"data": "/data/us", "held_out_data": []}) is None
    assert run_datasets({"data": None}) is None  # the embedded synthetic set; older runs have no held_out_data
    assert dataset_lines(None) == []
    one_held_out = run_datasets({"data": "/data/us", "held_out_data": ["/data/ct"]})
    assert one_held_out == {"trained": [], "held_out": [{"name": "ct", "data": "/data/ct", "options": {}}]}
    assert dataset_lines(one_held_out) == ["held out:      ct: /data/ct"]
