"""Tasks: what "loss" and "quality" mean for a kind of model.

Every proxy and the evaluation talk to a model only through its task, so one proxy works for
a causal LM, a sentence encoder and a classifier alike. Lifecycle: ``prepare`` attaches the
float model's references to batches once (before any weight is touched); ``loss`` is the
differentiable task loss used by Hessian, measured and refine; ``sample_losses`` gives one loss
per sample whose gradients are Fisher samples; ``evaluate`` is the held-out metric.

A task whose ``sample_losses`` is ``target_losses(model, batch, fisher_targets(batch, gen))``
and whose per-sample loss reads only that sample sets ``per_sample = True``: the Fisher proxy
then takes per-sample gradients with ``torch.func.vmap`` (the random targets are drawn outside
the vmap, once per batch, from the same seeded generator either way)."""
from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import nn

from proxies.kl import DEFAULT_TOP_K, TopKReference, kl_to_reference, mean_and_stderr, topk_reference
from proxies.device import model_device, to_device

Batch = dict[str, torch.Tensor]


class Task(ABC):
    metric: str = ""
    higher_is_better: bool = False
    per_sample: bool = False  # sample_losses == target_losses(fisher_targets(...)), row by row

    def fisher_targets(self, batch: Batch, gen: torch.Generator) -> Batch:
        """The random draws ``sample_losses`` uses, one row per sample (none by default)."""
        return {}

    def target_losses(self, model, batch: Batch, targets: Batch) -> torch.Tensor:
        """One loss per sample given ``fisher_targets``' draws; ``model`` may be any callable
        with the module's signature (the Fisher passes a functional call)."""
        raise NotImplementedError

    def prepare(self, model: nn.Module, batches: list[Batch]) -> list[Batch]:
        """The batches on the model's device, with what the task compares against attached
        (e.g. the float model's outputs): every batch a proxy or evaluation reads passes here."""
        dev = model_device(model)
        return self.attach(model, [to_device(b, dev) for b in batches])

    def attach(self, model: nn.Module, batches: list[Batch]) -> list[Batch]:
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

    def float_metrics(self, batches: list[Batch]) -> dict[str, float] | None:
        """``evaluate`` of the float model when the attached references already hold it (a
        forward pass would recompute them exactly), else None: the evaluate phase then skips
        one pass over the held-out data."""
        return None

    def sample_loss_values(self, model: nn.Module, batch: Batch) -> torch.Tensor | None:
        """The task loss of each sample (no grad; their size-weighted mean is ``loss``), so a
        measured difference between two policies gets a paired standard error; None when the
        task cannot split its loss by sample."""
        return None

    def features(self, model: nn.Module, batch: Batch) -> None:
        """Run a forward pass (for activation hooks)."""
        with torch.no_grad():
            self.loss(model, batch)

    @staticmethod
    def size(batch: Batch) -> int:
        return int(next(iter(batch.values())).shape[0])


