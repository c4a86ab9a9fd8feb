"""Re-solving a stored sensitivity table under new budgets, without a job
(``POST /v1/sensitivities/{id}/solve``).

A stored table (bitplan.sensitivity/v1) holds everything a table solver needs: the layers, the
formats and the predicted loss of each (layer, format). Pricing them is search's ``CostModel``,
tying them ``find_tie_groups``, solving ``search.solvers``: the same steps as a job's solve
phase (workers/pipeline.py), so the same table, budget and ties give the same objective.

- ``PreparedTable``: a table parsed once, with its cost model and grouped problems (per tie
  presets). Tables never change once stored, so it is reused for as long as it stays cached.
- ``solve_prepared``/``solve_table``: the pure part (a prepared table or the table's dict, a
  budget → the solution as the API returns it); ``SolveError`` for anything the caller can fix.
- ``TableCache``: a small LRU of prepared tables keyed by table id, bounded by entries and cells.
- ``warm``: imports scipy and runs the default solver once, so the first request does not pay.

No I/O here: the route reads the store, this module only computes."""
from __future__ import annotations

import copy
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from search.budgets import METRICS, BudgetError, CostModel, _latency_lookup
from search.layers import LayerInfo, find_tie_groups, runtime_ties
from search.problem import InfeasibleError, Problem
from search.table import SensitivityTable

DEFAULT_SOLVER = "ilp"
CACHE_TABLES = 16          # prepared tables kept per server process
CACHE_CELLS = 1_000_000    # their layers × formats in all (≈ 100 bytes a cell: the table, costs, grouped problems)
MAX_TIE_SETS = 8           # grouped problems kept per table (tie presets are few: qkv, gate_up, experts)


class SolveError(ValueError):
    """A request this table cannot be solved for. ``code`` is the API's error code:
    ``invalid_request`` (a name or value to change) or ``infeasible_budget`` (no policy of this
    table meets the budget; the message says why and the feasible range when there is one)."""

    def __init__(self, message: str, code: str = "invalid_request", field: str | None = None):
        super().__init__(message)
        self.code, self.field = code, field


def table_solvers() -> list[str]:
    """The registered solvers that solve a sensitivity table (not those that measure the model)."""
    from search.solvers import SOLVERS
    return sorted(n for n, c in SOLVERS.items() if c.needs_table)


def check_solver(name: str) -> None:
    from search.solvers import SOLVERS
    valid = ", ".join(table_solvers())
    cls = SOLVERS.get(name)
    if cls is None:
        raise SolveError(f"solver: unknown solver {name[:64]!r}; a stored table is solved by one of {valid}",
                         field="solver")
    if not cls.needs_table:
        raise SolveError(f"solver: {name!r} measures policies on the model itself and cannot re-solve a stored "
                         f"table; submit a job for it (POST /v1/jobs), or use one of {valid}", field="solver")


def check_budgets(budgets: dict[str, float]) -> dict[str, float]:
    if not budgets:
        raise SolveError('budgets: no budget given; pass at least one, e.g. {"avg_bits": 3.8}', field="budgets")
    out = {}
    for name, limit in budgets.items():
        if name not in METRICS:
            raise SolveError(f"budgets: unknown budget metric {name[:64]!r}; use one of {', '.join(METRICS)}",
                             field="budgets")
        limit = float(limit)
        if not math.isfinite(limit) or limit <= 0:
            raise SolveError(f"budgets.{name}: the limit must be a positive number, got {limit:g}", field="budgets")
        out[name] = limit
    return out


@dataclass
class PreparedTable:
    """A stored table ready to solve: parsed, priced (every metric but latency, which depends
    on the request's latency table) and grouped per tie presets on first use."""

    table_id: str
    model_id: str
    layers: list[LayerInfo]
    labels: list[str]
    costs: CostModel
    base: Problem                       # no ties; every priced metric grouped
    _tied: dict[tuple[str, ...], Problem] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def from_dict(cls, data: dict, table_id: str = "", model_id: str = "") -> "PreparedTable":
        """A ``bitplan.sensitivity/v1`` dict (as stored, or as GET /v1/sensitivities/{id} serves it)."""
        table = SensitivityTable.from_dict(data)
        costs = CostModel(table.layers, table.formats)
        base = Problem(table.values, costs, {m: 1.0 for m in costs.matrices})  # limits unused: only the grouping
        return cls(table_id, model_id or data.get("model_sha256", ""), table.layers, [f.label for f in table.formats],
                   costs, base, {(): base})

    @property
    def cells(self) -> int:
        return int(self.base.loss.size)

    def problem(self, presets: tuple[str, ...]) -> Problem:
        """The table's problem with the layers these tie presets join grouped (kept per presets)."""
        found = self._tied.get(presets)
        if found is not None:
            return found
        ties = find_tie_groups(self.layers, list(presets))
        p = Problem(self.base.loss, self.costs, dict(self.base.budgets), ties)
        with self._lock:
            if len(self._tied) < MAX_TIE_SETS:
                self._tied[presets] = p
        return p


def _with_latency(costs: CostModel, table: dict) -> CostModel:
    """The cached cost model plus the request's latency matrix (a shallow copy: the cached one is
    shared by every request and never changes)."""
    for name, row in table.items():
        for label, ms in row.items():
            if not (isinstance(ms, (int, float)) and math.isfinite(ms) and ms >= 0):
                raise SolveError(f"latency_table.{name[:200]}.{label[:32]}: a latency must be a number ≥ 0 "
                                 f"(milliseconds), got {ms!r}", field="latency_table")
    try:
        latency = np.array([[_latency_lookup(table, l, f) for f in costs.formats] for l in costs.layers],
                           dtype=np.float64).reshape(len(costs.layers), len(costs.formats))
    except BudgetError as e:
        raise SolveError(f"latency_table: {e}", field="latency_table") from None
    out = copy.copy(costs)
    out.latency_table = table
    out.matrices = {**costs.matrices, "latency_ms": latency}
    return out


