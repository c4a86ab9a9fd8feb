"""The /v1 routes, one module per resource. ``V1_ROUTERS`` is their order in the OpenAPI
document (and in the docs UI, which groups operations by tag in order of appearance)."""
from __future__ import annotations

from service.api.routes import cost, data, jobs, meta, models, policies, sensitivities

V1_ROUTERS = (models.router, data.router, jobs.router, policies.router, cost.router, sensitivities.router,
              meta.router)
