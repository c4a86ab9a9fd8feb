"""The request body limit, enforced before FastAPI buffers a body."""
from __future__ import annotations

from fastapi.responses import JSONResponse

from service.api.errors import error_response
from service.config import Settings


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
        return error_response(413, "body_too_large", f"the request body {what}; the limit is {limit} bytes "
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
