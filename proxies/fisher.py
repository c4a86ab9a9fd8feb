"""Fisher sensitivity: Ω_l(k) = ½·Σ_i F_ii·(Q_k(W_l) − W_l)_i², with F the diagonal of the
Fisher from per-sample gradients (the second-order Taylor term that ModelOpt's "gradient"
score approximates). Samples come from the task (``Task.sample_losses``): real labels for LMs,
labels sampled from the float model for classifiers, sampled targets for encoders whose float
gradient is zero.

Per-sample gradients are taken with ``torch.func`` (``vmap(grad(...))`` over a chunk of samples,
each a batch of one inside the vmap) when the task has a per-sample form (``Task.per_sample``);
a model the vmap cannot run (TorchScript, an op without a batching rule, data-dependent control
flow) falls back, from the start and with the same random draws, to one forward and backward per
sample ("single"), and a model that cannot run a batch of one to the original loop: one
backward pass per sample through the batch's graph. Which path ran, and why, is in the table's
diagnostics (``per_sample_gradients``)."""
from __future__ import annotations

import numpy as np
import torch

from proxies.base import Proxy, ProxyContext, requiring_grad

# per-sample gradients held at once by the vmap path: chunk × (weights of every layer) floats
CHUNK_ELEMENTS = 1 << 26  # 256 MiB of float32
MAX_CHUNK = 64


class _NoVmap(Exception):
    """The vmap path cannot run this model/task; another path runs instead."""


def gradient_moments(ctx: ProxyContext, max_samples: int, report: bool = False, info: dict | None = None,
                     method: str = "auto") -> tuple[list[torch.Tensor], list[torch.Tensor], int]:
    """Mean and mean square of the per-sample gradients of every layer weight over up to
    ``max_samples`` task samples (the Fisher diagonal is the second; the evolved proxy's
    primitives read both). ``method``: "auto" (vmap, else single, else loop), or one of "vmap",
    "single", "loop"; ``info`` (when given) gets ``per_sample_gradients`` = the path that ran and
    why the faster ones did not."""
    info = {} if info is None else info
    if method not in ("auto", "vmap", "single", "loop"):
        raise ValueError(f"unknown per-sample gradient method {method!r}")
    if method == "loop" or not ctx.task.per_sample:
        info["per_sample_gradients"] = "loop" if method == "loop" else "loop (the task has no per-sample form)"
        return _loop_moments(ctx, max_samples, report)
    why = ""
    if method in ("auto", "vmap"):
        try:
            out = _vmap_moments(ctx, max_samples, report)
            info["per_sample_gradients"] = "vmap"
            return out
        except Exception as e:  # noqa: BLE001 - any failure of the functional path means "run another path"
            if method == "vmap":
                raise
            why = f"vmap failed: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
    try:
        out = _single_moments(ctx, max_samples, report)
        info["per_sample_gradients"] = f"single (one sample per backward{'; ' + why if why else ''})"
        return out
    except Exception as e:  # noqa: BLE001 - e.g. a traced model with a fixed batch size
        if method == "single":
            raise
        why = f"{why + '; ' if why else ''}single failed: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
    info["per_sample_gradients"] = f"loop ({why})"
    return _loop_moments(ctx, max_samples, report)


class _Moments:
    """Running sums of per-sample gradients and their squares, one pair per layer weight."""

    def __init__(self, params: list[torch.Tensor]):
        self.g1 = [torch.zeros_like(p, dtype=torch.float32) for p in params]
        self.g2 = [torch.zeros_like(p, dtype=torch.float32) for p in params]
        self.n = 0

    def add(self, grads) -> None:
        for a, b, g in zip(self.g1, self.g2, grads):
            if g is not None:  # a layer the loss never reads has zero Fisher
                a.add_(g.float())
                b.add_(g.float() ** 2)
        self.n += 1

    def finish(self):
        d = max(self.n, 1)
        return [a / d for a in self.g1], [b / d for b in self.g2], self.n


def _loop_moments(ctx: ProxyContext, max_samples: int, report: bool):
    params = [m.weight for m in ctx.modules]
    acc = _Moments(params)
    gen = torch.Generator().manual_seed(ctx.seed)
    with requiring_grad(params):
        for batch in ctx.batches:
            losses = ctx.task.sample_losses(ctx.model, batch, gen)
            for i in range(min(len(losses), max_samples - acc.n)):
                acc.add(torch.autograd.grad(losses[i], params, retain_graph=i + 1 < len(losses), allow_unused=True))
                if report:
                    ctx.report(acc.n / max_samples, f"per-sample gradient {acc.n}")
            del losses
            if acc.n >= max_samples:
                break
    return acc.finish()