def solve_prepared(prep: PreparedTable, budgets: dict[str, float], solver: str = DEFAULT_SOLVER,
                   ties: list[str] | tuple[str, ...] = (), runtime: str | None = None,
                   latency_table: dict | None = None) -> dict:
    """The policy ``solver`` finds on ``prep`` under ``budgets`` (all must hold), the tie
    presets ``ties`` and those of ``runtime`` honoured: the API's answer without ``server_ms``
    and ``cached``. Raises SolveError (a ValueError) with what to change."""
    from search.solvers import get_solver
    check_solver(solver)
    budgets = check_budgets(budgets)
    try:
        presets = tuple(sorted(set(runtime_ties(runtime, list(ties)))))
    except ValueError as e:  # an unknown runtime, named with the choices
        raise SolveError(f"runtime: {e}", field="runtime") from None
    try:
        problem = prep.problem(presets)
    except ValueError as e:  # an unknown tie preset, named with the choices
        raise SolveError(f"ties: {e}", field="ties") from None
    costs = prep.costs
    if latency_table is not None:
        costs = _with_latency(costs, latency_table)
        problem = copy.copy(problem)
        problem.costs = costs
    elif "latency_ms" in budgets:
        raise SolveError("budgets.latency_ms needs latency_table: {layer name: {format label: ms}} with every layer "
                         f"of the table and its formats ({', '.join(prep.labels)})", field="latency_table")
    s = get_solver(solver)
    try:
        s.check_budgets(costs, budgets, problem.ties)  # below the cheapest policy / above float, with the range
    except BudgetError as e:
        raise SolveError(str(e), "infeasible_budget", "budgets") from None
    problem = problem.with_budgets(budgets)
    try:
        sol = s.solve(problem)
    except InfeasibleError as e:  # each limit can be met, not all of them at once
        raise SolveError(str(e), "infeasible_budget", "budgets") from None
    choice = np.asarray(sol.choice)
    return {"table_id": prep.table_id, "model_id": prep.model_id, "solver": sol.solver, "budgets": budgets,
            "layers": {l.name: prep.labels[int(k)] for l, k in zip(prep.layers, choice)},
            "cost": {k: float(v) for k, v in costs.cost(choice).items()}, "objective": float(sol.objective),
            "lower_bound": None if sol.lower_bound is None else float(sol.lower_bound),
            "gap": None if sol.gap is None else float(sol.gap),
            "tied": problem.ties.names(prep.layers), "solve_ms": round(sol.seconds * 1e3, 3)}


def solve_table(data: dict, budgets: dict[str, float], solver: str = DEFAULT_SOLVER, **kw) -> dict:
    """``solve_prepared`` on a table's dict (bitplan.sensitivity/v1): the whole computation of the
    endpoint, as a plain function."""
    return solve_prepared(PreparedTable.from_dict(data, data.get("id", "")), budgets, solver, **kw)


class TableCache:
    """Prepared tables by id, least recently used first out, bounded by ``max_tables`` entries
    and ``max_cells`` layers × formats in all (a table over the cell bound is prepared for its
    request and not kept). Safe across the API's threads; a miss is prepared outside the lock,
    so two first requests for one table may both prepare it (the later one is kept)."""

    def __init__(self, max_tables: int = CACHE_TABLES, max_cells: int = CACHE_CELLS):
        self.max_tables, self.max_cells = max_tables, max_cells
        self._items: OrderedDict[str, PreparedTable] = OrderedDict()
        self._cells = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def cells(self) -> int:
        return self._cells

    def get(self, table_id: str, load: Callable[[str], tuple[dict, str] | None]) -> tuple[PreparedTable, bool] | None:
        """(the prepared table, whether it was cached), or None when ``load`` finds no table.
        ``load(table_id)`` returns the stored (data, model_id)."""
        with self._lock:
            hit = self._items.get(table_id)
            if hit is not None:
                self._items.move_to_end(table_id)
                return hit, True
        row = load(table_id)
        if row is None:
            return None
        prep = PreparedTable.from_dict(row[0], table_id, row[1])
        if prep.cells <= self.max_cells:
            with self._lock:
                old = self._items.pop(table_id, None)
                self._cells -= old.cells if old is not None else 0
                self._items[table_id] = prep
                self._cells += prep.cells
                while len(self._items) > self.max_tables or self._cells > self.max_cells:
                    _, gone = self._items.popitem(last=False)
                    self._cells -= gone.cells
        return prep, False


_TOY = {"layers": [{"name": f"l{i}", "kind": "linear", "shape": [8, 64], "numel": 512, "in_features": 64, "macs": 512}
                   for i in range(3)],
        "formats": [{"bits": 2, "group_size": 64}, {"bits": 4, "group_size": 64}, {"bits": 8, "group_size": 64}],
        "values": [[3.0, 1.0, 0.1], [2.0, 0.5, 0.0], [4.0, 2.0, 0.2]], "proxy": "warm"}


def warm() -> float:
    """Import what a solve imports lazily (scipy.optimize, HiGHS) and run the default solver on
    a toy table; returns the seconds it took."""
    t = time.perf_counter()
    solve_table(_TOY, {"avg_bits": 4.5})
    return time.perf_counter() - t
