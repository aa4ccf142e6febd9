"""Datasets (Ovatus, images/ + masks/, MMOTU, synthetic), patient-level splits and in-context tasks."""

from useg.data.dataset import ImageSource, SegDataset
from useg.data.loading import data_options, load_dataset
from useg.data.ovatus import OVATUS_CLASSES
from useg.data.splits import Split, split_by_patient
from useg.data.synthetic import SYNTHETIC_CLASSES, make_synthetic
from useg.data.tasks import Batch, Task, TaskSampler, make_batch, validation_tasks

__all__ = [
    "OVATUS_CLASSES",
    "SYNTHETIC_CLASSES",
    "Batch",
    "ImageSource",
    "SegDataset",
    "Split",
    "Task",
    "TaskSampler",
    "data_options",
    "load_dataset",
    "make_batch",
    "make_synthetic",
    "split_by_patient",
    "validation_tasks",
]
