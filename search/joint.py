"""Joint bit-width + pruning search (APQ): the space, its costs, and the predictor-guided
evolutionary search. numpy only; the predictor and the measurements are passed in as callables
(proxies/joint.py trains a torch MLP and measures on the model; search/solvers/joint.py registers
the search as the solver "joint").

Per layer the options are (format k, pruning ratio r): a column ``j = k·R + r_index``.
Sparse storage format (stated, counted exactly): a layer pruned at ratio r > 0 stores a 1-bit
mask over all ``numel`` positions, the ``round((1−r)·numel)`` kept values at the format's bits,
and the same scales/zero points as the dense layout — so avg_bits keeps meaning "bits per
original weight, everything included". BOPs scale with the kept weights (sparse kernels);
latency tables describe dense kernels, so they are used unscaled (conservative)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from search.budgets import BudgetError, CostModel
from search.formats import FLOAT_BITS, Format

DEFAULT_RATIOS = (0.0, 0.25, 0.5)


def check_ratios(ratios) -> tuple[float, ...]:
    rs = tuple(float(r) for r in ratios)
    if not rs:
        raise ValueError("joint: give at least one pruning ratio (0 = no pruning)")
    bad = [r for r in rs if not 0.0 <= r < 1.0]
    if bad:
        raise ValueError(f"joint: pruning ratio {bad[0]} must be in [0, 1) (1 would remove the whole layer)")
    return tuple(sorted(set(rs)))


@dataclass
class JointSpace:
    """``structured=True`` prunes whole output channels instead of single weights: the kept
    channels are stored dense (no mask), so the cost is the dense cost × kept/rows."""
    costs: CostModel
    ratios: tuple[float, ...] = DEFAULT_RATIOS
    structured: bool = False

    def __post_init__(self) -> None:
        self.ratios = check_ratios(self.ratios)
        L, K, R = len(self.costs.layers), len(self.costs.formats), len(self.ratios)
        numel = np.array([l.numel for l in self.costs.layers], float)[:, None]
        wbits = np.array([f.bits for f in self.costs.formats], float)[None, :]
        dense = self.costs.total_bits                      # L×K, scales and zero points included
        overhead = dense - numel * wbits
        cols = []
        for k in range(K):
            for r in self.ratios:
                if r == 0:
                    cols.append(dense[:, k])
                elif self.structured:
                    rows = np.array([l.numel // max(l.in_features, 1) for l in self.costs.layers], float)
                    kept = np.maximum(np.round((1 - r) * rows), 1)
                    cols.append(dense[:, k] * kept / rows)
                else:
                    kept = np.round((1 - r) * numel[:, 0])
                    cols.append(numel[:, 0] + kept * wbits[0, k] + overhead[:, k])
        self.total_bits = np.stack(cols, axis=1)           # L×(K·R)
        keep = np.array([1 - r for _ in range(K) for r in self.ratios])[None, :]
        self.matrices = {"avg_bits": self.total_bits / self.costs.total_numel, "size_bytes": self.total_bits / 8.0,
                         "bops": np.repeat(self.costs.matrices["bops"], R, axis=1) * keep}
        if "latency_ms" in self.costs.matrices:
            self.matrices["latency_ms"] = np.repeat(self.costs.matrices["latency_ms"], R, axis=1)
        self.n_layers, self.n_options = L, K * R

    def format_of(self, j: int) -> Format:
        return self.costs.formats[j // len(self.ratios)]

    def ratio_of(self, j: int) -> float:
        return self.ratios[j % len(self.ratios)]

    def option(self, k: int, r_index: int) -> int:
        return k * len(self.ratios) + r_index

    def cost(self, choice: np.ndarray) -> dict[str, float]:
        rows = np.arange(self.n_layers)
        out = {m: float(M[rows, choice].sum()) for m, M in self.matrices.items()}
        bits = float(self.total_bits[rows, choice].sum())
        out.update(avg_bits=bits / self.costs.total_numel, size_bytes=bits / 8.0)
        return out

    def feasible(self, choices: np.ndarray, budgets: dict[str, float]) -> np.ndarray:
        """Which rows of ``choices`` (n×L) meet every budget."""
        choices = np.atleast_2d(choices)
        rows = np.arange(self.n_layers)[None, :]
        ok = np.ones(len(choices), bool)
        for m, lim in budgets.items():
            if m not in self.matrices:
                raise BudgetError(f"budget metric {m!r} is not available (latency_ms needs a latency table)")
            ok &= self.matrices[m][rows, choices].sum(axis=1) <= lim * (1 + 1e-9)
        return ok

    def check_budgets(self, budgets: dict[str, float]) -> None:
        for m, lim in budgets.items():
            if m not in self.matrices:
                raise BudgetError(f"budget metric {m!r} is not available (latency_ms needs a latency table)")
            lo = float(self.matrices[m].min(axis=1).sum())
            if lim < lo:
                raise BudgetError(f"budget {m}={lim:g} is below the cheapest joint policy ({m}={lo:.6g}, pruning "
                                  f"{max(self.ratios):g} everywhere); feasible range is [{lo:.6g}, ∞)")

    def encode(self, choices: np.ndarray, prior: np.ndarray | None = None) -> np.ndarray:
        """Predictor input: per layer (effective bits / 16, pruning ratio), plus — when a prior
        table (L × options, e.g. Fisher-weighted perturbation) is given — the log of the prior's
        additive prediction, one feature that carries most of the signal when measured samples
        are few."""
        choices = np.atleast_2d(choices)
        numel = np.array([l.numel for l in self.costs.layers], float)
        k, r = choices // len(self.ratios), choices % len(self.ratios)
        eff = self.costs.total_bits[np.arange(self.n_layers)[None, :], k] / numel[None, :] / FLOAT_BITS
        cols = [eff, np.asarray(self.ratios)[r]]
        if prior is not None:
            s = prior[np.arange(self.n_layers)[None, :], choices].sum(axis=1)
            cols.append(np.log(np.maximum(s, 1e-30))[:, None] / 10.0)
        return np.concatenate(cols, axis=1).astype(np.float32)


@dataclass
class JointParams:
    population: int = 64
    parents: int = 16
    generations: int = 20
    mutation: float = 0.1
    top_k: int = 5
    seed: int = 0

    def check(self) -> None:
        if self.population < 4:
            raise ValueError(f"joint: population={self.population}: use at least 4")
        if not 2 <= self.parents <= self.population:
            raise ValueError(f"joint: parents={self.parents}: use 2..population")
        if self.generations < 1:
            raise ValueError("joint: generations must be >= 1")
        if not 0 < self.mutation <= 1:
            raise ValueError("joint: mutation is a per-layer probability in (0, 1]")
        if not 1 <= self.top_k <= self.population:
            raise ValueError("joint: top_k must be 1..population")


@dataclass
class PredictorParams:
    pretrain_samples: int = 64
    finetune_samples: int = 24
    holdout_samples: int = 16
    hidden: int = 64
    epochs: int = 400
    finetune_epochs: int = 200
    lr: float = 3e-3
    prior: str | None = "fisher"  # "fisher": the Fisher-weighted perturbation of each option as a feature; None: off

    def check(self) -> None:
        if self.prior not in (None, "fisher"):
            raise ValueError(f"joint: prior={self.prior!r}: use 'fisher' or null")
        if self.pretrain_samples < 8 or self.finetune_samples < 4 or self.holdout_samples < 4:
            raise ValueError("joint: need pretrain_samples >= 8, finetune_samples >= 4, holdout_samples >= 4")
        if self.pretrain_samples + self.finetune_samples + self.holdout_samples > 5000:
            raise ValueError("joint: more than 5000 measured samples is too many for one job")


def random_feasible(space: JointSpace, budgets: dict[str, float], n: int, rng: np.random.Generator,
                    max_tries: int = 200) -> np.ndarray:
    """``n`` random budget-feasible policies: per-layer options drawn around the budget's cost
    level with random sharpness, infeasible draws rejected."""
    M = space.total_bits / np.array([l.numel for l in space.costs.layers], float)[:, None]  # bits per weight
    target_hi = budgets.get("avg_bits", float(M.max(axis=1).mean()))
    out: list[np.ndarray] = []
    for _ in range(max_tries):
        lo = float(M.min(axis=1).mean())
        target = rng.uniform(lo, max(target_hi, lo))
        logits = -rng.uniform(0.5, 4.0) * np.abs(M - target)
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        cand = np.array([[rng.choice(space.n_options, p=p[l]) for l in range(space.n_layers)] for _ in range(n)])
        out += list(cand[space.feasible(cand, budgets)])
        if len(out) >= n:
            return np.array(out[:n])
    if not out:
        raise BudgetError(f"no random policy met every budget {budgets} in {max_tries * n} draws; loosen a budget")
    while len(out) < n:
        out.append(out[len(out) % len(out)])
    return np.array(out)


def predictor_guided_search(space: JointSpace, budgets: dict[str, float], predict: Callable[[np.ndarray], np.ndarray],
                            params: JointParams,
                            progress: Callable[[int, int, float], None] | None = None) -> np.ndarray:
    """APQ's evolutionary search: keep the ``parents`` best (lowest predicted loss) feasible
    policies, refill with per-layer mutations and uniform crossovers of them, reject anything
    over a budget. Returns the ``top_k`` distinct best candidates, best first."""
    params.check()
    rng = np.random.default_rng(params.seed)
    pop = random_feasible(space, budgets, params.population, rng).astype(np.int64)
    seen: dict[bytes, float] = {}

    def score(cands: np.ndarray) -> np.ndarray:
        cands = np.asarray(cands, dtype=np.int64)
        new = [c for c in cands if c.tobytes() not in seen]
        if new:
            for c, s in zip(new, predict(np.array(new))):
                seen[c.tobytes()] = float(s)
        return np.array([seen[c.tobytes()] for c in cands])

    for gen in range(params.generations):
        s = score(pop)
        parents = pop[np.argsort(s)[: params.parents]]
        children = [p for p in parents]
        tries = 0
        while len(children) < params.population and tries < params.population * 50:
            tries += 1
            if rng.random() < 0.5:
                child = parents[rng.integers(len(parents))].copy()
                flip = rng.random(space.n_layers) < params.mutation
                # a mutation changes at least one layer, and often two: under a tight budget one
                # layer can only move up if another moves down (single moves get stuck there)
                need = 2 if space.n_layers > 1 and rng.random() < 0.5 else 1
                while flip.sum() < need:
                    flip[rng.integers(space.n_layers)] = True
                child[flip] = rng.integers(0, space.n_options, flip.sum())
            else:
                a, b = parents[rng.integers(len(parents))], parents[rng.integers(len(parents))]
                child = np.where(rng.random(space.n_layers) < 0.5, a, b)
            if space.feasible(child, budgets)[0]:
                children.append(child)
        pop = np.array(children, dtype=np.int64)
        if progress:
            progress(gen + 1, params.generations, float(score(pop).min()))
    ranked = sorted(seen.items(), key=lambda kv: kv[1])
    out, keys = [], set()
    for key, _ in ranked:
        c = np.frombuffer(key, dtype=np.int64)
        t = tuple(int(x) for x in c)
        if t not in keys and space.feasible(c, budgets)[0]:
            keys.add(t)
            out.append(c.copy())
        if len(out) >= params.top_k:
            break
    return np.array(out)
