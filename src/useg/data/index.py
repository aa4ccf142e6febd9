"""The run's image index: anonymous id -> file relative to the data folder, readable by its owner only.

Logs, pictures, checkpoints and CSVs name images by anonymous ids (`p003_i000`);
this one file in the run folder lets the run's owner find the file behind an id.
It is rewritten atomically at every training start, created with mode 0600 from
its first byte (a temp file made by mkstemp), so no other user ever reads it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from useg.data.collection import data_paths, is_several
from useg.files import write_file_atomically

INDEX_NAME = "data_index.json"
INDEX_MODE = 0o600


def index_record(data, dataset) -> dict[str, Any]:
    """The index as a plain dict: the data folder and, per image id, its image/mask files and slice. With
    several datasets `data` lists their folders, `datasets` their names, and each image its `dataset` (0-based)."""
    images = {image_id: source.to_dict() for image_id, source in zip(dataset.ids, dataset.sources)}
    folders = [str(Path(path).expanduser().resolve()) for path in data_paths(data) if path is not None]
    record = {"data": folders if is_several(data) else (folders or [None])[0], "source": dataset.source,
              "images": images}
    if dataset.datasets:
        record["datasets"] = list(dataset.datasets)
    return record


def image_folder(index: dict[str, Any], entry: dict[str, Any]) -> Path | None:
    """The data folder an index entry's file is relative to (its dataset's, with several)."""
    data = index.get("data")
    if isinstance(data, list):
        number = entry.get("dataset")
        data = data[number] if isinstance(number, int) and 0 <= number < len(data) else None
    return Path(data) if data else None


def write_data_index(run_dir: str | Path, data: str | Path | None, dataset) -> Path | None:
    """Write `run_dir/data_index.json` atomically with mode 0600; the synthetic set has no files to index."""
    if data is None:
        return None
    path = Path(run_dir) / INDEX_NAME
    text = json.dumps(index_record(data, dataset), indent=1, sort_keys=True) + "\n"
    write_file_atomically(path, text.encode("utf-8"), then="start the run again", mode=INDEX_MODE)
    return path


def file_label(entry: dict[str, Any]) -> str:
    """`images/a.png`, or `images/ct.nii.gz#slice=12` for one slice of a volume."""
    image, number = entry.get("image") or "", entry.get("slice")
    return image if number is None or not image else f"{image}#slice={number}"


def dataset_files(dataset) -> list[str]:
    """Per image of a loaded dataset, `file_label` of its source ("" where the loader recorded none)."""
    return [file_label(source.to_dict()) for source in dataset.sources] or [""] * len(dataset)
