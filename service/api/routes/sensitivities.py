"""/v1/sensitivities: a stored sensitivity table (bitplan.sensitivity/v1 JSON). The tables of
one model are listed under /v1/models/{model_id}/sensitivities."""
from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.api.common import check_id
from service.api.deps import StoreDep
from service.api.errors import ApiError, errors

router = APIRouter()


@router.get("/sensitivities/{table_id}", tags=["sensitivities"],
            responses={200: {"description": "bitplan.sensitivity/v1 JSON"}, **errors(404)})
def get_table(table_id: str, st: StoreDep):
    check_id(table_id, "sensitivity table")
    row = st.get_table(table_id)
    if row is None:
        raise ApiError(404, "not_found", f"no sensitivity table {table_id!r}")
    return JSONResponse({**row.data, "id": row.id})
