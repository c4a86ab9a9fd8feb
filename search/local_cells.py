"""Which cells the operating-point loop (search/local.py) measures, and how it trusts the proxy
for the rest: the starting uniform format, a layer's neighbouring formats, the layers at the
margin of the solver's trade-off, and the least-squares rescaling of the proxy to the
measurements. Pure numpy, no state: the loop's state is search/local_table.py."""
from __future__ import annotations

import math

import numpy as np

from search.formats import Format
from search.problem import Problem
from search.refine import fitting_uniforms


def operating_point(problem: Problem) -> int | None:
    """Index of the dearest uniform format that keeps every budget (None when none does)."""
    fits = fitting_uniforms(problem)
    return fits[0] if fits else None


def neighbours(formats: list[Format], cost_row: np.ndarray, k: int, direction: int = 0) -> list[int]:
    """The cells a layer in format ``k`` is measured in: one bit-level down (its dearest format
    there), one up (its cheapest), and at the same bit-width the nearest cheaper and dearer
    group size. With a one-group menu that is one step down and one up the bit ladder; with
    g32/g64/g128 it adds the neighbouring scale overheads, the finer trades the knapsack makes.
    ``direction`` +1 keeps only the dearer cells (a layer the solver would upgrade), -1 only the
    cheaper ones (one it would downgrade): the other side would not be used this round, and
    skipping it measures twice the rows in the same time."""
    levels = sorted({f.bits for f in formats})
    j = levels.index(formats[k].bits)
    at = {b: [i for i, f in enumerate(formats) if f.bits == b] for b in levels}
    out = set()
    if j > 0 and direction <= 0:
        out.add(max(at[levels[j - 1]], key=lambda i: cost_row[i]))
    if j + 1 < len(levels) and direction >= 0:
        out.add(min(at[levels[j + 1]], key=lambda i: cost_row[i]))
    same = [i for i in at[levels[j]] if i != k]
    below = [i for i in same if cost_row[i] < cost_row[k]]
    above = [i for i in same if cost_row[i] > cost_row[k]]
    if below and direction <= 0:
        out.add(max(below, key=lambda i: cost_row[i]))
    if above and direction >= 0:
        out.add(min(above, key=lambda i: cost_row[i]))
    return sorted(out)


def margin_sides(est: np.ndarray, cost: np.ndarray, base: np.ndarray, m: int,
                 exclude: set[int] = frozenset()) -> tuple[list[int], list[int]]:
    """The ``m`` layers with the best upgrade per bit and the ``m`` with the cheapest downgrade
    per bit from ``base`` under the estimate ``est`` (relative to ``base``): the rows the
    solver's next trade would touch, each side in order (best first)."""
    L = est.shape[0]
    rows = np.arange(L)
    dc = cost - cost[rows, base][:, None]
    up = np.where(dc > 1e-12, -est / np.where(dc > 1e-12, dc, 1.0), -np.inf).max(axis=1)
    down = np.where(dc < -1e-12, est / np.where(dc < -1e-12, -dc, 1.0), np.inf).min(axis=1)
    ups = [int(i) for i in np.argsort(-up, kind="stable") if np.isfinite(up[i]) and i not in exclude][:m]
    downs = [int(i) for i in np.argsort(down, kind="stable") if np.isfinite(down[i]) and i not in exclude][:m]
    return ups, downs


def proxy_scale(pairs: list[tuple[float, float]]) -> float:
    """Least-squares factor s with measured ≈ s · proxy (through the origin); 1 when unknown."""
    if not pairs:
        return 1.0
    p, q = np.array(pairs, dtype=float).T
    den = float(p @ p)
    s = float(p @ q) / den if den > 0 else 1.0
    return s if s > 0 and math.isfinite(s) else 1.0
