"""Budgets and the exact cost of a policy under every budget metric.

A budget is one or more limits that must all hold (DESIGN §2):
- ``avg_bits``: effective bits per weight over the quantizable layers, scale/zero-point bits included;
- ``size_bytes``: storage of the quantizable layers in bytes (same bits / 8);
- ``bops``: Σ macs · w_bits · a_bits (per sample or token; ``a_bits`` defaults to 16, weight-only);
- ``latency_ms``: Σ of a user-supplied per-layer latency table (layer name → format label → ms).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from search.formats import FLOAT_BITS, Format, storage_bits
from search.layers import LayerInfo, TieGroups

METRICS = ("avg_bits", "size_bytes", "bops", "latency_ms")


class BudgetError(ValueError):
    """A budget that cannot be met or does not mean anything; the message names the feasible range."""


def parse_budget(text: str) -> tuple[str, float]:
    """``"avg_bits=3.3"`` → ``("avg_bits", 3.3)``, with an error that says what is accepted."""
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or name not in METRICS:
        raise BudgetError(f"budget {text!r} is not METRIC=VALUE with METRIC one of {', '.join(METRICS)}")
    try:
        limit = float(value)
    except ValueError:
        raise BudgetError(f"budget {text!r}: {value!r} is not a number") from None
    if not np.isfinite(limit) or limit <= 0:
        raise BudgetError(f"budget {text!r}: the limit must be a positive number")
    return name, limit


def _latency_lookup(table: dict, layer: LayerInfo, fmt: Format) -> float:
    entry = table.get(layer.name)
    if entry is None:
        raise BudgetError(f"latency table has no entry for layer {layer.name!r}")
    for key in (fmt.label, str(fmt.bits), "float" if fmt.is_float else None):
        if key is not None and key in entry:
            return float(entry[key])
    raise BudgetError(f"latency table entry of {layer.name!r} has no value for format {fmt.label!r} (keys: {sorted(entry)})")


@dataclass
class CostModel:
    """Per-(layer, format) cost matrices, one per metric, in the metric's own unit so a
    policy's cost is the plain sum over layers (avg_bits rows are pre-divided by total numel)."""

    layers: list[LayerInfo]
    formats: list[Format]
    a_bits: int = 16
    latency_table: dict | None = None
    matrices: dict[str, np.ndarray] = field(init=False)

    def __post_init__(self) -> None:
        bits = np.array([[storage_bits(f, l.numel, l.in_features) for f in self.formats] for l in self.layers], dtype=np.float64)
        total = float(sum(l.numel for l in self.layers))
        self.total_bits = bits
        self.total_numel = total
        # element bits of the format each layer is really stored in (a GGUF type's fallback)
        w_bits = np.array([[f.stored_as(l.in_features).bits for f in self.formats] for l in self.layers], dtype=np.float64)
        macs = np.array([l.macs for l in self.layers], dtype=np.float64)
        self.matrices = {
            "avg_bits": bits / total,
            "size_bytes": bits / 8.0,
            "bops": macs[:, None] * w_bits * self.a_bits,
        }
        if self.latency_table is not None:
            self.matrices["latency_ms"] = np.array(
                [[_latency_lookup(self.latency_table, l, f) for f in self.formats] for l in self.layers])

    def float_cost(self, metric: str) -> float:
        """Cost of keeping every layer in float: the top of every budget range. For latency
        it is the slowest entry of each layer's row (the table may not list float)."""
        if metric == "latency_ms":
            table = self.latency_table or {}
            return float(sum(max(float(v) for v in table[l.name].values()) for l in self.layers))
        bits = self.total_numel * FLOAT_BITS
        return {"avg_bits": float(FLOAT_BITS), "size_bytes": bits / 8.0,
                "bops": float(sum(l.macs for l in self.layers)) * FLOAT_BITS * self.a_bits}[metric]

    def cost(self, choice: np.ndarray) -> dict[str, float]:
        """Cost of a policy (format index per layer) under every metric this model knows."""
        rows = np.arange(len(self.layers))
        out = {m: float(M[rows, choice].sum()) for m, M in self.matrices.items()}
        bits = float(self.total_bits[rows, choice].sum())  # exact integer sum, no rounding drift
        out.update(size_bytes=bits / 8.0, avg_bits=bits / self.total_numel)
        return out

    def matrix(self, metric: str) -> np.ndarray:
        if metric not in self.matrices:
            if metric == "latency_ms":
                raise BudgetError("a latency_ms budget needs a per-layer latency table (--latency-table FILE.json)")
            raise BudgetError(f"unknown budget metric {metric!r}: use one of {', '.join(METRICS)}")
        return self.matrices[metric]


def group_min_cost(matrix: np.ndarray, ties: TieGroups) -> float:
    """Cheapest possible total of ``matrix`` when tied layers must share a column."""
    tied = {i for g in ties.groups for i in g}
    free = [i for i in range(matrix.shape[0]) if i not in tied]
    total = float(matrix[free].min(axis=1).sum()) if free else 0.0
    for g in ties.groups:
        total += float(matrix[g].sum(axis=0).min())
    return total


def check_budgets(costs: CostModel, budgets: dict[str, float], ties: TieGroups | None = None) -> None:
    """Refuse budgets no policy can meet, or that sit above the float model (meaningless).
    Each error names the feasible range for that metric."""
    if not budgets:
        raise BudgetError("no budget given: pass at least one, e.g. --budget avg_bits=3.3")
    for metric, limit in budgets.items():
        lo, hi = budget_range(costs, metric, ties)
        rng = feasible_range(lo, hi)
        if limit < lo * (1 - 1e-12):
            raise BudgetError(f"budget {metric}={limit:g} is below the cheapest policy with these formats "
                              f"({metric}={lo:.6g}); {rng}")
        if limit > hi * (1 + 1e-12):
            raise BudgetError(f"budget {metric}={limit:g} is above the float model ({metric}={hi:.6g}); {rng}")


def budget_range(costs: CostModel, metric: str, ties: TieGroups | None = None) -> tuple[float, float]:
    """(cheapest policy, float model) on ``metric`` with these formats and ties."""
    return group_min_cost(costs.matrix(metric), ties or TieGroups()), costs.float_cost(metric)


def feasible_range(lo: float, hi: float) -> str:
    """The range phrase every budget error ends with; its bounds can be typed back as budgets."""
    return f"feasible range is [{_show(lo, math.ceil)}, {_show(hi, math.floor)}]"


def _show(x: float, direction) -> str:
    """≈6 significant digits rounded *into* the range (``math.ceil`` for a lower bound,
    ``math.floor`` for an upper one), so a value typed back from the message is accepted."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    step = 10.0 ** (math.floor(math.log10(abs(x))) - 5)
    v = direction(x / step) * step
    text = f"{v:.6g}"
    sign = 1 if direction is math.ceil else -1
    for _ in range(4):  # binary floats can print a hair outside; nudge one step inward
        if (float(text) >= x) if sign > 0 else (float(text) <= x):
            break
        v += sign * step
        text = f"{v:.7g}"
    return text


def within(cost: dict[str, float], budgets: dict[str, float], rtol: float = 1e-9) -> bool:
    """True when a policy's cost meets every budget (tiny relative tolerance for float sums)."""
    return all(cost[m] <= limit * (1 + rtol) + 1e-12 for m, limit in budgets.items())
