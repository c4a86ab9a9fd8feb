"""From an API request to engine specs, validated once, before anything is queued.

Everything that can be checked without running the model is checked here, so a bad request is a
422 with a message instead of a job that fails minutes later: budgets against the model's
feasible range (from the layers recorded at registration), format menu, proxy and solver names
and parameters, data sources. The sensitivity key is derived from the request (model weights,
proxy and its full parameters, calibration data, formats), so the server can find a cached table
before it dispatches anything. Specs come from the one mapping (``search.spec.specs_from_request``)
and are checked by the one validation (``search.validate.validate``); the dispatcher maps a stored
request again (``launch_specs``) without checking it again."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from search.defaults import DEFAULT_REFINE_PATIENCE
from search.layers import LayerInfo
from search.spec import SearchSpec, specs_from_request
from search.validate import DATA_DEFAULTS, Checked, validate
from service.config import Settings
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
NEW_FIELDS = {**{f: None for f in IMAGE_FIELDS}, "data_column": None, "label_column": None, "fold_batchnorm": False,
              "refine_patience": DEFAULT_REFINE_PATIENCE, "compute_dtype": "auto"}
REFINE_ONLY = ("refine_patience",)  # new fields the sensitivity table does not depend on
# proxy parameters added after tables were stored, with their defaults: keyed only when set
# otherwise (a table stored before them was measured at least as exactly, and stays valid)
NEW_PROXY_PARAMS = {"measured": {"extrapolate": 64.0}}
_KIND_WORDS = {"images": "images", "tensors": "tensors", "text": "text", "jsonl": "JSONL text", "file": "text",
               "dataset": "a dataset"}


def _data_source(kind: str, data, model_kind: str, upload_dir: Path, model_root: Path | None) -> str | None:
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
    resolved, found, samples = resolve_data_source(kind, source, upload_dir, model_root)
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


def _request_specs(req: JobCreate, model_ref: str, model_kind: str, calib: str | None,
                   evaluation: str | None) -> list[SearchSpec]:
    """The request's specs (one per budget point, the model kind's recipe filled in) by the one
    mapping, ``search.spec.specs_from_request``, with the worker-side data sources."""
    body = req.model_dump()
    body["calibration"]["source"], body["evaluation"]["source"] = calib, evaluation
    return specs_from_request(body, model_ref, model_kind)


def _texts(req: JobCreate) -> dict[str, str | None]:
    return {"calib": req.calibration.text, "eval": req.evaluation.text}


def launch_specs(req: JobCreate, model_ref: str, model_kind: str,
                 settings: Settings | None = None) -> tuple[list[dict], dict[str, str | None]]:
    """What the dispatcher sends to the workers for a job the API accepted: its specs (as JSON)
    and inline texts. The store keeps the request, so its specs are mapped again, by the same
    mapping as ``plan_job``'s, but not validated again: the job exists because ``plan_job`` passed
    it. Data sources resolve to the worker's (an upload deleted since raises ValueError)."""
    settings = settings if settings is not None else Settings()
    calib, evaluation = (None if d.source is None else
                         resolve_data_source(field, d.source.strip(), settings.upload_dir, settings.model_root)[0]
                         for field, d in (("calibration", req.calibration), ("evaluation", req.evaluation)))
    specs = _request_specs(req, model_ref, model_kind, calib, evaluation)
    return [s.model_dump(mode="json") for s in specs], _texts(req)


def plan_job(req: JobCreate, model_ref: str, model_id: str, model_kind: str, layers: list[dict],
             max_positions: int | None = None, upload_dir: Path | None = None,
             settings: Settings | None = None) -> JobPlan:
    """Raises ValueError (pydantic's ValidationError is one) with a message a person can act on;
    uploads.PathNotAllowed (a ValueError) for a server-side data path outside the model root.
    Data sources resolve against the server's ``settings`` (default: Settings() read once here):
    ``upload:<id>`` in ``upload_dir`` (default settings.upload_dir), server-side paths under
    settings.model_root. Torch-free: the API process validates jobs without importing the engine."""
    settings = settings if settings is not None else Settings()
    upload_dir = upload_dir if upload_dir is not None else settings.upload_dir
    budgets = req.budgets if isinstance(req.budgets, list) else [req.budgets]
    if not budgets:
        raise ValueError("budgets: give at least one budget, e.g. {\"avg_bits\": 3.3}")
    if len(budgets) > 64:
        raise ValueError(f"budgets: {len(budgets)} budget points is too many for one job; use at most 64")
    calib = _data_source("calibration", req.calibration, model_kind, upload_dir, settings.model_root)
    evaluation = _data_source("evaluation", req.evaluation, model_kind, upload_dir, settings.model_root)
    _check_model_fields(req, model_kind, calib, evaluation)
    specs = _request_specs(req, model_ref, model_kind, calib, evaluation)
    checked = validate(specs, [LayerInfo.from_dict(d) for d in layers], kind=model_kind, max_positions=max_positions)
    for field, data, other in (("calibration", req.calibration, req.evaluation),
                               ("evaluation", req.evaluation, req.calibration)):
        if data.text is not None:
            check_uploaded_text(field, data.text, model_kind, specs[0].seq_len, shared=other.text == data.text)
    key = _sensitivity_key(req, model_id, checked, calib, evaluation)
    return JobPlan([s.model_dump(mode="json") for s in specs], _texts(req), key, request_hash(req))


def _sensitivity_key(req: JobCreate, model_id: str, checked: Checked, calib: str | None, evaluation: str | None) -> str:
    """The content key of the job's sensitivity table: model weights, proxy and its full
    parameters, calibration data, formats (what the table depends on, nothing more)."""
    spec, parts, texts = checked.specs[0], checked.parts, _texts(req)
    sha = lambda t: None if t is None else hashlib.sha256(t.encode()).hexdigest()  # noqa: E731
    new = NEW_PROXY_PARAMS.get(parts.proxy, {})
    params = {k: v for k, v in parts.proxy_params.items() if k not in new or v != new[k]}
    key_blob = {"v": SPEC_VERSION, "model": model_id, "proxy": parts.proxy, "params": params,
                "calib": calib, "calib_text": sha(texts["calib"]), "eval": evaluation, "eval_text": sha(texts["eval"]),
                "n_calib": spec.n_calib, "seq_len": spec.seq_len, "seed": spec.seed,
                "formats": [x.label for x in parts.formats]}
    for f, default in NEW_FIELDS.items():  # unset: keys stay as they were, cached tables remain valid
        if f not in REFINE_ONLY and getattr(req, f) != default:
            key_blob[f] = getattr(req, f)
    if req.quantizer != "rtn":  # RTN keys stay as they were, so existing cached tables remain valid
        key_blob["quantizer"] = {"method": req.quantizer, **parts.quantizer_params}
    if not parts.solver.needs_table:  # the joint search measures policies, no sensitivity table: never reuse one
        key_blob = {"v": SPEC_VERSION, parts.solver.name: request_hash(req)}
    return hashlib.sha256(json.dumps(key_blob, sort_keys=True, default=str).encode()).hexdigest()
