"""Proxy base class and the context every proxy reads.

Lifecycle: a proxy is built with its parameters (``__init__``, validated there so bad input
fails before any work), then ``compute(ctx)`` runs once and returns a SensitivityTable whose
``values[l, k]`` predicts the loss increase of layer l in format k, others in float. Proxies
never keep the model modified: weights are restored even on error."""
from __future__ import annotations

import contextlib
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from proxies.device import model_device
from proxies.precision import comparison_precision
from proxies.quantizers import RTNQuantizer, WeightQuantizer
from proxies.tasks import Batch, Task
from search.formats import Format
from search.layers import LayerInfo
from search.params import proxy_defaults, proxy_params
from search.table import SensitivityTable

Progress = Callable[[float, str], None]


@dataclass
class ProxyContext:
    model: nn.Module
    layers: list[LayerInfo]
    modules: list[nn.Module]
    task: Task
    batches: list[Batch]
    formats: list[Format]
    seed: int = 0
    progress: Progress | None = None
    model_sha256: str = ""
    calibration: dict = field(default_factory=dict)
    # optional parallel measurement of many policies (format index per layer → calibration
    # loss); the service sets it to fan the work out over Ray
    map_policies: Callable | None = None
    # the job's weight quantizer (RTN when not given); every weight perturbation goes through it
    quantizer: WeightQuantizer | None = None
    # the dtype of the comparison passes of proxies that allow it ("float32" or "bfloat16", see
    # proxies.precision); resolved from the job's compute_dtype on the worker that runs them
    compute_dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.quantizer is None:
            self.quantizer = RTNQuantizer(self.modules)

    def quantize(self, i: int, fmt: Format, w: torch.Tensor | None = None) -> torch.Tensor:
        """Layer ``i``'s weight in ``fmt`` under the job's quantizer (module layout)."""
        return self.quantizer.weight(i, fmt, w)

    def report(self, fraction: float, message: str = "") -> None:
        if self.progress:
            self.progress(min(max(fraction, 0.0), 1.0), message)


class Proxy(ABC):
    name: str = ""
    # True when the proxy takes a ``layers`` parameter (row indices) and rows are independent,
    # so a table can be computed in chunks on several workers and summed.
    chunkable: bool = False
    # True when the proxy only compares forward losses of the same kind (no gradients), so its
    # passes may run in ``ctx.compute_dtype`` (proxies.precision); others always run float32.
    low_precision: bool = False

    def __init__(self, **params):
        # typed and range-checked in search.params, so the API and CLI refuse the same input
        # without torch, and a proxy never sees a string where it computes with a number
        self.params = proxy_params(self.name, params)

    @classmethod
    def defaults(cls) -> dict:
        return proxy_defaults(cls.name)

    def check_model(self, n_layers: int, n_formats: int) -> None:
        """Refuse a model this proxy cannot score before any data pass (an evolved program
        fitted on another layer count, say); most proxies take any model."""

    def compute(self, ctx: ProxyContext) -> SensitivityTable:
        t0 = time.perf_counter()
        with comparison_precision(self._dtype(ctx), model_device(ctx.model)):
            values, stderr, diagnostics = self._compute(ctx)
        seconds = time.perf_counter() - t0
        return SensitivityTable(ctx.layers, ctx.formats, values, self.name, self.table_params(ctx), ctx.calibration,
                                stderr, {"seconds": round(seconds, 4)}, ctx.model_sha256, diagnostics)

    def table_params(self, ctx: ProxyContext) -> dict:
        """The table's parameters: the proxy's, plus the quantizer when it is not RTN (tables
        measured under GPTQ must never be mistaken for RTN ones; RTN keys stay as they were)."""
        params = dict(self.params)
        if ctx.quantizer.method != "rtn":
            params["quantizer"] = ctx.quantizer.key()
        if self._dtype(ctx) != "float32":  # float32 keys stay as they were
            params["compute_dtype"] = self._dtype(ctx)
        return params

    def _dtype(self, ctx: ProxyContext) -> str:
        return ctx.compute_dtype if self.low_precision else "float32"

    @abstractmethod
    def _compute(self, ctx: ProxyContext) -> tuple[np.ndarray, np.ndarray | None, dict]:
        """Return (values L×K, stderr L×K or None, diagnostics)."""


