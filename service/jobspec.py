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
from pathlib import Path

from search.budgets import CostModel
from search.layers import LayerInfo, find_tie_groups, runtime_ties
from search.params import check_proxy_model
from search.spec import SearchSpec
from search.validate import DATA_DEFAULTS, check_data_limits, check_spec_budgets, static_check
from service.schemas import JobCreate
from service.uploads import resolve_data_source
from workers.data import BUILTIN_TEXT, text_paragraphs

TEXT_SOURCE_NAMES = (*BUILTIN_TEXT, "pydoc")
SPEC_VERSION = 1  # bump when calibration batching changes, so old cached tables are not reused


@dataclass
class JobPlan:
    specs: list[dict]
    texts: dict[str, str | None]
    sensitivity_key: str
    request_hash: str


TEXT_MODEL_KINDS = ("causal_lm", "embedding", "text_classifier")
IMAGE_FIELDS = ("image_size", "resize", "image_mean", "image_std")
NEW_FIELDS = {**{f: None for f in IMAGE_FIELDS}, "data_column": None, "label_column": None, "fold_batchnorm": False}
_KIND_WORDS = {"images": "images", "tensors": "tensors", "text": "text", "jsonl": "JSONL text", "file": "text",
               "dataset": "a dataset"}


def _data_source(kind: str, data, model_kind: str, upload_dir: Path | None = None) -> str | None:
    """The worker-side source of a request's calibration/evaluation data (None: the model's
    default), checked against what the model takes: image classifiers take ``digits``, images,
    tensors or datasets; text models take text."""
    if data.source and data.text:
        raise ValueError(f"{kind}: give either a 'source' or uploaded 'text', not both")
    if data.text is not None and not data.text.strip():
        raise ValueError(f"{kind}.text is empty; give some text (paragraphs separated by blank lines)")
    if data.source is None:
        if data.text is not None and model_kind == "classifier":
            raise ValueError(f"{kind}.text: this classifier takes images or tensors, not text: use 'digits', or "
                             "upload your images/tensors with POST /v1/data and use the upload:<id> source it returns")
        return None
    source = data.source.strip()
    resolved, found, samples = resolve_data_source(kind, source, upload_dir)
    if samples is not None and data.n_samples is not None and data.n_samples > samples:
        raise ValueError(f"{kind}.n_samples={data.n_samples} is more than {source[:80]} holds ({samples} samples); "
                         "lower n_samples or upload more data")
    if model_kind == "classifier":
        if found == "builtin" and source != "digits":
            raise ValueError(f"{kind}.source {source[:80]!r} is unknown for a classifier: use 'digits', uploaded images "
                             "or tensors (upload:<id> from POST /v1/data), or images:<dir> / tensors:<file> / "
                             "dataset:<dir> under the server's model root")
        if found in ("text", "jsonl", "file"):
            raise ValueError(f"{kind}.source {source[:80]!r} holds {_KIND_WORDS[found]}, but this model is an image/tensor "
                             "classifier: upload a .zip of images or a .safetensors/.npz of inputs instead")
        return resolved
    if model_kind in TEXT_MODEL_KINDS or found != "builtin":
        if found in ("images", "tensors"):
            raise ValueError(f"{kind}.source {source[:80]!r} holds {found}, but this {model_kind} model reads text: "
                             "upload a .txt or .jsonl file, or use one of " + ", ".join(TEXT_SOURCE_NAMES))
        if found == "builtin" and source not in TEXT_SOURCE_NAMES:
            raise ValueError(f"{kind}.source {source[:80]!r} is unknown: use one of {', '.join(TEXT_SOURCE_NAMES)}, "
                             "uploaded text (upload:<id> from POST /v1/data, or 'text'), or text:<file> / "
                             "jsonl:<file> / dataset:<dir> under the server's model root")
    return resolved


