"""The most faithful additive proxy: quantize one layer at a time with each format and measure
the real increase of the task loss on the calibration data (L×K forward passes over it).
Embarrassingly parallel: ``layers`` restricts the work to a chunk, which is how the service
fans it out over Ray tasks."""
from __future__ import annotations

import numpy as np

from proxies.base import Proxy, mean_loss, swapped
from proxies.quant import quantize_module_weight


class MeasuredProxy(Proxy):
    name = "measured"

    @classmethod
    def defaults(cls) -> dict:
        return {"layers": None}

    def _compute(self, ctx):
        L, K = len(ctx.layers), len(ctx.formats)
        rows = self.params["layers"] if self.params["layers"] is not None else list(range(L))
        base = mean_loss(ctx)
        values = np.zeros((L, K))
        done, total = 0, len(rows) * sum(not f.is_float for f in ctx.formats)
        for i in rows:
            m = ctx.modules[i]
            for k, f in enumerate(ctx.formats):
                if f.is_float:
                    continue
                with swapped([m], [quantize_module_weight(m, f)]):
                    values[i, k] = mean_loss(ctx) - base
                done += 1
                ctx.report(done / max(total, 1), f"{ctx.layers[i].name} {f.label}")
        return values, None, {"base_loss": base, "forward_passes": done + 1}
