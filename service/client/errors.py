"""The SDK's typed errors: every error answer from the server becomes one of these, carrying
the server's ``status``, ``code`` and ``message``, so callers catch what they can act on
instead of parsing HTTP."""
from __future__ import annotations

from typing import Any

import httpx

from service.schemas import JobOut


class BitplanError(Exception):
    """An error answer from the server: ``status`` (HTTP), ``code`` and the server's ``message``."""

    def __init__(self, status: int, code: str, message: str, detail: Any = None):
        super().__init__(f"{message} ({status} {code})")
        self.status, self.code, self.message, self.detail = status, code, message, detail


class InvalidRequest(BitplanError):
    """422/400/413: change the request as the message says."""


class Unauthorized(BitplanError):
    pass


class NotFound(BitplanError):
    pass


class ConflictError(BitplanError):
    """409: idempotency key reused with another body, or a job that can no longer be cancelled."""


class ServerError(BitplanError):
    pass


class JobFailed(BitplanError):
    """``wait`` saw the job end ``failed`` or ``cancelled``; ``job`` holds its final state."""

    def __init__(self, job: JobOut):
        super().__init__(200, job.status, job.error or job.message)
        self.job = job


class WaitTimeout(TimeoutError):
    def __init__(self, job: JobOut, timeout: float):
        super().__init__(f"job {job.id} still {job.status} ({job.phase}, {job.progress:.0%}) after {timeout:g}s")
        self.job = job


def raise_for(r: httpx.Response) -> None:
    """Nothing for a success; else the typed error of the answer's status, with its message."""
    if r.is_success:
        return
    try:
        body = r.json()
        code, message, detail = body.get("code", "error"), body.get("message", r.text), body.get("detail")
    except ValueError:
        code, message, detail = "error", r.text or r.reason_phrase, None
    cls = {401: Unauthorized, 403: InvalidRequest, 404: NotFound, 409: ConflictError}.get(r.status_code)
    if cls is None:
        cls = ServerError if r.status_code >= 500 else InvalidRequest
    raise cls(r.status_code, code, message, detail)
