"""The data line and the log header's `data` say each dataset of a run over several (name, images, patients,
weight, split sizes), the held-out datasets, and the memory the arrays take; patients are only counted."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from medical_files import write_synthetic_folder

from useg.data import load_dataset, split_by_patient
from useg.data.collection import load_data, load_held_out
from useg.training.log import describe_data, log_header, megabytes


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("line")
    return {"us": write_synthetic_folder(root / "us", 10, seed=3, size=(40, 26)),
            "mri": write_synthetic_folder(root / "mri", 5, seed=4, size=(30, 30)),
            "ct": write_synthetic_folder(root / "ct", 5, seed=5, size=(30, 30))}


def several(folders) -> tuple:
    data = [str(folders["us"]), {"path": str(folders["mri"]), "weight": 2.5}]
    dataset = load_data(data, image_size=32, seed=0)
    held = load_held_out([str(folders["ct"])], image_size=32, seed=0)
    return dataset, split_by_patient(dataset, seed=0), held


def test_the_data_line_names_each_dataset_its_split_and_the_held_out_ones(folders):
    dataset, split, held = several(folders)
    line = describe_data(dataset, split, val_tasks=3, held_out=held)
    assert ("; datasets: d1 us 10 images of 10 patients, split 6/2/2, weight 1; "
            "d2 mri 5 images of 5 patients, split 3/1/1, weight 2.5; held out: ct 5 images of 5 patients, split "
            "3/1/1; arrays ") in line
    total = dataset.array_bytes + held[0].dataset.array_bytes
    assert f"; arrays {megabytes(total)};" in line and "\n" not in line
    assert "scan" not in line  # file names (a patient's, in real data) stay out


def test_a_one_dataset_line_is_as_before_with_the_memory_of_its_arrays(folders):
    dataset = load_dataset(folders["us"], image_size=32)
    line = describe_data(dataset, split_by_patient(dataset, seed=0), val_tasks=2)
    assert line.startswith("Data: folders, 10 images of 10 patients, classes foreground; split train/val/test = "
                           "6/2/2 images (60/20/20 by patient, seed 0); 2 validation tasks; arrays ")
    assert f"; arrays {megabytes(dataset.array_bytes)}" in line and "datasets:" not in line


@pytest.mark.parametrize("size, text", [(180 * 2**20, "180 MB"), (3.4 * 2**20, "3.4 MB"), (21_000, "0.02 MB"),
                                        (100, "<0.01 MB")])
def test_array_memory_reads_in_megabytes(size, text):
    assert megabytes(size) == text


def test_the_log_header_records_the_datasets_and_the_memory(folders):
    from useg.config import TrainConfig
    from useg.model import build_universeg

    dataset, split, held = several(folders)
    cfg = TrainConfig(data=[str(folders["us"]), str(folders["mri"])], image_size=32, widths=[8, 8])
    header = log_header(cfg, build_universeg([8, 8]), dataset, split, device=torch.device("cpu"),
                        world_size=1, held_out=held)["data"]
    assert header["array_bytes"] == dataset.array_bytes + held[0].dataset.array_bytes
    assert header["datasets"] == [
        {"name": "us", "images": 10, "patients": 10, "weight": 1.0, "classes": ["us/foreground"],
         "split_sizes": {"train": 6, "val": 2, "test": 2}},
        {"name": "mri", "images": 5, "patients": 5, "weight": 2.5, "classes": ["mri/foreground"],
         "split_sizes": {"train": 3, "val": 1, "test": 1}}]
    assert header["held_out"] == [{"name": "ct", "images": 5, "patients": 5, "classes": ["foreground"],
                                   "split_sizes": {"train": 3, "val": 1, "test": 1}}]
    one = load_dataset(folders["us"], image_size=32)
    plain = log_header(cfg, build_universeg([8, 8]), one, split_by_patient(one, seed=0),
                       device=torch.device("cpu"), world_size=1)["data"]
    assert set(plain) == {"source", "classes", "report", "split_sizes", "array_bytes"}
