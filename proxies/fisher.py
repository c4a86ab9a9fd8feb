"""Fisher sensitivity: Ω_l(k) = ½·Σ_i F_ii·(Q_k(W_l) − W_l)_i², with F the diagonal of the
Fisher from per-sample gradients (the second-order Taylor term that ModelOpt's "gradient"
score approximates). Samples come from the task (``Task.sample_losses``): real labels for LMs
and classifiers, sampled targets for encoders whose float gradient is zero."""
from __future__ import annotations

import numpy as np
import torch

from proxies.base import Proxy, ProxyContext, requiring_grad


def gradient_moments(ctx: ProxyContext, max_samples: int, report: bool = False
                     ) -> tuple[list[torch.Tensor], list[torch.Tensor], int]:
    """Mean and mean square of the per-sample gradients of every layer weight over up to
    ``max_samples`` task samples (the Fisher diagonal is the second; the evolved proxy's
    primitives read both)."""
    params = [m.weight for m in ctx.modules]
    g1 = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    g2 = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    gen = torch.Generator().manual_seed(ctx.seed)
    n = 0
    with requiring_grad(params):
        for batch in ctx.batches:
            losses = ctx.task.sample_losses(ctx.model, batch, gen)
            for i in range(min(len(losses), max_samples - n)):
                grads = torch.autograd.grad(losses[i], params, retain_graph=i + 1 < len(losses), allow_unused=True)
                for a, b, g in zip(g1, g2, grads):
                    if g is not None:  # a layer the loss never reads has zero Fisher
                        a.add_(g.float())
                        b.add_(g.float() ** 2)
                n += 1
                if report:
                    ctx.report(n / max_samples, f"per-sample gradient {n}")
            del losses
            if n >= max_samples:
                break
    d = max(n, 1)
    return [a / d for a in g1], [b / d for b in g2], n


def fisher_term(f_ii: torch.Tensor, w_new: torch.Tensor, w: torch.Tensor) -> float:
    """½·Σ F_ii·(W' − W)²: the second-order loss estimate of replacing ``w`` by ``w_new``
    (a quantized copy here, a quantized-and-pruned one in the joint search)."""
    return 0.5 * float((f_ii * (w_new.float() - w.float()) ** 2).sum())


class FisherProxy(Proxy):
    name = "fisher"

    def diagonal(self, ctx: ProxyContext) -> tuple[list[torch.Tensor], int]:
        """Mean squared per-sample gradient of every layer weight, and the samples used."""
        _, sq, n = gradient_moments(ctx, self.params["max_samples"], report=True)
        return sq, n

    def _compute(self, ctx):
        diag, n = self.diagonal(ctx)
        values = np.zeros((len(ctx.layers), len(ctx.formats)))
        with torch.no_grad():
            for i, (m, f_ii) in enumerate(zip(ctx.modules, diag)):
                w = m.weight.detach().float()
                for k, fmt in enumerate(ctx.formats):
                    if not fmt.is_float:
                        values[i, k] = fisher_term(f_ii, ctx.quantize(i, fmt), w)
        return values, None, {"samples": n, "fisher_trace": [float(d.sum()) for d in diag]}
