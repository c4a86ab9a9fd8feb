"""What the route modules share: the shape of stored ids, and JSON written by orjson."""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

import orjson
from fastapi.responses import Response

from service.api.errors import ApiError

ID = re.compile(r"[A-Za-z0-9_-]{1,128}")  # every stored id (uuid hex, sha256 hex) has this shape


def check_id(value: str, what: str, hint: str = "") -> None:
    """Ids this server issues are short ASCII tokens; anything else cannot name a record (and
    strings such as NUL bytes must not reach PostgreSQL)."""
    if not ID.fullmatch(value):
        raise ApiError(404, "not_found", f"no {what} {value[:80]!r}{hint}")


T = TypeVar("T")


def stored(ident: str, what: str, fetch: Callable[[str], T | None], hint: str = "") -> T:
    """The record ``fetch`` finds for ``ident``, or a 404 that names it (an id of the wrong shape
    never reaches the database)."""
    check_id(ident, what, hint)
    row = fetch(ident)
    if row is None:
        raise ApiError(404, "not_found", f"no {what} {ident!r}{hint}")
    return row


def json_response(data, status: int = 200, headers: dict | None = None) -> Response:
    return Response(orjson.dumps(data, option=orjson.OPT_UTC_Z), status_code=status, media_type="application/json",
                    headers=headers)
