"""Weight quantizers, registered by name: ``rtn`` (DESIGN §3) and ``gptq`` (error-compensating,
Hessians from calibration activations). A job picks one; every proxy that perturbs weights,
the evaluation and refine all get their quantized weights from it, so a table predicts — and a
policy reports — what the job's quantizer really does.

Lifecycle: ``check_quantizer`` validates the name and parameters before any model is loaded;
``build_quantizer`` runs once per job on the float model (GPTQ reads its calibration
activations there) and must happen before any weight is swapped."""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

from proxies.gptq import Factor, HessianCollector, factor, gptq
from proxies.quant import from_2d, rtn, to_2d
from search.formats import Format
from search.params import QUANTIZER_PARAMS, quantizer_params

# n_samples: calibration-source samples for the Hessians (None = the task kind's default); they
# are drawn apart from the calibration batches that measure the result (see workers.batches)
GPTQ_DEFAULTS = quantizer_params("gptq", {})


class WeightQuantizer(ABC):
    method: str = ""

    def __init__(self, modules: list[nn.Module]):
        self.modules = modules

    def weight(self, i: int, fmt: Format, w: torch.Tensor | None = None) -> torch.Tensor:
        """Layer ``i``'s weight quantized in ``fmt``, in the module's own layout; from ``w``
        when given (a caller holding the float weights while the module is swapped), else from
        the module's current weight."""
        m = self.modules[i]
        src = (m.weight if w is None else w).detach()
        if fmt.is_float:
            return src.clone()
        with torch.no_grad():
            return from_2d(m, self._quantize_2d(i, to_2d(m, src), fmt))

    @abstractmethod
    def _quantize_2d(self, i: int, w2d: torch.Tensor, fmt: Format) -> torch.Tensor:
        ...

    def key(self) -> dict:
        """What the quantized weights depend on besides the model and calibration data."""
        return {"method": self.method}

    def record(self) -> dict:
        """What a policy says about the quantizer it assumes (DESIGN §2 ``quantizer``)."""
        return {"method": self.method}

    @property
    def apart_samples(self) -> int:
        """Calibration-source samples it read beyond the calibration batches (GPTQ's Hessian
        data), which other held-apart data such as refine's judge must avoid."""
        return 0


class RTNQuantizer(WeightQuantizer):
    method = "rtn"

    def _quantize_2d(self, i, w2d, fmt):
        return rtn(w2d, fmt)


class GPTQQuantizer(WeightQuantizer):
    """GPTQ per layer from its calibration Hessian; layers without one (embeddings, layers the
    forward never reached) fall back to RTN, and ``record`` names them."""

    method = "gptq"

    def __init__(self, modules: list[nn.Module], hessians: dict[int, torch.Tensor], damp: float = 0.01,
                 act_order: bool = True, block_size: int = 128, names: list[str] | None = None,
                 n_samples: int | None = None, samples: int = 0, disjoint: bool = True):
        super().__init__(modules)
        self.hessians, self.damp, self.act_order, self.block_size = hessians, damp, act_order, block_size
        self.names = names or [str(i) for i in range(len(modules))]
        self.n_samples, self.samples, self.disjoint = n_samples, samples, disjoint
        self._factors: dict[int, list[Factor]] = {}

    @classmethod
    def from_calibration(cls, model: nn.Module, modules: list[nn.Module], task, batches, names: list[str] | None = None,
                         disjoint: bool = True, **params) -> "GPTQQuantizer":
        """Hessians from ``batches`` (prepared for the task). ``disjoint`` says whether they are
        apart from the batches the results are measured on, which the policy records."""
        with HessianCollector(modules, model) as col:  # TorchScript: a graph probe instead of hooks
            for b in batches:
                col.mask = b["attention_mask"].bool() if "attention_mask" in b else None
                task.features(col.runner, b)
        samples = sum(task.size(b) for b in batches)
        return cls(modules, col.hessians(), names=names, samples=samples, disjoint=disjoint, **params)

    def _factor(self, i: int) -> list[Factor]:
        if i not in self._factors:
            self._factors[i] = [factor(h, self.damp, self.act_order) for h in self.hessians[i]]
        return self._factors[i]

    def _quantize_2d(self, i, w2d, fmt):
        if i not in self.hessians:
            return rtn(w2d, fmt)
        fs = self._factor(i)
        rows = w2d.shape[0] // len(fs)
        return torch.cat([gptq(w2d[j * rows:(j + 1) * rows], f, fmt, self.block_size) for j, f in enumerate(fs)])

    @property
    def apart_samples(self) -> int:
        return self.samples if self.disjoint else 0

    def key(self) -> dict:
        return {"method": self.method, "damp": self.damp, "act_order": self.act_order, "block_size": self.block_size,
                "n_samples": self.n_samples}

    def record(self) -> dict:
        out = {"method": self.method, "damp": self.damp, "act_order": self.act_order,
               "hessian_samples": self.samples, "hessian_disjoint": self.disjoint}
        grown = sorted({f.damp for fs in self._factors.values() for f in fs if f.damp != self.damp})
        if grown:
            out["damp_raised_to"] = grown[-1]
        rtn_layers = [self.names[i] for i in range(len(self.modules)) if i not in self.hessians]
        if rtn_layers:
            out["rtn_layers"] = rtn_layers
        return out


QUANTIZERS = tuple(QUANTIZER_PARAMS)


def check_quantizer(name: str, params: dict | None) -> dict:
    """Validate a quantizer choice before any work; returns its full parameters (search.params
    holds the typed definitions, so the API checks them without torch)."""
    return quantizer_params(name, params)


def build_quantizer(name: str, params: dict | None, model: nn.Module, modules: list[nn.Module], task,
                    hessian_batches: list, names: list[str] | None = None, disjoint: bool = True) -> WeightQuantizer:
    """The job's quantizer on the float model (before any weight is swapped); GPTQ reads its
    Hessians from ``hessian_batches`` (prepared for the task)."""
    p = check_quantizer(name, params)
    if name == "rtn":
        return RTNQuantizer(modules)
    return GPTQQuantizer.from_calibration(model, modules, task, hessian_batches, names, disjoint, **p)
