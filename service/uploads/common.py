"""What every upload check shares: the kinds and file names bitplan takes, the refusal a caller
turns into an HTTP answer, and the limits an upload is held to."""
from __future__ import annotations

import re
from dataclasses import dataclass

DATA_KINDS = ("images", "tensors", "text", "jsonl")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")
ARCHIVE_EXTS = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
TENSOR_EXTS = (".safetensors", ".npz")
TEXT_EXTS = (".txt", ".text", ".md")
HEX64 = re.compile(r"[0-9a-f]{64}")
FULL_DECODES = 16  # images fully decoded per upload (every header is read)
ACCEPTED = ("upload a .zip or .tar(.gz) of a folder of images (optionally class/ subfolders), a .safetensors or "
            ".npz file of tensors ('inputs', optional 'labels'), or a .txt / .jsonl text file")
# data source kinds a job may name as server-side paths (under BITPLAN_MODEL_ROOT)
SERVER_DATA_KINDS = ("images", "tensors", "text", "jsonl", "file", "dataset")


class UploadRefused(Exception):
    """A refused upload: HTTP status, stable code and a message that names the problem and the fix."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class PathNotAllowed(ValueError):
    """A server-side data path outside BITPLAN_MODEL_ROOT, or no root configured (HTTP 403)."""


def invalid(message: str) -> UploadRefused:
    """The 422 refusal of data that is not what bitplan takes."""
    return UploadRefused(422, "invalid_data", message)


@dataclass(frozen=True)
class Limits:
    max_files: int
    max_bytes: int  # extracted bytes (images) / uncompressed array bytes (npz)
