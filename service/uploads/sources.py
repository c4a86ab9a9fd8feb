"""The data sources a job may name, turned into the source string a worker loads: an upload
(``upload:<sha256>``) or a server-side path (``images:``/``tensors:``/``text:``/``jsonl:``/
``file:``/``dataset:``), which must lie under the model root. The caller passes the server's
upload folder and model root (Settings.upload_dir, Settings.model_root): nothing here reads
the environment."""
from __future__ import annotations

from pathlib import Path

from service.uploads.common import SERVER_DATA_KINDS, PathNotAllowed
from service.uploads.records import load_record, worker_source


def resolve_data_source(field: str, source: str, upload_dir: Path,
                        model_root: Path | None) -> tuple[str, str, int | None]:
    """(worker-side source, data kind, samples of an upload or None) for a job's
    ``upload:<id>`` or server-side path source; other sources (builtin names) come back unchanged
    with kind ``builtin``. ``model_root`` None refuses every server-side path. Raises ValueError
    (PathNotAllowed for paths outside the model root)."""
    prefix, sep, rest = source.partition(":")
    if sep and prefix == "upload":
        rec = load_record(upload_dir, rest.strip().lower())
        if rec is None:
            raise ValueError(f"{field}.source: no uploaded data {rest[:80]!r}; upload it with POST /v1/data (SDK "
                             "upload_data, `bitplan data upload PATH`) and use the source it returns")
        return worker_source(upload_dir, rec), rec["kind"], int(rec["samples"])
    if sep and prefix in SERVER_DATA_KINDS:
        return f"{prefix}:{_server_path(field, prefix, rest, model_root)}", prefix, None
    return source, "builtin", None


def _server_path(field: str, kind: str, path: str, model_root: Path | None) -> Path:
    """``path`` resolved under the model root; it must exist (a folder for images and datasets)."""
    if model_root is None:
        raise PathNotAllowed(f"{field}.source: this server accepts no server-side paths ({kind}:…): its administrator "
                             "has not set BITPLAN_MODEL_ROOT; upload the data with POST /v1/data and use upload:<id>")
    root = Path(model_root).resolve()
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
