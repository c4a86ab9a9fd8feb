"""Tensor uploads (``.safetensors`` / ``.npz``): ``inputs`` (or ``x``), first dimension =
samples, and optional integer ``labels`` (or ``y``), one per sample. Only headers are read (the
safetensors JSON header; the ``.npy`` headers inside the npz, never a pickle), so checking a
large file costs no memory."""
from __future__ import annotations

import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

from service.uploads.common import Limits, UploadRefused, invalid
from service.uploads.detect import safetensors_header

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


def store_tensors(tmp: Path, name: str, staging: Path, limits: Limits) -> dict:
    """Check the arrays' names, shapes and dtypes and keep the file: the record's samples and path."""
    with open(tmp, "rb") as fh:
        is_zip = fh.read(4) == b"PK\x03\x04"
    arrays = _npz_arrays(tmp, name, limits) if is_zip else _safetensors_arrays(tmp, name)
    x = next((k for k in INPUT_KEYS if k in arrays), None)
    if x is None:
        held = ", ".join(repr(k) for k in list(arrays)[:6]) or "nothing"
        raise invalid(f"{name} has no array named 'inputs' (or 'x'); it holds {held}: save the model inputs as "
                      "'inputs' (first dimension = samples) and optional class labels as 'labels'")
    xa = arrays[x]
    if len(xa.shape) < 2 or xa.shape[0] < 1:
        raise invalid(f"{name}: '{x}' has shape {list(xa.shape)}; give shape [samples, ...] with at least one "
                      "sample (e.g. [N, 3, 224, 224] for images)")
    if not xa.numeric:
        raise invalid(f"{name}: '{x}' is {xa.dtype}; give numbers (float or integer pixel values)")
    n = xa.shape[0]
    y = next((k for k in LABEL_KEYS if k in arrays), None)
    if y is not None:
        ya = arrays[y]
        if ya.shape != (n,):
            raise invalid(f"{name}: '{y}' has shape {list(ya.shape)} but '{x}' has {n} samples; give one class "
                          f"index per sample, shape [{n}]")
        if not ya.integer:
            raise invalid(f"{name}: '{y}' is {ya.dtype}; labels are class indices, save them as integers")
    dst = staging / ("data.npz" if is_zip else "data.safetensors")
    shutil.copyfile(tmp, dst)
    return {"samples": n, "classes": None, "path": dst.name}


def _safetensors_arrays(path: Path, name: str) -> dict[str, _Array]:
    head = safetensors_header(path)
    if head is None:
        raise invalid(f"{name} is not a safetensors file (its header does not parse); save it with "
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
            raise invalid(f"{name}: the entry {key[:60]!r} is damaged (dtype, shape and data offsets disagree); "
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
                    raise invalid(f"{name} holds {info.filename[:60]!r}, which is not an array; save it with "
                                  "numpy.savez")
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
                    raise invalid(f"{name}: {info.filename[:-4]!r} holds Python objects (it would need a pickle, "
                                  "which bitplan never loads); save numeric arrays")
                out[info.filename[:-4]] = _Array(tuple(shape), np.issubdtype(dtype, np.integer),
                                                 np.issubdtype(dtype, np.number), str(dtype))
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise invalid(f"{name} is not a readable .npz file ({str(e)[:100]}); save it with numpy.savez") from None
    return out
