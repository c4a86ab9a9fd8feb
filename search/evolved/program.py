"""Evolved proxies (EMQ), the program: a proxy *program*, its evaluation and its serialisation.
numpy only — the primitives come in as arrays (proxies/primitives.py fills them from a model), so
programs are pure and testable without torch.

A program is ``reduce(expr)``: ``expr`` is a tree over per-element primitives of each layer
(``W`` weight, ``G`` mean gradient, ``F`` Fisher/Hessian-diagonal estimate, ``A`` input
activation second moment of the element's input channel, ``dW`` quantization perturbation of
the format) with guarded unary and binary operations; ``reduce`` (sum/mean/norm) turns the
elements of each (layer, format) into one score. Primitives are sampled at ``S`` fixed element
positions per layer; ``sum`` and ``norm`` are scaled back to the layer's full size. A policy's
predicted loss is the sum of its layers' scores, so an evolved program is an ordinary additive
sensitivity table for the solvers. The programs are found by ``search.evolved.genetic``."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

LEAVES = ("W", "G", "F", "A", "dW")
EPS = 1e-12


def _expnorm(x: np.ndarray) -> np.ndarray:
    z = np.exp(np.clip(x - x.max(axis=-1, keepdims=True), -60, 0))
    return z / np.maximum(z.sum(axis=-1, keepdims=True), EPS)


def _minmax(x: np.ndarray) -> np.ndarray:
    lo, hi = x.min(axis=-1, keepdims=True), x.max(axis=-1, keepdims=True)
    return (x - lo) / np.maximum(hi - lo, EPS)


UNARY: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "abs": np.abs,
    "square": np.square,
    "sqrt": lambda x: np.sqrt(np.abs(x)),          # guard: sqrt of |x|
    "log1p": lambda x: np.log1p(np.abs(x)),        # guard: log of |x|
    "slog": lambda x: np.sign(x) * np.log1p(np.abs(x)),
    "expnorm": _expnorm,                            # softmax over the layer's elements
    "minmax": _minmax,                              # min-max over the layer's elements
    "neg": np.negative,
}


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a / b with |b| floored at EPS (sign kept): never inf, never NaN."""
    return a / np.where(np.abs(b) < EPS, np.where(b < 0, -EPS, EPS), b)


BINARY: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": _div,
}
REDUCE = ("sum", "mean", "norm")


class ProgramError(ValueError):
    pass


# nodes are plain tuples so they hash, compare and serialise trivially:
# ("leaf", name) | ("un", op, child) | ("bin", op, left, right)
Node = tuple


@dataclass(frozen=True)
class Program:
    reduce: str
    expr: Node

    def __post_init__(self) -> None:
        if self.reduce not in REDUCE:
            raise ProgramError(f"unknown reduction {self.reduce!r}: use one of {REDUCE}")
        _check(self.expr)

    def formula(self) -> str:
        return f"{self.reduce}({_fmt(self.expr)})"

    def to_dict(self) -> dict:
        return {"reduce": self.reduce, "expr": _to_list(self.expr), "formula": self.formula()}

    @classmethod
    def from_dict(cls, d: dict) -> "Program":
        try:
            return cls(d["reduce"], _from_list(d["expr"]))
        except (KeyError, TypeError, IndexError) as e:
            raise ProgramError(f"not a serialised program: {e}") from None

    def size(self) -> int:
        return _size(self.expr)

    def depth(self) -> int:
        return _depth(self.expr)


def _check(n: Node) -> None:
    if not isinstance(n, tuple) or not n:
        raise ProgramError(f"bad node {n!r}")
    if n[0] == "leaf":
        if n[1] not in LEAVES:
            raise ProgramError(f"unknown primitive {n[1]!r}: use one of {LEAVES}")
    elif n[0] == "un":
        if n[1] not in UNARY:
            raise ProgramError(f"unknown unary op {n[1]!r}")
        _check(n[2])
    elif n[0] == "bin":
        if n[1] not in BINARY:
            raise ProgramError(f"unknown binary op {n[1]!r}")
        _check(n[2])
        _check(n[3])
    else:
        raise ProgramError(f"bad node kind {n[0]!r}")


