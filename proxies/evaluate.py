"""Apply a policy to the model and measure it (DESIGN §6).

Policies are applied by swapping quantized weights in and restoring the float ones afterwards
— equivalent to quantizing a copy, without holding two models in memory. Quantized weights are
cached per (layer, format), so refine's many judgements and the uniform baselines don't redo the
quantization (RTN, or GPTQ, whose per-layer solve is the expensive part)."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from proxies.base import batch_mean_loss, swapped
from proxies.quantizers import RTNQuantizer, WeightQuantizer
from proxies.tasks import Batch, Task
from search.formats import Format


class QuantCache:
    """Quantized weights per (layer, format) from the job's quantizer, computed on first use
    from the float weights (callers never ask while a policy is swapped in)."""

    def __init__(self, modules: list[nn.Module], quantizer: WeightQuantizer | None = None):
        self.modules = modules
        self.quantizer = quantizer or RTNQuantizer(modules)
        self._cache: dict[tuple[int, Format], torch.Tensor] = {}

    def get(self, i: int, fmt: Format) -> torch.Tensor:
        key = (i, fmt)
        if key not in self._cache:
            self._cache[key] = self.quantizer.weight(i, fmt)
        return self._cache[key]


class Evaluator:
    """Measures policies of one model on one set of batches (calibration or held-out)."""

    def __init__(self, model: nn.Module, modules: list[nn.Module], task: Task, quantizer: WeightQuantizer | None = None):
        self.model, self.modules, self.task = model, modules, task
        self.cache = QuantCache(modules, quantizer)

    def _weights(self, formats: list[Format]) -> tuple[list[nn.Module], list[torch.Tensor]]:
        idx = [i for i, f in enumerate(formats) if not f.is_float]
        return [self.modules[i] for i in idx], [self.cache.get(i, formats[i]) for i in idx]

    def metrics(self, formats: list[Format], batches: list[Batch]) -> dict[str, float]:
        """Held-out metrics with layer i in ``formats[i]``."""
        mods, ws = self._weights(formats)
        with swapped(mods, ws):
            return self.task.evaluate(self.model, batches)

    def loss(self, formats: list[Format], batches: list[Batch]) -> float:
        """Mean task loss (the refine judge) with layer i in ``formats[i]``."""
        mods, ws = self._weights(formats)
        with swapped(mods, ws):
            return batch_mean_loss(self.task, self.model, batches)

    def judge(self, table_formats: list[Format], batches: list[Batch]) -> Callable[[np.ndarray], float]:
        """A refine judge: choice (format index per layer) → measured calibration loss."""
        return lambda choice: self.loss([table_formats[int(k)] for k in choice], batches)
