"""Uploaded calibration/evaluation data (``POST /v1/data``) and the data sources a job may name.

An upload is validated before anything is kept, then stored content-addressed under
``<upload dir>/data/<sha256>/`` beside a small ``record.json`` (no database table: the bytes
are the identity). Kinds:

- ``images``: a ``.zip`` or ``.tar(.gz/.bz2/.xz)`` of a folder of images, optionally in
  ``class/`` subfolders (the labels). Extracted safely: no absolute paths, no ``..``, no links
  or devices, at most BITPLAN_MAX_UPLOAD_FILES images and BITPLAN_MAX_EXTRACTED_BYTES bytes
  (counted as the bytes are written, so a zip bomb stops at the limit); only image files are
  kept; every image's header is read and a sample of them fully decoded (PIL, torch-free).
- ``tensors``: a ``.safetensors`` or ``.npz`` file holding ``inputs`` (or ``x``), first
  dimension = samples, and optional integer ``labels`` (or ``y``), one per sample. Only headers
  are read (the safetensors JSON header; the ``.npy`` headers inside the npz, never a pickle).
- ``text``: UTF-8 text, paragraphs separated by blank lines; ``jsonl``: one JSON object with a
  ``text`` string per line.

Jobs name an upload as ``upload:<sha256>``; :func:`resolve_data_source` turns it (and the
server-side paths ``images:``/``tensors:``/``text:``/``jsonl:``/``file:``/``dataset:``, which
must lie under BITPLAN_MODEL_ROOT) into the source string a worker loads. Torch-free: this runs
in the API process."""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import stat
import tarfile
import time
import uuid
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

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


def _bad(message: str) -> UploadRefused:
    return UploadRefused(422, "invalid_data", message)


@dataclass(frozen=True)
class Limits:
    max_files: int
    max_bytes: int  # extracted bytes (images) / uncompressed array bytes (npz)


# --------------------------------------------------------------------------- records
def data_dir(upload_dir: Path) -> Path:
    return Path(upload_dir) / "data"


def load_record(upload_dir: Path, data_id: str) -> dict | None:
    """The stored record of an upload, or None (ids that are not sha256 hex never match)."""
    if not HEX64.fullmatch(data_id or ""):
        return None
    try:
        return json.loads((data_dir(upload_dir) / data_id / "record.json").read_text())
    except (OSError, ValueError):
        return None


def public(record: dict) -> dict:
    """The record as the API shows it (no server paths)."""
    return {k: record[k] for k in ("id", "kind", "samples", "classes", "bytes", "source", "name", "created_at")
            if k in record}


def worker_source(upload_dir: Path, record: dict) -> str:
    """The source string a worker loads for a stored upload: ``images:<dir>``, ``tensors:<file>``,
    ``text:<file>`` or ``jsonl:<file>``."""
    path = (data_dir(upload_dir) / record["id"] / record["path"]).resolve()
    return f"{record['kind']}:{path}"


def sweep_staging(upload_dir: Path, older_than: float = 3600) -> None:
    """Remove data uploads left half-stored by a crashed server."""
    now = time.time()
    for p in data_dir(upload_dir).glob(".staging-*"):
        try:
            if now - p.stat().st_mtime > older_than:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


