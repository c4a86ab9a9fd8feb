"""Apply a policy to the model and measure it (DESIGN §6).

Policies are applied by swapping quantized weights in and restoring the float ones afterwards
— equivalent to quantizing a copy, without holding two models in memory. Quantized weights are
cached per (layer, format), so refine's many judgements and the uniform baselines don't redo the
quantization (RTN, or GPTQ, whose per-layer solve is the expensive part)."""
from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
from torch import nn

from proxies.base import batch_mean_loss, swapped
from proxies.blockcache import PolicyTrunk, is_graph_model
from proxies.device import model_device
from proxies.precision import comparison_precision
from proxies.quantizers import RTNQuantizer, WeightQuantizer
from proxies.tasks import Batch, Task
from search.formats import Format


SCREEN_SAMPLES = 16  # the racing judge's screen: the first this many samples of its first batch
SCREEN_Z = 2.5  # a candidate stops there only when this many standard errors behind the best


def split_batch(batch: Batch, n: int) -> tuple[Batch, Batch] | None:
    """The batch's first ``n`` samples and the rest, when every value is a tensor with one row
    per sample (None otherwise, or when there is nothing to split)."""
    size = Task.size(batch)
    if not 0 < n < size or not all(isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == size
                                   for v in batch.values()):
        return None
    return {k: v[:n] for k, v in batch.items()}, {k: v[n:] for k, v in batch.items()}


def layer_names(model: nn.Module, modules: list[nn.Module]) -> list[str]:
    """Each module's qualified name in ``model`` ("" when it is not a submodule of it)."""
    names = {id(m): n for n, m in model.named_modules()}
    return [names.get(id(m), "") for m in modules]


class QuantCache:
    """Quantized weights per (layer, format) from the job's quantizer, computed on first use
    from the float weights: the module's own (callers never ask while a policy is swapped in)
    or ``w``, the float weight a caller holding a swapped model passes."""

    def __init__(self, modules: list[nn.Module], quantizer: WeightQuantizer | None = None):
        self.modules = modules
        self.quantizer = quantizer or RTNQuantizer(modules)
        self._cache: dict[tuple[int, Format], torch.Tensor] = {}

    def get(self, i: int, fmt: Format, w: torch.Tensor | None = None) -> torch.Tensor:
        key = (i, fmt)
        if key not in self._cache:
            self._cache[key] = self.quantizer.weight(i, fmt, w)
        return self._cache[key]


class Evaluator:
    """Measures policies of one model on one set of batches (calibration or held-out)."""

    def __init__(self, model: nn.Module, modules: list[nn.Module], task: Task, quantizer: WeightQuantizer | None = None,
                 compute_dtype: str = "float32"):
        self.model, self.modules, self.task = model, modules, task
        self.cache = QuantCache(modules, quantizer)
        # refine's judge compares policies in this dtype (proxies.precision); metrics are float32
        self.compute_dtype = compute_dtype

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

    def judge(self, table_formats: list[Format], batches: list[Batch], race: bool = True,
              incremental: bool = True, screen: int | None = SCREEN_SAMPLES) -> "RacingJudge":
        """A refine judge on ``batches``: choice (format index per layer) → measured loss."""
        return RacingJudge(self, table_formats, batches, race, incremental, screen)


