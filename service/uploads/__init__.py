"""Uploaded calibration/evaluation data (``POST /v1/data``) and the data sources a job may name.

An upload is validated before anything is kept, then stored content-addressed under
``<upload dir>/data/<sha256>/`` beside a small ``record.json`` (``records``). Kinds:

- ``images`` (``archives``): a ``.zip`` or ``.tar(.gz/.bz2/.xz)`` of a folder of images,
  optionally in ``class/`` subfolders (the labels), extracted safely within
  BITPLAN_MAX_UPLOAD_FILES images and BITPLAN_MAX_EXTRACTED_BYTES bytes.
- ``tensors`` (``tensors``): a ``.safetensors`` or ``.npz`` file holding ``inputs`` (or ``x``)
  and optional integer ``labels`` (or ``y``); only headers are read.
- ``text`` / ``jsonl`` (``text``): UTF-8 text, paragraphs separated by blank lines; one JSON
  object with a ``text`` string per line.

``detect`` tells the kind from the file; ``sources`` turns a job's ``upload:<sha256>`` and
server-side paths (under the model root) into the source string a worker loads. Torch-free:
this runs in the API process. The names below are the package's public surface."""
from __future__ import annotations

from service.uploads.common import (ACCEPTED, ARCHIVE_EXTS, DATA_KINDS, FULL_DECODES, HEX64, IMAGE_EXTS,
                                    SERVER_DATA_KINDS, TENSOR_EXTS, TEXT_EXTS, Limits, PathNotAllowed,
                                    UploadRefused)
from service.uploads.detect import detect_kind
from service.uploads.records import data_dir, load_record, public, store_data, sweep_staging, worker_source
from service.uploads.sources import resolve_data_source
from service.uploads.tensors import INPUT_KEYS, LABEL_KEYS

__all__ = ["ACCEPTED", "ARCHIVE_EXTS", "DATA_KINDS", "FULL_DECODES", "HEX64", "IMAGE_EXTS", "INPUT_KEYS",
           "LABEL_KEYS", "SERVER_DATA_KINDS", "TENSOR_EXTS", "TEXT_EXTS", "Limits", "PathNotAllowed",
           "UploadRefused", "data_dir", "detect_kind", "load_record", "public", "resolve_data_source",
           "store_data", "sweep_staging", "worker_source"]
