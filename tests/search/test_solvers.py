"""Conformance suite for every registered solver, checked against brute force on small instances.

Every solver must return a choice that meets every budget and every tie group (or raise
InfeasibleError when no policy does); the exact solver must match brute force; every reported
lower bound must really be a lower bound."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from search.budgets import METRICS, CostModel, check_budgets, group_min_cost, within
from search.formats import Format, make_formats
from search.layers import LayerInfo, TieGroups
from search.problem import InfeasibleError, Problem
from search.solvers import SOLVERS, get_solver
from search.solvers.ilp import ILPSolver
from search.solvers.pareto import front, hull_walk

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# every solver of a sensitivity table; the joint search (needs_table False) measures policies on a
# model instead, and has its own tests (tests/search/test_joint.py, tests/proxies/test_joint.py)
ALL = sorted(name for name, cls in SOLVERS.items() if cls.needs_table)
# fewer front points keep the pareto runs quick; its answer at the problem's own budget is what is checked
PARAMS = {"pareto": {"n_points": 5}}


def solver(name: str):
    return get_solver(name, **PARAMS.get(name, {}))


# ---------------------------------------------------------------- instances


def make_layers(rng: np.random.Generator, n: int) -> list[LayerInfo]:
    layers = []
    for i in range(n):
        rows = int(rng.integers(1, 9))
        inf = int(rng.choice([32, 64, 100, 128, 200]))
        kind = str(rng.choice(["linear", "conv2d"]))
        macs = rows * inf * (int(rng.integers(1, 50)) if kind == "conv2d" else 1)
        layers.append(LayerInfo(f"blk{i // 3}.m{i % 3}", kind, (rows, inf), rows * inf, inf, macs))
    return layers


def make_loss(rng: np.random.Generator, formats: list[Format], n: int, kind: str) -> np.ndarray:
    bits = np.array([f.bits for f in formats], dtype=float)
    if kind == "decay":  # proxy-like: s_l · 2^(−2b) with noise
        s = rng.lognormal(0.0, 2.0, size=(n, 1))
        return s * np.exp2(-2 * bits)[None, :] * rng.uniform(0.7, 1.3, size=(n, len(formats)))
    if kind == "random":  # no structure at all, incl. higher bits being worse
        return rng.uniform(0.0, 1.0, size=(n, len(formats)))
    # noisy stochastic proxy: small negative entries happen
    return rng.normal(0.0, 1.0, size=(n, len(formats))) * np.exp2(-bits)[None, :]


def make_latency(rng: np.random.Generator, layers: list[LayerInfo], formats: list[Format]) -> dict:
    # keyed by label for some layers and by bits for others; not monotone in bits
    table = {}
    for l in layers:
        by_label = bool(rng.integers(0, 2))
        table[l.name] = {(f.label if by_label else str(f.bits)): float(rng.uniform(0.1, 2.0)) for f in formats}
    return table


def all_group_choices(problem: Problem) -> np.ndarray:
    G, K = problem.group_loss.shape
    return np.stack(np.unravel_index(np.arange(K**G), (K,) * G), axis=1).astype(np.int64)


def brute_force(problem: Problem) -> tuple[float | None, np.ndarray | None]:
    """Optimum over every tie-respecting policy that meets every budget (same tolerance as
    ``within``); (None, None) when none does."""
    gc = all_group_choices(problem)
    rows = np.arange(gc.shape[1])
    ok = np.ones(len(gc), dtype=bool)
    for m, lim in problem.budgets.items():
        ok &= problem.group_cost[m][rows, gc].sum(axis=1) <= lim * (1 + 1e-9) + 1e-12
    if not ok.any():
        return None, None
    loss = problem.group_loss[rows, gc].sum(axis=1)
    loss = np.where(ok, loss, np.inf)
    best = int(np.argmin(loss))
    return float(loss[best]), problem.expand(gc[best])


@st.composite
def instances(draw, max_layers: int = 6, max_budgets: int = 2, metrics=METRICS):
    n = draw(st.integers(2, max_layers))
    bits = draw(st.lists(st.sampled_from([2, 3, 4, 8]), min_size=2, max_size=4, unique=True))
    formats = make_formats(bits, draw(st.sampled_from([None, 32, 64, 128])), draw(st.booleans()))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    layers = make_layers(rng, n)
    loss = make_loss(rng, formats, n, draw(st.sampled_from(["decay", "random", "noisy"])))
    names = draw(st.lists(st.sampled_from(metrics), min_size=1, max_size=max_budgets, unique=True))
    latency = make_latency(rng, layers, formats) if "latency_ms" in names else None
    costs = CostModel(layers, formats, latency_table=latency)
    ties = TieGroups()
    if draw(st.booleans()):
        k = draw(st.integers(2, min(3, n)))
        ties = TieGroups([sorted(int(i) for i in rng.choice(n, size=k, replace=False))])
    # budgets from a reference policy (so all of them can be met together), loosened a bit
    probe = Problem(loss, costs, {m: 1.0 for m in names}, ties)
    ref = problem_choice = probe.expand(rng.integers(0, len(formats), size=len(probe.groups)))
    ref_cost = costs.cost(problem_choice)
    budgets = {}
    for m in names:
        slack = draw(st.sampled_from([0.0, 0.0, 1e-3, 0.05, 0.3]))
        budgets[m] = min(ref_cost[m] * (1 + slack), costs.float_cost(m))
    check_budgets(costs, budgets, ties)  # each budget alone is a valid request
    return Problem(loss, costs, budgets, ties), ref


def ties_honoured(problem: Problem, choice: np.ndarray) -> bool:
    return all(len({int(choice[i]) for i in g}) == 1 for g in problem.ties.groups)


def tol(x: float) -> float:
    return 1e-7 * max(1.0, abs(x))


# ---------------------------------------------------------------- (a) every solver: feasible, ties


def test_registry_names():
    assert set(SOLVERS) >= {"ilp", "lp", "convex", "pareto", "joint"}
    for name in SOLVERS:
        assert get_solver(name).name == name
    with pytest.raises(ValueError, match="unknown solver"):
        get_solver("simulated_annealing")


@pytest.mark.parametrize("name", ALL)
@SETTINGS
@given(inst=instances())
def test_solution_meets_every_budget_and_tie(name, inst):
    problem, ref = inst
    sol = solver(name).solve(problem)
    choice = np.asarray(sol.choice)
    assert choice.shape == (problem.loss.shape[0],)
    assert choice.min() >= 0 and choice.max() < problem.n_formats
    assert within(problem.costs.cost(choice), problem.budgets), (problem.costs.cost(choice), problem.budgets)
    assert ties_honoured(problem, choice)
    assert sol.solver == name
    assert sol.objective == pytest.approx(problem.objective(choice), rel=1e-12, abs=1e-15)
    # a feasible reference policy exists, so nothing may beat the optimum nor be infeasible
    opt, _ = brute_force(problem)
    assert opt is not None
    assert sol.objective >= opt - tol(opt)
    if name in ("ilp", "lp", "pareto"):  # the solvers that report a certificate
        assert sol.lower_bound is not None and sol.gap is not None
    if sol.lower_bound is not None:
        assert sol.lower_bound <= sol.objective + 1e-9
        assert sol.lower_bound <= opt + tol(opt)  # a real lower bound: never above the optimum
        assert sol.gap is not None and sol.gap >= 0
        # the gap certifies the distance to the optimum
        assert sol.objective - opt <= sol.gap * max(abs(sol.objective), 1e-12) + tol(opt)
    if name == "ilp":  # default tolerance: HiGHS stops at mip_rel_gap 1e-6
        assert sol.gap <= 1e-5


# ---------------------------------------------------------------- (b) exactness and bounds


@SETTINGS
@given(inst=instances())
def test_ilp_matches_brute_force(inst):
    problem, _ = inst
    opt, best = brute_force(problem)
    sol = ILPSolver(mip_rel_gap=0.0).solve(problem)
    assert sol.objective == pytest.approx(opt, rel=1e-6, abs=1e-9)
    assert sol.lower_bound is not None
    assert sol.lower_bound <= sol.objective + 1e-9
    assert sol.lower_bound <= opt + tol(opt)
    assert sol.gap is not None and sol.gap <= 1e-6


def test_ilp_hand_example():
    # 3 equal layers, 2/4-bit, budget admits one 4-bit layer: the most sensitive one gets it
    layers = [LayerInfo(f"l{i}", "linear", (8, 64), 512, 64, 512) for i in range(3)]
    fmts = make_formats([2, 4])
    loss = np.array([[1.0, 0.0], [5.0, 0.0], [2.0, 0.0]])
    costs = CostModel(layers, fmts)
    budget = costs.cost(np.array([0, 1, 0]))["avg_bits"]
    sol = get_solver("ilp").solve(Problem(loss, costs, {"avg_bits": budget}))
    assert sol.choice.tolist() == [0, 1, 0]
    assert sol.objective == 3.0
    assert sol.gap is not None and sol.gap <= 1e-6


def test_ilp_ties_force_a_shared_format():
    layers = [LayerInfo(f"attn.{n}", "linear", (8, 64), 512, 64, 512) for n in ("q_proj", "k_proj", "v_proj")]
    fmts = make_formats([2, 4])
    # q is very sensitive, k/v not: untied, only q would get 4 bits
    loss = np.array([[10.0, 0.0], [0.1, 0.0], [0.1, 0.0]])
    costs = CostModel(layers, fmts)
    budget = costs.cost(np.array([1, 0, 0]))["avg_bits"]
    free = get_solver("ilp").solve(Problem(loss, costs, {"avg_bits": budget}))
    assert free.choice.tolist() == [1, 0, 0]
    for name in ALL:
        tied = get_solver(name).solve(Problem(loss, costs, {"avg_bits": budget}, TieGroups([[0, 1, 2]])))
        assert tied.choice.tolist() == [0, 0, 0], name


# ---------------------------------------------------------------- (c) jointly infeasible budgets


def _conflicting_problem():
    """avg_bits tight enough to force 2 bits everywhere; a latency table on which 2-bit
    kernels are the slowest, tight enough to force 8 bits everywhere."""
    layers = [LayerInfo(f"l{i}", "linear", (8, 64), 512, 64, 512) for i in range(3)]
    fmts = make_formats([2, 4, 8])
    latency = {l.name: {"2": 3.0, "4": 2.0, "8": 1.0} for l in layers}
    costs = CostModel(layers, fmts, latency_table=latency)
    loss = np.array([[4.0, 1.0, 0.0], [2.0, 0.5, 0.0], [8.0, 1.0, 0.0]])
    budgets = {"avg_bits": costs.cost(np.zeros(3, dtype=np.int64))["avg_bits"] + 0.1, "latency_ms": 4.0}
    return Problem(loss, costs, budgets), costs, budgets


def test_conflicting_budgets_each_feasible_alone():
    problem, costs, budgets = _conflicting_problem()
    for m, lim in budgets.items():
        check_budgets(costs, {m: lim})
        assert brute_force(Problem(problem.loss, costs, {m: lim}))[0] is not None
    check_budgets(costs, budgets)  # per-metric check passes; the conflict is joint
    assert brute_force(problem) == (None, None)


@pytest.mark.parametrize("name", ALL)
def test_conflicting_budgets_raise_infeasible(name):
    problem, _, _ = _conflicting_problem()
    with pytest.raises(InfeasibleError):
        get_solver(name).solve(problem)
    assert issubclass(InfeasibleError, ValueError)


@pytest.mark.parametrize("name", ALL)
@SETTINGS
@given(inst=instances(max_budgets=2, metrics=("avg_bits", "latency_ms")), tighten=st.floats(0.5, 1.0))
def test_infeasible_only_when_nothing_fits(name, inst, tighten):
    """With the budgets tightened at random, a solver raises only if brute force finds no policy."""
    problem, _ = inst
    budgets = {m: v * tighten for m, v in problem.budgets.items()}
    sub = Problem(problem.loss, problem.costs, budgets, problem.ties)
    opt, _ = brute_force(sub)
    try:
        sol = solver(name).solve(sub)
    except InfeasibleError:
        assert opt is None, f"{name} gave up on a feasible problem (optimum {opt})"
        return
    assert opt is not None
    assert within(sub.costs.cost(sol.choice), budgets)
    assert ties_honoured(sub, sol.choice)


# ---------------------------------------------------------------- (d) pareto front and hull walk


def _limits(problem: Problem, metric: str, n: int = 12) -> list[float]:
    lo = group_min_cost(problem.costs.matrix(metric), problem.ties)
    hi = float(problem.costs.matrix(metric).max(axis=1).sum())
    return list(np.linspace(lo, hi, n))


@SETTINGS
@given(inst=instances(max_budgets=1, metrics=("avg_bits", "size_bytes", "bops", "latency_ms")))
def test_front_monotone_within_limits_and_certified(inst):
    problem, _ = inst
    metric = next(iter(problem.budgets))
    limits = _limits(problem, metric)
    pts = front(problem, metric, limits)
    assert [p["limit"] for p in pts] == pytest.approx(limits)
    assert all(p["feasible"] for p in pts)  # a single budget inside its range is always feasible
    prev = np.inf
    for p in pts:
        choice = np.array(p["choice"])
        assert p["cost"][metric] <= p["limit"] * (1 + 1e-9) + 1e-12
        assert p["cost"] == pytest.approx(problem.costs.cost(choice))
        assert p["loss"] == pytest.approx(problem.objective(choice))
        assert ties_honoured(problem, choice)
        assert p["lower_bound"] <= p["loss"] + 1e-9
        assert p["loss"] <= prev + tol(prev if np.isfinite(prev) else 0.0), "front loss went up as the limit grew"
        prev = p["loss"]
        # certificate: within the reported gap of the exact optimum at this limit
        opt, _ = brute_force(Problem(problem.loss, problem.costs, {metric: p["limit"]}, problem.ties))
        assert p["lower_bound"] <= opt + tol(opt)
        assert p["loss"] - opt <= p["gap"] * max(abs(p["loss"]), 1e-12) + tol(opt)


@SETTINGS
@given(inst=instances(max_budgets=2, metrics=("avg_bits", "size_bytes", "latency_ms")))
def test_front_with_a_secondary_budget(inst):
    problem, _ = inst
    metric = next(iter(problem.budgets))
    pts = front(problem, metric, _limits(problem, metric, 8))
    prev = np.inf
    for p in pts:
        budgets = {**problem.budgets, metric: p["limit"]}
        opt, _ = brute_force(Problem(problem.loss, problem.costs, budgets, problem.ties))
        if not p["feasible"]:
            assert opt is None
            continue
        assert opt is not None
        choice = np.array(p["choice"])
        assert within(problem.costs.cost(choice), budgets)
        assert p["lower_bound"] <= opt + tol(opt)
        assert p["loss"] <= prev + tol(prev if np.isfinite(prev) else 0.0)
        prev = p["loss"]


@settings(SETTINGS, max_examples=25)
@given(inst=instances(max_budgets=1))
def test_front_exact_matches_brute_force(inst):
    problem, _ = inst
    metric = next(iter(problem.budgets))
    for p in front(problem, metric, _limits(problem, metric, 3), exact=True):
        opt, _ = brute_force(Problem(problem.loss, problem.costs, {metric: p["limit"]}, problem.ties))
        assert p["loss"] == pytest.approx(opt, rel=1e-6, abs=1e-9)


@SETTINGS
@given(inst=instances(max_budgets=1))
def test_pareto_solver_attaches_front(inst):
    problem, _ = inst
    sol = get_solver("pareto", n_points=7).solve(problem)
    metric = next(iter(problem.budgets))
    assert sol.info["front_metric"] == metric
    assert len(sol.info["front"]) == 7
    assert all("choice" not in p for p in sol.info["front"])


@SETTINGS
@given(inst=instances(max_budgets=1, metrics=("avg_bits", "bops", "latency_ms")))
def test_hull_walk_visits_the_lower_convex_hull(inst):
    problem, _ = inst
    metric = next(iter(problem.budgets))
    walk = hull_walk(problem, metric)
    C, L = problem.group_cost[metric], problem.group_loss
    rows = np.arange(len(problem.groups))

    # the policies the walk visits, and their (cost, loss) as reported
    g = walk.start.copy()
    visited = [(float(C[rows, g].sum()), float(L[rows, g].sum()))]
    assert visited[0] == pytest.approx((walk.base_cost, walk.base_loss))
    for i, (grp, k) in enumerate(zip(walk.seg_group, walk.seg_to)):
        g[grp] = k
        visited.append((float(C[rows, g].sum()), float(L[rows, g].sum())))
        assert visited[-1] == pytest.approx((walk.cum_cost[i], walk.cum_loss[i]))
    xs = np.array([v[0] for v in visited])
    ys = np.array([v[1] for v in visited])
    assert np.all(np.diff(xs) > 0) and np.all(np.diff(ys) < 0)
    slopes = np.diff(ys) / np.diff(xs)
    assert np.all(np.diff(slopes) >= -1e-9 * np.abs(slopes[1:]).max(initial=1.0))  # convex

    # against every policy: the walk starts at the cheapest one, ends at the best one, and no
    # policy lies below the piecewise-linear curve through the visited points
    gc = all_group_choices(problem)
    pc = C[rows, gc].sum(axis=1)
    pl = L[rows, gc].sum(axis=1)
    assert xs[0] == pytest.approx(pc.min())
    assert ys[0] == pytest.approx(pl[np.isclose(pc, pc.min(), rtol=1e-12, atol=0)].min())
    assert ys[-1] == pytest.approx(pl.min())
    curve = np.interp(pc, xs, ys)  # flat beyond the last point: nothing beats the best loss
    scale = max(1.0, np.abs(pl).max())
    assert np.all(pl >= curve - 1e-9 * scale)


# ---------------------------------------------------------------- (e) the exact solver at scale
# Tables too big for brute force: a 300 × 8 table against the full MILP without any reduction, a
# 3,000 × 8 table whose optimum is known by construction, and jointly infeasible budgets. No
# wall-clock assertions: every check is on the answer and its certificate.

import search.solvers.ilp as ilp_module  # noqa: E402


def _scale_table(n: int, seed: int, bits=(2, 3, 4, 8), groups=(32, 128)) -> tuple[np.ndarray, CostModel]:
    """Layers of several shapes (some convs, so BOPs are not storage), a decaying loss with noise and
    a latency table with a per-format overhead and noise (not monotone in bits)."""
    rng = np.random.default_rng(seed)
    fmts = make_formats(list(bits), list(groups))
    layers = []
    for i in range(n):
        inf, out = int(rng.choice([64, 128, 256, 384])), int(rng.choice([32, 64, 128]))
        spatial = int(rng.choice([1, 1, 4, 16]))
        layers.append(LayerInfo(f"blk{i // 8}.m{i % 8}", "linear" if spatial == 1 else "conv2d", (out, inf),
                                out * inf, inf, out * inf * spatial))
    costs0 = CostModel(layers, fmts)
    numel = np.array([l.numel for l in layers], dtype=float)[:, None]
    eff = costs0.total_bits / numel
    overhead = np.array([1.3 if f.bits == 3 else 1.0 for f in fmts])
    lat = (eff * overhead * numel * 1e-6 + 1e-3) * rng.lognormal(0, 0.05, eff.shape)
    latency = {l.name: {f.label: float(v) for f, v in zip(fmts, row)} for l, row in zip(layers, lat)}
    loss = rng.lognormal(0, 1.5, (n, 1)) * 2.0 ** (-2 * eff) * rng.lognormal(0, 0.1, eff.shape)
    return loss, CostModel(layers, fmts, latency_table=latency)


def _three_budgets(costs: CostModel) -> dict[str, float]:
    """avg_bits, BOPs and latency all binding: each a little under the all-w4g32 policy's."""
    ref = costs.cost(np.full(len(costs.layers), next(i for i, f in enumerate(costs.formats) if f.label == "w4g32a")))
    return {"avg_bits": 0.97 * ref["avg_bits"], "bops": 0.93 * ref["bops"], "latency_ms": 0.98 * ref["latency_ms"]}


