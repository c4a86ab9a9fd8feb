"""From an API request to engine specs, validated before anything is queued.

Everything that can be checked without running the model is checked here, so a bad request is a
422 with a message instead of a job that fails minutes later: budgets against the model's
feasible range (from the layers recorded at registration), format menu, proxy and solver names
and parameters, data sources. The sensitivity key is derived from the request (model weights,
proxy and its full parameters, calibration data, formats), so the server can find a cached table
before it dispatches anything."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from search.budgets import CostModel
from search.layers import LayerInfo, find_tie_groups, runtime_ties
from search.params import check_proxy_model
from search.spec import SearchSpec
from search.validate import DATA_DEFAULTS, check_data_limits, check_spec_budgets, static_check
from service.schemas import JobCreate
from workers.data import BUILTIN_TEXT, text_paragraphs

TEXT_SOURCE_NAMES = (*BUILTIN_TEXT, "pydoc")
SPEC_VERSION = 1  # bump when calibration batching changes, so old cached tables are not reused


@dataclass
class JobPlan:
    specs: list[dict]
    texts: dict[str, str | None]
    sensitivity_key: str
    request_hash: str


def _data_source(kind: str, data, model_kind: str) -> str | None:
    if data.source and data.text:
        raise ValueError(f"{kind}: give either a builtin 'source' or uploaded 'text', not both")
    if data.text is not None and not data.text.strip():
        raise ValueError(f"{kind}.text is empty; give some text (paragraphs separated by blank lines)")
    if model_kind == "classifier":
        if data.text or (data.source not in (None, "digits")):
            raise ValueError(f"{kind}: classifier models calibrate and evaluate on 'digits' only")
        return data.source
    if data.source is not None and data.source not in TEXT_SOURCE_NAMES:
        raise ValueError(f"{kind}.source {data.source!r} is unknown: use one of {', '.join(TEXT_SOURCE_NAMES)} "
                         "or upload 'text'")
    return data.source


def check_uploaded_text(field: str, text: str, kind: str, seq_len: int | None, shared: bool) -> None:
    """What can be told about uploaded text without the tokenizer: a causal LM needs at least one
    window of ``seq_len`` tokens, and every byte-level token is at least one byte, so fewer bytes
    than tokens per window can never make one; text shared by calibration and evaluation needs
    two paragraphs to split."""
    if kind == "causal_lm":
        need = seq_len or DATA_DEFAULTS[kind][2]
        size = len(text.encode("utf-8"))
        if size < need:
            raise ValueError(f"{field}.text is {size} bytes, too short for one window of {need} tokens: upload more "
                             f"text or lower seq_len")
    if shared and len(text_paragraphs(text)) < 2:
        raise ValueError(f"{field}.text has one paragraph; calibration and evaluation need at least two to split "
                         "(separate paragraphs by blank lines) or give evaluation data of its own")


def request_hash(req: JobCreate) -> str:
    return hashlib.sha256(json.dumps(req.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


def plan_job(req: JobCreate, model_ref: str, model_id: str, model_kind: str, layers: list[dict],
             max_positions: int | None = None) -> JobPlan:
    """Raises ValueError (pydantic's ValidationError is one) with a message a person can act on.
    Torch-free: the API process validates jobs without importing the engine."""
    budgets = req.budgets if isinstance(req.budgets, list) else [req.budgets]
    if not budgets:
        raise ValueError("budgets: give at least one budget, e.g. {\"avg_bits\": 3.3}")
    if len(budgets) > 64:
        raise ValueError(f"budgets: {len(budgets)} budget points is too many for one job; use at most 64")
    calib = _data_source("calibration", req.calibration, model_kind)
    evaluation = _data_source("evaluation", req.evaluation, model_kind)
    f = req.formats
    base = dict(model=model_ref, bits=f.bits, group_size=f.group_size, symmetric=f.symmetric, proxy=req.proxy,
                proxy_params=req.proxy_params, solver=req.solver, solver_params=req.solver_params, refine=req.refine, refine_evals=req.refine_evals,
                judge_samples=req.judge_samples,
                calib=calib, eval=evaluation, n_calib=req.calibration.n_samples, n_eval=req.evaluation.n_samples,
                seq_len=req.calibration.seq_len or req.evaluation.seq_len, seed=req.seed,
                ties=runtime_ties(req.runtime, req.ties),
                latency_table=req.latency_table, quantizer=req.quantizer, quantizer_params=req.quantizer_params)
    specs = [SearchSpec(**base, budgets=b) for b in budgets]
    checked = static_check(specs[0])
    solver, formats = checked.solver, checked.formats
    check_data_limits(model_kind, specs[0].n_calib, specs[0].n_eval, specs[0].seq_len, max_positions,
                      req.judge_samples, checked.quantizer_params.get("n_samples"))
    for field, data, other in (("calibration", req.calibration, req.evaluation),
                               ("evaluation", req.evaluation, req.calibration)):
        if data.text is not None:
            check_uploaded_text(field, data.text, model_kind, specs[0].seq_len, shared=other.text == data.text)
    if req.quantizer != "rtn" and model_ref.startswith("torchscript:"):
        raise ValueError(f"quantizer {req.quantizer!r} reads calibration activations through forward hooks, which "
                         "TorchScript models do not support; use quantizer 'rtn' for an uploaded model")
    if not formats:
        raise ValueError("formats: the menu is empty; give at least one bit-width")
    if len(formats) * max(len(layers), 1) > 200_000:
        raise ValueError(f"formats: {len(formats)} formats × {len(layers)} layers is too large a table; use fewer formats")
    check_proxy_model(checked.proxy, checked.proxy_params, len(layers), len(formats))
    infos = [LayerInfo.from_dict(d) for d in layers]
    ties = find_tie_groups(infos, specs[0].ties)
    costs = CostModel(infos, formats, specs[0].a_bits, specs[0].latency_table)
    for s in specs:
        check_spec_budgets(s, costs, ties, solver)
    texts = {"calib": req.calibration.text, "eval": req.evaluation.text}
    sha = lambda t: None if t is None else hashlib.sha256(t.encode()).hexdigest()
    key_blob = {"v": SPEC_VERSION, "model": model_id, "proxy": checked.proxy, "params": checked.proxy_params,
                "calib": calib, "calib_text": sha(texts["calib"]), "eval": evaluation, "eval_text": sha(texts["eval"]),
                "n_calib": specs[0].n_calib, "seq_len": specs[0].seq_len, "seed": specs[0].seed,
                "formats": [x.label for x in formats]}
    if req.quantizer != "rtn":  # RTN keys stay as they were, so existing cached tables remain valid
        key_blob["quantizer"] = {"method": req.quantizer, **checked.quantizer_params}
    if specs[0].solver_name == "joint":  # the joint search makes no sensitivity table: never reuse one
        key_blob = {"v": SPEC_VERSION, "joint": request_hash(req)}
    key = hashlib.sha256(json.dumps(key_blob, sort_keys=True, default=str).encode()).hexdigest()
    return JobPlan([s.model_dump(mode="json") for s in specs], texts, key, request_hash(req))
