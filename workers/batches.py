"""Turn data sources into model batches for calibration and evaluation, deterministically
(seeded), with a content hash of the calibration data for the sensitivity table's key."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from proxies.tasks import Task
from search.defaults import JUDGE_SAMPLES
from search.validate import DATA_DEFAULTS, check_data_limits
from workers import digits
from workers.data import DataError, split_sources
from workers.sources import LoadedModel

# (n_calib, n_eval, seq_len, batch_size) per task kind; the CLI can override each.
BATCH_SIZE = {"embedding": 32, "causal_lm": 4, "classifier": 256}
DEFAULTS = {kind: (*DATA_DEFAULTS[kind], BATCH_SIZE[kind]) for kind in DATA_DEFAULTS}


@dataclass
class DataPlan:
    calib: str
    eval: str
    n_calib: int
    n_eval: int
    seq_len: int
    batch_size: int
    seed: int = 0


def plan_for(lm: LoadedModel, calib: str | None = None, evaluation: str | None = None, n_calib: int | None = None,
             n_eval: int | None = None, seq_len: int | None = None, seed: int = 0) -> DataPlan:
    nc, ne, sl, bs = DEFAULTS[lm.kind]
    pick = lambda given, default: default if given is None else given  # 0 is an answer, not "unset"
    plan = DataPlan(calib or lm.default_calib, evaluation or lm.default_eval, pick(n_calib, nc), pick(n_eval, ne),
                    seq_len or sl, bs, seed)
    if plan.n_calib < 1 or plan.n_eval < 1:
        raise DataError("n_calib and n_eval must be >= 1")
    if lm.kind == "classifier" and (plan.calib != "digits" or plan.eval != "digits"):
        bad = plan.calib if plan.calib != "digits" else plan.eval
        raise DataError(f"data {bad!r} does not fit classifier models: they calibrate and evaluate on 'digits' (sklearn load_digits)")
    if lm.kind != "classifier" and "digits" in (plan.calib, plan.eval):
        raise DataError("'digits' data only fits classifier models; use a text source for this model")
    try:
        check_data_limits(lm.kind, plan.n_calib, plan.n_eval, plan.seq_len if seq_len else None,
                          lm.info.get("max_positions"))
    except ValueError as e:
        raise DataError(str(e)) from None
    return plan


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


def _text_batches(lm: LoadedModel, paras: list[str], n: int, plan: DataPlan, pick) -> list[dict]:
    if lm.kind == "causal_lm":
        w = _lm_windows(lm.tokenizer, paras, n, plan.seq_len, pick)
        return [{"input_ids": x} for x in w.split(plan.batch_size)]
    chosen = [paras[i] for i in pick(len(paras))] if pick is not None else paras[:n]
    out = []
    for group in _chunks(chosen, plan.batch_size):
        enc = lm.tokenizer(group, padding=True, truncation=True, max_length=plan.seq_len, return_tensors="pt")
        out.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    return out


# samples of the calibration source that GPTQ's Hessians read by default, per task kind
HESSIAN_SAMPLES = {"embedding": 256, "causal_lm": 32, "classifier": 512}


def hessian_batches(lm: LoadedModel, plan: DataPlan, n: int | None = None) -> tuple[list[dict], int]:
    """Batches for GPTQ's Hessians: ``n`` samples of the calibration source, disjoint from the
    calibration batches (and, like them, from the evaluation data). Returns (batches, samples);
    an empty list when the source has nothing left beyond the calibration samples."""
    n = HESSIAN_SAMPLES[lm.kind] if n is None else n
    if lm.kind == "classifier":
        x, y = digits.split("hessian")
        batches = [{"x": a, "y": b} for a, b in zip(x[:n].split(plan.batch_size), y[:n].split(plan.batch_size))]
    else:
        cal_p, _ = split_sources(plan.calib, plan.eval)
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
    if lm.kind == "classifier":
        x, y = digits.split("hessian")
        lo = max(n_hessian, len(x) - n)  # the tail of the split: the Hessian samples are its head
        bs = min(plan.batch_size, 64)  # several batches, so the racing judge can stop a loser early
        batches = [{"x": a, "y": b} for a, b in zip(x[lo:].split(bs), y[lo:].split(bs))]
    else:
        cal_p, _ = split_sources(plan.calib, plan.eval)
        batches = _text_batches(lm, cal_p, n, plan, _judge_pick(plan.n_calib, n_hessian, n, plan.seed))
    batches = [b for b in batches if Task.size(b) > 0]
    return batches, sum(Task.size(b) for b in batches)


def build_batches(lm: LoadedModel, plan: DataPlan) -> tuple[list[dict], list[dict], dict]:
    """(calibration batches, evaluation batches, calibration info with content hash)."""
    if lm.kind == "classifier":
        xc, yc = digits.split("calib")
        xe, ye = digits.split("eval")
        calib = [{"x": x, "y": y} for x, y in zip(xc[: plan.n_calib].split(plan.batch_size), yc[: plan.n_calib].split(plan.batch_size))]
        ev = [{"x": x, "y": y} for x, y in zip(xe[: plan.n_eval].split(plan.batch_size), ye[: plan.n_eval].split(plan.batch_size))]
    else:
        cal_p, ev_p = split_sources(plan.calib, plan.eval)
        calib = _text_batches(lm, cal_p, plan.n_calib, plan, _calib_pick(plan.n_calib, plan.seed))
        ev = _text_batches(lm, ev_p, plan.n_eval, plan, None)
    h = hashlib.sha256()
    for b in calib:
        for k in sorted(b):
            h.update(k.encode())
            h.update(b[k].numpy().tobytes())
    n_samples = sum(Task.size(b) for b in calib)
    info = {"source": plan.calib, "samples": n_samples, "seq_len": plan.seq_len, "seed": plan.seed, "sha256": h.hexdigest()}
    return calib, ev, info


def prepared_batches(lm: LoadedModel, plan: DataPlan, with_evals: bool = True) -> tuple[list[dict], list[dict], dict]:
    """``build_batches`` with the task's targets attached (e.g. an encoder's float embeddings),
    which every proxy and evaluation reads; a worker that never evaluates skips the held-out
    half (``with_evals=False`` returns no evaluation batches)."""
    calib, evals, info = build_batches(lm, plan)
    return lm.task.prepare(lm.model, calib), lm.task.prepare(lm.model, evals) if with_evals else [], info