def store_data(tmp: Path, sha: str, size: int, name: str, upload_dir: Path, limits: Limits,
               kind: str | None = None) -> tuple[dict, bool]:
    """Validate the received file ``tmp`` and store it as upload ``sha``: (record, created).
    Raises UploadRefused; nothing stays behind on refusal (``tmp`` is the caller's to remove)."""
    root = data_dir(upload_dir)
    existing = load_record(upload_dir, sha)
    if existing is not None:
        return existing, False
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".staging-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        kind = detect_kind(tmp, name, kind)
        if kind == "images":
            info = _store_images(tmp, name, staging, limits)
        elif kind == "tensors":
            info = _store_tensors(tmp, name, staging, limits)
        else:
            info = _store_text(tmp, name, staging, kind)
        record = {"id": sha, "kind": kind, "samples": info["samples"], "classes": info.get("classes"), "bytes": size,
                  "source": f"upload:{sha}", "name": name, "path": info["path"],
                  "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (staging / "record.json").write_text(json.dumps(record))
        try:
            os.rename(staging, root / sha)
        except OSError:  # the same bytes were stored by another request meanwhile
            shutil.rmtree(staging, ignore_errors=True)
            existing = load_record(upload_dir, sha)
            if existing is None:
                raise
            return existing, False
        return record, True
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


# --------------------------------------------------------------------------- kinds
def _is_tar(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except (OSError, tarfile.TarError, EOFError):
        return False


def _zip_names(path: Path) -> list[str] | None:
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError):
        return None


def _safetensors_header(path: Path) -> dict | None:
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
            raise _bad(f"kind: must be one of {', '.join(DATA_KINDS)}, got {hint[:40]!r}")
        return hint
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
        raise _bad(f"{name} looks like a model; upload models to POST /v1/models (bitplan submit --model FILE), "
                   f"and data here: {ACCEPTED}")
    if lower.endswith(IMAGE_EXTS):
        raise _bad(f"{name} is a single image; put the images in a folder and upload it as a .zip or .tar.gz "
                   "(the SDK's upload_data and `bitplan data upload DIR` zip a folder for you)")
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if head.startswith(b"PK\x03\x04"):
        names = _zip_names(path) or []
        return "tensors" if names and all(n.endswith(".npy") for n in names) else "images"
    if _is_tar(path):
        return "images"
    if _safetensors_header(path) is not None:
        return "tensors"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:
        if len(head) - e.start > 4:  # not a multi-byte character cut at the end of the sample
            raise _bad(f"{name} is not a data file bitplan takes (neither an archive, a tensor file nor UTF-8 "
                       f"text); {ACCEPTED}") from None
        text = head[:e.start].decode("utf-8")
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return "jsonl" if first.startswith("{") else "text"


# --------------------------------------------------------------------------- image archives
def _safe_parts(name: str) -> tuple[str, ...]:
    """The parts of an archive member's path, refusing absolute paths, ``..`` and control characters."""
    norm = name.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        raise _bad(f"the archive holds an absolute path ({name[:120]!r}); archive the folder with relative paths "
                   "(e.g. `cd photos && zip -r ../photos.zip .`)")
    parts = tuple(p for p in norm.split("/") if p not in ("", "."))
    if ".." in parts:
        raise _bad(f"the archive holds a path that leaves its folder ({name[:120]!r}, path traversal); archive the "
                   "folder with relative paths and no '..'")
    if any(ord(c) < 32 or c == "\x7f" for c in norm) or any(len(p.encode()) > 255 for p in parts):
        raise _bad(f"the archive holds a file name with control characters or over 255 bytes ({name[:80]!r}); "
                   "rename it")
    return parts


@dataclass
class _Member:
    name: str
    kind: str  # file | dir | link | other
    size: int
    open: Callable[[], BinaryIO]


def _zip_members(path: Path) -> Iterator[_Member]:
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            mode = info.external_attr >> 16
            fmt = stat.S_IFMT(mode) if info.create_system == 3 else 0  # Unix attributes only
            kind = "dir" if info.is_dir() else "link" if fmt == stat.S_IFLNK else \
                "other" if fmt not in (0, stat.S_IFREG, stat.S_IFDIR) else "file"
            yield _Member(info.filename, kind, info.file_size, lambda info=info: zf.open(info))


def _tar_members(path: Path) -> Iterator[_Member]:
    with tarfile.open(path, "r|*") as tf:  # a stream: a compressed bomb is stopped by the byte count
        for m in tf:
            kind = "dir" if m.isdir() else "link" if (m.issym() or m.islnk()) else "file" if m.isfile() else "other"
            yield _Member(m.name, kind, m.size, lambda m=m: tf.extractfile(m))


def _hidden(parts: tuple[str, ...]) -> bool:
    return any(p.startswith(".") for p in parts) or parts[0] == "__MACOSX"


def _store_images(tmp: Path, name: str, staging: Path, limits: Limits) -> dict:
    with open(tmp, "rb") as fh:
        is_zip = fh.read(4) == b"PK\x03\x04"
    if is_zip and _zip_names(tmp) is None:
        raise _bad(f"{name} is not a readable zip archive; {ACCEPTED}")
    if not is_zip and not _is_tar(tmp):
        raise _bad(f"{name} is neither a zip nor a tar archive; {ACCEPTED}")
    raw = staging / "raw"
    raw.mkdir()
    kept: list[tuple[str, ...]] = []
    seen: set[tuple[str, ...]] = set()
    written = other = 0
    try:
        for m in (_zip_members(tmp) if is_zip else _tar_members(tmp)):
            parts = _safe_parts(m.name)
            if m.kind == "dir" or not parts:
                continue
            if m.kind == "link":
                raise _bad(f"the archive holds a link ({m.name[:120]!r}); archive the image files themselves "
                           "(tar -h / zip without -y follow links)")
            if m.kind == "other":
                raise _bad(f"the archive holds a special file ({m.name[:120]!r}); archive regular image files only")
            if _hidden(parts):
                continue
            if not parts[-1].lower().endswith(IMAGE_EXTS):
                other += 1
                continue
            if len(kept) >= limits.max_files:
                raise UploadRefused(413, "too_many_files", f"the archive holds more than {limits.max_files} images "
                                    "(BITPLAN_MAX_UPLOAD_FILES); upload fewer (calibration needs hundreds, not "
                                    "hundreds of thousands)")
            if parts in seen:
                raise _bad(f"the archive holds {m.name[:120]!r} twice; remove the duplicate")
            seen.add(parts)
            written += m.size
            if written > limits.max_bytes:
                raise _too_big(limits)
            dst = raw.joinpath(*parts)
            dst.parent.mkdir(parents=True, exist_ok=True)
            written = _copy_counted(m.open(), dst, written - m.size, limits)
            kept.append(parts)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, NotImplementedError, RuntimeError,
            zlib.error) as e:
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            raise UploadRefused(507, "insufficient_storage", "the server has no disk space left for this upload; "
                                "try again later or ask its administrator") from None
        raise _bad(f"{name} is a damaged or unsupported archive ({type(e).__name__}: {str(e)[:120]}); re-create it "
                   "with zip or tar (no encryption)") from None
    if not kept:
        also = f" (it holds {other} other files)" if other else ""
        raise _bad(f"{name} holds no image files ({', '.join(IMAGE_EXTS[:5])}, …){also}; {ACCEPTED}")
    # a single folder around everything (photos/cat/1.jpg) is not a class level
    depth = 0
    while all(len(p) > depth + 1 for p in kept) and len({p[depth] for p in kept}) == 1:
        depth += 1
    rel = [p[depth:] for p in kept]
    flat = [p for p in rel if len(p) == 1]
    if flat and len(flat) != len(rel):
        raise _bad(f"{name} mixes images at the top level ({'/'.join(flat[0])}) with images in folders "
                   f"({'/'.join(next(p for p in rel if len(p) > 1))}); put every image in a class folder (the "
                   "labels) or none of them (unlabeled)")
    images = staging / "images"
    images.mkdir()
    for src, dst in zip(kept, rel):
        target = images.joinpath(*dst)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(raw.joinpath(*src), target)
    shutil.rmtree(raw, ignore_errors=True)
    _check_images(images, rel, kept)
    classes = sorted({p[0] for p in rel}) if not flat else None
    return {"samples": len(rel), "classes": classes, "path": "images"}


