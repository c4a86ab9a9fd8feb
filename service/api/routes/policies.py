"""/v1/policies: a stored policy (bitplan.policy/v1 JSON) and its exports to the quantization
tools' config formats. Policies never change, so both are cacheable forever."""
from __future__ import annotations

import hashlib

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from search.exports import EXPORTERS
from service.api.common import stored
from service.api.deps import StoreDep
from service.api.errors import ApiError, errors

router = APIRouter()

_EXPORT_TYPES = {"application/json": {"schema": {"type": "object"}}, "application/yaml": {"schema": {"type": "string"}},
                 "text/plain": {"schema": {"type": "string"}}}


@router.get("/policies/{policy_id}", tags=["policies"],
            responses={200: {"description": "bitplan.policy/v1 JSON"}, **errors(404)})
def get_policy(policy_id: str, st: StoreDep):
    row = stored(policy_id, "policy", st.get_policy)
    return JSONResponse(row.data, headers={"X-Bitplan-Job": row.job_id, "Cache-Control": "public, max-age=31536000, immutable"})


@router.get("/policies/{policy_id}/export", tags=["policies"], response_model=None,
            responses={200: {"description": "the policy in the target's config format", "content": _EXPORT_TYPES},
                       304: {"description": "If-None-Match named this export's ETag"}, **errors(404, 422)})
def export_policy(policy_id: str, request: Request, st: StoreDep,
                  format: str = Query(..., description=" | ".join(EXPORTERS) + " (GET /v1/meta: exporters)")):
    """Policies never change, so exports are immutable: an ETag lets clients revalidate."""
    from search.exports import ExportError, export
    from search.policy import Policy
    row = stored(policy_id, "policy", st.get_policy)
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
