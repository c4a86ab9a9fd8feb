"""HAWQ-V2/V3 sensitivity: Ω_l(k) = ½·Tr(H_l)/n_l·‖Q_k(W_l) − W_l‖².

Hutchinson with Rademacher probes. One Hessian-vector product on the concatenated probe v over
all layers gives every layer's block estimate v_lᵀ(Hv)_l at once (its expectation is Tr(H_ll):
cross-blocks vanish because probes of different layers are independent). Probes cycle over the
calibration batches, so the estimate is of the data-averaged Hessian. Stopping is adaptive on
the per-layer relative standard error (not PyHessian's mean-change rule): stop when every layer's
SE/|mean| is below ``tol`` — layers whose trace is negligible (< ``floor`` × the median) are
judged on SE relative to the median instead, since their relative error is meaningless."""
from __future__ import annotations

import numpy as np
import torch

from proxies.base import Proxy, ProxyContext, eager_attention, quant_error_sq, requiring_grad


class HessianTraceProxy(Proxy):
    name = "hessian_trace"

    def traces(self, ctx: ProxyContext) -> tuple[np.ndarray, np.ndarray, int]:
        """Per-layer Hessian trace estimates, their standard errors, and probes used."""
        params = [m.weight for m in ctx.modules]
        gen = torch.Generator().manual_seed(ctx.seed)
        samples: list[np.ndarray] = []
        p_ = self.params
        # one batch: every probe on its graph; several: a few probes per visit, cycling, so every
        # batch is seen before the min_probes convergence check can stop the loop
        n_b = len(ctx.batches)
        per_batch = p_["max_probes"] if n_b == 1 else -(-p_["min_probes"] // n_b)
        visits = 0
        with requiring_grad(params), eager_attention(ctx.model):  # HVPs need a double backward
            while len(samples) < p_["max_probes"]:
                batch = ctx.batches[visits % n_b]
                visits += 1
                loss = ctx.task.loss(ctx.model, batch)
                grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
                # a gradient without a graph (unused layer, or loss linear in it) has a zero Hessian row
                live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
                for _ in range(per_batch):
                    v = [torch.randint(0, 2, p.shape, generator=gen).to(p.device, p.dtype) * 2 - 1 for p in params]
                    hv = torch.autograd.grad([grads[i] for i in live], params, grad_outputs=[v[i] for i in live],
                                             retain_graph=True, allow_unused=True) if live else [None] * len(params)
                    hv = [torch.zeros_like(p) if h is None else h for p, h in zip(params, hv)]
                    samples.append(np.array([float((a * b).sum()) for a, b in zip(v, hv)]))
                    ctx.report(len(samples) / p_["max_probes"], f"Hutchinson probe {len(samples)}")
                    if self._converged(samples) or len(samples) >= p_["max_probes"]:
                        break
                del grads, loss
                if self._converged(samples):
                    break
        s = np.stack(samples)
        return s.mean(0), s.std(0, ddof=1) / np.sqrt(len(s)), len(s)

    def _converged(self, samples: list[np.ndarray]) -> bool:
        if len(samples) < self.params["min_probes"]:
            return False
        return float(self.relative_se(np.stack(samples)).max()) < self.params["tol"]

    def relative_se(self, s: np.ndarray) -> np.ndarray:
        mean, se = s.mean(0), s.std(0, ddof=1) / np.sqrt(len(s))
        denom = np.maximum(np.abs(mean), self.params["floor"] * np.median(np.abs(mean)) + 1e-30)
        return se / denom

    def _compute(self, ctx):
        tr, se, n = self.traces(ctx)
        numel = np.array([l.numel for l in ctx.layers], dtype=np.float64)[:, None]
        dw2 = quant_error_sq(ctx)
        # a negative trace estimate (non-convex region or noise) would reward quantization
        tr_pos = np.maximum(tr, 0.0)[:, None]
        values = 0.5 * tr_pos / numel * dw2
        stderr = 0.5 * se[:, None] / numel * dw2
        rel = se / np.maximum(np.abs(tr), 1e-30)
        return values, stderr, {"probes": n, "trace": tr.tolist(), "trace_stderr": se.tolist(),
                                "max_relative_se": float(np.max(rel)), "median_relative_se": float(np.median(rel)),
                                "negative_traces": int((tr < 0).sum())}
