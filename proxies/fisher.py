"""Fisher sensitivity: Ω_l(k) = ½·Σ_i F_ii·(Q_k(W_l) − W_l)_i², with F the diagonal of the
Fisher from per-sample gradients (the second-order Taylor term that ModelOpt's "gradient"
score approximates). Samples come from the task (``Task.sample_losses``): real labels for LMs
and classifiers, sampled targets for encoders whose float gradient is zero."""
from __future__ import annotations

import numpy as np
import torch

from proxies.base import Proxy, ProxyContext, requiring_grad
from proxies.quant import quantize_module_weight


class FisherProxy(Proxy):
    name = "fisher"

    @classmethod
    def defaults(cls) -> dict:
        return {"max_samples": 64}

    def __init__(self, **params):
        super().__init__(**params)
        if self.params["max_samples"] < 1:
            raise ValueError("fisher needs max_samples >= 1")

    def diagonal(self, ctx: ProxyContext) -> tuple[list[torch.Tensor], int]:
        """Mean squared per-sample gradient of every layer weight, and the samples used."""
        params = [m.weight for m in ctx.modules]
        acc = [torch.zeros_like(p, dtype=torch.float32) for p in params]
        gen = torch.Generator().manual_seed(ctx.seed)
        n, cap = 0, self.params["max_samples"]
        with requiring_grad(params):
            for batch in ctx.batches:
                losses = ctx.task.sample_losses(ctx.model, batch, gen)
                for i in range(min(len(losses), cap - n)):
                    grads = torch.autograd.grad(losses[i], params, retain_graph=i + 1 < len(losses), allow_unused=True)
                    for a, g in zip(acc, grads):
                        if g is not None:  # a layer the loss never reads has zero Fisher
                            a.add_(g.float() ** 2)
                    n += 1
                    ctx.report(n / cap, f"per-sample gradient {n}")
                del losses
                if n >= cap:
                    break
        return [a / max(n, 1) for a in acc], n

    def _compute(self, ctx):
        diag, n = self.diagonal(ctx)
        values = np.zeros((len(ctx.layers), len(ctx.formats)))
        with torch.no_grad():
            for i, (m, f_ii) in enumerate(zip(ctx.modules, diag)):
                w = m.weight.detach().float()
                for k, fmt in enumerate(ctx.formats):
                    if not fmt.is_float:
                        values[i, k] = 0.5 * float((f_ii * (quantize_module_weight(m, fmt).float() - w) ** 2).sum())
        return values, None, {"samples": n, "fisher_trace": [float(d.sum()) for d in diag]}