def _single_moments(ctx: ProxyContext, max_samples: int, report: bool):
    """One forward and backward per sample (a batch of one), for models vmap cannot run: the
    loop's numbers at a fraction of its cost (the loop back-propagates the whole batch for every
    sample)."""
    params = [m.weight for m in ctx.modules]
    acc = _Moments(params)
    gen = torch.Generator().manual_seed(ctx.seed)
    with requiring_grad(params):
        for batch in ctx.batches:
            if acc.n >= max_samples:
                break
            size = int(next(iter(batch.values())).shape[0])
            targets = ctx.task.fisher_targets(batch, gen)
            for i in range(min(size, max_samples - acc.n)):
                one = {k: v[i:i + 1] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == size else v
                       for k, v in batch.items()}
                loss = ctx.task.target_losses(ctx.model, one, {k: v[i:i + 1] for k, v in targets.items()})[0]
                acc.add(torch.autograd.grad(loss, params, allow_unused=True))
                if report:
                    ctx.report(acc.n / max_samples, f"per-sample gradient {acc.n}")
    return acc.finish()


def _weight_names(model: torch.nn.Module, modules: list) -> list[str]:
    """The state name under which each layer's weight is registered in ``model`` (tied weights
    share one name)."""
    if isinstance(model, torch.jit.ScriptModule):
        raise _NoVmap("TorchScript module")
    names: dict[int, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), name)
    for name, b in model.named_buffers(remove_duplicate=False):
        names.setdefault(id(b), name)
    out = []
    for m in modules:
        if id(m.weight) not in names:
            raise _NoVmap("a layer weight is not registered in the model")
        out.append(names[id(m.weight)])
    return out


def _vmap_moments(ctx: ProxyContext, max_samples: int, report: bool):
    from torch.func import functional_call, grad, vmap

    model, task = ctx.model, ctx.task
    keys = _weight_names(model, ctx.modules)
    unique = list(dict.fromkeys(keys))
    weights = {k: m.weight.detach() for k, m in zip(keys, ctx.modules)}
    weights = {k: weights[k] for k in unique}
    elements = sum(w.numel() for w in weights.values())
    chunk = max(1, min(MAX_CHUNK, CHUNK_ELEMENTS // max(elements, 1)))

    def one(w: dict, sample: dict, target: dict) -> torch.Tensor:
        call = lambda *args, **kwargs: functional_call(model, w, args, kwargs)
        s = {k: v.unsqueeze(0) for k, v in sample.items()}
        t = {k: v.unsqueeze(0) for k, v in target.items()}
        return task.target_losses(call, s, t)[0]

    per_sample = vmap(grad(one), in_dims=(None, 0, 0), randomness="error")
    s1 = {k: torch.zeros_like(w, dtype=torch.float32) for k, w in weights.items()}
    s2 = {k: torch.zeros_like(w, dtype=torch.float32) for k, w in weights.items()}
    gen = torch.Generator().manual_seed(ctx.seed)
    n = 0
    for batch in ctx.batches:
        if n >= max_samples:
            break
        size = int(next(iter(batch.values())).shape[0])
        targets = task.fisher_targets(batch, gen)  # drawn for the whole batch, as the loop path does
        take = min(size, max_samples - n)
        tensors = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == size}
        for lo in range(0, take, chunk):
            hi = min(take, lo + chunk)
            g = per_sample(weights, {k: v[lo:hi] for k, v in tensors.items()},
                           {k: v[lo:hi] for k, v in targets.items()})
            for k in unique:
                gk = g[k].float()
                s1[k].add_(gk.sum(0))
                s2[k].add_((gk ** 2).sum(0))
            n += hi - lo
            if report:
                ctx.report(n / max_samples, f"per-sample gradient {n} (vmap, {hi - lo} at a time)")
    d = max(n, 1)
    return [s1[k] / d for k in keys], [s2[k] / d for k in keys], n


def fisher_term(f_ii: torch.Tensor, w_new: torch.Tensor, w: torch.Tensor) -> float:
    """½·Σ F_ii·(W' − W)²: the second-order loss estimate of replacing ``w`` by ``w_new``
    (a quantized copy here, a quantized-and-pruned one in the joint search)."""
    return 0.5 * float((f_ii * (w_new.float() - w.float()) ** 2).sum())


class FisherProxy(Proxy):
    name = "fisher"

    def diagonal(self, ctx: ProxyContext, info: dict | None = None) -> tuple[list[torch.Tensor], int]:
        """Mean squared per-sample gradient of every layer weight, and the samples used."""
        _, sq, n = gradient_moments(ctx, self.params["max_samples"], report=True, info=info)
        return sq, n

    def _compute(self, ctx):
        info: dict = {}
        diag, n = self.diagonal(ctx, info)
        values = np.zeros((len(ctx.layers), len(ctx.formats)))
        with torch.no_grad():
            for i, (m, f_ii) in enumerate(zip(ctx.modules, diag)):
                w = m.weight.detach().float()
                for k, fmt in enumerate(ctx.formats):
                    if not fmt.is_float:
                        values[i, k] = fisher_term(f_ii, ctx.quantize(i, fmt), w)
        return values, None, {"samples": n, "fisher_trace": [float(d.sum()) for d in diag], **info}