def _fmt(n: Node) -> str:
    if n[0] == "leaf":
        return n[1]
    if n[0] == "un":
        return f"{n[1]}({_fmt(n[2])})"
    sym = {"add": "+", "sub": "-", "mul": "*", "div": "/"}[n[1]]
    return f"({_fmt(n[2])} {sym} {_fmt(n[3])})"


def _to_list(n: Node) -> list:
    return [n[0], n[1], *[_to_list(c) for c in n[2:]]]


def _from_list(x: list) -> Node:
    return (x[0], x[1], *[_from_list(c) for c in x[2:]])


def _size(n: Node) -> int:
    return 1 + sum(_size(c) for c in n[2:])


def _depth(n: Node) -> int:
    return 1 + max((_depth(c) for c in n[2:]), default=0)


def uses_dw(n: Node) -> bool:
    return (n[0] == "leaf" and n[1] == "dW") or any(uses_dw(c) for c in n[2:])



# ------------------------------------------------------------------------------ evaluation
@dataclass
class Primitives:
    """Per-layer element samples: ``W, G, F, A`` of shape (L, S); ``dW`` of shape (L, K, S);
    ``numel`` (L,) full layer sizes; ``is_float`` (K,) formats that leave a layer unchanged."""
    W: np.ndarray
    G: np.ndarray
    F: np.ndarray
    A: np.ndarray
    dW: np.ndarray
    numel: np.ndarray
    is_float: np.ndarray
    info: dict = field(default_factory=dict)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"W": self.W[:, None, :], "G": self.G[:, None, :], "F": self.F[:, None, :], "A": self.A[:, None, :],
                "dW": self.dW}

    def to_dict(self) -> dict:
        return {k: getattr(self, k).tolist() for k in ("W", "G", "F", "A", "dW", "numel", "is_float")} | {"info": self.info}

    @classmethod
    def from_dict(cls, d: dict) -> "Primitives":
        return cls(*(np.asarray(d[k], dtype=bool if k == "is_float" else np.float64)
                     for k in ("W", "G", "F", "A", "dW", "numel", "is_float")), d.get("info", {}))


def _eval(n: Node, env: dict[str, np.ndarray]) -> np.ndarray:
    if n[0] == "leaf":
        return env[n[1]]
    if n[0] == "un":
        return UNARY[n[1]](_eval(n[2], env))
    return BINARY[n[1]](_eval(n[2], env), _eval(n[3], env))


def scores(program: Program, prim: Primitives) -> np.ndarray:
    """The program's L×K table (zeros for float formats). Overflow shows up as inf/NaN, which
    the compatibility screen rejects."""
    with np.errstate(all="ignore"):
        x = np.broadcast_to(_eval(program.expr, prim.arrays()), prim.dW.shape)
        S = x.shape[-1]
        scale = (prim.numel / S)[:, None]
        if program.reduce == "sum":
            out = x.sum(axis=-1) * scale
        elif program.reduce == "mean":
            out = x.mean(axis=-1)
        else:
            out = np.sqrt((x.astype(np.float64) ** 2).sum(axis=-1) * scale)
    out = np.array(out, dtype=np.float64)
    out[:, prim.is_float] = 0.0
    return out


def predict(table: np.ndarray, choices: np.ndarray) -> np.ndarray:
    """Predicted loss of each policy (rows of ``choices``: a format index per layer)."""
    return table[np.arange(table.shape[0])[None, :], choices].sum(axis=1)


def compatible(table: np.ndarray) -> str | None:
    """Why a program's table cannot be used (None if it can): non-finite or constant output."""
    if not np.all(np.isfinite(table)):
        return "non-finite output"
    live = table[:, ~np.all(table == 0, axis=0)] if table.size else table
    if live.size == 0 or float(np.ptp(live)) <= 1e-12 * max(float(np.abs(live).max()), 1e-300):
        return "constant output"
    return None


def program_json(p: Program, meta: dict) -> str:
    return json.dumps({"schema": "bitplan.evolved/v1", "program": p.to_dict(), **meta}, indent=2, default=float)