class CausalLMTask(Task):
    """A causal LM compared with the float model, as llama.cpp, exllamav3 and ModelOpt judge one:
    loss = mean per-token KL(p_float ‖ p_quant) of the next-token distributions. ``prepare``
    keeps the float distributions in compact form (top-k log-probabilities plus the tail mass,
    proxies/kl.py). Fisher samples: next tokens drawn from the float model's top-k (the true
    Fisher of the KL at the float model, less the tail). Held-out metric ``kl_to_float`` with
    its standard error over sequences, and perplexity on the text beside it.
    Batches: ``input_ids`` (n, T) (+ ``ref_logp``, ``ref_index``, ``ref_tail`` after ``prepare``).

    Unprepared batches (outside the pipeline) fall back to next-token cross-entropy on the
    text for ``loss`` and the Fisher; ``evaluate`` needs prepared batches."""

    metric = "kl_to_float"
    per_sample = True

    def __init__(self, top_k: int = DEFAULT_TOP_K) -> None:
        self.top_k = top_k

    def _logits(self, model, batch):
        return model(input_ids=batch["input_ids"]).logits[:, :-1].float()

    @staticmethod
    def _ref(batch: Batch) -> TopKReference | None:
        if "ref_logp" not in batch:
            return None
        return TopKReference(batch["ref_logp"], batch["ref_index"], batch["ref_tail"])

    def attach(self, model, batches):
        out = []
        with torch.no_grad():
            for b in batches:
                r = topk_reference(self._logits(model, b), self.top_k)
                out.append({**b, "ref_logp": r.logp, "ref_index": r.index, "ref_tail": r.logp_tail})
        return out

    def token_kl(self, model, batch) -> torch.Tensor:
        """Per-token KL to the float model, (n, T−1)."""
        ref = self._ref(batch)
        if ref is None:
            raise KeyError("causal LM batches need the float model's distributions: run task.prepare(model, batches) first")
        return kl_to_reference(ref, self._logits(model, batch))

    def loss(self, model, batch):
        if self._ref(batch) is None:
            logits = self._logits(model, batch)
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["input_ids"][:, 1:].reshape(-1))
        return self.token_kl(model, batch).mean()

    def sample_loss_values(self, model, batch):
        with torch.no_grad():
            if self._ref(batch) is None:
                logits = self._logits(model, batch)
                return F.cross_entropy(logits.transpose(1, 2), batch["input_ids"][:, 1:], reduction="none").mean(1)
            return self.token_kl(model, batch).mean(1)

    def sample_losses(self, model, batch, gen):
        return self.target_losses(model, batch, self.fisher_targets(batch, gen))

    def fisher_targets(self, batch, gen):
        ref = self._ref(batch)
        if ref is None:
            return {"t": batch["input_ids"][:, 1:]}
        p = ref.logp.exp()
        # drawn on the host from the seeded CPU generator: the same draws on any device
        pick = torch.multinomial(p.reshape(-1, p.shape[-1]).cpu(), 1, generator=gen).reshape(p.shape[:-1]).to(p.device)
        return {"t": ref.index.gather(-1, pick.unsqueeze(-1)).squeeze(-1)}

    def target_losses(self, model, batch, targets):
        logits = self._logits(model, batch)
        nll = F.cross_entropy(logits.transpose(1, 2), targets["t"], reduction="none")
        return nll.mean(dim=1)

    def evaluate(self, model, batches):
        seq_kl, nll, agree, count = [], 0.0, 0, 0
        with torch.no_grad():
            for b in batches:
                ref = self._ref(b)
                if ref is None:
                    raise KeyError("causal LM evaluation needs prepared batches: run task.prepare(model, batches) first")
                logits = self._logits(model, b)
                tgt = b["input_ids"][:, 1:]
                seq_kl.extend(kl_to_reference(ref, logits).mean(dim=1).tolist())
                nll += float(F.cross_entropy(logits.transpose(1, 2), tgt, reduction="sum"))
                agree += int((logits.argmax(-1) == ref.index[..., 0]).sum())
                count += tgt.numel()
        kl, se = mean_and_stderr(seq_kl)
        return {self.metric: kl, "kl_stderr": se, "perplexity": math.exp(nll / count), "nll": nll / count,
                "top1_agreement": agree / count, "tokens": float(count)}


class EmbeddingTask(Task):
    """Sentence encoder with mean pooling: loss = 1 − cos(embedding, float embedding).
    Batches: ``input_ids``, ``attention_mask`` (+ ``ref`` after ``prepare``)."""

    metric = "embedding_cosine_loss"

    def embed(self, model, batch):
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        m = batch["attention_mask"].unsqueeze(-1).to(out.dtype)
        pooled = (out * m).sum(1) / m.sum(1).clamp_min(1)
        return F.normalize(pooled.float(), dim=-1)

    def attach(self, model, batches):
        with torch.no_grad():
            return [{**b, "ref": self.embed(model, b)} for b in batches]

    def loss(self, model, batch):
        return (1 - (self.embed(model, batch) * batch["ref"]).sum(-1)).mean()

    def sample_loss_values(self, model, batch):
        with torch.no_grad():
            return 1 - (self.embed(model, batch) * batch["ref"]).sum(-1)

    per_sample = True

    def sample_losses(self, model, batch, gen):
        return self.target_losses(model, batch, self.fisher_targets(batch, gen))

    def fisher_targets(self, batch, gen):
        # For unit vectors 1 − cos(u, r) = ½‖u − r‖², whose Hessian at the float model is JᵀJ.
        # Sampling targets r + ε with ε ~ N(0, I) makes E[ggᵀ] = JᵀJ: the true Fisher, nonzero
        # even though the float model's own gradient is exactly zero.
        return {"eps": torch.randn(batch["ref"].shape, generator=gen).to(batch["ref"].device)}

    def target_losses(self, model, batch, targets):
        u = self.embed(model, batch)
        return 0.5 * ((u - batch["ref"] - targets["eps"]) ** 2).sum(-1)

    def evaluate(self, model, batches):
        with torch.no_grad():
            cos = torch.cat([(self.embed(model, b) * b["ref"]).sum(-1) for b in batches])
        return self._metrics(cos)

    def _metrics(self, cos: torch.Tensor) -> dict[str, float]:
        return {self.metric: float(1 - cos.mean()), "min_cosine": float(cos.min())}

    def float_metrics(self, batches):
        # the float model's embedding is the reference itself (the same forward, the same kernels)
        return self._metrics(torch.cat([(b["ref"] * b["ref"]).sum(-1) for b in batches]))


def first_tensor(out) -> torch.Tensor:
    """A model's logits: the output itself, an HF ModelOutput's ``.logits``, a dict's ``logits``
    (else its first tensor) or a tuple/list's first tensor."""
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, dict):
        if isinstance(out.get("logits"), torch.Tensor):
            return out["logits"]
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        for v in out:
            if isinstance(v, torch.Tensor):
                return v
            if isinstance(v, (list, tuple, dict)) or hasattr(v, "logits"):
                return first_tensor(v)
    raise TypeError(f"the model returned {type(out).__name__}, not a tensor of logits")