def _full_milp(problem: Problem) -> float:
    """The optimum from HiGHS on the whole program, no dual, no fixing: the reference."""
    from scipy.optimize import Bounds, milp
    cons, _ = ilp_module.knapsack_constraints(problem)
    G, K = problem.group_loss.shape
    c = problem.group_loss.ravel() / np.abs(problem.group_loss).sum() * 1e4  # HiGHS' absolute gap negligible
    res = milp(c, constraints=cons, integrality=np.ones(G * K), bounds=Bounds(0, 1), options={"mip_rel_gap": 0.0})
    choice = problem.expand(res.x.reshape(G, K).argmax(axis=1))
    assert problem.feasible(choice)
    return problem.objective(choice)


def _certified(problem: Problem, sol, opt: float) -> None:
    """Feasible, no better than the optimum, bound below it, and within its own gap of it."""
    assert within(problem.costs.cost(sol.choice), problem.budgets)
    assert ties_honoured(problem, sol.choice)
    assert sol.objective == pytest.approx(problem.objective(sol.choice), rel=1e-12)
    assert sol.objective >= opt - tol(opt)
    assert sol.lower_bound is not None and sol.gap is not None
    assert sol.lower_bound <= opt + tol(opt)
    assert sol.objective - opt <= sol.gap * abs(sol.objective) + tol(opt)


