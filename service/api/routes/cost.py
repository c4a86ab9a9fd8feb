"""/v1/cost: the exact cost of a layer → format choice (a policy) and of uniform policies on a
registered model, computed by search's cost model from the layers recorded at registration, so
clients such as the dashboard never restate the storage formula (DESIGN §2)."""
from __future__ import annotations

from fastapi import APIRouter

from service.api.common import ID
from service.api.deps import StoreDep
from service.api.errors import ApiError, errors
from service.schemas import MAX_COST_FORMATS as MAX_FORMATS
from service.schemas import CostOut, CostRequest, FormatChoice, FormatCost

router = APIRouter()


def _format(f: FormatChoice, where: str):
    from search.formats import Format
    try:
        return Format.named(f.runtime) if f.runtime else Format(f.bits, f.group_size, f.symmetric)
    except ValueError as e:
        raise ApiError(422, "invalid_request", f"{where}: {e}") from None


def _choice(body: CostRequest, layers: list, ref: str) -> tuple[list, list[int]]:
    """(the distinct formats, float first; each layer's column): absent layers stay in float."""
    from search.formats import FLOAT_BITS, Format
    index = {l.name: i for i, l in enumerate(layers)}
    formats = [Format(FLOAT_BITS)]
    columns = [0] * len(layers)
    seen: set[str] = set()
    for k, c in enumerate(body.layers):
        where = f"layers.{k}"
        i = index.get(c.name)
        if i is None:
            raise ApiError(422, "invalid_request", f"{where}.name {c.name[:200]!r} is not a quantizable layer of "
                           f"{ref} ({len(layers)} layers, e.g. {layers[0].name!r}); use the names its policies "
                           "and sensitivity tables list")
        if c.name in seen:
            raise ApiError(422, "invalid_request", f"{where}.name {c.name[:200]!r} is given twice; give each layer once")
        seen.add(c.name)
        if c.numel is not None and c.numel != layers[i].numel:
            raise ApiError(422, "invalid_request", f"{where}.numel={c.numel} does not match layer {c.name!r} of "
                           f"{ref} ({layers[i].numel} weights): the policy is for another model")
        columns[i] = _column(formats, _format(c, where))
    return formats, columns


def _column(formats: list, fmt) -> int:
    if fmt not in formats:
        if len(formats) >= MAX_FORMATS:
            raise ApiError(422, "invalid_request", f"more than {MAX_FORMATS} distinct formats in one request; "
                           "send fewer")
        formats.append(fmt)
    return formats.index(fmt)


@router.post("/cost", response_model=CostOut, tags=["policies"], responses=errors(404, 413, 422))
def policy_cost(body: CostRequest, st: StoreDep) -> CostOut:
    """The cost of ``layers`` (a policy's layer → format choice; layers absent stay in float)
    and of a uniform policy in each of ``formats``, under every budget metric, on the layers
    the model was registered with."""
    import numpy as np

    from search.budgets import CostModel
    from search.layers import LayerInfo
    model = st.get_model(body.model_id) if ID.fullmatch(body.model_id) else None
    if model is None:
        raise ApiError(404, "unknown_model", f"no model {body.model_id[:80]!r}; register it with POST /v1/models "
                       "and use the id it returns")
    layers = [LayerInfo.from_dict(d) for d in model.info["layers"]]
    if not layers:
        raise ApiError(422, "invalid_request", f"{model.ref} has no quantizable layers: nothing to price")
    formats, columns = _choice(body, layers, model.ref)
    uniform = [_column(formats, _format(f, f"formats.{k}")) for k, f in enumerate(body.formats)]
    costs = CostModel(layers, formats)
    priced = [FormatCost(**formats[j].to_dict(), label=formats[j].label,
                         cost=costs.cost(np.full(len(layers), j))) for j in uniform]
    return CostOut(model_id=model.id, n_layers=len(layers), n_weights=int(costs.total_numel),
                   cost=costs.cost(np.array(columns)), formats=priced)
