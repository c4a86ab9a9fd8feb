"""Everything about a search spec that can be checked without the model's weights: proxy, solver
and quantizer names and typed parameters, the format menu, and budgets against the feasible
range of the layers recorded at registration. Torch-free, so the API process, the CLI and the
pipeline run the same checks (the API without ever importing torch)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from search.budgets import CostModel, check_budgets
from search.formats import Format, make_formats
from search.params import joint_solver_params, proxy_params, quantizer_params
from search.solvers import get_solver
from search.spec import SearchSpec

JOINT = "joint"


@dataclass
class StaticCheck:
    proxy: str                  # canonical name ("evolved" for evolved:<program>)
    proxy_params: dict[str, Any]  # full, typed
    solver: Any                 # a registered solver, or the joint search's parsed parameters
    formats: list[Format]
    quantizer_params: dict[str, Any]


def static_check(spec: SearchSpec) -> StaticCheck:
    """Raise ValueError with a message a person can act on; return the parsed parts."""
    name = spec.proxy_name
    params = proxy_params(name, spec.proxy_params)
    canonical = "evolved" if name.startswith("evolved:") else name
    if spec.solver_name == JOINT:
        solver = joint_solver_params(spec.solver_params, spec.seed, spec.ties)
    else:
        if spec.solver_params:
            raise ValueError(f"solver {spec.solver_name!r} takes no solver_params (only 'joint' does)")
        try:
            solver = get_solver(spec.solver_name)
        except ValueError as e:
            raise ValueError(f"{e}, {JOINT}") from None
    formats = make_formats(spec.bits, spec.group_size, spec.symmetric)
    qparams = quantizer_params(spec.quantizer, spec.quantizer_params)
    if spec.solver_name == JOINT and spec.quantizer != "rtn":
        raise ValueError("joint: the joint search prunes and quantizes with RTN; GPTQ after pruning is not supported "
                         "yet — use quantizer rtn with the joint solver")
    return StaticCheck(canonical, params, solver, formats, qparams)


def check_spec_budgets(spec: SearchSpec, costs: CostModel, ties, solver):
    """Refuse budgets outside the feasible range of the spec's search space: the dense formats,
    or for the joint solver the formats × pruning ratios (cheaper). Returns the joint space
    (None for the other solvers). ``solver`` is what ``static_check`` returned as solver."""
    if spec.solver_name != JOINT:
        check_budgets(costs, spec.budgets, ties)
        return None
    from search.joint import JointSpace
    space = JointSpace(costs, *solver[0])
    space.check_budgets(spec.budgets)
    return space


# Data sizes a job may ask for, per task kind. They bound a worker's memory whatever the request
# says: the measured proxy caches every block's input for every calibration token, a causal LM's
# logits are batch × seq_len × vocabulary, and GPTQ/refine read their own samples besides.
MAX_SEQ_LEN = {"causal_lm": 2048, "embedding": 512, "classifier": 0, "text_classifier": 512}
MIN_SEQ_LEN = {"causal_lm": 8, "embedding": 1, "classifier": 0, "text_classifier": 1}
MAX_TOKENS = {"calibration": 32_768, "evaluation": 131_072, "judge": 65_536, "hessian": 65_536}
MAX_SAMPLES = {"causal_lm": 4096, "embedding": 16_384, "classifier": 16_384, "text_classifier": 16_384}
# the defaults of workers/batches.py (n_calib, n_eval, seq_len), mirrored here without torch. A
# classifier calibrates on 64 samples (an ImageNet-size CNN's default recipe fits 30 minutes on 2
# cores) and evaluates on up to 256 (fewer, with a note, when the source holds fewer; the
# builtin 'digits' keeps its fixed 256/597 split).
DATA_DEFAULTS = {"embedding": (32, 256, 64), "causal_lm": (8, 16, 256), "classifier": (64, 256, 0),
                 "text_classifier": (64, 256, 128)}


def check_data_limits(kind: str, n_calib: int | None, n_eval: int | None, seq_len: int | None,
                      max_positions: int | None = None, judge_samples: int | None = None,
                      hessian_samples: int | None = None) -> None:
    """Refuse sample counts and sequence lengths that would exhaust a worker's memory or exceed
    what the model can attend to, with the allowed range in the message."""
    if kind not in DATA_DEFAULTS:
        return
    nc, ne, sl = DATA_DEFAULTS[kind]
    n_calib = nc if n_calib is None else n_calib
    n_eval = ne if n_eval is None else n_eval
    for what, n in (("calibration n_samples", n_calib), ("evaluation n_samples", n_eval),
                    ("judge_samples", judge_samples), ("quantizer n_samples (Hessian samples)", hessian_samples)):
        if n is not None and n > MAX_SAMPLES[kind]:
            raise ValueError(f"{what}={n} is too many for a {kind} model: use at most {MAX_SAMPLES[kind]}")
    if kind == "classifier":
        return
    hi = MAX_SEQ_LEN[kind] if not max_positions else min(MAX_SEQ_LEN[kind], int(max_positions))
    if seq_len is not None and not MIN_SEQ_LEN[kind] <= seq_len <= hi:
        why = f"the model attends to {max_positions} positions" if max_positions and max_positions <= MAX_SEQ_LEN[kind] \
            else "longer sequences would not fit a worker's memory"
        raise ValueError(f"seq_len={seq_len} is out of range for this {kind} model: use {MIN_SEQ_LEN[kind]}..{hi} "
                         f"({why})")
    tokens_per = seq_len or sl
    for what, n, cap in (("calibration", n_calib, MAX_TOKENS["calibration"]),
                         ("evaluation", n_eval, MAX_TOKENS["evaluation"]),
                         ("judge", judge_samples, MAX_TOKENS["judge"]),
                         ("hessian", hessian_samples, MAX_TOKENS["hessian"])):
        if n is not None and n * tokens_per > cap:
            raise ValueError(f"{what}: {n} samples × {tokens_per} tokens = {n * tokens_per:,} tokens is more than "
                             f"a job may use ({cap:,}); use at most {cap // tokens_per} samples at seq_len {tokens_per}")
