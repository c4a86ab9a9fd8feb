"""/v1/meta: what this server defines (job statuses, transitions, phases, the format menu, the
registered exporters, proxies, solvers and quantizers, builtin models and data, the default
recipe), so that clients such as the dashboard hold no copies of them."""
from __future__ import annotations

from functools import lru_cache

from fastapi import APIRouter

from service.schemas import MetaOut, meta

router = APIRouter()


def _registries() -> dict:
    """Names as the registries hold them, never restated lists."""
    from search.exports import EXPORTERS
    from search.exports.base import DESCRIBES
    from search.params import PROXY_PARAMS, QUANTIZER_PARAMS
    from search.solvers import SOLVERS
    from service.schemas import JobCreate
    default = JobCreate.model_fields["quantizer"].default
    return {"exporters": sorted(EXPORTERS), "exporter_kinds": {n: DESCRIBES[n] for n in sorted(EXPORTERS)}, "proxies": sorted(PROXY_PARAMS), "solvers": list(SOLVERS),
            "quantizers": sorted(QUANTIZER_PARAMS, key=lambda q: q != default)}  # the default first


def _formats() -> dict:
    from search.formats import FLOAT_BITS, MAX_BITS, MIN_BITS
    from search.runtime_formats import RUNTIME_FORMATS
    from search.spec import DEFAULT_BITS, REFERENCE_GROUP
    from search.targets import TARGETS
    from service.schemas import Formats
    return {"default": Formats(bits=list(DEFAULT_BITS)), "runtime": {
                n: {"family": f.family, "bits": f.bits, "block": f.block, "bits_per_weight": f.bits_per_weight,
                    "fallback": f.fallback, "doc": f.doc} for n, f in RUNTIME_FORMATS.items()},
            "targets": {t.name: {"menu": list(t.menu), "ties": list(t.ties), "exporters": list(t.exporters),
                                 "quantizers": list(t.quantizers)} for t in TARGETS.values()},
            "min_bits": MIN_BITS, "max_bits": MAX_BITS, "float_bits": FLOAT_BITS,
            "reference_group_size": REFERENCE_GROUP}


def _recipe() -> dict:
    from search.defaults import DEFAULT_RECIPE, RECIPES
    from search.spec import DEFAULT_SOLVER
    def step(r: tuple[str, str]) -> dict:
        return {"proxy": r[0], "refine_method": r[1]}
    return {"by_kind": {k: step(r) for k, r in RECIPES.items()}, "default": step(DEFAULT_RECIPE),
            "solver": DEFAULT_SOLVER}


@lru_cache(maxsize=1)
def full_meta() -> MetaOut:
    """Built once: every part is fixed while the server runs."""
    from search.budgets import METRICS
    from service.api.refs import BUILTIN_REFS
    from service.jobspec import TEXT_SOURCE_NAMES
    return MetaOut(**{**meta().model_dump(), **_registries(), "formats": _formats(), "budget_metrics": list(METRICS),
                      "builtin_models": list(BUILTIN_REFS), "data_sources": [*TEXT_SOURCE_NAMES, "digits"],  # digits: the builtin images
                      "recipe": _recipe()})


@router.get("/meta", response_model=MetaOut, tags=["meta"])
def get_meta():
    """The server's own definitions: job statuses, their transitions and the phases; the format
    menu's defaults and bounds; the names the registries hold (exporters, proxies, solvers,
    quantizers); builtin models and data sources; the default recipe."""
    return full_meta()
