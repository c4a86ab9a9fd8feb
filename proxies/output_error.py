"""exllamav2-style local measurement: relative squared output error of each layer on its own
calibration inputs, ‖X(Ŵ−W)ᵀ‖²/‖XWᵀ‖² (convs through the module's own forward). Cheap and
local: no backward pass, no full-model forward per format. Inputs are captured for a chunk of
layers at a time so memory stays bounded on large models."""
from __future__ import annotations

import numpy as np
import torch
from torch.func import functional_call

from proxies.base import Proxy, require_hooks


class OutputErrorProxy(Proxy):
    name = "output_error"

    def _inputs(self, ctx, idx: list[int]) -> dict[int, list[torch.Tensor]]:
        got: dict[int, list[torch.Tensor]] = {i: [] for i in idx}

        def hook(i):
            return lambda m, inp, out: got[i].append(inp[0].detach())

        handles = [ctx.modules[i].register_forward_hook(hook(i)) for i in idx]
        try:
            for b in ctx.batches:
                ctx.task.features(ctx.model, b)
        finally:
            for h in handles:
                h.remove()
        return got

    def _subsample(self, xs: list[torch.Tensor], kind: str, gen: torch.Generator) -> torch.Tensor:
        if kind in ("Linear", "Conv1D", "Embedding"):
            x = torch.cat([t.reshape(-1, t.shape[-1]) for t in xs])
        else:
            x = torch.cat(xs)  # convs keep their sample layout
        if x.shape[0] > self.params["max_rows"]:
            x = x[torch.randperm(x.shape[0], generator=gen)[: self.params["max_rows"]].to(x.device)]
        return x

    def _compute(self, ctx):
        require_hooks(ctx, self.name)
        L, K = len(ctx.layers), len(ctx.formats)
        values = np.zeros((L, K))
        gen = torch.Generator().manual_seed(ctx.seed)
        chunk = self.params["chunk"]
        for start in range(0, L, chunk):
            idx = list(range(start, min(L, start + chunk)))
            inputs = self._inputs(ctx, idx)
            with torch.no_grad():
                for i in idx:
                    m, kind = ctx.modules[i], ctx.layers[i].kind
                    x = self._subsample(inputs.pop(i), kind, gen)
                    y = m(x).float() if kind != "Embedding" else None
                    if y is None:
                        continue
                    for k, f in enumerate(ctx.formats):
                        if f.is_float:
                            continue
                        yq = functional_call(m, {"weight": ctx.quantize(i, f)}, (x,)).float()
                        values[i, k] = float(((yq - y) ** 2).sum() / (y ** 2).sum().clamp_min(1e-30))
            ctx.report(idx[-1] / max(L - 1, 1), f"layers {idx[0]}–{idx[-1]}")
        return values, None, {"max_rows": self.params["max_rows"]}
