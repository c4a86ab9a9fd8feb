"""Evolved proxies (EMQ), the genetic search: random programs, mutation and crossover, and the
evolution of a population of programs for rank correlation with measured loss. numpy/scipy only."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from search.evolved.ground_truth import rank_corr
from search.evolved.program import (BINARY, LEAVES, REDUCE, UNARY, Node, Primitives, Program, compatible, predict,
                                    scores, uses_dw)


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


@dataclass
class GeneticParams:
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
class GeneticResult:
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


def genetic_search(prim: Primitives, choices: np.ndarray, truth: np.ndarray, train: np.ndarray, holdout: np.ndarray,
           params: GeneticParams, progress: Callable[[int, int, Scored], None] | None = None) -> GeneticResult:
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
    return GeneticResult(best, tau_h, rho_h, history, screened)

