"""The allocations users compare bitplan with, at the same budget (issue 16 §4): a hand-made
llama.cpp-style mix and an exllamav3-style greedy upgrade. Pure functions over the cost model
(and, for greedy, a sensitivity table), so the bench and the tests run them without a model.

*llama.cpp's k-quant mixes* (src/llama-quant.cpp, ``llama_tensor_get_type``): ``Q4_K_M`` keeps
most tensors at Q4_K and gives ``attn_v`` and ``ffn_down`` Q6_K in the layers where
``use_more_bits(i, n)`` holds: the first and last eighth of the blocks and every third block
between (``i < n/8 or i >= 7n/8 or (i - n/8) % 3 == 2``). Our menu has other steps than the
k-quants, so the mix here is that rule at the budget: the promoted layers (v and down projections
of those blocks) get one format, every other layer a cheaper one, and of those pairs the dearest
that keeps the budget is taken. It is always a real mix when one fits (at exactly a uniform
format's cost that means a cheaper base, as llama.cpp's _S/_M mixes differ in size); uniform only
when no mix fits.

*Greedy upgrades* (exllamav3's optimizer, and mlx-lm's): start every layer (tie group) at its
cheapest format and repeatedly take the upgrade with the largest predicted loss decrease per
unit of cost that still fits, until none fits. It reads the same table as the ILP, so the
difference between the two is the solver alone."""
from __future__ import annotations

import re

import numpy as np

from search.budgets import CostModel, within
from search.formats import Format
from search.layers import LayerInfo
from search.problem import InfeasibleError, Problem

_BLOCK = re.compile(r"\.(\d+)\.")
# value and down projections by the names of the common families: Llama/Qwen/Mistral (v_proj,
# down_proj), GGUF (attn_v, ffn_down), GPT-2 (c_proj under mlp), BERT (attention.self.value, and
# the FFN's output.dense, not the attention's attention.output.dense)
_PROMOTED = re.compile(r"(v_proj|down_proj|attn_v|ffn_down|self\.value|mlp\.c_proj|(?<!attention)\.output\.dense)$")


def use_more_bits(i: int, n: int) -> bool:
    """llama.cpp's rule for the blocks whose ``attn_v``/``ffn_down`` get more bits."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def promoted_layers(layers: list[LayerInfo]) -> list[bool]:
    """Which layers llama.cpp's ``_M`` rule promotes: value and down projections of the blocks
    ``use_more_bits`` picks (block index = the first ``.N.`` in the name)."""
    blocks = [int(m.group(1)) if (m := _BLOCK.search(l.name)) else None for l in layers]
    n = max((b for b in blocks if b is not None), default=-1) + 1
    out = []
    for l, b in zip(layers, blocks):
        out.append(bool(_PROMOTED.search(l.name) and b is not None and use_more_bits(b, n)))
    return out


def llamacpp_mix(layers: list[LayerInfo], formats: list[Format], costs: CostModel,
                 budgets: dict[str, float]) -> np.ndarray:
    """The llama.cpp-style two-format mix that fits ``budgets`` and costs the most (choice per layer)."""
    promoted = np.array(promoted_layers(layers))
    metric = next(iter(budgets))
    uniform = [costs.cost(np.full(len(layers), k))[metric] for k in range(len(formats))]
    best, best_key = None, None
    for o in range(len(formats)):
        for p in range(len(formats)):
            if p != o and not uniform[p] > uniform[o]:
                continue  # the promoted layers get the dearer format (p == o: uniform)
            choice = np.where(promoted, p, o)
            cost = costs.cost(choice)
            key = (p != o and promoted.any(), cost[metric], formats[o].bits)
            if within(cost, budgets) and (best_key is None or key > best_key):
                best, best_key = choice, key
    if best is None:
        raise InfeasibleError(f"no llama.cpp-style mix of these formats fits {budgets}")
    return best


def greedy_upgrades(problem: Problem) -> np.ndarray:
    """exllamav3-style greedy: cheapest formats first, then the best loss-per-cost upgrade that fits."""
    metric = next(iter(problem.budgets))
    C, L = problem.group_cost, problem.group_loss
    G = L.shape[0]
    g = np.argmin(C[metric], axis=1)
    totals = problem.group_totals(g)
    if not all(totals[m] <= lim * (1 + 1e-9) for m, lim in problem.budgets.items()):
        raise InfeasibleError(f"even the cheapest formats exceed {problem.budgets}")
    lim = {m: v * (1 + 1e-9) for m, v in problem.budgets.items()}
    rows = np.arange(G)
    while True:
        dc = C[metric] - C[metric][rows, g][:, None]
        dl = L[rows, g][:, None] - L
        ok = (dc > 0) & (dl > 0)
        for m in problem.budgets:
            ok &= totals[m] + C[m] - C[m][rows, g][:, None] <= lim[m]
        if not ok.any():
            return problem.expand(g)
        rate = np.where(ok, dl / np.where(dc > 0, dc, 1.0), -np.inf)
        grp, k = np.unravel_index(int(np.argmax(rate)), rate.shape)
        for m in totals:
            totals[m] += C[m][grp, k] - C[m][grp, g[grp]]
        g[grp] = k
