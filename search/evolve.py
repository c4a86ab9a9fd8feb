"""Evolved proxies (EMQ): proxy *programs* found by evolution to rank policies like their real
loss does. numpy/scipy only — the primitives come in as arrays (proxies/primitives.py fills them
from a model), so programs, their evaluation, serialisation and the evolution are pure and
testable without torch.

A program is ``reduce(expr)``: ``expr`` is a tree over per-element primitives of each layer
(``W`` weight, ``G`` mean gradient, ``F`` Fisher/Hessian-diagonal estimate, ``A`` input
activation second moment of the element's input channel, ``dW`` quantization perturbation of
the format) with guarded unary and binary operations; ``reduce`` (sum/mean/norm) turns the
elements of each (layer, format) into one score. Primitives are sampled at ``S`` fixed element
positions per layer; ``sum`` and ``norm`` are scaled back to the layer's full size. A policy's
predicted loss is the sum of its layers' scores, so an evolved program is an ordinary additive
sensitivity table for the solvers."""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import kendalltau, spearmanr

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


def rank_corr(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(Kendall τ-b, Spearman ρ); 0 when either side is constant."""
    if np.ptp(pred) == 0 or np.ptp(truth) == 0:
        return 0.0, 0.0
    tau = kendalltau(pred, truth).statistic
    rho = spearmanr(pred, truth).statistic
    return float(0.0 if math.isnan(tau) else tau), float(0.0 if math.isnan(rho) else rho)


# ------------------------------------------------------------------------------ random programs
def random_expr(rng: np.random.Generator, depth: int) -> Node:
    """A random expression; at least one path reaches dW somewhere in typical programs because
    the leaves are drawn with dW weighted up (a score must depend on the format)."""
    if depth <= 1 or rng.random() < 0.3:
        return ("leaf", str(rng.choice(LEAVES, p=[0.15, 0.15, 0.15, 0.15, 0.4])))
    if rng.random() < 0.45:
        return ("un", str(rng.choice(list(UNARY))), random_expr(rng, depth - 1))
    return ("bin", str(rng.choice(list(BINARY))), random_expr(rng, depth - 1), random_expr(rng, depth - 1))


def random_program(rng: np.random.Generator, max_depth: int) -> Program:
    while True:
        expr = random_expr(rng, max_depth)
        if uses_dw(expr):
            return Program(str(rng.choice(REDUCE)), expr)


def _subtrees(n: Node, path: tuple = ()) -> list[tuple[tuple, Node]]:
    out = [(path, n)]
    for i, c in enumerate(n[2:]):
        out += _subtrees(c, path + (i + 2,))
    return out


def _replace(n: Node, path: tuple, new: Node) -> Node:
    if not path:
        return new
    i = path[0]
    return n[:i] + (_replace(n[i], path[1:], new),) + n[i + 1:]


def mutate(p: Program, rng: np.random.Generator, max_depth: int) -> Program:
    for _ in range(20):
        kind = rng.random()
        if kind < 0.15:
            q = Program(str(rng.choice(REDUCE)), p.expr)
        else:
            subs = _subtrees(p.expr)
            path, node = subs[int(rng.integers(len(subs)))]
            if kind < 0.5 and node[0] != "leaf":  # point mutation of the operator
                ops = UNARY if node[0] == "un" else BINARY
                node = (node[0], str(rng.choice(list(ops))), *node[2:])
            elif kind < 0.65:  # wrap in a unary op
                node = ("un", str(rng.choice(list(UNARY))), node)
            else:  # grow a new subtree
                node = random_expr(rng, max(1, max_depth - len(path)))
            q = Program(p.reduce, _replace(p.expr, path, node))
        if q.depth() <= max_depth + 1 and uses_dw(q.expr) and q != p:
            return q
    return random_program(rng, max_depth)


def crossover(a: Program, b: Program, rng: np.random.Generator, max_depth: int) -> Program:
    for _ in range(20):
        sa, sb = _subtrees(a.expr), _subtrees(b.expr)
        pa, _ = sa[int(rng.integers(len(sa)))]
        _, nb = sb[int(rng.integers(len(sb)))]
        q = Program(a.reduce if rng.random() < 0.5 else b.reduce, _replace(a.expr, pa, nb))
        if q.depth() <= max_depth + 1 and uses_dw(q.expr):
            return q
    return mutate(a, rng, max_depth)


# hand-written programs seeded into the first generation: evolution starts from the known
# proxies' shapes (Fisher/HAWQ's second-order term, plain perturbation size, an activation-
# weighted error like output_error) and must beat them to win
SEEDS = [
    Program("sum", ("bin", "mul", ("leaf", "F"), ("un", "square", ("leaf", "dW")))),
    Program("sum", ("un", "square", ("leaf", "dW"))),
    Program("sum", ("bin", "mul", ("leaf", "A"), ("un", "square", ("leaf", "dW")))),
    Program("sum", ("bin", "mul", ("leaf", "G"), ("leaf", "dW"))),
]


# ------------------------------------------------------------------------------ evolution
@dataclass
class EvolveParams:
    population: int = 32
    generations: int = 12
    tournament: int = 4
    mutation: float = 0.7
    max_depth: int = 4
    elite: int = 2
    diversity: float = 0.02  # fitness penalty per better-ranked program with (near-)identical predictions
    seed: int = 0

    def check(self) -> None:
        if self.population < 4:
            raise ValueError(f"population={self.population}: use at least 4")
        if self.generations < 1:
            raise ValueError(f"generations={self.generations}: use at least 1")
        if not 2 <= self.tournament <= self.population:
            raise ValueError(f"tournament={self.tournament}: use 2..population")
        if not 0.0 <= self.mutation <= 1.0:
            raise ValueError("mutation is a probability in [0, 1]")
        if not 1 <= self.max_depth <= 8:
            raise ValueError("max_depth must be 1..8")


@dataclass
class Scored:
    program: Program
    fitness: float
    tau: float
    rho: float
    reason: str | None = None


@dataclass
class EvolveResult:
    best: Scored
    tau_holdout: float
    rho_holdout: float
    history: list[dict]
    screened: int


def _score(p: Program, prim: Primitives, choices: np.ndarray, truth: np.ndarray) -> tuple[Scored, np.ndarray | None]:
    table = scores(p, prim)
    why = compatible(table)
    if why:
        return Scored(p, -2.0, 0.0, 0.0, why), None
    pred = predict(table, choices)
    if not np.all(np.isfinite(pred)) or np.ptp(pred) == 0:
        return Scored(p, -2.0, 0.0, 0.0, "constant or non-finite prediction"), None
    tau, rho = rank_corr(pred, truth)
    return Scored(p, tau, tau, rho), pred


def evolve(prim: Primitives, choices: np.ndarray, truth: np.ndarray, train: np.ndarray, holdout: np.ndarray,
           params: EvolveParams, progress: Callable[[int, int, Scored], None] | None = None) -> EvolveResult:
    """Evolve a program whose summed scores rank the ground-truth policies (``choices`` rows,
    measured ``truth``) like their real loss.

    Fitness is Kendall τ on three quarters of ``train`` (minus a small penalty for near-duplicates
    and for size); the winner is the program with the best τ on the remaining quarter among each
    generation's fittest — selection on data the fitness never saw, which curbs the overfitting a
    few dozen policies invite. τ on ``holdout`` is reported for the winner only."""
    params.check()
    rng = np.random.default_rng(params.seed)
    perm = np.random.default_rng(params.seed + 1).permutation(train)
    n_val = max(3, len(train) // 4)
    fit, val = np.sort(perm[n_val:]), np.sort(perm[:n_val])
    pop = list(SEEDS[: params.population // 2])
    while len(pop) < params.population:
        pop.append(random_program(rng, params.max_depth))
    cache: dict[Program, tuple[Scored, np.ndarray | None]] = {}
    val_cache: dict[Program, float] = {}
    history, screened = [], 0

    def evaluate(progs: list[Program]) -> list[Scored]:
        nonlocal screened
        out = []
        for p in progs:
            if p not in cache:
                cache[p] = _score(p, prim, choices[fit], truth[fit])
                screened += cache[p][0].reason is not None
            out.append(cache[p][0])
        order = sorted(range(len(out)), key=lambda i: -out[i].fitness)
        kept: list[np.ndarray] = []
        adjusted = [Scored(s.program, s.fitness - 0.002 * s.program.size(), s.tau, s.rho, s.reason) for s in out]
        for i in order:  # diversity: ranking the policies like a fitter program does is penalised
            pred = cache[out[i].program][1]
            if pred is None:
                continue
            ranks = np.argsort(np.argsort(pred))
            adjusted[i].fitness -= params.diversity * sum(1 for r in kept if np.mean(r == ranks) > 0.98)
            kept.append(ranks)
        return adjusted

    def val_tau(p: Program) -> float:
        if p not in val_cache:
            val_cache[p] = rank_corr(predict(scores(p, prim), choices[val]), truth[val])[0]
        return val_cache[p]

    def consider(scored: list[Scored], best: Scored | None) -> Scored:
        for s in sorted((s for s in scored if s.reason is None), key=lambda s: -s.fitness)[:5]:
            key = (val_tau(s.program), s.tau, -s.program.size())
            if best is None or key > (val_tau(best.program), best.tau, -best.program.size()):
                best = s
        return best

    scored = evaluate(pop)
    best = consider(scored, None)
    for gen in range(params.generations):
        elite = sorted(scored, key=lambda s: -s.fitness)[: params.elite]
        children = [s.program for s in elite]

        def pick() -> Program:
            idx = rng.choice(len(scored), size=params.tournament, replace=False)
            return max((scored[i] for i in idx), key=lambda s: s.fitness).program
        while len(children) < params.population:
            if rng.random() < params.mutation:
                children.append(mutate(pick(), rng, params.max_depth))
            else:
                children.append(crossover(pick(), pick(), rng, params.max_depth))
        scored = evaluate(children)
        best = consider(scored, best)
        valid = [s.tau for s in scored if s.reason is None]
        history.append({"generation": gen + 1, "best_tau": best.tau, "best_val_tau": val_tau(best.program),
                        "mean_tau": float(np.mean(valid)) if valid else None, "valid": len(valid),
                        "formula": best.program.formula()})
        if progress:
            progress(gen + 1, params.generations, best)
    if best is None:
        raise ValueError("evolution found no usable program (every one produced non-finite or constant scores)")
    tau_h, rho_h = rank_corr(predict(scores(best.program, prim), choices[holdout]), truth[holdout])
    return EvolveResult(best, tau_h, rho_h, history, screened)


# ------------------------------------------------------------------------------ ground truth
def sample_policies(costs_per_layer: np.ndarray, numel: np.ndarray, n: int, seed: int,
                    allowed: np.ndarray | None = None) -> np.ndarray:
    """``n`` random policies (format index per layer) stratified by average bits: stratum i gets
    a target between the cheapest and the dearest policy, and every layer draws its format from
    a softmax around that target (random sharpness), so the set spans the budget range instead
    of piling up at its middle. ``costs_per_layer`` is L×K storage bits."""
    rng = np.random.default_rng(seed)
    L, K = costs_per_layer.shape
    bits = costs_per_layer / numel[:, None]
    ok = np.ones(K, bool) if allowed is None else allowed
    lo, hi = bits[:, ok].min(axis=1).mean(), bits[:, ok].max(axis=1).mean()
    out = np.zeros((n, L), dtype=int)
    for i in range(n):
        target = lo + (hi - lo) * (i + rng.random()) / n
        sharp = rng.uniform(0.5, 4.0)
        logits = -sharp * np.abs(bits - target)
        logits[:, ~ok] = -np.inf
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        out[i] = [rng.choice(K, p=p[l]) for l in range(L)]
    return out


def split(n: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train/held-out split of ``n`` ground-truth policies."""
    if not 0.05 <= holdout <= 0.8:
        raise ValueError(f"holdout={holdout}: use a fraction between 0.05 and 0.8")
    idx = np.random.default_rng(seed + 7919).permutation(n)
    k = max(3, int(round(n * holdout)))
    return np.sort(idx[k:]), np.sort(idx[:k])


def program_json(p: Program, meta: dict) -> str:
    return json.dumps({"schema": "bitplan.evolved/v1", "program": p.to_dict(), **meta}, indent=2, default=float)
