"""OMPQ orthogonality. Each layer's output features on one batch give a Gram matrix
K_i = F_i F_iᵀ (n×n); linear CKA between layers, ORM_ij = ⟨HK_iH, HK_jH⟩ / (‖HK_iH‖·‖HK_jH‖),
measures redundancy; θ_i = exp(−β·Σ_{j≠i} ORM_ij) and the OMPQ weight is
w_i = (1/(L−i))·Σ_{j≥i} θ_j (layers in model order). OMPQ maximises Σ_i w_i·b_i; as a table that
is Ω_i(k) = w_i·(16 − b_eff(i, k)), linear in effective bits, so the ``lp`` solver reproduces
OMPQ's program exactly and the other solvers can use it too. The unit is not a loss."""
from __future__ import annotations

import numpy as np
import torch

from proxies.base import Proxy, require_hooks
from search.formats import FLOAT_BITS, storage_bits


class OrthogonalityProxy(Proxy):
    name = "orthogonality"

    def grams(self, ctx) -> list[np.ndarray]:
        grams: dict[int, torch.Tensor] = {}

        def hook(idx):
            def f(module, inputs, output):
                feat = output.detach().reshape(output.shape[0], -1).double()
                grams[idx] = grams.get(idx, 0) + feat @ feat.t()
            return f

        batch = ctx.batches[0]
        n = min(self.params["samples"], ctx.task.size(batch))
        batch = {k: v[:n] for k, v in batch.items()}
        handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(ctx.modules)]
        try:
            ctx.task.features(ctx.model, batch)
        finally:
            for h in handles:
                h.remove()
        H = torch.eye(n, dtype=torch.float64) - 1.0 / n
        return [(H @ grams[i] @ H).cpu().numpy() for i in range(len(ctx.modules))]

    def _compute(self, ctx):
        require_hooks(ctx, self.name)
        cg = self.grams(ctx)
        L = len(cg)
        flat = np.stack([g.ravel() for g in cg])
        norms = np.linalg.norm(flat, axis=1)
        orm = (flat @ flat.T) / np.maximum(np.outer(norms, norms), 1e-300)
        theta = np.exp(-self.params["beta"] * (orm.sum(1) - np.diag(orm)))
        w = np.array([theta[i:].sum() / (L - i) for i in range(L)])
        eff = np.array([[storage_bits(f, l.numel, l.in_features) / l.numel for f in ctx.formats] for l in ctx.layers])
        values = w[:, None] * (FLOAT_BITS - eff)
        return values, None, {"theta": theta.tolist(), "weight": w.tolist(), "mean_orm": float(orm[~np.eye(L, dtype=bool)].mean()) if L > 1 else 0.0}
