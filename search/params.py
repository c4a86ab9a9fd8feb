"""Typed parameters of every proxy, weight quantizer and the joint solver, validated where they
are parsed (CLI, API, pipeline) without torch.

One pydantic model per pluggable part: its fields are the parameters, their types, defaults and
allowed ranges. ``--proxy-param tol=abc`` is then a one-line message ("hessian_trace: tol must
be a number …") on the CLI and a 422 from the API, never a TypeError deep in a proxy, and the
API process can validate a job without importing the torch side that computes it."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, field_validator, model_validator

from search.evolved.genetic import GeneticParams
from search.evolved.ground_truth import split
from search.joint import DEFAULT_RATIOS, JointParams, PredictorParams, check_ratios

PROGRAM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class _Params(BaseModel):
    # strings from the CLI ("0.2", "16") convert; anything else that is not the field's type fails
    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, v, info):
        """pydantic would read true as 1 for an int field; a boolean is never a count here."""
        ann = cls.model_fields[info.field_name].annotation
        if isinstance(v, bool) and ann in (int, float, int | None, float | None):
            raise ValueError("must be a number, not true/false")
        return v


# proxies ------------------------------------------------------------------------------------
class HessianTraceParams(_Params):
    tol: float = Field(0.1, gt=0, lt=1, description="stop probing when the trace's relative standard error is below")
    min_probes: int = Field(8, ge=2, le=4096)
    max_probes: int = Field(64, ge=2, le=4096)
    floor: float = Field(1e-3, ge=0)

    @model_validator(mode="after")
    def _order(self):
        if self.max_probes < self.min_probes:
            raise ValueError(f"max_probes={self.max_probes} must be >= min_probes={self.min_probes}")
        return self


class FisherParams(_Params):
    max_samples: int = Field(64, ge=1, le=65536)


class OrthogonalityParams(_Params):
    beta: float = Field(1.0, gt=0)
    samples: int = Field(32, ge=2, le=65536)


class OutputErrorParams(_Params):
    max_rows: int = Field(4096, ge=1, le=1_000_000)
    chunk: int = Field(16, ge=1, le=4096)


class MeasuredParams(_Params):
    layers: list[int] | None = Field(None, description="rows to measure (the service's chunks); all when null")
    context: str | None = Field(None, description="format label the other layers sit in while a cell is measured")
    extrapolate: float | None = Field(
        64.0, ge=4, description="a cell whose weight error is at least this many times smaller than a measured cell of "
        "the same layer is predicted from it (loss increase scaled by the ratio of weight errors) instead of measured; "
        "null measures every cell")

    @field_validator("layers")
    @classmethod
    def _rows(cls, v):
        if v is not None and any(isinstance(r, bool) or r < 0 for r in v):
            raise ValueError("must be a list of layer indices (integers >= 0)")
        return v


def evolved_store_dir() -> Path:
    """Where evolved programs are stored (shared with the Ray workers through the environment)."""
    return Path(os.environ.get("BITPLAN_EVOLVED_DIR") or Path.home() / ".cache" / "bitplan" / "evolved")


def stored_program(name: str) -> Path:
    """The file of a stored evolved program; a ValueError that lists the known ones if absent."""
    if not PROGRAM_NAME.match(name or ""):
        raise ValueError(f"evolved proxy name {name!r} is not valid: use letters, digits, '_', '.', '-' (at most 64)")
    d = evolved_store_dir()
    path = d / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in d.glob("*.json")) if d.is_dir() else []
        raise ValueError(f"no stored evolved proxy {name!r}; known: {', '.join(known) or 'none yet'} "
                         f"(evolve one with proxy 'evolved' and no program)")
    return path


class EvolvedParams(_Params):
    program: str | None = None
    name: str | None = None
    n_policies: int = Field(50, ge=8, le=5000, description="ground-truth policies measured")
    population: int = Field(32, ge=2, le=4096)
    generations: int = Field(12, ge=1, le=1000)
    samples: int = Field(512, ge=16, le=65536, description="elements per layer for the primitives")
    holdout: float = Field(0.3, gt=0, lt=1)
    max_depth: int = Field(4, ge=1, le=16)
    gradient_samples: int = Field(32, ge=1, le=65536)

    @model_validator(mode="after")
    def _consistent(self):
        if self.program is not None:
            stored_program(self.program)  # fail before any work when the name is unknown
            return self
        if self.name is not None and not PROGRAM_NAME.match(self.name):
            raise ValueError(f"name {self.name!r}: use letters, digits, '_', '.', '-' (at most 64)")
        GeneticParams(population=self.population, generations=self.generations, max_depth=self.max_depth,
                      tournament=min(4, max(2, self.population))).check()
        split(self.n_policies, self.holdout, 0)
        return self


PROXY_PARAMS: dict[str, type[_Params]] = {
    "hessian_trace": HessianTraceParams,
    "fisher": FisherParams,
    "orthogonality": OrthogonalityParams,
    "output_error": OutputErrorParams,
    "measured": MeasuredParams,
    "evolved": EvolvedParams,
}


# weight quantizers ----------------------------------------------------------------------------
class RTNParams(_Params):
    pass


class GPTQParams(_Params):
    damp: float = Field(0.01, gt=0, le=1, description="fraction of the mean Hessian diagonal added")
    act_order: StrictBool = True
    block_size: int = Field(128, ge=1, le=4096)
    n_samples: int | None = Field(None, ge=1, le=100_000, description="Hessian samples (null: the model's default)")


QUANTIZER_PARAMS: dict[str, type[_Params]] = {"rtn": RTNParams, "gptq": GPTQParams}


# the joint solver -------------------------------------------------------------------------------
class JointSolverParams(_Params):
    ratios: list[float] = Field(default_factory=lambda: list(DEFAULT_RATIOS))
    structured: StrictBool = False
    population: int = Field(64, ge=4, le=100_000)
    parents: int = Field(16, ge=2, le=100_000)
    generations: int = Field(20, ge=1, le=10_000)
    mutation: float = Field(0.1, gt=0, le=1)
    top_k: int = Field(5, ge=1, le=100_000)
    pretrain_samples: int = Field(64, ge=8, le=5000)
    finetune_samples: int = Field(24, ge=4, le=5000)
    holdout_samples: int = Field(16, ge=4, le=5000)
    hidden: int = Field(64, ge=1, le=4096)
    epochs: int = Field(400, ge=1, le=100_000)
    finetune_epochs: int = Field(200, ge=1, le=100_000)
    prior: str | None = "fisher"


# entry points ------------------------------------------------------------------------------------
def _message(owner: str, e: ValidationError) -> str:
    """One line that names the parameter and what it must be (no pydantic prefixes)."""
    err = e.errors(include_url=False)[0]
    loc = ".".join(str(x) for x in err.get("loc", ()))
    if err.get("type") == "extra_forbidden":
        return f"{owner} has no parameter {loc!r}"
    msg = str(err.get("msg", "is invalid"))
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    msg = re.sub(r"^Input should be ", "must be ", msg).split(", unable to")[0]
    for said, meant in (("a valid boolean", "true or false"), ("a valid integer", "an integer"),
                        ("a valid number", "a number"), ("a valid string", "a string"), ("a valid list", "a list")):
        msg = msg.replace(said, meant)
    got = err.get("input")
    shown = f", got {got!r}" if loc and not isinstance(got, dict) else ""
    return f"{owner}: {loc + ' ' if loc else ''}{msg}{shown}"


def _validate(owner: str, model: type[_Params], params: dict | None) -> dict[str, Any]:
    try:
        return model.model_validate(dict(params or {})).model_dump()
    except ValidationError as e:
        msg = _message(owner, e)
        if " has no parameter " in msg:
            names = sorted(model.model_fields)
            msg += f"; it takes {', '.join(names)}" if names else "; it takes no parameters"
        raise ValueError(msg) from None


def proxy_params(name: str, params: dict | None) -> dict[str, Any]:
    """The full, typed parameters of proxy ``name`` (``evolved:<program>`` included)."""
    if name.startswith("evolved:"):
        name, params = "evolved", {**(params or {}), "program": name.split(":", 1)[1]}
    model = PROXY_PARAMS.get(name)
    if model is None:
        raise ValueError(f"unknown proxy {name!r}: choose from {', '.join(sorted(PROXY_PARAMS))}")
    return _validate(f"proxy {name!r}", model, params)


def proxy_defaults(name: str) -> dict[str, Any]:
    return {k: f.get_default(call_default_factory=True) for k, f in PROXY_PARAMS[name].model_fields.items()}


def check_proxy_model(name: str, params: dict, n_layers: int, n_formats: int) -> None:
    """Errors of a proxy's parameters that need the model's size (known from registration)."""
    if name != "evolved" or params.get("program") is not None:
        return
    if n_layers < 2:
        raise ValueError(f"evolved: the model has {n_layers} quantizable layer(s); evolution ranks policies and "
                         "needs at least 2")
    distinct = n_formats ** n_layers
    if params["n_policies"] > distinct:
        raise ValueError(f"evolved: n_policies={params['n_policies']} is more than the {distinct} distinct "
                         f"policies of {n_layers} layers × {n_formats} formats")


def quantizer_params(name: str, params: dict | None) -> dict[str, Any]:
    """The full, typed parameters of a weight quantizer (``{}`` for rtn)."""
    model = QUANTIZER_PARAMS.get(name)
    if model is None:
        raise ValueError(f"unknown quantizer {name!r}: use one of {', '.join(QUANTIZER_PARAMS)}")
    return _validate(f"quantizer {name!r}", model, params)


def joint_solver_params(params: dict | None, seed: int, ties: list) -> tuple:
    """((ratios, structured), JointParams, PredictorParams) of the joint solver."""
    p = _validate("joint", JointSolverParams, params)
    ratios = check_ratios(p.pop("ratios"))
    structured = p.pop("structured")
    search = JointParams(**{k: p.pop(k) for k in ("population", "parents", "generations", "mutation", "top_k")},
                         seed=seed)
    pred = PredictorParams(**p)
    search.check()
    pred.check()
    if ties:
        raise ValueError("joint: tie groups are not supported by the joint search yet; drop --tie")
    return (ratios, structured), search, pred
