"""The FastAPI application: REST under /v1 (models, data, jobs, policies, sensitivities, meta),
health probes, and the dashboard's static files.

- ``app``: ``create_app``, the lifespan, thread pool sizing, start-up heap freezing
- ``errors`` (and ``messages``, the validation messages): every error is JSON
  ``{code, message, detail}`` with a 4xx for anything the caller can fix; a 500 means a bug
- ``deps``: ``StoreDep``, ``SettingsDep`` and the API token check
- ``limits``: the request body limit; ``health``: /healthz and /readyz
- ``refs`` (server-side model paths), ``files`` (uploads on their way in), ``common``
- ``routes/``: one module per resource, each an ``APIRouter``"""
from __future__ import annotations

from service.api.app import create_app
from service.api.errors import ApiError

__all__ = ["ApiError", "create_app"]
