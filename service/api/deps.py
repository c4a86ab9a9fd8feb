"""Dependencies the routes declare: the store and the settings (both on ``app.state``, set by
create_app and its lifespan), and the API token check that guards /v1 when a token is set.

They are ``async`` on purpose: a plain ``def`` dependency would cost every request a hop to
the thread pool for an attribute read."""
from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.api.errors import ApiError
from service.config import Settings
from service.store import Store


async def store(request: Request) -> Store:
    return request.app.state.store


async def settings(request: Request) -> Settings:
    return request.app.state.settings


StoreDep = Annotated[Store, Depends(store)]
SettingsDep = Annotated[Settings, Depends(settings)]

bearer = HTTPBearer(auto_error=False, description="the server's BITPLAN_API_TOKEN")


async def auth(request: Request, creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
    """Every /v1 call when the server has a token (create_app adds it to the /v1 routers only
    then, so the OpenAPI document says which servers need one). Compared in constant time."""
    given = creds.credentials if creds else ""
    token = request.app.state.settings.api_token
    if not hmac.compare_digest(given.encode(), (token or "").encode()):
        raise ApiError(401, "unauthorized", "missing or wrong API token: send 'Authorization: Bearer <token>' "
                       "(the server's BITPLAN_API_TOKEN)")
