"""What a file's bytes are: a torch.save archive, a safetensors file, or something else, named.

Read from the first bytes only, never run: a torch.save archive is a zip whose first entry is
`<root>/data.pkl`; a safetensors file is an 8-byte little-endian header length followed by a
JSON header (checked in full by `safetensors_header`, which never reads the tensors). Anything
else is named by what it looks like ("a JSON file"), so that a file of another format is
reported as such, never as damage.
"""

from __future__ import annotations

import json
import os
import re
import struct
from math import prod
from typing import Any, BinaryIO, NamedTuple

TORCH, SAFETENSORS, PICKLE, EMPTY, FOREIGN = "torch", "safetensors", "pickle", "empty", "foreign"
_HEAD = 512
_MAX_HEADER = 100 * 1024 * 1024  # the safetensors library's own limit
_TORCH_FIRST_ENTRY = re.compile(rb"[^/]+/data\.pkl")
_ITEM_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8,
               "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
_MAGIC = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"\x1f\x8b", "a gzip file"),
          (b"\x89HDF", "an HDF5 file"), (b"%PDF", "a PDF document"))


class Content(NamedTuple):
    """`kind`: one of TORCH, SAFETENSORS, PICKLE (not a zip archive), EMPTY or FOREIGN;
    `looks_like`: what the bytes look like, for messages."""

    kind: str
    looks_like: str


def identify_content(handle: BinaryIO) -> Content:
    """Name the format of an open file from its first bytes (the handle is left at 0)."""
    handle.seek(0)
    head = handle.read(_HEAD)
    handle.seek(0)
    if not head:
        return Content(EMPTY, "an empty file")
    if head.startswith(b"PK\x03\x04"):
        if _TORCH_FIRST_ENTRY.fullmatch(_first_zip_entry(head)):
            return Content(TORCH, "a torch.save archive")
        return Content(FOREIGN, "a zip archive that torch.save did not write")
    if _header_length(head) is not None:
        return Content(SAFETENSORS, "a safetensors file")
    if head[:1] == b"\x80":
        return Content(PICKLE, "a pickle, not a torch.save zip archive")
    return Content(FOREIGN, _looks_like(head))


def safetensors_header(handle: BinaryIO) -> dict[str, Any]:
    """The JSON header of a safetensors file, checked against the file's size (the tensors are not read).

    Raises ValueError naming what is wrong: a short file, a header that is not JSON, tensors
    whose byte ranges do not fit their shapes or the file.
    """
    handle.seek(0)
    size = os.fstat(handle.fileno()).st_size
    length = _header_length(handle.read(9))
    if length is None or length > size - 8:
        raise ValueError("its header does not fit in the file (truncated?)")
    handle.seek(8)
    raw = handle.read(length)
    handle.seek(0)
    try:
        header = json.loads(raw)
    except ValueError:
        raise ValueError("its header is not valid JSON (truncated or changed?)") from None
    if not isinstance(header, dict):
        raise ValueError("its header is not a JSON object")
    _check_ranges(header, size - 8 - length)
    return header


def _check_ranges(header: dict[str, Any], data_bytes: int) -> None:
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                raise ValueError("its __metadata__ is not a map of strings")
            continue
        if not _is_tensor_entry(entry):
            raise ValueError(f"tensor {name} has no valid dtype, shape and data_offsets")
        begin, stop = entry["data_offsets"]
        if stop - begin != prod(entry["shape"]) * _ITEM_BYTES[entry["dtype"]]:
            raise ValueError(f"tensor {name}'s bytes do not match its shape")
        end = max(end, stop)
    if end != data_bytes:
        raise ValueError(f"its tensors need {end} bytes of data but the file holds {data_bytes} (truncated?)")


def _is_tensor_entry(entry: Any) -> bool:
    if not isinstance(entry, dict) or entry.get("dtype") not in _ITEM_BYTES:
        return False
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    whole = lambda values: isinstance(values, list) and all(type(v) is int and v >= 0 for v in values)  # noqa: E731
    return whole(shape) and whole(offsets) and len(offsets) == 2 and offsets[0] <= offsets[1]


def _header_length(head: bytes) -> int | None:
    """The header length a safetensors file announces (None when the bytes are no such header)."""
    if len(head) < 9 or head[8:9] != b"{":
        return None
    (length,) = struct.unpack("<Q", head[:8])
    return length if 2 <= length <= _MAX_HEADER else None


def _first_zip_entry(head: bytes) -> bytes:
    if len(head) < 30:
        return b""
    (name_length,) = struct.unpack("<H", head[26:28])
    return head[30:30 + name_length]


def _looks_like(head: bytes) -> str:
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    text = head.lstrip()
    if text[:1] in (b"{", b"["):
        return "a JSON file"
    try:
        decoded = head.decode("utf-8")
    except UnicodeDecodeError as error:  # the first bytes may end inside a character
        decoded = head[:error.start].decode("utf-8") if error.start >= len(head) - 3 else ""
    if decoded and all(char.isprintable() or char in "\t\r\n" for char in decoded):
        return "a text file"
    return "data of an unknown format"
