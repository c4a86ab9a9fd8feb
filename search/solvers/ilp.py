"""Exact multiple-choice knapsack: exactly one format per group, every budget one linear row,
HiGHS (scipy.optimize.milp / linprog) the engine, and a certified gap on every answer.

Handing HiGHS the whole G-row program is slow at scale (10,000 groups × 16 formats: seconds for
the LP alone, minutes for the MILP), so the solve runs in three steps, each keeping the
certificate honest:

1. **The LP bound, as a Lagrangian dual.** With M budgets the LP relaxation's dual is a concave,
   piecewise-linear function of M multipliers, φ(λ) = Σ_g min_k (loss + λ·cost) − λ·limit, and
   *every* λ ≥ 0 gives a valid lower bound (weak duality), evaluated here in O(G·K·M). Small
   tables take λ from HiGHS' LP duals (one call); large ones maximise φ by box-step cutting planes
   (one tiny HiGHS LP in M + 1 variables per step, a few dozen steps). Formats dominated within
   their group are dropped first: no optimal policy needs one.
2. **Core MILPs for the incumbent.** The groups whose two best formats are closest in reduced
   cost (the LP's fractional groups first) are freed, the rest fixed to their Lagrangian choice,
   and HiGHS solves that small MILP; the core grows while the gap stays open.
3. **Reduced-cost fixing, then the exact MILP.** For every feasible x, loss·x ≥ φ(λ) + Σ rc·x
   (rc = loss + λ·cost − the group's minimum), so no policy better than the incumbent uses a
   format whose rc exceeds incumbent − φ(λ). HiGHS solves what remains; its dual bound can only
   raise the certificate.

Small tables go from step 1 straight to step 3 and are solved exactly as before; on large ones
the incumbent of step 2 is usually within ``mip_rel_gap`` of φ already (10,000 × 16 with three
budgets: under half a second), and where it is not, the quick stop (see ILPSolver) keeps the
solve near a second with the gap it certifies."""
from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from search.problem import InfeasibleError, Problem, Solution, relative_gap
from search.solvers.base import Solver
from search.solvers.repair import fill, repair

# scipy is imported where a problem is solved: the solver registry is read by every CLI command's
# --help and by the API process, which should not pay scipy's import for listing names.

