"""The most faithful additive proxy: quantize one layer at a time with each format and measure
the real increase of the task loss on the calibration data (L×K forward passes over it; the
blocks before the perturbed layer replay cached outputs, or for an exported program only the
graph suffix from the layer's first call runs again, see ``blockcache``).

``context`` (a format label such as ``w3g64a``) measures each layer's change *at an operating
point*: every other layer sits in the context format instead of float, so the table sees the
interactions with the quantization noise the final policy will actually have. The sum then
predicts loss(policy) − loss(uniform context). With ``context=None`` it is DESIGN §2's
definition (others in float). Embarrassingly parallel: ``layers`` restricts the work to a chunk,
which is how the service fans it out over Ray tasks.

A cell far finer than another of the same layer (``extrapolate``: weight error at least 64×
smaller, such as 8 bits beside 4) is not measured but predicted from the finest such measured
cell, its loss increase scaled by the ratio of the two weight errors: the second-order model
ΔL ≈ ½ δᵀHδ with errors of alike direction. On MiniLM the 8-bit cells predicted from the 4-bit
ones came within 0.80–1.17× of the measured ones for 80% of the layers (0.54–1.40× at worst),
while an 8-bit cell's increase is about 1/300 of its 4-bit one: far below any difference the
solver weighs. It saves a quarter of the passes on a {2, 3, 4, 8}-bit menu. Only where the
other layers are float (no ``context``); the table's info counts the predicted cells."""
from __future__ import annotations

import numpy as np
import torch

from proxies.base import Proxy, ProxyContext, sq_error, swapped
from proxies.blockcache import prefix_cache


class MeasuredProxy(Proxy):
    name = "measured"
    chunkable = True
    low_precision = True  # every number it returns is a difference of two losses from the same kind of pass

    def _context_format(self, ctx: ProxyContext):
        label = self.params["context"]
        if label is None:
            return None
        for f in ctx.formats:
            if f.label == label:
                return f
        raise ValueError(f"measured: context {label!r} is not one of the job's formats {[f.label for f in ctx.formats]}")

    def _compute(self, ctx: ProxyContext):
        L, K = len(ctx.layers), len(ctx.formats)
        rows = self.params["layers"] if self.params["layers"] is not None else list(range(L))
        if rows and max(rows) >= L:
            raise ValueError(f"measured: layer index {max(rows)} out of range (model has {L} layers)")
        base_fmt = self._context_format(ctx)
        todo = [k for k, f in enumerate(ctx.formats) if f != base_fmt and not (base_fmt is None and f.is_float)]
        ratio = self.params["extrapolate"] if base_fmt is None else None
        values, stderr, info = measure_cells(ctx, [base_fmt] * L, {i: todo for i in rows}, extrapolate=ratio)
        values = np.nan_to_num(values, nan=0.0)  # unmeasured: the context format itself (and float from float)
        if stderr is not None:
            stderr = np.nan_to_num(stderr, nan=0.0)
        return values, stderr, {**info, "context": None if base_fmt is None else base_fmt.label}


def measure_cells(ctx: ProxyContext, base: list, cells: dict[int, list[int]], cache=None,
                  extrapolate: float | None = None):
    """Measure ``loss(base with layer i → format k) − loss(base)`` for every asked cell.

    ``base`` holds each layer's format (None = float): the policy the cells are measured at.
    Returns an L×K array with NaN where nothing was asked, the paired standard errors (same
    shape; None when the task gives no per-sample losses) and diagnostics. The model's weights
    are restored afterwards. ``cache`` (a :class:`proxies.evaluate.QuantCache` of the same
    quantizer) keeps quantized weights between calls: the operating-point loop measures at a
    new policy every round, and under GPTQ each layer's solve is the expensive part.
    ``extrapolate``: the weight-error ratio past which a cell is predicted, not measured (see
    the module's docstring; only meaningful when ``base`` is float)."""
    L = len(ctx.layers)
    floats = [m.weight.detach().clone() for m in ctx.modules]

    def q(i: int, f) -> torch.Tensor:
        if f is None or f.is_float:
            return floats[i]
        return ctx.quantize(i, f, floats[i]) if cache is None else cache.get(i, f, floats[i])

    with swapped(ctx.modules, [q(i, base[i]) for i in range(L)]):
        return _measure(ctx, cells, q, extrapolate)


def cell_measure(ctx: ProxyContext, cache=None):
    """The operating-point loop's ``measure`` (search.local.Measure) on ``ctx``: cells at a base
    policy given as format indices into ``ctx.formats``, returning (values, stderr)."""
    return lambda base, cells: measure_cells(ctx, [ctx.formats[int(k)] for k in base], cells, cache)[:2]


def predicted_from(errors: dict[int, float], ratio: float | None) -> dict[int, int]:
    """Which cells of one layer to predict, and from which: ``errors`` maps format index → the
    layer's weight error in it. Coarsest first, a cell whose error is ``ratio`` times smaller
    than a measured one's is predicted from the finest such measured cell; the rest are measured."""
    if ratio is None:
        return {}
    measured: list[int] = []
    out: dict[int, int] = {}
    for k in sorted(errors, key=lambda k: -errors[k]):
        src = [j for j in measured if errors[j] > 0 and errors[j] >= ratio * errors[k]]
        if src:
            out[k] = min(src, key=lambda j: errors[j])
        else:
            measured.append(k)
    return out


