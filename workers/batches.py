"""Turn data sources into model batches for calibration and evaluation, deterministically
(seeded), with a content hash of the calibration data for the sensitivity table's key.

Text models (causal LM, encoder) read paragraphs (workers/data.py). Classifiers read indexed
sample sets (workers/samples.py: images, tensors, saved datasets; text for text classifiers):
when calibration and evaluation share a source, a fixed seeded permutation holds out the
evaluation samples (10% of the source, at most ``n_eval``; exactly ``n_eval`` when asked) and the
rest is the pool that calibration, GPTQ's Hessians and refine's judge pick from, disjointly.
``digits`` keeps its fixed splits (workers/digits.py)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch

from proxies.tasks import Task
from search.defaults import HESSIAN_SAMPLES, JUDGE_SAMPLES
from search.validate import DATA_DEFAULTS, check_data_limits
from workers import digits
from workers.data import DataError, split_sources
from workers.samples import ImagePrep, SampleSet, open_samples, resolve_prep, source_modality
from workers.sources import LoadedModel

SAMPLE_KINDS = ("classifier", "text_classifier")
# (n_calib, n_eval, seq_len, batch_size) per task kind; the CLI can override each.
BATCH_SIZE = {"embedding": 32, "causal_lm": 4, "classifier": 256, "text_classifier": 32}
DEFAULTS = {kind: (*DATA_DEFAULTS[kind], BATCH_SIZE[kind]) for kind in DATA_DEFAULTS}
# ``digits`` keeps the sample counts its published numbers were measured with: all 256
# calibration images of its fixed split and all 597 held-out ones
DIGITS_DEFAULTS = (digits.CALIB, 10_000)
EVAL_FRACTION = 0.1
SPLIT_SEED = 0x5EED  # the evaluation hold-out of a shared source does not move with the job's seed
MAX_BATCH_ELEMENTS = 1 << 23  # input elements per classifier batch (32 MiB of float32): 32 images at 3×224×224


@dataclass
class DataPlan:
    calib: str
    eval: str
    n_calib: int
    n_eval: int
    seq_len: int
    batch_size: int
    seed: int = 0
    # sample sets (classifiers): the resolved image preprocessing (None for tensors, text and
    # digits), the per-sample input shape the batches will have (None for text), the dataset
    # columns, the samples the calibration pool holds (calibration + Hessian + judge picks come
    # from it) and notes on what was chosen for the user (shrunk evaluation, label mapping, ...)
    prep: ImagePrep | None = None
    input_shape: tuple[int, ...] | None = None
    data_column: str | None = None
    label_column: str | None = None
    n_pool: int = 0
    notes: list[str] = field(default_factory=list)


def plan_from_spec(lm: LoadedModel, spec) -> DataPlan:
    """``plan_for`` with every data field of a SearchSpec."""
    return plan_for(lm, spec.calib, spec.eval, spec.n_calib, spec.n_eval, spec.seq_len, spec.seed,
                    image_size=spec.image_size, resize=spec.resize, image_mean=spec.image_mean,
                    image_std=spec.image_std, data_column=spec.data_column, label_column=spec.label_column)


def _class_to_idx(lm: LoadedModel) -> dict | None:
    """An HF classifier's own label names → indices, to label class folders by the model's classes."""
    cfg = getattr(lm.model, "config", None)
    l2i = getattr(cfg, "label2id", None)
    if isinstance(l2i, dict) and l2i and not all(str(k).startswith("LABEL_") for k in l2i):
        return {str(k): int(v) for k, v in l2i.items()}
    return None


def _open(lm: LoadedModel, source: str, plan: DataPlan) -> SampleSet:
    want = "text" if lm.kind == "text_classifier" else "image"
    return open_samples(source, want, plan.data_column, plan.label_column, _class_to_idx(lm))


def _check_fit(lm: LoadedModel, source: str) -> None:
    m = source_modality(source)
    if lm.kind in ("causal_lm", "embedding", "text_classifier") and m in ("image", "tensor", "digits"):
        raise DataError(f"data {source!r} is {'image' if m == 'image' else 'tensor'} data, but this {lm.kind} model reads "
                        "text: use a text source (text:FILE, jsonl:FILE, a builtin text, or dataset:DIR with a text column)")
    if lm.kind == "classifier" and m == "text":
        raise DataError(f"data {source!r} is text, but this classifier reads images or tensors: use images:DIR, "
                        "tensors:FILE, dataset:DIR (an image or array column)"
                        + (" or 'digits'" if getattr(lm, "default_calib", None) == "digits" else ""))


def plan_for(lm: LoadedModel, calib: str | None = None, evaluation: str | None = None, n_calib: int | None = None,
             n_eval: int | None = None, seq_len: int | None = None, seed: int = 0, *, image_size: int | None = None,
             resize: int | None = None, image_mean: list[float] | None = None, image_std: list[float] | None = None,
             data_column: str | None = None, label_column: str | None = None) -> DataPlan:
    """The job's data plan, checked against the sources (which are opened and counted, not
    decoded): every size problem is a DataError here, before any data pass."""
    nc, ne, sl, bs = DEFAULTS[lm.kind]
    calib = calib or lm.default_calib
    # a model without default data evaluates on a held-out part of its calibration source
    evaluation = evaluation or lm.default_eval or calib
    if calib is None:
        what = "images:DIR, tensors:FILE or dataset:DIR" if lm.kind == "classifier" else "text:FILE, jsonl:FILE or dataset:DIR"
        raise DataError(f"this model has no default data: give calibration data, e.g. --calib {what.split(',')[0]}"
                        f" ({what})")
    for src in (calib, evaluation):
        _check_fit(lm, src)
    if "digits" in (calib, evaluation):
        if lm.kind != "classifier":
            raise DataError("'digits' data only fits classifier models; use a text source for this model")
        if calib != evaluation:
            raise DataError("'digits' calibrates and evaluates on its own fixed splits: use it for both or for neither")
        nc, ne = DIGITS_DEFAULTS
    pick = lambda given, default: default if given is None else given  # 0 is an answer, not "unset"
    plan = DataPlan(calib, evaluation, pick(n_calib, nc), pick(n_eval, ne), seq_len or sl, bs, seed,
                    data_column=data_column, label_column=label_column)
    if plan.n_calib < 1 or plan.n_eval < 1:
        raise DataError("n_calib and n_eval must be >= 1")
    try:
        check_data_limits(lm.kind, plan.n_calib, plan.n_eval, plan.seq_len if seq_len else None,
                          lm.info.get("max_positions"))
    except ValueError as e:
        raise DataError(str(e)) from None
    if lm.kind in SAMPLE_KINDS:
        _plan_samples(lm, plan, n_eval is None, dict(image_size=image_size, resize=resize, image_mean=image_mean,
                                                     image_std=image_std))
    return plan


def _plan_samples(lm: LoadedModel, plan: DataPlan, eval_defaulted: bool, image: dict) -> None:
    if plan.calib == "digits":
        plan.n_eval = min(plan.n_eval, len(digits.split("eval")[1]))
        if plan.n_calib > digits.CALIB:
            raise DataError(f"'digits' has {digits.CALIB} calibration images: lower --n-calib to at most {digits.CALIB}")
        plan.input_shape, plan.n_pool = (1, 8, 8), digits.TRAIN
        return
    cal = _open(lm, plan.calib, plan)
    ev = cal if plan.eval == plan.calib else _open(lm, plan.eval, plan)
    plan.notes += cal.notes + (ev.notes if ev is not cal else [])
    if lm.kind == "text_classifier" and (cal.modality != "text" or ev.modality != "text"):
        bad = cal if cal.modality != "text" else ev
        raise DataError(f"{bad.source}: holds {bad.modality} data, but this text classifier reads text")
    if lm.kind == "classifier":
        for s in (cal, ev):
            if s.modality == "text":
                raise DataError(f"{s.source}: column {getattr(s, 'col', '?')!r} is text, but this classifier reads "
                                "images or tensors: name an image or array column with --data-column")
        shape = getattr(lm, "input_shape", None)
        if "image" in (cal.modality, ev.modality):
            plan.prep = resolve_prep(image["image_size"], image["resize"], image["image_mean"], image["image_std"],
                                     getattr(lm, "image_prep", None), shape)
        elif any(v is not None for v in image.values()):
            plan.notes.append("image preprocessing settings are ignored: the data are tensors, fed as stored")
        shapes = {s.source: s.sample_shape(plan.prep) for s in (cal, ev)}
        if len(set(shapes.values())) > 1:
            raise DataError("calibration and evaluation samples have different shapes: "
                            + ", ".join(f"{k} → {v}" for k, v in shapes.items()))
        plan.input_shape = shapes[cal.source]
    n = len(cal)
    if ev is cal:
        hold = plan.n_eval
        if eval_defaulted:
            hold = min(plan.n_eval, max(1, int(n * EVAL_FRACTION)))
        if plan.n_calib + hold > n:
            raise DataError(f"{plan.calib} has {n} {cal.unit}; calibration {plan.n_calib} + evaluation {hold} need "
                            f"{plan.n_calib + hold}: add {cal.unit} or lower --n-calib/--n-eval")
        if hold < plan.n_eval:
            plan.notes.append(f"evaluation: {hold} of the {n} {cal.unit} of {plan.calib} held out (10%); give "
                              "--n-eval or a separate --eval source for more")
        plan.n_eval, plan.n_pool = hold, n - hold
    else:
        if plan.n_calib > n:
            raise DataError(f"{plan.calib} has {n} {cal.unit}; calibration {plan.n_calib} needs {plan.n_calib}: add "
                            f"{cal.unit} or lower --n-calib")
        m = len(ev)
        if plan.n_eval > m and not eval_defaulted:
            raise DataError(f"{plan.eval} has {m} {ev.unit}; evaluation {plan.n_eval} needs {plan.n_eval}: add "
                            f"{ev.unit} or lower --n-eval")
        if plan.n_eval < m:
            plan.notes.append(f"evaluation: {plan.n_eval} of the {m} {ev.unit} of {plan.eval} (a seeded pick); give "
                              "--n-eval to use more")
        plan.n_eval, plan.n_pool = min(plan.n_eval, m), n
    if lm.kind == "classifier" and plan.input_shape:
        per = int(np.prod(plan.input_shape))
        plan.batch_size = max(1, min(BATCH_SIZE["classifier"], 1 << int(np.log2(max(1, MAX_BATCH_ELEMENTS // per)))))


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _calib_pick(n: int, seed: int):
    """Calibration: ``n`` of ``count`` items, seeded, in corpus order."""
    return lambda count: np.sort(np.random.default_rng(seed).choice(count, size=min(n, count), replace=False))


def _other_pick(n_used: int, n: int, seed: int):
    """Items the calibration pick did not take (GPTQ's Hessian data must not be the data its
    result is measured on: GPTQ fits the samples its Hessians come from)."""
    def pick(count: int) -> np.ndarray:
        rest = np.setdiff1d(np.arange(count), _calib_pick(n_used, seed)(count))
        return np.sort(np.random.default_rng(seed + 1).choice(rest, size=min(n, len(rest)), replace=False))
    return pick


def _judge_pick(n_used: int, n_hessian: int, n: int, seed: int):
    """Items neither the calibration pick nor GPTQ's Hessian pick took: refine's judge must
    not be the data the table was fitted on (its decisions would chase that sample's noise)."""
    def pick(count: int) -> np.ndarray:
        taken = np.union1d(_calib_pick(n_used, seed)(count), _other_pick(n_used, n_hessian, seed)(count))
        rest = np.setdiff1d(np.arange(count), taken)
        return np.sort(np.random.default_rng(seed + 2).choice(rest, size=min(n, len(rest)), replace=False))
    return pick


def _lm_windows(tok, paras: list[str], n: int, seq_len: int, pick) -> torch.Tensor:
    ids = tok("\n\n".join(paras), return_tensors="pt", add_special_tokens=False).input_ids[0] \
        if len(paras) < 4000 else torch.cat([tok(p + "\n\n", return_tensors="pt", add_special_tokens=False).input_ids[0] for p in paras])
    count = len(ids) // seq_len
    if count < 1:
        raise DataError(f"not enough text for one window of {seq_len} tokens")
    windows = ids[: count * seq_len].reshape(count, seq_len)
    if pick is None:
        return windows[:n]  # evaluation: the first n contiguous windows, the usual perplexity protocol
    return windows[pick(count)]


def _tokenize(lm: LoadedModel, texts: list[str], plan: DataPlan, bs: int, by_length: bool = False) -> list[dict]:
    """Padded batches of ``bs`` texts. ``by_length``: batch texts of similar token counts together
    (stable by length), so a batch pads to little more than its own longest text: the held-out
    set's metrics are means over samples and do not depend on the grouping, while wikitext's
    paragraphs batched in order are 13% padding, sorted 5% (MiniLM, 256 held-out paragraphs)."""
    if not texts:
        return []
    enc = lm.tokenizer(texts, truncation=True, max_length=plan.seq_len)  # once, unpadded
    rows = [{"input_ids": ids, "attention_mask": mask} for ids, mask in zip(enc["input_ids"], enc["attention_mask"])]
    if by_length:
        rows.sort(key=lambda r: len(r["input_ids"]))  # stable: equal lengths keep their order
    return [dict(lm.tokenizer.pad(group, padding=True, return_tensors="pt")) for group in _chunks(rows, bs)]


def _text_batches(lm: LoadedModel, paras: list[str], n: int, plan: DataPlan, pick) -> list[dict]:
    """Calibration/judge batches (``pick`` chooses the paragraphs, in order), or with ``pick``
    None the evaluation set: the first ``n`` paragraphs, batched by length."""
    if lm.kind == "causal_lm":
        w = _lm_windows(lm.tokenizer, paras, n, plan.seq_len, pick)
        return [{"input_ids": x} for x in w.split(plan.batch_size)]
    chosen = [paras[i] for i in pick(len(paras))] if pick is not None else paras[:n]
    return _tokenize(lm, chosen, plan, plan.batch_size, by_length=pick is None)


# ---------------------------------------------------------------- sample sets (classifiers)


def _split(plan: DataPlan, n_cal: int, n_ev: int) -> tuple[np.ndarray, np.ndarray]:
    """(calibration pool, evaluation indices): a shared source's fixed seeded hold-out, or a
    separate evaluation source's seeded pick of ``n_eval`` (whole when it has no more)."""
    if plan.eval == plan.calib:
        perm = np.random.default_rng(SPLIT_SEED).permutation(n_cal)
        return np.sort(perm[plan.n_eval:]), np.sort(perm[:plan.n_eval])
    ev = np.arange(n_ev) if plan.n_eval >= n_ev else np.sort(np.random.default_rng(SPLIT_SEED).permutation(n_ev)[:plan.n_eval])
    return np.arange(n_cal), ev


def _sample_batches(lm: LoadedModel, plan: DataPlan, s: SampleSet, idx: np.ndarray, bs: int) -> list[dict]:
    out = []
    for chunk in _chunks(np.asarray(idx, dtype=np.int64), bs):
        y = None if s.labels is None else torch.from_numpy(s.labels[chunk])
        if lm.kind == "text_classifier":
            b = _tokenize(lm, s.inputs(chunk), plan, len(chunk))[0]
        else:
            b = {"x": s.inputs(chunk, plan.prep)}
        out.append(b if y is None else {**b, "y": y})
    return out


def _pool_batches(lm: LoadedModel, plan: DataPlan, pick, bs: int) -> list[dict]:
    """Batches of the calibration pool's items that ``pick(len(pool))`` selects."""
    s = _open(lm, plan.calib, plan)
    pool, _ = _split(plan, len(s), len(s) if plan.eval == plan.calib else 0)
    return _sample_batches(lm, plan, s, pool[pick(len(pool))], bs)


def _digits_batches(x: torch.Tensor, y: torch.Tensor, bs: int) -> list[dict]:
    return [{"x": a, "y": b} for a, b in zip(x.split(bs), y.split(bs))]


def hessian_batches(lm: LoadedModel, plan: DataPlan, n: int | None = None) -> tuple[list[dict], int]:
    """Batches for GPTQ's Hessians: ``n`` samples of the calibration source, disjoint from the
    calibration batches (and, like them, from the evaluation data). Returns (batches, samples);
    an empty list when the source has nothing left beyond the calibration samples."""
    n = HESSIAN_SAMPLES[lm.kind] if n is None else n
    if plan.calib == "digits":
        x, y = digits.split("hessian")
        batches = _digits_batches(x[:n], y[:n], plan.batch_size)
    elif lm.kind in SAMPLE_KINDS:
        batches = _pool_batches(lm, plan, _other_pick(plan.n_calib, n, plan.seed), plan.batch_size) if n > 0 else []
    else:
        cal_p, _ = split_sources(plan.calib, plan.eval, plan.data_column)
        batches = _text_batches(lm, cal_p, n, plan, _other_pick(plan.n_calib, n, plan.seed))
    batches = [b for b in batches if Task.size(b) > 0]  # an empty remainder leaves an empty window batch
    return batches, sum(Task.size(b) for b in batches)


def judge_batches(lm: LoadedModel, plan: DataPlan, n: int | None = None, n_hessian: int = 0) -> tuple[list[dict], int]:
    """Batches for refine's judge: ``n`` samples of the calibration source apart from the
    calibration batches, from a GPTQ job's ``n_hessian`` Hessian samples and from the evaluation
    data. Returns (batches, samples); an empty list when the source has nothing left."""
    n = JUDGE_SAMPLES[lm.kind] if n is None else n
    if n < 1:
        return [], 0
    bs = min(plan.batch_size, 64)  # several batches, so the racing judge can stop a loser early
    if plan.calib == "digits":
        x, y = digits.split("hessian")
        lo = max(n_hessian, len(x) - n)  # the tail of the split: the Hessian samples are its head
        batches = _digits_batches(x[lo:], y[lo:], bs)
    elif lm.kind in SAMPLE_KINDS:
        batches = _pool_batches(lm, plan, _judge_pick(plan.n_calib, n_hessian, n, plan.seed), bs)
    else:
        cal_p, _ = split_sources(plan.calib, plan.eval, plan.data_column)
        batches = _text_batches(lm, cal_p, n, plan, _judge_pick(plan.n_calib, n_hessian, n, plan.seed))
    batches = [b for b in batches if Task.size(b) > 0]
    return batches, sum(Task.size(b) for b in batches)


def build_batches(lm: LoadedModel, plan: DataPlan, with_evals: bool = True) -> tuple[list[dict], list[dict], dict]:
    """(calibration batches, evaluation batches, calibration info with content hash)."""
    ev: list[dict] = []
    if plan.calib == "digits":
        xc, yc = digits.split("calib")
        calib = _digits_batches(xc[: plan.n_calib], yc[: plan.n_calib], plan.batch_size)
        if with_evals:
            xe, ye = digits.split("eval")
            ev = _digits_batches(xe[: plan.n_eval], ye[: plan.n_eval], plan.batch_size)
    elif lm.kind in SAMPLE_KINDS:
        cal_s = _open(lm, plan.calib, plan)
        ev_s = cal_s if plan.eval == plan.calib else _open(lm, plan.eval, plan)
        pool, ev_idx = _split(plan, len(cal_s), len(ev_s))
        calib = _sample_batches(lm, plan, cal_s, pool[_calib_pick(plan.n_calib, plan.seed)(len(pool))], plan.batch_size)
        if with_evals:
            ev = _sample_batches(lm, plan, ev_s, ev_idx, plan.batch_size)
    else:
        cal_p, ev_p = split_sources(plan.calib, plan.eval, plan.data_column)
        calib = _text_batches(lm, cal_p, plan.n_calib, plan, _calib_pick(plan.n_calib, plan.seed))
        ev = _text_batches(lm, ev_p, plan.n_eval, plan, None) if with_evals else []
    h = hashlib.sha256()
    for b in calib:
        for k in sorted(b):
            h.update(k.encode())
            h.update(b[k].numpy().tobytes())
    n_samples = sum(Task.size(b) for b in calib)
    info = {"source": plan.calib, "samples": n_samples, "seq_len": plan.seq_len, "seed": plan.seed, "sha256": h.hexdigest()}
    if plan.prep is not None:
        info["image_prep"] = plan.prep.to_dict()
    return calib, ev, info


def prepared_batches(lm: LoadedModel, plan: DataPlan, with_evals: bool = True) -> tuple[list[dict], list[dict], dict]:
    """``build_batches`` with the task's targets attached (e.g. an encoder's float embeddings),
    which every proxy and evaluation reads; a worker that never evaluates skips the held-out
    half (``with_evals=False`` returns no evaluation batches, and decodes none)."""
    calib, evals, info = build_batches(lm, plan, with_evals)
    return lm.task.prepare(lm.model, calib), lm.task.prepare(lm.model, evals) if with_evals else [], info
