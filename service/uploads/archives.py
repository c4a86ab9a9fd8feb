"""Image archives (``images`` uploads): extracted safely, then checked image by image.

Extraction refuses absolute paths, ``..``, links and special files, keeps only image files
(hidden files and ``__MACOSX`` are skipped), and counts the bytes really written, so a zip bomb
stops at BITPLAN_MAX_EXTRACTED_BYTES whatever the archive declares. The images land under
``images/``, one folder per class when the archive has class folders (the labels)."""
from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from service.uploads.common import ACCEPTED, FULL_DECODES, IMAGE_EXTS, Limits, UploadRefused, invalid
from service.uploads.detect import is_tar, zip_names

Parts = tuple[str, ...]


def store_images(tmp: Path, name: str, staging: Path, limits: Limits) -> dict:
    """Extract the archive ``tmp`` into ``staging/images`` and check every image: the record's
    samples, classes (None when unlabeled) and path."""
    with open(tmp, "rb") as fh:
        is_zip = fh.read(4) == b"PK\x03\x04"
    if is_zip and zip_names(tmp) is None:
        raise invalid(f"{name} is not a readable zip archive; {ACCEPTED}")
    if not is_zip and not is_tar(tmp):
        raise invalid(f"{name} is neither a zip nor a tar archive; {ACCEPTED}")
    raw = staging / "raw"
    raw.mkdir()
    kept, other = _extract(tmp, name, is_zip, raw, limits)
    if not kept:
        also = f" (it holds {other} other files)" if other else ""
        raise invalid(f"{name} holds no image files ({', '.join(IMAGE_EXTS[:5])}, …){also}; {ACCEPTED}")
    rel, flat = _class_layout(kept, name)
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


def _extract(tmp: Path, name: str, is_zip: bool, raw: Path, limits: Limits) -> tuple[list[Parts], int]:
    """Write the archive's image files under ``raw``: (their paths in the archive, how many
    other files were skipped)."""
    kept: list[Parts] = []
    seen: set[Parts] = set()
    written = other = 0
    try:
        for m in (_zip_members(tmp) if is_zip else _tar_members(tmp)):
            parts = _wanted(m)
            if parts is None:
                continue
            if not parts[-1].lower().endswith(IMAGE_EXTS):
                other += 1
                continue
            if len(kept) >= limits.max_files:
                raise UploadRefused(413, "too_many_files", f"the archive holds more than {limits.max_files} images "
                                    "(BITPLAN_MAX_UPLOAD_FILES); upload fewer (calibration needs hundreds, not "
                                    "hundreds of thousands)")
            if parts in seen:
                raise invalid(f"the archive holds {m.name[:120]!r} twice; remove the duplicate")
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
        raise invalid(f"{name} is a damaged or unsupported archive ({type(e).__name__}: {str(e)[:120]}); re-create "
                      "it with zip or tar (no encryption)") from None
    return kept, other


def _class_layout(kept: list[Parts], name: str) -> tuple[list[Parts], list[Parts]]:
    """(each image's path below the common top folder, the images with no class folder).
    A single folder around everything (photos/cat/1.jpg) is not a class level; images are all in
    class folders (labelled) or none are (unlabeled)."""
    depth = 0
    while all(len(p) > depth + 1 for p in kept) and len({p[depth] for p in kept}) == 1:
        depth += 1
    rel = [p[depth:] for p in kept]
    flat = [p for p in rel if len(p) == 1]
    if flat and len(flat) != len(rel):
        raise invalid(f"{name} mixes images at the top level ({'/'.join(flat[0])}) with images in folders "
                      f"({'/'.join(next(p for p in rel if len(p) > 1))}); put every image in a class folder (the "
                      "labels) or none of them (unlabeled)")
    return rel, flat


# --------------------------------------------------------------------------- members
def _safe_parts(name: str) -> Parts:
    """The parts of an archive member's path, refusing absolute paths, ``..`` and control characters."""
    norm = name.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        raise invalid(f"the archive holds an absolute path ({name[:120]!r}); archive the folder with relative paths "
                      "(e.g. `cd photos && zip -r ../photos.zip .`)")
    parts = tuple(p for p in norm.split("/") if p not in ("", "."))
    if ".." in parts:
        raise invalid(f"the archive holds a path that leaves its folder ({name[:120]!r}, path traversal); archive "
                      "the folder with relative paths and no '..'")
    if any(ord(c) < 32 or c == "\x7f" for c in norm) or any(len(p.encode()) > 255 for p in parts):
        raise invalid(f"the archive holds a file name with control characters or over 255 bytes ({name[:80]!r}); "
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


def _wanted(m: _Member) -> Parts | None:
    """A member's safe path, None for folders and hidden files; links and special files are refused."""
    parts = _safe_parts(m.name)
    if m.kind == "dir" or not parts:
        return None
    if m.kind == "link":
        raise invalid(f"the archive holds a link ({m.name[:120]!r}); archive the image files themselves "
                      "(tar -h / zip without -y follow links)")
    if m.kind == "other":
        raise invalid(f"the archive holds a special file ({m.name[:120]!r}); archive regular image files only")
    if any(p.startswith(".") for p in parts) or parts[0] == "__MACOSX":
        return None
    return parts


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


# --------------------------------------------------------------------------- images
def _check_images(root: Path, rel: list[Parts], names: list[Parts]) -> None:
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
            raise invalid(f"{shown} is too large an image to decode safely; resize it (calibration images are "
                          "resized to the model's input anyway)") from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
            why = "not a known image format" if isinstance(e, UnidentifiedImageError) else \
                (str(e).replace(str(root), "").strip()[:100] or type(e).__name__)
            raise invalid(f"{shown} does not decode as an image ({why}); remove it or re-save it as PNG or "
                          "JPEG") from None
        if not (w and h):
            raise invalid(f"{shown} is an empty image ({w}x{h}); remove it")