# quantized copies of one layer kept between its weight errors and its passes; past this the
# measured ones are quantized again (a 7B model's MLP layer in 12 formats would hold ~2 GB)
HELD_BYTES = 256 << 20


def weight_errors(quantized, ks: list[int], w0: torch.Tensor, held_bytes: int):
    """Each format's squared weight error against ``w0`` (``quantized(k)`` gives the copy), and
    the copies themselves while they fit in ``held_bytes``, so the measured cells need not
    quantize again; one copy at a time is alive beyond that."""
    errors: dict[int, float] = {}
    held: dict[int, torch.Tensor] = {}
    used = 0
    for k in ks:
        w = quantized(k)
        errors[k] = sq_error(w, w0)
        size = w.numel() * w.element_size()
        if used + size <= held_bytes:
            held[k], used = w, used + size
        del w  # before the next format's copy is made: one unheld copy alive at a time
    return errors, held


def _measure(ctx: ProxyContext, cells: dict[int, list[int]], q, extrapolate: float | None = None):
    L, K = len(ctx.layers), len(ctx.formats)
    sizes = [ctx.task.size(b) for b in ctx.batches]

    def batch_loss(bi: int) -> tuple[float, np.ndarray | None]:
        """Batch ``bi``'s mean loss and, where the task splits it by sample, each sample's."""
        with torch.no_grad():
            v = ctx.task.sample_loss_values(ctx.model, ctx.batches[bi])
            if v is None:
                return float(ctx.task.loss(ctx.model, ctx.batches[bi])), None
            return float(v.mean()), v.double().cpu().numpy()  # as ``loss`` reduces it: same numbers as before

    # the cache records the prefix on a pass of the base policy: that pass's losses are the base's
    recorded: dict[int, tuple[float, np.ndarray | None]] = {}
    cache = prefix_cache(ctx.model, lambda bi: recorded.__setitem__(bi, batch_loss(bi)), len(ctx.batches))

    def pooled(losses: list[tuple[float, np.ndarray | None]]) -> tuple[float, np.ndarray | None]:
        total = sum(m * n for (m, _), n in zip(losses, sizes)) / sum(sizes)
        per = [p for _, p in losses]
        return total, None if any(p is None for p in per) else np.concatenate(per)

    def loss() -> tuple[float, np.ndarray | None]:
        """Mean calibration loss and, where the task splits it by sample, each sample's."""
        out = []
        for bi in range(len(ctx.batches)):
            cache.current = bi
            out.append(batch_loss(bi))
        return pooled(out)

    base, base_per = pooled([recorded[bi] for bi in range(len(sizes))]) if len(recorded) == len(sizes) else loss()
    values = np.full((L, K), np.nan)
    # a cell is a paired difference on the same samples: its standard error is that of the
    # per-sample differences (what the solver's decisions between cells must exceed)
    stderr = np.full((L, K), np.nan) if base_per is not None and len(base_per) > 1 else None
    total = sum(len(ks) for ks in cells.values())
    passes, predicted = 1, 0  # the base policy's pass (the one that records the cache) counts

    def done() -> float:
        """The fraction of the table's cells filled: measured (every pass but the base's) or predicted."""
        return (passes - 1 + predicted) / max(total, 1)

    # in the cache's order (trunk block or graph position), so its prefix only moves forward
    for i in sorted(cells, key=lambda i: cache.block_of(ctx.layers[i].name)):
        m = ctx.modules[i]
        errors, held = weight_errors(lambda k: q(i, ctx.formats[k]), cells[i], m.weight.detach(), HELD_BYTES) \
            if extrapolate is not None else ({}, {})
        plan = predicted_from(errors, extrapolate)
        for k in plan:
            held.pop(k, None)
        with cache.skip_until(cache.block_of(ctx.layers[i].name)):
            for k in cells[i]:
                if k in plan:
                    continue
                with swapped([m], [held.pop(k) if k in held else q(i, ctx.formats[k])]):
                    mean, per = loss()
                values[i, k] = mean - base
                if stderr is not None and per is not None:
                    stderr[i, k] = float(np.std(per - base_per, ddof=1) / np.sqrt(len(per)))
                passes += 1
                ctx.report(done(), f"{ctx.layers[i].name} {ctx.formats[k].label}")
        for k, j in plan.items():
            scale = errors[k] / errors[j]
            values[i, k] = values[i, j] * scale
            if stderr is not None:
                stderr[i, k] = stderr[i, j] * scale
        predicted += len(plan)
        if plan:
            ctx.report(done(), f"{ctx.layers[i].name}: {len(plan)} predicted")
    return values, stderr, {"base_loss": base, "forward_passes": passes, "trunk": cache.name,
                            "predicted_cells": predicted}
