"""The primitives an evolved-proxy program reads (search/evolved/program.py), sampled from a real model:
per layer, ``S`` fixed element positions of the weight in its (out, reduction) layout, and at
those positions the weight W, the mean per-sample gradient G, the Fisher diagonal F (mean squared
per-sample gradient — our Hessian-diagonal estimate), the input activation second moment A of
the element's input channel, and each format's quantization perturbation dW."""
from __future__ import annotations

import numpy as np
import torch

from proxies.base import ProxyContext
from proxies.capture import capture
from proxies.fisher import gradient_moments
from proxies.quant import to_2d
from search.evolved.program import Primitives


def _activation_moments(ctx: ProxyContext) -> list[torch.Tensor | None]:
    """Mean squared input per input channel of every layer, from one pass over the calibration
    batches (forward hooks, or a TorchScript probe: proxies.capture)."""
    acc: list[torch.Tensor | None] = [None] * len(ctx.modules)
    count = [0] * len(ctx.modules)

    def sink(i, m, x, y, geom):
        if x is None or ctx.layers[i].kind == "Embedding":
            return
        x = x.detach().float()
        if ctx.layers[i].kind in ("Conv1d", "Conv2d"):
            s = (x ** 2).transpose(0, 1).reshape(x.shape[1], -1).mean(1)
        else:
            s = (x.reshape(-1, x.shape[-1]) ** 2).mean(0)
        acc[i] = s if acc[i] is None else acc[i] + s
        count[i] += 1

    with torch.no_grad(), capture(ctx.model, ctx.modules, sink) as runner:
        for b in ctx.batches:
            ctx.task.features(runner, b)
    return [a / max(c, 1) if a is not None else None for a, c in zip(acc, count)]


def _column_channels(module: torch.nn.Module, kind: str, rows: int, cols: int, in_channels: int = 0) -> torch.Tensor:
    """For each (row, column) of the 2-D weight layout, the input channel it reads."""
    r = torch.arange(rows)[:, None]
    c = torch.arange(cols)[None, :]
    if kind in ("Conv1d", "Conv2d"):
        # groups from the channels the op saw (a TorchScript conv need not have ``groups``)
        cin_pg = module.weight.shape[1]
        groups = max(in_channels // cin_pg, 1) if in_channels else getattr(module, "groups", 1)
        k = int(np.prod(module.weight.shape[2:]))
        return (r // (rows // groups)) * cin_pg + c // k
    return c.expand(rows, cols)


def compute_primitives(ctx: ProxyContext, samples: int = 512, max_grad_samples: int = 32) -> Primitives:
    L, K = len(ctx.layers), len(ctx.formats)
    rng = np.random.default_rng(ctx.seed)
    g1, g2, n_grad = gradient_moments(ctx, max_grad_samples)
    ctx.report(0.4, f"gradients from {n_grad} samples")
    acts = _activation_moments(ctx)
    W, G, F, A = (np.zeros((L, samples)) for _ in range(4))
    dW = np.zeros((L, K, samples))
    with torch.no_grad():
        for i, (m, layer) in enumerate(zip(ctx.modules, ctx.layers)):
            w2 = to_2d(m, m.weight.detach().float())
            rows, cols = w2.shape
            idx = torch.from_numpy(rng.choice(rows * cols, size=samples, replace=rows * cols < samples))
            W[i] = w2.flatten().cpu()[idx].numpy()
            G[i] = to_2d(m, g1[i]).flatten().cpu()[idx].numpy()
            F[i] = to_2d(m, g2[i]).flatten().cpu()[idx].numpy()
            if acts[i] is not None:
                ch = _column_channels(m, layer.kind, rows, cols, acts[i].numel()).flatten()[idx]
                A[i] = acts[i].cpu()[ch.clamp_max(acts[i].numel() - 1)].numpy()
            else:
                A[i] = 1.0
            for k, f in enumerate(ctx.formats):
                if not f.is_float:
                    dW[i, k] = (to_2d(m, ctx.quantize(i, f).float()) - w2).flatten().cpu()[idx].numpy()
            ctx.report(0.4 + 0.6 * (i + 1) / L, f"primitives of {layer.name}")
    return Primitives(W, G, F, A, dW, np.array([l.numel for l in ctx.layers], float),
                      np.array([f.is_float for f in ctx.formats]),
                      {"samples": samples, "gradient_samples": n_grad, "activations": any(a is not None for a in acts)})