_BUDGET_RTOL = 1e-9   # the relative slack ``within`` grants a budget; the relaxations use it too
_LOSS_TOTAL = 1e4     # Σ_g max_k |loss| after scaling: the dual's numbers do not depend on the loss unit
_MILP_OBJECTIVE = 1e4  # HiGHS sees MILP objectives of about this size, so its absolute gap tolerance …
_HIGHS_ABS_GAP = 1e-6  # … (this) is ~1e-10 of the objective and cannot end a search early
_ROW_SCALE = 1e4      # budget rows ×this for HiGHS: its feasibility tolerance (1e-6) is then 1e-10 of a limit
_CORE_START = 64      # groups freed in the first core MILP, ×4 per round while the gap is open …
_CORE_MAX = 1024      # … up to this many
_DIRECT_LP = 5000     # columns up to which HiGHS' LP gives λ directly (faster than cutting planes there)
_EXACT_VARS = 2000    # binaries beyond one per group up to which the exact MILP runs without a core first
_CORE_NODES = 50      # HiGHS' branch-and-bound nodes per core MILP: the core only supplies an incumbent
_FARKAS_GROWTH = 256  # box growth on the dual after which λ's direction is tested as an infeasibility proof
_WRAP_UP = 0.1        # seconds kept back from HiGHS for its overshoot and for expanding the answer
_MIN_SECONDS = 0.05   # the least HiGHS gets, even past the deadline (a tiny model needs milliseconds)
_HIGHS_TOL = {"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10}


def knapsack_constraints(problem: Problem, keep: np.ndarray | None = None) -> tuple[list, float]:
    """Constraints of the (relaxed or integer) program over flattened group × format variables
    (only the columns in ``keep`` when given), with each budget row divided by its limit so
    HiGHS sees numbers near one. Returns the constraints and the loss scale of the objective.
    The one-per-group rows are built straight from index arrays (CSR), never densely."""
    from scipy.optimize import LinearConstraint
    from scipy.sparse import csr_matrix
    G, K = problem.group_loss.shape
    if keep is None:
        cols = np.arange(G * K)
    else:
        keep = np.asarray(keep)
        cols = np.flatnonzero(keep) if keep.dtype == bool else keep.astype(np.int64)
    one_per_group = csr_matrix((np.ones(cols.size), (cols // K, np.arange(cols.size))), shape=(G, cols.size))
    cons = [LinearConstraint(one_per_group, 1.0, 1.0)]
    if problem.budgets:
        rows = np.stack([problem.group_cost[m].ravel()[cols] / lim for m, lim in problem.budgets.items()])
        cons.append(LinearConstraint(csr_matrix(rows), -np.inf, 1.0 + _BUDGET_RTOL))
    scale = float(np.abs(problem.group_loss).max()) or 1.0
    return cons, scale


def dominated(problem: Problem) -> np.ndarray:
    """G×K mask of formats that another format of the same group beats on loss and on every
    budget metric (no worse anywhere, better somewhere). Fixing them to 0 is exact."""
    stack = np.stack([problem.group_loss.T, *(c.T for c in problem.group_cost.values())])  # (M+1, K, G)
    return _dominated(stack).T


def _dominated(stack: np.ndarray) -> np.ndarray:
    """K×G mask of ``stack`` (metrics × formats × groups) columns some other column beats;
    one pass per candidate dominator keeps memory at O(M·K·G)."""
    dom = np.zeros(stack.shape[1:], dtype=bool)
    for j in range(stack.shape[1]):
        other = stack[:, j:j + 1]
        dom |= np.all(other <= stack, axis=0) & np.any(other < stack, axis=0)
    return dom


@dataclass
class _Tables:
    """The problem in the solver's layout: formats × groups, so reductions over a group's formats
    vectorise across groups. Loss is scaled so Σ_g max_k |loss| = _LOSS_TOTAL (dominated formats
    +inf: no step ever picks one); each budget row is divided by its limit."""

    c: np.ndarray       # (K, G)
    A: np.ndarray       # (M, K, G)
    scale: float        # loss = c · scale

    @classmethod
    def of(cls, problem: Problem) -> "_Tables":
        loss = problem.group_loss.T
        scale = float(np.abs(loss).max(axis=0).sum()) / _LOSS_TOTAL or 1.0
        A = np.stack([problem.group_cost[m].T / lim for m, lim in problem.budgets.items()]) if problem.budgets \
            else np.zeros((0, *loss.shape))
        c = loss / scale
        c[_dominated(np.concatenate([c[None], A]))] = np.inf
        return cls(np.ascontiguousarray(c), np.ascontiguousarray(A), scale)

    @cached_property
    def groups(self) -> np.ndarray:
        return np.arange(self.c.shape[1])

    def usage(self, k: np.ndarray) -> np.ndarray:
        """Per-budget use of group choice ``k`` as a fraction of each limit."""
        return self.A[:, k, self.groups].sum(axis=1)

    def loss(self, k: np.ndarray) -> float:
        return float(self.c[k, self.groups].sum())


@dataclass
class _Dual:
    """A Lagrangian multiplier, its bound φ(λ) (scaled loss), the per-group minimiser and the
    reduced costs rc = c + λ·A − min over the group (0 at the minimiser, +inf where dominated)."""

    lam: np.ndarray
    bound: float
    k: np.ndarray
    rc: np.ndarray
    steps: int


class _Lagrangian:
    """φ(λ) = Σ_g min_k (c + λ·A) − λ·b with b = 1 + the budget tolerance, and a subgradient."""

    def __init__(self, t: _Tables):
        self.t = t
        self.b = 1.0 + _BUDGET_RTOL
        self.V = np.empty_like(t.c)      # c + λ·A of the last call, read for reduced costs
        self._tmp = np.empty_like(t.c)

    def __call__(self, lam: np.ndarray, c: np.ndarray | None = None) -> tuple[float, np.ndarray, np.ndarray]:
        """(φ(λ), subgradient A·x(λ) − b, minimiser x(λ)); ``c`` replaces the loss (feasibility)."""
        V, tmp, A = self.V, self._tmp, self.t.A
        np.copyto(V, self.t.c if c is None else c)
        for m in range(len(lam)):
            np.multiply(A[m], lam[m], out=tmp)
            V += tmp
        k = V.argmin(axis=0)
        value = float(V[k, self.t.groups].sum()) - self.b * float(lam.sum())
        return value, self.t.usage(k) - self.b, k


def _maximise_dual(t: _Tables, tol: float) -> _Dual:
    """The best λ: from the LP relaxation's duals straight from HiGHS on small tables (one call,
    exact, and it says when the LP is infeasible), by cutting planes on large ones."""
    if t.A.shape[0] == 0:  # no budget: every group takes its best format
        return _finish(_Lagrangian(t), np.zeros(0), 0)
    if t.c.size <= _DIRECT_LP:
        lam = _lp_multipliers(t)
        if lam is not None:
            return _finish(_Lagrangian(t), lam, 1)
    return _cutting_planes(t, tol)


def _lp_multipliers(t: _Tables) -> np.ndarray | None:
    """−(budget-row duals) of the LP relaxation over the undominated columns; None when HiGHS
    does not solve it. Raises InfeasibleError when the LP has no solution."""
    from scipy.optimize import linprog
    from scipy.sparse import csr_matrix
    kk, gg = np.nonzero(np.isfinite(t.c))
    one = csr_matrix((np.ones(kk.size), (gg, np.arange(kk.size))), shape=(t.c.shape[1], kk.size))
    res = linprog(t.c[kk, gg], A_ub=t.A[:, kk, gg], b_ub=np.full(t.A.shape[0], 1.0 + _BUDGET_RTOL),
                  A_eq=one, b_eq=np.ones(t.c.shape[1]), bounds=(0, 1), method="highs")
    if res.status == 2:
        raise InfeasibleError("no policy meets every budget at once (the LP relaxation is infeasible)")
    if res.status != 0:
        return None
    return np.maximum(-res.ineqlin.marginals, 0.0)


def _cutting_planes(t: _Tables, tol: float, max_steps: int = 200) -> _Dual:
    """Box-step cutting planes on φ: each step maximises the cut model within a box around the best
    λ (a HiGHS LP in the shift u and the model value θ), evaluates φ there, moves the centre on
    enough ascent and widens the box when the step hits it, halves it otherwise. Stops when the
    model's maximum — an upper bound on max φ once the box no longer binds — is within ``tol`` of
    the best value, or after ``max_steps``; any stop leaves a valid bound. Raises InfeasibleError
    when λ/|λ| proves the budgets cannot hold together (Farkas: Σ_g min_k d·A − d·b > 0)."""
    from scipy.optimize import linprog
    phi = _Lagrangian(t)
    M = t.A.shape[0]
    lam = np.zeros(M)
    f, s, k = phi(lam)
    if np.all(s <= 0):  # the best format everywhere fits: optimal, nothing to price
        return _finish(phi, lam, 1)
    finite = np.where(np.isfinite(t.c), t.c, np.nan)
    spread = float(np.nansum(np.nanmax(finite, axis=0) - np.nanmin(finite, axis=0)))
    span = (t.A.max(axis=1) - t.A.min(axis=1)).sum(axis=1)
    r = np.maximum(spread / np.maximum(span, 1e-12), 1e-12)  # average loss per unit of each budget: λ's scale
    r_farkas = r * _FARKAS_GROWTH
    best_f, best = f, lam.copy()
    cuts_s, cuts_f, cuts_l = [s], [f], [lam.copy()]
    step = 0
    while step < max_steps:
        step += 1
        lo = np.maximum(-1.0, -best / r)
        S, F, L = np.array(cuts_s), np.array(cuts_f), np.array(cuts_l)
        err = F + ((best - L) * S).sum(axis=1) - best_f        # cut value at the centre − φ(centre) ≥ 0
        # maximise θ  s.t.  θ − (s_i ⊙ r)·u ≤ err_i,  lo ≤ u ≤ 1
        res = linprog(np.r_[np.zeros(M), -1.0], A_ub=np.c_[-S * r, np.ones(len(F))], b_ub=err,
                      bounds=[*zip(lo, np.ones(M)), (None, None)], method="highs", options=_HIGHS_TOL)
        if res.status != 0:  # numerical trouble in the master: stop, the best λ still bounds
            break
        u, model = res.x[:M], float(res.x[M])
        on_box = bool(np.any(u >= 1 - 1e-9) or np.any((lo <= -1) & (u <= -1 + 1e-9)))  # λ = 0 is no box side
        if model <= tol * max(abs(best_f), 1e-9 * _LOSS_TOTAL) and not on_box:
            return _finish(phi, best, step)
        lam = np.maximum(best + r * u, 0.0)
        f, s, k = phi(lam)
        cuts_s.append(s)
        cuts_f.append(f)
        cuts_l.append(lam.copy())
        if f >= best_f + 0.1 * model:
            best_f, best = f, lam.copy()
            if on_box:
                r = r * 2.0
                if np.any(r > r_farkas):  # λ keeps growing: perhaps nothing fits at all
                    _check_farkas(phi, best)
        else:
            r = r * 0.5
    return _finish(phi, best, step)


def _check_farkas(phi: _Lagrangian, lam: np.ndarray) -> None:
    """Raise InfeasibleError when d = λ/Σλ certifies that no fractional policy meets every budget."""
    total = float(lam.sum())
    if total <= 0:
        return
    d = lam / total
    value, _, _ = phi(d, c=np.where(np.isfinite(phi.t.c), 0.0, np.inf))
    if value > 1e-12:
        raise InfeasibleError("no policy meets every budget at once (the LP relaxation is infeasible)")


def _finish(phi: _Lagrangian, lam: np.ndarray, steps: int) -> _Dual:
    """The dual at ``lam``, with the reduced costs of every column there."""
    f, _, k = phi(lam)
    rc = phi.V - phi.V[k, phi.t.groups]
    return _Dual(lam, f, k, rc, steps)


class ILPSolver(Solver):
    """Exact solver (the module docstring has the three steps). ``mip_rel_gap`` is the target
    (objective − lower bound) / |objective| (0 = prove optimality); ``time_limit`` caps the whole
    solve's seconds. Between the two, a quick stop: once ``quick_seconds`` have passed, a gap
    already within ``quick_gap`` (HiGHS' own default tolerance) ends the solve. On large tables
    the gap is that small within a second while proving the last 1e-6 could take minutes; a
    wider gap (tables with few groups to trade, where the MILP's branching matters) goes on to
    the exact MILP. Every answer carries its certified gap; small tables finish long before."""

    name = "ilp"

    def __init__(self, mip_rel_gap: float = 1e-6, time_limit: float = 60.0,
                 quick_seconds: float = 1.0, quick_gap: float = 1e-4):
        self.mip_rel_gap = mip_rel_gap
        self.time_limit = time_limit
        self.quick_seconds = min(quick_seconds, time_limit)
        self.quick_gap = max(quick_gap, mip_rel_gap)

    def _solve(self, problem: Problem) -> Solution:
        start = time.perf_counter()

        def due(seconds: float) -> float:  # when HiGHS must stop for the answer to be out in time
            return start + seconds - min(_WRAP_UP, seconds / 10)

        quick, hard = due(self.quick_seconds), due(self.time_limit)
        t = _Tables.of(problem)
        dual = _maximise_dual(t, tol=max(1e-10, min(1e-8, 0.01 * self.mip_rel_gap)))
        info: dict = {"dual_steps": dual.steps}
        inc = self._incumbent(problem, t, dual, quick, info)
        lower, message = dual.bound, "no MILP was run"
        for deadline in (quick, hard):  # the exact MILP: to the quick stop, then (if worth it) on
            now = time.perf_counter()
            if self._closed(t, inc, lower, self.mip_rel_gap) or (inc is not None and now >= deadline):
                continue
            if now >= quick and self._closed(t, inc, lower, self.quick_gap):
                break
            keep = _reduced(t, dual, inc)
            res = _milp(t, keep, self.mip_rel_gap, _seconds_left(deadline))
            info.update(status=res.status, nodes=res.nodes, variables=res.variables,
                        fixed_by_reduced_cost=int(np.isfinite(dual.rc).sum() - keep.sum()))
            message = res.message
            if res.choice is None and inc is None and res.status == 2:
                break
            if res.dual_bound is not None:  # no policy outside `keep` beats the incumbent
                lower = max(lower, min(res.dual_bound, t.loss(inc) if inc is not None else np.inf))
            inc = _better(t, inc, None if res.choice is None else _feasible(problem, res.choice))
            if res.status == 0:  # HiGHS proved mip_rel_gap over every column that can matter
                break
        if inc is None:
            raise InfeasibleError(f"no policy meets every budget at once ({problem.budgets}); HiGHS: {message}")
        choice = problem.expand(inc)
        obj = problem.objective(choice)
        bound = min(lower * t.scale, obj)
        return Solution(choice, obj, self.name, bound, relative_gap(obj, bound), info=info)

    @staticmethod
    def _closed(t: _Tables, inc: np.ndarray | None, lower: float, gap: float) -> bool:
        return inc is not None and relative_gap(t.loss(inc), lower) <= gap

    def _incumbent(self, problem: Problem, t: _Tables, dual: _Dual, deadline: float, info: dict) -> np.ndarray | None:
        """The Lagrangian choice if it fits, improved by core MILPs of growing size until its gap
        closes or the exact MILP left by reduced-cost fixing is small enough to solve. A core frees
        the groups whose runner-up format is closest in reduced cost (the LP's fractional groups
        first) and fixes the rest to the Lagrangian choice; HiGHS stops it after _CORE_NODES
        nodes, so the result does not depend on the clock unless the deadline comes first.
        Falls back to greedy repair and fill of the Lagrangian choice."""
        runner_up = np.partition(dual.rc, 1, axis=0)[1] if t.c.shape[0] > 1 else np.full(t.c.shape[1], np.inf)
        order = np.argsort(runner_up, kind="stable")
        n_free = int(np.isfinite(runner_up).sum())
        best = dual.k if _fits(problem, dual.k) else None
        if _reduced(t, dual, None).sum() - t.c.shape[1] <= _EXACT_VARS:
            return best  # the whole MILP is small: no heuristic needed
        size = min(n_free, _CORE_START)
        while size and not self._closed(t, best, dual.bound, self.mip_rel_gap):
            if best is not None and time.perf_counter() >= deadline:
                break
            free = order[:size]
            keep = np.zeros(t.c.shape, dtype=bool)
            keep[dual.k, t.groups] = True
            keep[:, free] = dual.rc[:, free] <= 2.0 * runner_up[free[-1]]
            res = _milp(t, keep, self.mip_rel_gap, _seconds_left(deadline), _CORE_NODES)
            best = _better(t, best, None if res.choice is None else _feasible(problem, res.choice))
            info["core_groups"] = int(size)
            if size >= min(n_free, _CORE_MAX) or _reduced(t, dual, best).sum() - t.c.shape[1] <= _EXACT_VARS:
                break  # the core cannot grow, or the exact MILP left is small enough
            size = min(n_free, size * 4)
        if best is None:
            try:
                best = fill(problem, repair(problem, dual.k))
            except InfeasibleError:
                pass
        return best


def _reduced(t: _Tables, dual: _Dual, inc: np.ndarray | None) -> np.ndarray:
    """K×G columns an optimal policy may use: every undominated one without an incumbent; with
    one, those whose reduced cost is within its gap to φ (loss·x ≥ φ(λ) + Σ rc·x for every
    feasible x), plus its own columns."""
    keep = np.isfinite(dual.rc)
    if inc is not None:
        keep &= dual.rc <= t.loss(inc) - dual.bound + 1e-9 * max(1.0, abs(t.loss(inc)))
        keep[inc, t.groups] = True
    return keep


def _seconds_left(deadline: float) -> float:
    """HiGHS' time cap: what is left, but never so little that a small model cannot finish."""
    return max(deadline - time.perf_counter(), _MIN_SECONDS)


def _better(t: _Tables, a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    """The group choice of lower loss (either may be missing)."""
    if a is None or (b is not None and t.loss(b) < t.loss(a)):
        return b
    return a


@dataclass
class _MilpResult:
    """What one HiGHS MILP gave: a group choice (None without a solution) and its dual bound."""

    choice: np.ndarray | None
    dual_bound: float | None   # scaled loss
    status: int
    nodes: int
    variables: int
    message: str


def _milp(t: _Tables, keep: np.ndarray, mip_rel_gap: float, time_limit: float,
          node_limit: int | None = None) -> _MilpResult:
    """HiGHS over the columns in ``keep`` (K×G), every budget at its limit. Groups left with one
    column are fixed here, not passed (their loss becomes a constant offset variable, so HiGHS'
    relative gap is the whole objective's). The objective is scaled to about _MILP_OBJECTIVE and
    the budget rows by _ROW_SCALE so HiGHS' absolute tolerances (1e-6) are negligible; the dual
    bound returned (in the tables' units) has HiGHS' absolute gap taken off, so it stays a bound."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import csr_matrix
    G = t.c.shape[1]
    count = keep.sum(axis=0)
    if np.any(count == 0):
        raise ValueError("a group with no format left")
    single = count == 1
    k0 = keep.argmax(axis=0)
    fixed_loss = float(t.c[k0[single], np.flatnonzero(single)].sum())
    left = (1.0 + _BUDGET_RTOL) - t.A[:, k0[single], np.flatnonzero(single)].sum(axis=1)
    free = np.flatnonzero(~single)
    kk, jj = np.nonzero(keep[:, free])          # variables: format kk of group free[jj]
    order = np.argsort(jj, kind="stable")
    kk, jj = kk[order], jj[order]
    gg = free[jj]
    n = kk.size
    choice = k0.copy()
    if n == 0:
        ok = bool(np.all(left >= -1e-12))
        return _MilpResult(choice if ok else None, fixed_loss if ok else None, 0 if ok else 2, 0, 0,
                           "every group fixed" if ok else "the fixed groups break a budget")
    kept = np.where(keep, t.c, np.inf)
    size = max(abs(fixed_loss + float(kept[:, free].min(axis=0).sum())), 1e-6 * float(np.abs(t.c[keep]).sum()), 1e-300)
    unit = size / _MILP_OBJECTIVE
    c = np.r_[t.c[kk, gg], fixed_loss] / unit            # last variable: the constant, fixed at 1
    one = csr_matrix((np.ones(n + 1), (np.r_[jj, free.size], np.arange(n + 1))), shape=(free.size + 1, n + 1))
    cons = [LinearConstraint(one, 1.0, 1.0)]
    if t.A.shape[0]:
        rows = np.c_[t.A[:, kk, gg], np.zeros(t.A.shape[0])] * _ROW_SCALE
        cons.append(LinearConstraint(rows, -np.inf, left * _ROW_SCALE))
    options = {"mip_rel_gap": mip_rel_gap, "time_limit": time_limit, "disp": False}
    if node_limit is not None:
        options["node_limit"] = node_limit
    res = milp(c, constraints=cons, integrality=np.r_[np.ones(n), 0], bounds=Bounds(0, 1), options=options)
    dual_bound = getattr(res, "mip_dual_bound", None)
    if dual_bound is not None and np.isfinite(dual_bound):
        dual_bound = (float(dual_bound) - _HIGHS_ABS_GAP) * unit
    else:
        dual_bound = None
    if res.x is not None:
        sel = res.x[:n] > 0.5
        choice[gg[sel]] = kk[sel]
    return _MilpResult(choice if res.x is not None else None, dual_bound, int(res.status),
                       int(getattr(res, "mip_node_count", 0) or 0), n, str(res.message))


def _feasible(problem: Problem, gchoice: np.ndarray) -> np.ndarray | None:
    """``gchoice`` if it meets every budget exactly as ``within`` checks; else a greedy repair of
    it (HiGHS accepts rows a hair over), else None."""
    if _fits(problem, gchoice):
        return gchoice
    try:
        return fill(problem, repair(problem, gchoice))
    except InfeasibleError:
        return None


def _fits(problem: Problem, gchoice: np.ndarray) -> bool:
    """Whether a group choice meets every budget with ``within``'s tolerance."""
    totals = problem.group_totals(gchoice)
    return all(totals[m] <= lim * (1 + _BUDGET_RTOL) + 1e-12 for m, lim in problem.budgets.items())


def exact_choice(problem: Problem) -> np.ndarray:
    """The ILP's layer choice: the exact fallback the rounding solvers hand to repair."""
    return ILPSolver().solve(problem).choice