class RacingJudge:
    """Refine's judge: the mean task loss of a policy, measured batch by batch.

    Refine only asks "does this candidate beat the best policy so far?", and most candidates do
    not. With ``race`` the judge stops as soon as a candidate's running loss exceeds the best
    fully measured policy's loss on the same batches, and answers ``inf``: a loser usually shows
    on its first batch, so a judge set several times larger than the calibration set costs about
    one batch per rejected candidate. A candidate is only accepted after every batch, so an
    accepted move's loss is exact; the price is that one behind early but ahead at the end is
    rejected, an error on the side of the known policy. ``batches_run`` counts the work done.

    Most of refine's candidates lose clearly, so the first batch is screened on its first
    ``screen`` samples (when the task gives per-sample losses): a candidate whose paired
    per-sample losses there are more than ``SCREEN_Z`` standard errors behind the best policy's
    stops at once (``screened_out``); every other one races exactly as without the screen, at the
    same sample counts. A clear loser then costs half a batch."""

    def __init__(self, evaluator: Evaluator, table_formats: list[Format], batches: list[Batch], race: bool = True,
                 incremental: bool = True, screen: int | None = SCREEN_SAMPLES):
        if not batches:
            raise ValueError("a refine judge needs at least one batch")
        self.ev, self.formats, self.race = evaluator, table_formats, race
        per_sample = type(evaluator.task).sample_loss_values is not Task.sample_loss_values
        head = split_batch(batches[0], screen) if race and screen and per_sample else None
        self.screened = head is not None  # batch 0 is then the screen, batch 1 the rest of the first batch
        self.batches = [*head, *batches[1:]] if head is not None else batches
        self.sizes = [evaluator.task.size(b) for b in self.batches]
        self.best: list[float] | None = None  # per-batch loss sums of the best fully measured policy
        self._best_screen: torch.Tensor | None = None  # its per-sample losses on the screen
        self.batches_run = 0
        self.stopped_early = 0
        self.screened_out = 0  # of stopped_early: stopped by the screen
        self.blocks_run = 0  # trunk blocks computed (replayed ones not counted): the incremental saving
        # the best policy's trunk block outputs: a candidate re-runs only from its first changed block
        graph = is_graph_model(evaluator.model)  # an exported program has no trunk of blocks to replay
        self.trunk = PolicyTrunk(evaluator.model, len(self.batches)) if incremental and not graph else None
        if self.trunk is not None and not self.trunk.enabled:
            self.trunk = None
        self._block = None if self.trunk is None else \
            np.array([self.trunk.block_of(n) for n in layer_names(evaluator.model, evaluator.modules)])

    def _clearly_behind(self, losses: torch.Tensor) -> bool:
        """Whether per-sample ``losses`` on the screen trail the best policy's by more than
        ``SCREEN_Z`` standard errors of their paired mean difference."""
        d = losses - self._best_screen
        return bool(d.mean() > 0 and d.mean() > SCREEN_Z * d.std() / math.sqrt(len(d)))

    @property
    def samples(self) -> int:
        return sum(self.sizes)

    def reset(self) -> None:
        """Forget the best policy: refine calls this before each search (the counters stay)."""
        self.best, self._best_screen = None, None

    def __call__(self, choice: np.ndarray) -> float:
        choice = np.asarray(choice)
        mods, ws = self.ev._weights([self.formats[int(k)] for k in choice])
        sums: list[float] = []
        run = contextlib.nullcontext()
        if self.trunk is not None:
            run = self.trunk.running([choice[self._block == j].tobytes() for j in range(self.trunk.n_blocks)])
        precision = comparison_precision(self.ev.compute_dtype, model_device(self.ev.model))
        screen = None
        with swapped(mods, ws), torch.no_grad(), precision, run:
            for bi, (b, s) in enumerate(zip(self.batches, self.sizes)):
                if self.trunk is not None:
                    self.blocks_run += self.trunk.n_blocks - self.trunk.begin(bi)
                self.batches_run += 1
                if bi == 0 and self.screened:
                    screen = self.ev.task.sample_loss_values(self.ev.model, b).double()
                    sums.append(float(screen.sum()))
                    if self.race and self._best_screen is not None and self._clearly_behind(screen):
                        self.stopped_early += 1
                        self.screened_out += 1
                        return math.inf
                    continue
                sums.append(float(self.ev.task.loss(self.ev.model, b)) * s)
                if self.race and self.best is not None and len(sums) < len(self.batches) \
                        and sum(sums) > sum(self.best[: len(sums)]):
                    self.stopped_early += 1
                    return math.inf
        if self.best is None or sum(sums) < sum(self.best):
            self.best, self._best_screen = sums, screen
            if self.trunk is not None:  # refine moves on from the best policy: cache its outputs
                self.trunk.accept()
        return sum(sums) / self.samples