class ClassifierTask(Task):
    """A classifier (images, tensors or text → class logits), compared with the float model:
    loss = mean KL(p_float ‖ p_quant) of the output distributions, so no labels are needed.
    Fisher samples: cross-entropy against labels drawn from the float model's distribution (the
    true Fisher; seeded). Held-out metric ``kl_to_float`` (lower is better) with
    ``top1_agreement`` beside it, and ``accuracy`` and ``cross_entropy`` when labels exist.

    ``inputs`` says how logits are obtained: ``"x"`` — ``model(x)``; ``"pixel_values"`` — an
    HF image classifier, ``model(pixel_values=x)``; ``"text"`` — an HF sequence classifier,
    ``model(input_ids=, attention_mask=)``. Batches: ``x`` (or ``input_ids``/``attention_mask``),
    optional ``y`` (+ ``ref_logits``, the float model's log-probabilities, after ``prepare``)."""

    metric = "kl_to_float"
    higher_is_better = False
    per_sample = True
    INPUTS = ("x", "pixel_values", "text")

    def __init__(self, inputs: str = "x") -> None:
        if inputs not in self.INPUTS:
            raise ValueError(f"unknown classifier inputs {inputs!r}: use one of {', '.join(self.INPUTS)}")
        self.inputs = inputs

    def logits(self, model, batch: Batch) -> torch.Tensor:
        if self.inputs == "text":
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        elif self.inputs == "pixel_values":
            out = model(pixel_values=batch["x"])
        else:
            out = model(batch["x"])
        z = first_tensor(out).float()
        return z.reshape(z.shape[0], -1) if z.dim() != 2 else z

    def log_probs(self, model, batch: Batch) -> torch.Tensor:
        return F.log_softmax(self.logits(model, batch), -1)

    def attach(self, model, batches):
        out = []
        with torch.no_grad():
            for b in batches:
                ref = self.log_probs(model, b)
                if "y" in b and len(b["y"]) and int(b["y"].max()) >= ref.shape[-1]:
                    raise ValueError(f"a label is {int(b['y'].max())} but the model has {ref.shape[-1]} outputs: the "
                                     "data's labels do not match the model's classes (check the class folders or the "
                                     "label column, or drop the labels)")
                out.append({**b, "ref_logits": ref})
        return out

    @staticmethod
    def _kl(logp: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """Per-sample KL(p_ref ‖ p) from log-probabilities."""
        return (ref.exp() * (ref - logp)).sum(-1)

    @staticmethod
    def _ref(batch: Batch) -> torch.Tensor | None:
        if "ref_logits" in batch:
            return batch["ref_logits"]
        if "y" not in batch:
            raise KeyError("classifier batches need the float model's outputs: run task.prepare(model, batches) first")
        return None  # unprepared labeled batches (outside the pipeline): cross-entropy on the labels

    def loss(self, model, batch):
        ref = self._ref(batch)
        logp = self.log_probs(model, batch)
        return F.nll_loss(logp, batch["y"]) if ref is None else self._kl(logp, ref).mean()

    def sample_loss_values(self, model, batch):
        with torch.no_grad():
            ref = self._ref(batch)
            logp = self.log_probs(model, batch)
            return F.nll_loss(logp, batch["y"], reduction="none") if ref is None else self._kl(logp, ref)

    def features(self, model, batch):
        with torch.no_grad():
            self.logits(model, batch)

    def fisher_targets(self, batch, gen):
        ref = self._ref(batch)
        return {"t": batch["y"] if ref is None else torch.multinomial(ref.exp().cpu(), 1, generator=gen)[:, 0].to(ref.device)}

    def sample_losses(self, model, batch, gen):
        return self.target_losses(model, batch, self.fisher_targets(batch, gen))

    def target_losses(self, model, batch, targets):
        return F.cross_entropy(self.logits(model, batch), targets["t"], reduction="none")

    def evaluate(self, model, batches):
        n, kl, agree, correct, ce, labeled = 0, 0.0, 0, 0, 0.0, 0
        with torch.no_grad():
            for b in batches:
                logp = self.log_probs(model, b)
                ref = b["ref_logits"]
                n += len(logp)
                kl += float(self._kl(logp, ref).sum())
                agree += int((logp.argmax(-1) == ref.argmax(-1)).sum())
                if "y" in b:
                    labeled += len(b["y"])
                    correct += int((logp.argmax(-1) == b["y"]).sum())
                    ce += float(F.nll_loss(logp, b["y"], reduction="sum"))
        out = {self.metric: kl / max(n, 1), "top1_agreement": agree / max(n, 1), "samples": float(n)}
        if labeled:
            out.update(accuracy=correct / labeled, cross_entropy=ce / labeled)
        return out


TASKS: dict[str, type[Task]] = {"causal_lm": CausalLMTask, "embedding": EmbeddingTask, "classifier": ClassifierTask,
                                 "text_classifier": ClassifierTask}