def _check_model_fields(req: JobCreate, model_kind: str, calib: str | None, evaluation: str | None) -> None:
    """Image preprocessing only for image models; columns only for dataset sources."""
    if model_kind in TEXT_MODEL_KINDS:
        for f in IMAGE_FIELDS:
            if getattr(req, f) is not None:
                raise ValueError(f"{f}: only image models take image preprocessing; this model is a "
                                 f"{model_kind.replace('_', ' ')} (remove {f})")
    if req.image_mean is not None and req.image_std is not None and len(req.image_mean) != len(req.image_std):
        raise ValueError(f"image_std: give as many values as image_mean ({len(req.image_mean)}), one per channel")
    datasets = [s for s in (calib, evaluation) if s and s.startswith("dataset:")]
    for f in ("data_column", "label_column"):
        if getattr(req, f) is not None and not datasets:
            raise ValueError(f"{f}: columns name the fields of a Hugging Face dataset; use it with a dataset:<dir> "
                             "calibration or evaluation source (remove it otherwise)")


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
    """Fields added later count only when set, so a request's hash (idempotency keys, joint-search
    cache keys) is the same as before they existed."""
    body = req.model_dump(mode="json")
    for f, default in NEW_FIELDS.items():
        if body.get(f) == default:
            body.pop(f, None)
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def plan_job(req: JobCreate, model_ref: str, model_id: str, model_kind: str, layers: list[dict],
             max_positions: int | None = None, upload_dir: Path | None = None) -> JobPlan:
    """Raises ValueError (pydantic's ValidationError is one) with a message a person can act on;
    uploads.PathNotAllowed (a ValueError) for a server-side data path outside the model root.
    ``upload:<id>`` sources are looked up in ``upload_dir`` (default: BITPLAN_UPLOAD_DIR, else
    BITPLAN_VAR_DIR/uploads). Torch-free: the API process validates jobs without importing the engine."""
    budgets = req.budgets if isinstance(req.budgets, list) else [req.budgets]
    if not budgets:
        raise ValueError("budgets: give at least one budget, e.g. {\"avg_bits\": 3.3}")
    if len(budgets) > 64:
        raise ValueError(f"budgets: {len(budgets)} budget points is too many for one job; use at most 64")
    calib = _data_source("calibration", req.calibration, model_kind, upload_dir)
    evaluation = _data_source("evaluation", req.evaluation, model_kind, upload_dir)
    _check_model_fields(req, model_kind, calib, evaluation)
    f = req.formats
    base = dict(model=model_ref, bits=f.bits, group_size=f.group_size, symmetric=f.symmetric, proxy=req.proxy,
                proxy_params=req.proxy_params, solver=req.solver, solver_params=req.solver_params, refine=req.refine, refine_evals=req.refine_evals,
                refine_seconds=req.refine_seconds, refine_method=req.refine_method,
                judge_samples=req.judge_samples,
                calib=calib, eval=evaluation, n_calib=req.calibration.n_samples, n_eval=req.evaluation.n_samples,
                seq_len=req.calibration.seq_len or req.evaluation.seq_len, seed=req.seed,
                ties=runtime_ties(req.runtime, req.ties),
                latency_table=req.latency_table, quantizer=req.quantizer, quantizer_params=req.quantizer_params,
                image_size=req.image_size, resize=req.resize, image_mean=req.image_mean, image_std=req.image_std,
                data_column=req.data_column, label_column=req.label_column, fold_batchnorm=req.fold_batchnorm,
                device=req.device, offload=req.offload)
    specs = [SearchSpec(**base, budgets=b).with_recipe(model_kind) for b in budgets]
    checked = static_check(specs[0])
    solver, formats = checked.solver, checked.formats
    check_data_limits(model_kind, specs[0].n_calib, specs[0].n_eval, specs[0].seq_len, max_positions,
                      req.judge_samples, checked.quantizer_params.get("n_samples"))
    for field, data, other in (("calibration", req.calibration, req.evaluation),
                               ("evaluation", req.evaluation, req.calibration)):
        if data.text is not None:
            check_uploaded_text(field, data.text, model_kind, specs[0].seq_len, shared=other.text == data.text)
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
    for f, default in NEW_FIELDS.items():  # unset: keys stay as they were, cached tables remain valid
        if getattr(req, f) != default:
            key_blob[f] = getattr(req, f)
    if req.quantizer != "rtn":  # RTN keys stay as they were, so existing cached tables remain valid
        key_blob["quantizer"] = {"method": req.quantizer, **checked.quantizer_params}
    if specs[0].solver_name == "joint":  # the joint search makes no sensitivity table: never reuse one
        key_blob = {"v": SPEC_VERSION, "joint": request_hash(req)}
    key = hashlib.sha256(json.dumps(key_blob, sort_keys=True, default=str).encode()).hexdigest()
    return JobPlan([s.model_dump(mode="json") for s in specs], texts, key, request_hash(req))