@pytest.fixture(scope="module")
def mid_size():
    loss, costs = _scale_table(300, seed=0)
    problem = Problem(loss, costs, _three_budgets(costs), TieGroups([[0, 1, 2], [10, 11]]))
    return problem, _full_milp(problem)


@pytest.mark.parametrize("dual", ["lp", "cutting planes"])
def test_ilp_mid_size_three_budgets_matches_the_full_milp(mid_size, dual, monkeypatch):
    """300 × 8, three budgets and ties: the objective is the full MILP's optimum within the
    reported gap, and the gap meets the tolerance (no quick stop: quick_seconds = time_limit).
    Both ways to the dual give the same answer (cutting planes are forced by a zero LP size)."""
    problem, opt = mid_size
    if dual == "cutting planes":
        monkeypatch.setattr(ilp_module, "_DIRECT_LP", 0)
    sol = ILPSolver(time_limit=600, quick_seconds=600).solve(problem)
    _certified(problem, sol, opt)
    assert sol.gap <= 1e-6
    assert sol.objective == pytest.approx(opt, rel=1e-6)
    assert (sol.info["dual_steps"] > 1) == (dual == "cutting planes")


def test_ilp_early_stop_still_certifies(mid_size):
    """Stopped at the first incumbent (quick stop at once, any gap accepted), the answer is
    feasible and its lower bound and gap remain true of the optimum."""
    problem, opt = mid_size
    sol = ILPSolver(quick_seconds=0.0, quick_gap=1.0).solve(problem)
    _certified(problem, sol, opt)


