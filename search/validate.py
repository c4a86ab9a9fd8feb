"""Everything about a search spec that can be checked without the model's weights: proxy, solver
and quantizer names and typed parameters, the format menu, and budgets against the feasible
range of the layers recorded at registration. Torch-free, so the API process, the CLI and the
pipeline run the same checks (the API without ever importing torch). ``validate`` is the entry
point; it runs once per job and its ``Checked`` travels on."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from search.budgets import CostModel
from search.formats import Format
from search.targets import get_target
from search.layers import LayerInfo, find_tie_groups
from search.params import check_proxy_model, proxy_params, quantizer_params
from search.solvers import Solver, solver_for_job
from search.spec import SearchSpec


@dataclass
class StaticCheck:
    proxy: str                  # canonical name ("evolved" for evolved:<program>)
    proxy_params: dict[str, Any]  # full, typed
    solver: Solver              # the registered solver, built from the job's solver_params
    formats: list[Format]
    quantizer_params: dict[str, Any]


def static_check(spec: SearchSpec) -> StaticCheck:
    """Raise ValueError with a message a person can act on; return the parsed parts."""
    name = spec.proxy_name
    params = proxy_params(name, spec.proxy_params)
    canonical = "evolved" if name.startswith("evolved:") else name
    solver = solver_for_job(spec.solver_name, spec.solver_params, spec.seed, spec.ties)
    formats = spec.menu()
    qparams = quantizer_params(spec.quantizer, spec.quantizer_params)
    solver.check_quantizer(spec.quantizer)
    check_target(spec, formats)
    return StaticCheck(canonical, params, solver, formats, qparams)


def check_target(spec: SearchSpec, formats: list[Format]) -> None:
    """The menu against the target runtime, and the quantizer against the formats: a runtime's
    own format is quantized with that runtime's rounding (RTN-like), which GPTQ's
    error-compensating pass over bitplan's integer grid does not reproduce."""
    if spec.target is not None:
        target = get_target(spec.target)
        target.check(formats)
        if spec.quantizer not in target.quantizers:
            raise ValueError(f"--target {target.name} quantizes with {' or '.join(target.quantizers)}, not {spec.quantizer}")
    named = [f.label for f in formats if f.runtime]
    if named and spec.quantizer != "rtn":
        raise ValueError(f"the {spec.quantizer} quantizer works on bitplan's integer grid; {', '.join(named)} use their "
                         "runtime's own rounding: use --quantizer rtn with these formats")


def fit_menu(spec: SearchSpec, formats: list[Format], layers: list[LayerInfo]) -> list[Format]:
    """The menu the target can store on these layers (search.targets.Target.fit); unchanged
    without a target. Deterministic in the spec and the layers, so the API's check and the
    worker's load phase arrive at the same menu."""
    if spec.target is None:
        return formats
    explicit = spec.format_names is not None or spec.bits is not None
    return get_target(spec.target).fit(formats, layers, explicit)


def check_spec_budgets(spec: SearchSpec, costs: CostModel, ties, solver: Solver):
    """Refuse budgets outside the feasible range of the solver's search space: the dense formats,
    or for the joint solver the formats × pruning ratios (cheaper). Returns the space beyond the
    formats (the joint space; None for the solvers of a table). ``solver`` is what
    ``static_check`` returned as solver."""
    return solver.check_budgets(costs, spec.budgets, ties)


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


@dataclass
class Checked:
    """A job's specs after ``validate`` (one per budget point; they differ only in budgets) with
    their parsed parts: what the CLI and the pipeline hand on instead of checking a spec again."""
    specs: list[SearchSpec]
    parts: StaticCheck

    @classmethod
    def accepted(cls, specs: list[SearchSpec]) -> "Checked":
        """Specs that passed ``validate`` in another process (the API, at submission), on the
        worker that runs them: parsed into their parts with the parse ``validate`` starts with
        (a cheap invariant: their names and parameters still resolve here); ``validate``'s other
        checks do not run again. The load phase still checks what needs the loaded model."""
        return cls(list(specs), static_check(specs[0]))


MAX_TABLE_CELLS = 200_000  # layers × formats of one sensitivity table


def validate(specs: SearchSpec | list[SearchSpec], layers: list[LayerInfo] | None = None, *,
             kind: str | None = None, max_positions: int | None = None) -> Checked:
    """The one validation of a job, torch-free: proxy, solver and quantizer names and typed
    parameters and the format menu; with the model's ``layers`` (and its task ``kind`` and the
    positions it attends to) also data sizes, the table's size, the proxy against the model and
    every budget against its feasible range.

    Called once per job: by the API at submission (with the layers recorded at registration), by
    ``bitplan search`` before torch loads (without layers: its load phase checks the budgets
    against the loaded model), and by the pipeline only for a spec handed to it unchecked.
    Raises ValueError (pydantic's ValidationError, BudgetError and FormatError are ValueErrors)
    with a message that says what to change."""
    specs = [specs] if isinstance(specs, SearchSpec) else list(specs)
    checked = Checked(specs, static_check(specs[0]))
    if layers is not None:
        _check_layers(checked, layers, kind, max_positions)
    return checked


def _check_layers(checked: Checked, layers: list[LayerInfo], kind: str | None, max_positions: int | None) -> None:
    spec, parts = checked.specs[0], checked.parts
    parts.formats[:] = fit_menu(spec, parts.formats, layers)
    check_data_limits(kind, spec.n_calib, spec.n_eval, spec.seq_len, max_positions, spec.judge_samples,
                      parts.quantizer_params.get("n_samples"))
    n_formats = len(parts.formats)
    if not n_formats:
        raise ValueError("formats: the menu is empty; give at least one bit-width")
    if n_formats * max(len(layers), 1) > MAX_TABLE_CELLS:
        raise ValueError(f"formats: {n_formats} formats × {len(layers)} layers is too large a table; use fewer formats")
    check_proxy_model(parts.proxy, parts.proxy_params, len(layers), n_formats)
    ties = find_tie_groups(layers, spec.ties)
    costs = CostModel(layers, parts.formats, spec.a_bits, spec.latency_table)
    for s in checked.specs:
        check_spec_budgets(s, costs, ties, parts.solver)