def _too_big(limits: Limits) -> UploadRefused:
    return UploadRefused(413, "upload_too_large", f"the archive extracts to more than {limits.max_bytes} bytes "
                         "(BITPLAN_MAX_EXTRACTED_BYTES); upload fewer or smaller images")


def _copy_counted(src: BinaryIO, dst: Path, written: int, limits: Limits) -> int:
    """Copy one member, counting the bytes really written (declared sizes can lie)."""
    with src, open(dst, "xb") as out:
        while chunk := src.read(1 << 20):
            written += len(chunk)
            if written > limits.max_bytes:
                raise _too_big(limits)
            out.write(chunk)
    return written


def _check_images(root: Path, rel: list[tuple[str, ...]], names: list[tuple[str, ...]]) -> None:
    """Every image's header identifies a format PIL reads; a spread sample decodes fully.
    ``names``: the paths in the archive, for messages."""
    from PIL import Image, UnidentifiedImageError

    step = max(1, len(rel) // FULL_DECODES)
    for i, (parts, orig) in enumerate(zip(rel, names)):
        shown = "/".join(orig)
        try:
            with Image.open(root.joinpath(*parts)) as im:
                if i % step == 0:
                    im.load()
                w, h = im.size
        except Image.DecompressionBombError:
            raise _bad(f"{shown} is too large an image to decode safely; resize it (calibration images are "
                       "resized to the model's input anyway)") from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
            why = "not a known image format" if isinstance(e, UnidentifiedImageError) else \
                (str(e).replace(str(root), "").strip()[:100] or type(e).__name__)
            raise _bad(f"{shown} does not decode as an image ({why}); remove it or re-save it as PNG or "
                       "JPEG") from None
        if not (w and h):
            raise _bad(f"{shown} is an empty image ({w}x{h}); remove it")


# --------------------------------------------------------------------------- tensors
_ST_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4,
             "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
_ST_INT = ("I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8")
INPUT_KEYS, LABEL_KEYS = ("inputs", "x"), ("labels", "y")


@dataclass
class _Array:
    shape: tuple[int, ...]
    integer: bool
    numeric: bool
    dtype: str


def _safetensors_arrays(path: Path, name: str) -> dict[str, _Array]:
    head = _safetensors_header(path)
    if head is None:
        raise _bad(f"{name} is not a safetensors file (its header does not parse); save it with "
                   "safetensors.torch.save_file / safetensors.numpy.save_file")
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
    body = path.stat().st_size - 8 - n
    out = {}
    for key, v in head.items():
        if key == "__metadata__":
            continue
        try:
            dtype, shape, (a, b) = v["dtype"], tuple(int(s) for s in v["shape"]), v["data_offsets"]
            ok = dtype in _ST_SIZES and all(s >= 0 for s in shape) and 0 <= a <= b <= body
            count = 1
            for s in shape:
                count *= s
            ok = ok and b - a == count * _ST_SIZES[dtype]
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise _bad(f"{name}: the entry {key[:60]!r} is damaged (dtype, shape and data offsets disagree); "
                       "save the file again")
        out[key] = _Array(shape, dtype in _ST_INT, dtype != "BOOL", dtype)
    return out


def _npz_arrays(path: Path, name: str, limits: Limits) -> dict[str, _Array]:
    import numpy as np
    from numpy.lib import format as npformat

    out, total = {}, 0
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    raise _bad(f"{name} holds {info.filename[:60]!r}, which is not an array; save it with numpy.savez")
                total += info.file_size
                if total > limits.max_bytes:
                    raise UploadRefused(413, "upload_too_large", f"{name} uncompresses to more than {limits.max_bytes} "
                                        "bytes (BITPLAN_MAX_EXTRACTED_BYTES); upload fewer samples")
                with zf.open(info) as fh:
                    version = npformat.read_magic(fh)
                    if version == (1, 0):
                        shape, _, dtype = npformat.read_array_header_1_0(fh)
                    elif version == (2, 0):
                        shape, _, dtype = npformat.read_array_header_2_0(fh)
                    else:
                        shape, _, dtype = npformat._read_array_header(fh, version)
                if dtype.hasobject:
                    raise _bad(f"{name}: {info.filename[:-4]!r} holds Python objects (it would need a pickle, "
                               "which bitplan never loads); save numeric arrays")
                out[info.filename[:-4]] = _Array(tuple(shape), np.issubdtype(dtype, np.integer),
                                                 np.issubdtype(dtype, np.number), str(dtype))
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise _bad(f"{name} is not a readable .npz file ({str(e)[:100]}); save it with numpy.savez") from None
    return out


def _store_tensors(tmp: Path, name: str, staging: Path, limits: Limits) -> dict:
    with open(tmp, "rb") as fh:
        is_zip = fh.read(4) == b"PK\x03\x04"
    arrays = _npz_arrays(tmp, name, limits) if is_zip else _safetensors_arrays(tmp, name)
    x = next((k for k in INPUT_KEYS if k in arrays), None)
    if x is None:
        held = ", ".join(repr(k) for k in list(arrays)[:6]) or "nothing"
        raise _bad(f"{name} has no array named 'inputs' (or 'x'); it holds {held}: save the model inputs as "
                   "'inputs' (first dimension = samples) and optional class labels as 'labels'")
    xa = arrays[x]
    if len(xa.shape) < 2 or xa.shape[0] < 1:
        raise _bad(f"{name}: '{x}' has shape {list(xa.shape)}; give shape [samples, ...] with at least one sample "
                   "(e.g. [N, 3, 224, 224] for images)")
    if not xa.numeric:
        raise _bad(f"{name}: '{x}' is {xa.dtype}; give numbers (float or integer pixel values)")
    n = xa.shape[0]
    y = next((k for k in LABEL_KEYS if k in arrays), None)
    if y is not None:
        ya = arrays[y]
        if ya.shape != (n,):
            raise _bad(f"{name}: '{y}' has shape {list(ya.shape)} but '{x}' has {n} samples; give one class index "
                       f"per sample, shape [{n}]")
        if not ya.integer:
            raise _bad(f"{name}: '{y}' is {ya.dtype}; labels are class indices, save them as integers")
    dst = staging / ("data.npz" if is_zip else "data.safetensors")
    shutil.copyfile(tmp, dst)
    return {"samples": n, "classes": None, "path": dst.name}


# --------------------------------------------------------------------------- text
def _store_text(tmp: Path, name: str, staging: Path, kind: str) -> dict:
    raw = tmp.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _bad(f"{name} is not UTF-8 text (byte {e.start} is not); save it as UTF-8, or {ACCEPTED}") from None
    if "\x00" in text:
        raise _bad(f"{name} holds NUL bytes, so it is not text; {ACCEPTED}")
    if kind == "jsonl":
        n = 0
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                raise _bad(f"{name} line {i} is not JSON; each line needs an object such as "
                           '{"text": "…"}') from None
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise _bad(f"{name} line {i} has no \"text\" string; each line needs an object such as "
                           '{"text": "…"}')
            n += 1
        if not n:
            raise _bad(f"{name} has no lines; give one JSON object with a \"text\" field per line")
        dst = staging / "data.jsonl"
    else:
        from workers.data import text_paragraphs  # torch-free
        n = len(text_paragraphs(text))
        if not n:
            raise _bad(f"{name} is empty; give some text (paragraphs separated by blank lines)")
        dst = staging / "data.txt"
    dst.write_bytes(raw)
    return {"samples": n, "classes": None, "path": dst.name}


# --------------------------------------------------------------------------- job data sources
def model_root() -> Path | None:
    root = os.environ.get("BITPLAN_MODEL_ROOT")
    return Path(root).resolve() if root else None


def default_upload_dir() -> Path:
    up = os.environ.get("BITPLAN_UPLOAD_DIR")
    if up:
        return Path(up).resolve()
    return Path(os.environ.get("BITPLAN_VAR_DIR", "var")).resolve() / "uploads"


def _server_path(field: str, kind: str, path: str) -> Path:
    root = model_root()
    if root is None:
        raise PathNotAllowed(f"{field}.source: this server accepts no server-side paths ({kind}:…): its administrator "
                             "has not set BITPLAN_MODEL_ROOT; upload the data with POST /v1/data and use upload:<id>")
    if not path.strip() or any(ord(c) < 32 for c in path):
        raise ValueError(f"{field}.source: {kind}: needs a path relative to the server's model root, e.g. "
                         f"{kind}:my-data")
    try:
        p = (root / path).resolve()
    except (OSError, RuntimeError, ValueError):
        raise ValueError(f"{field}.source: {path[:100]!r} is not a usable path") from None
    if not p.is_relative_to(root):
        raise PathNotAllowed(f"{field}.source: {path[:100]!r} is outside the server's model root (BITPLAN_MODEL_ROOT); "
                             f"give a path relative to it, e.g. {kind}:my-data")
    want_dir = kind in ("images", "dataset")
    try:
        found = p.is_dir() if want_dir else p.is_file()
    except (OSError, ValueError):  # e.g. a name too long for the file system
        found = False
    if not found:
        what = "folder" if want_dir else "file"
        raise ValueError(f"{field}.source: there is no {what} {path[:100]!r} under the server's model root; "
                         "check the name, or upload the data with POST /v1/data")
    return p


def resolve_data_source(field: str, source: str, upload_dir: Path | None = None) -> tuple[str, str, int | None]:
    """(worker-side source, data kind, samples of an upload or None) for a job's
    ``upload:<id>`` or server-side path source; other sources (builtin names) come back unchanged
    with kind ``builtin``. Raises ValueError (PathNotAllowed for paths outside the model root)."""
    prefix, sep, rest = source.partition(":")
    if sep and prefix == "upload":
        rec = load_record(upload_dir or default_upload_dir(), rest.strip().lower())
        if rec is None:
            raise ValueError(f"{field}.source: no uploaded data {rest[:80]!r}; upload it with POST /v1/data (SDK "
                             "upload_data, `bitplan data upload PATH`) and use the source it returns")
        return worker_source(upload_dir or default_upload_dir(), rec), rec["kind"], int(rec["samples"])
    if sep and prefix in SERVER_DATA_KINDS:
        return f"{prefix}:{_server_path(field, prefix, rest)}", prefix, None
    return source, "builtin", None
