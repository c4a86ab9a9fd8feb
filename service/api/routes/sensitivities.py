"""/v1/sensitivities: a stored sensitivity table (bitplan.sensitivity/v1 JSON). The tables of
one model are listed under /v1/models/{model_id}/sensitivities."""
from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.api.common import stored
from service.api.deps import StoreDep
from service.api.errors import errors

router = APIRouter()


@router.get("/sensitivities/{table_id}", tags=["sensitivities"],
            responses={200: {"description": "bitplan.sensitivity/v1 JSON"}, **errors(404)})
def get_table(table_id: str, st: StoreDep):
    row = stored(table_id, "sensitivity table", st.get_table)
    return JSONResponse({**row.data, "id": row.id})
