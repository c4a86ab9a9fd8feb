"""Errors: every one is JSON ``{code, message, detail}`` with a 4xx for anything the caller can
fix; a 500 means a bug. The OpenAPI document lists, per operation, the error statuses it can
really send (``errors(…)`` on each route; ``tidy_openapi`` drops FastAPI's generic 422)."""
from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.api.messages import route_fields, validation_detail, validation_message
from service.schemas import ErrorBody

log = logging.getLogger("bitplan.api")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, detail: Any = None):
        self.status, self.code, self.message, self.detail = status, code, message, detail


def error_response(status: int, code: str, message: str, detail: Any = None,
                   headers: dict | None = None) -> JSONResponse:
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


def tidy_openapi(schema: dict) -> dict:
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


# --------------------------------------------------------------------------- handlers
def allowed_methods(app: FastAPI, path: str) -> list[str]:
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


async def _api_error(_req, e: ApiError):
    return error_response(e.status, e.code, e.message, e.detail)


async def _invalid(req: Request, e: RequestValidationError):
    errs = list(e.errors())
    root, params = route_fields(req.scope.get("route"))
    return error_response(422, "invalid_request", validation_message(errs, root, params),
                          validation_detail(errs, root, params))


async def _http(req: Request, e: StarletteHTTPException):
    if e.status_code == 400:  # FastAPI could not decode the body (e.g. not UTF-8): the caller's to fix
        return error_response(422, "invalid_request", f"the request body could not be read ({e.detail}); send a "
                              "UTF-8 JSON object (Content-Type: application/json)")
    code = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}.get(e.status_code, "http_error")
    msg = "no such endpoint; see /docs" if e.status_code == 404 and e.detail == "Not Found" else str(e.detail)
    headers = dict(e.headers or {})
    if e.status_code == 405:
        allowed = allowed_methods(req.app, req.url.path)
        headers["Allow"] = ", ".join(allowed)
        msg = f"{req.method} is not allowed on {req.url.path}; use {', '.join(allowed) or 'another path'}"
    return error_response(e.status_code, code, msg, headers=headers or None)


async def _internal(_req, e: Exception):
    log.exception("unhandled error")
    return error_response(500, "internal", f"internal error ({type(e).__name__}); this is a bitplan bug, please "
                          "report it")


def install_exception_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _internal)