def test_ilp_planted_optimum_at_scale():
    """3,000 × 8 with three budgets set to the costs of x* = argmin_k (loss + w·cost) for some
    w > 0: by Lagrangian sufficiency x* is the unique optimum, so the answer must be it."""
    loss, costs = _scale_table(3000, seed=1)
    probe = Problem(loss, costs, {"avg_bits": 1.0, "bops": 1.0, "latency_ms": 1.0})
    rng = np.random.default_rng(2)
    priced = probe.group_loss.copy()
    for m, C in probe.group_cost.items():  # each metric weighted to move a comparable share of the loss
        priced += rng.uniform(0.5, 2.0) * probe.group_loss.mean() / C.mean() * C * 0.5
    star = priced.argmin(axis=1)
    budgets = probe.group_totals(star)
    problem = probe.with_budgets(budgets)
    opt = float(problem.group_loss[np.arange(len(star)), star].sum())
    assert problem.group_loss.size > ilp_module._DIRECT_LP  # the cutting-plane dual
    sol = get_solver("ilp").solve(problem)
    _certified(problem, sol, opt)
    assert sol.gap <= 1e-6
    assert sol.objective == pytest.approx(opt, rel=1e-6)


def test_ilp_jointly_infeasible_at_scale_raises():
    """2,000 layers, formats 2/4/8: avg_bits tight enough to force 2 bits, latency (2-bit kernels
    slowest) tight enough to force 8 bits. Each budget alone is valid; together nothing fits, and
    the cutting-plane dual proves it (Farkas) instead of searching."""
    layers = [LayerInfo(f"l{i}", "linear", (8, 64), 512, 64, 512) for i in range(2000)]
    fmts = make_formats([2, 4, 8])
    latency = {l.name: {"2": 3.0, "4": 2.0, "8": 1.0} for l in layers}
    costs = CostModel(layers, fmts, latency_table=latency)
    loss = np.random.default_rng(0).uniform(0.1, 1.0, (2000, 3)) * np.array([4.0, 1.0, 0.1])
    budgets = {"avg_bits": costs.cost(np.zeros(2000, dtype=np.int64))["avg_bits"] + 0.1, "latency_ms": 1.2 * 2000}
    for m, lim in budgets.items():
        check_budgets(costs, {m: lim})
    problem = Problem(loss, costs, budgets)
    assert problem.group_loss.size > ilp_module._DIRECT_LP
    with pytest.raises(InfeasibleError):
        get_solver("ilp").solve(problem)