def require_hooks(ctx: ProxyContext, proxy: str) -> None:
    """Proxies that run each layer module on its captured inputs (with swapped weights) need
    eager modules: a TorchScript layer takes no forward hooks and no functional_call."""
    if isinstance(ctx.model, torch.jit.ScriptModule):
        raise ValueError(f"proxy {proxy!r} runs each layer on its captured inputs, which TorchScript models do not "
                         f"support; use measured, hessian_trace, fisher or evolved, or give the model as a "
                         f"torch.export program (export:FILE.pt2)")


def sq_error(wq: torch.Tensor, w: torch.Tensor) -> float:
    """‖wq − w‖², with the quantized copy ``wq`` taken to ``w``'s dtype first."""
    return float(((wq.to(w.dtype) - w) ** 2).sum())


def quant_error_sq(ctx: ProxyContext) -> np.ndarray:
    """‖Q_k(W_l) − W_l‖² for every layer and format (L×K), the perturbation size that the
    second-order proxies scale."""
    out = np.zeros((len(ctx.layers), len(ctx.formats)))
    with torch.no_grad():
        for i, m in enumerate(ctx.modules):
            w = m.weight.detach().float()
            for k, f in enumerate(ctx.formats):
                if not f.is_float:
                    out[i, k] = sq_error(ctx.quantize(i, f), w)
    return out


@contextlib.contextmanager
def swapped(modules: list[nn.Module], weights: list[torch.Tensor]) -> Iterator[None]:
    """Temporarily replace module weights; always restores the originals.

    A weight of the parameter's own dtype, device and shape is swapped in by rebinding the
    parameter's storage (``param.data``): the Parameter object, which every forward, hook and
    exported program reads, stays the same, and a swap costs nothing instead of a clone and two
    copies of every weight (a judged policy swaps all of them). Any other weight is copied in."""
    saved: list[tuple[torch.Tensor, torch.Tensor, bool]] = []
    try:
        with torch.no_grad():
            for m, w in zip(modules, weights):
                p = m.weight
                if w.dtype == p.dtype and w.device == p.device and w.shape == p.shape:
                    saved.append((p, p.data, False))
                    p.data = w
                else:
                    saved.append((p, p.detach().clone(), True))
                    p.copy_(w)
        yield
    finally:
        with torch.no_grad():
            for p, old, copied in reversed(saved):
                if copied:
                    p.copy_(old)
                else:
                    p.data = old


@contextlib.contextmanager
def requiring_grad(params: list[torch.Tensor]) -> Iterator[None]:
    """Let autograd differentiate w.r.t. ``params`` (frozen after loading), restoring the flags."""
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


@contextlib.contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Run a Hugging Face model on its eager attention inside the block, restoring what it had.

    Models load with PyTorch's fused attention (SDPA: 5-7% off every MiniLM forward on a 2-core
    CPU, bench/speed.py), which has no double backward; a Hessian-vector product needs one. Any
    other model (no ``set_attn_implementation``, or already eager) is left as it is."""
    cfg = getattr(model, "config", None)
    was = getattr(cfg, "_attn_implementation", None)
    switch = was not in (None, "eager") and hasattr(model, "set_attn_implementation")
    if switch:
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if switch:
            model.set_attn_implementation(was)


def batch_mean_loss(task: Task, model: nn.Module, batches: list[Batch]) -> float:
    """Task loss averaged over ``batches``, weighted by batch size (no gradients)."""
    total, n = 0.0, 0
    with torch.no_grad():
        for b in batches:
            s = task.size(b)
            total += float(task.loss(model, b)) * s
            n += s
    return total / max(n, 1)


def mean_loss(ctx: ProxyContext) -> float:
    """Task loss averaged over the calibration batches, weighted by batch size."""
    return batch_mean_loss(ctx.task, ctx.model, ctx.batches)
