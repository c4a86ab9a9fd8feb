"""Tasks: what "loss" and "quality" mean for a kind of model.

Every proxy and the evaluation talk to a model only through its task, so one proxy works for
a causal LM, a sentence encoder and a classifier alike. Lifecycle: ``prepare`` attaches the
float model's references to batches once (before any weight is touched); ``loss`` is the
differentiable task loss used by Hessian, measured and refine; ``sample_losses`` gives one loss
per sample whose gradients are Fisher samples; ``evaluate`` is the held-out metric."""
from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import nn

Batch = dict[str, torch.Tensor]


class Task(ABC):
    metric: str = ""
    higher_is_better: bool = False

    def prepare(self, model: nn.Module, batches: list[Batch]) -> list[Batch]:
        return batches

    @abstractmethod
    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Mean task loss of the batch (scalar, differentiable)."""

    @abstractmethod
    def sample_losses(self, model: nn.Module, batch: Batch, gen: torch.Generator) -> torch.Tensor:
        """One loss per sample; E[∇ℓ_i ∇ℓ_iᵀ] is the Fisher the ``fisher`` proxy estimates."""

    @abstractmethod
    def evaluate(self, model: nn.Module, batches: list[Batch]) -> dict[str, float]:
        """Held-out quality: ``{self.metric: value, ...extras}``."""

    def features(self, model: nn.Module, batch: Batch) -> None:
        """Run a forward pass (for activation hooks)."""
        with torch.no_grad():
            self.loss(model, batch)

    @staticmethod
    def size(batch: Batch) -> int:
        return int(next(iter(batch.values())).shape[0])


class CausalLMTask(Task):
    """Next-token cross-entropy; perplexity on held-out text. Batches: ``input_ids`` (n, T)."""

    metric = "perplexity"

    def _logits(self, model, batch):
        return model(input_ids=batch["input_ids"]).logits[:, :-1].float()

    def loss(self, model, batch):
        logits = self._logits(model, batch)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["input_ids"][:, 1:].reshape(-1))

    def sample_losses(self, model, batch, gen):
        logits = self._logits(model, batch)
        tgt = batch["input_ids"][:, 1:]
        nll = F.cross_entropy(logits.transpose(1, 2), tgt, reduction="none")
        return nll.mean(dim=1)

    def evaluate(self, model, batches):
        total, count = 0.0, 0
        with torch.no_grad():
            for b in batches:
                n = b["input_ids"][:, 1:].numel()
                total += float(self.loss(model, b)) * n
                count += n
        nll = total / count
        return {self.metric: math.exp(nll), "nll": nll, "tokens": float(count)}


class EmbeddingTask(Task):
    """Sentence encoder with mean pooling: loss = 1 − cos(embedding, float embedding).
    Batches: ``input_ids``, ``attention_mask`` (+ ``ref`` after ``prepare``)."""

    metric = "embedding_cosine_loss"

    def embed(self, model, batch):
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        m = batch["attention_mask"].unsqueeze(-1).to(out.dtype)
        pooled = (out * m).sum(1) / m.sum(1).clamp_min(1)
        return F.normalize(pooled.float(), dim=-1)

    def prepare(self, model, batches):
        with torch.no_grad():
            return [{**b, "ref": self.embed(model, b)} for b in batches]

    def loss(self, model, batch):
        return (1 - (self.embed(model, batch) * batch["ref"]).sum(-1)).mean()

    def sample_losses(self, model, batch, gen):
        # For unit vectors 1 − cos(u, r) = ½‖u − r‖², whose Hessian at the float model is JᵀJ.
        # Sampling targets r + ε with ε ~ N(0, I) makes E[ggᵀ] = JᵀJ: the true Fisher, nonzero
        # even though the float model's own gradient is exactly zero.
        u = self.embed(model, batch)
        eps = torch.randn(u.shape, generator=gen)
        return 0.5 * ((u - batch["ref"] - eps) ** 2).sum(-1)

    def evaluate(self, model, batches):
        with torch.no_grad():
            cos = torch.cat([(self.embed(model, b) * b["ref"]).sum(-1) for b in batches])
        return {self.metric: float(1 - cos.mean()), "min_cosine": float(cos.min())}


class ClassifierTask(Task):
    """Image/feature classifier: cross-entropy on labels; accuracy and KL to the float model.
    Batches: ``x``, ``y`` (+ ``ref_logits`` after ``prepare``)."""

    metric = "accuracy"
    higher_is_better = True

    def prepare(self, model, batches):
        with torch.no_grad():
            return [{**b, "ref_logits": model(b["x"]).float()} for b in batches]

    def loss(self, model, batch):
        return F.cross_entropy(model(batch["x"]).float(), batch["y"])

    def sample_losses(self, model, batch, gen):
        return F.cross_entropy(model(batch["x"]).float(), batch["y"], reduction="none")

    def evaluate(self, model, batches):
        correct, n, kl, ce = 0, 0, 0.0, 0.0
        with torch.no_grad():
            for b in batches:
                logits = model(b["x"]).float()
                correct += int((logits.argmax(-1) == b["y"]).sum())
                n += len(b["y"])
                ref = F.log_softmax(b["ref_logits"], -1)
                kl += float(F.kl_div(F.log_softmax(logits, -1), ref, log_target=True, reduction="sum"))
                ce += float(F.cross_entropy(logits, b["y"], reduction="sum"))
        return {self.metric: correct / n, "kl_to_float": kl / n, "cross_entropy": ce / n}


TASKS: dict[str, type[Task]] = {"causal_lm": CausalLMTask, "embedding": EmbeddingTask, "classifier": ClassifierTask}
