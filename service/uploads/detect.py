"""Which kind of data an uploaded file holds, told from its name and first bytes, before any
kind-specific check reads it (a refusal here names what bitplan takes instead)."""
from __future__ import annotations

import json
import tarfile
import zipfile
from pathlib import Path

from service.uploads.common import (ACCEPTED, ARCHIVE_EXTS, DATA_KINDS, IMAGE_EXTS, TENSOR_EXTS, TEXT_EXTS,
                                    invalid)


def is_tar(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except (OSError, tarfile.TarError, EOFError):
        return False


def zip_names(path: Path) -> list[str] | None:
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError):
        return None


def safetensors_header(path: Path) -> dict | None:
    """The JSON header of a safetensors file, or None when the file is not one."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if not 2 <= n <= min(size - 8, 100 << 20):
                return None
            head = json.loads(fh.read(n))
        return head if isinstance(head, dict) else None
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def detect_kind(path: Path, name: str, hint: str | None = None) -> str:
    """images | tensors | text | jsonl, from the file name and its first bytes."""
    if hint is not None:
        if hint not in DATA_KINDS:
            raise invalid(f"kind: must be one of {', '.join(DATA_KINDS)}, got {hint[:40]!r}")
        return hint
    by_name = _kind_by_name(name)
    return by_name if by_name is not None else _kind_by_bytes(path, name)


def _kind_by_name(name: str) -> str | None:
    """The kind a file's extension names (None when it names none); models and single images
    are refused with where they belong."""
    lower = name.lower()
    if lower.endswith(TENSOR_EXTS):
        return "tensors"
    if lower.endswith(".jsonl"):
        return "jsonl"
    if lower.endswith(TEXT_EXTS):
        return "text"
    if lower.endswith(ARCHIVE_EXTS):
        return "images"
    if lower.endswith(".pt2") or lower.endswith((".pt", ".pth")):
        raise invalid(f"{name} looks like a model; upload models to POST /v1/models (bitplan submit --model FILE), "
                      f"and data here: {ACCEPTED}")
    if lower.endswith(IMAGE_EXTS):
        raise invalid(f"{name} is a single image; put the images in a folder and upload it as a .zip or .tar.gz "
                      "(the SDK's upload_data and `bitplan data upload DIR` zip a folder for you)")
    return None


def _kind_by_bytes(path: Path, name: str) -> str:
    """The kind of a file whose name says nothing: archive, tensor file, else UTF-8 text (JSONL
    when its first line opens an object)."""
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if head.startswith(b"PK\x03\x04"):
        names = zip_names(path) or []
        return "tensors" if names and all(n.endswith(".npy") for n in names) else "images"
    if is_tar(path):
        return "images"
    if safetensors_header(path) is not None:
        return "tensors"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:
        if len(head) - e.start > 4:  # not a multi-byte character cut at the end of the sample
            raise invalid(f"{name} is not a data file bitplan takes (neither an archive, a tensor file nor UTF-8 "
                          f"text); {ACCEPTED}") from None
        text = head[:e.start].decode("utf-8")
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return "jsonl" if first.startswith("{") else "text"
