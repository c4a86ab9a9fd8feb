"""/v1/meta: what this server defines (job statuses, transitions, phases), so that clients
such as the dashboard hold no copies of them."""
from __future__ import annotations

from fastapi import APIRouter

from service.schemas import MetaOut, meta

router = APIRouter()


@router.get("/meta", response_model=MetaOut, tags=["meta"])
def get_meta():
    """The job statuses, their transitions and the phases, as this server defines them."""
    return meta()
