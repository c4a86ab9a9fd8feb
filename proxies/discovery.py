"""Layer discovery: which weights of a torch model are quantizable, with the numbers the
cost model needs (numel, reduction dim, MACs per sample/token)."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from proxies.capture import capture
from search.layers import LayerInfo



def _kind(module: nn.Module) -> str | None:
    name = type(module).__name__
    if isinstance(module, nn.Linear) or name == "Linear":
        return "Linear"
    if isinstance(module, nn.Conv1d):  # subclasses too (e.g. "same"-padding convs of EfficientNet ports)
        return "Conv1d"
    if isinstance(module, nn.Conv2d) or name in ("Conv1d", "Conv2d"):
        return "Conv2d" if isinstance(module, nn.Conv2d) else name
    if name == "Conv1D" and hasattr(module, "nf"):
        return "Conv1D"  # HF GPT-2 style, weight stored (in, out)
    if isinstance(module, nn.Embedding) or name == "Embedding":
        return "Embedding"
    return None


_KINDS = ("Linear", "Conv1d", "Conv2d", "Conv1D", "Embedding")
# graph ops that read a module's own weight, and the layer kind they make it (aten::_convolution
# is decided by the weight's rank)
_WEIGHT_OPS = {"aten::linear": "Linear", "aten::conv1d": "Conv1d", "aten::conv2d": "Conv2d",
               "aten::_convolution": None, "aten::embedding": "Embedding"}


def _script_kind(module: nn.Module) -> str | None:
    """A TorchScript module's kind: its ``original_name`` when that is a known class, else what
    its graph does — a linear, conv or embedding op that reads the module's *own* ``weight``
    (so a ``Conv2d`` subclass with "same" padding is a Conv2d, and a container whose children
    run convs is not a layer itself)."""
    if not isinstance(module, torch.jit.ScriptModule):
        return None
    name = getattr(module, "original_name", None)
    if name in _KINDS:
        return name
    try:
        graph = module.inlined_graph
    except (RuntimeError, AttributeError):  # no forward (e.g. an interface-only module)
        return None
    me = next(graph.inputs(), None)
    for node in graph.nodes():
        if node.kind() not in _WEIGHT_OPS:
            continue
        inputs = list(node.inputs())
        src = inputs[0 if node.kind() == "aten::embedding" else 1].node() if len(inputs) > 1 else None
        if src is None or src.kind() != "prim::GetAttr" or src.s("name") != "weight" or next(src.inputs()) is not me:
            continue
        kind = _WEIGHT_OPS[node.kind()]
        if kind is None:
            w = getattr(module, "weight", None)
            kind = {3: "Conv1d", 4: "Conv2d"}.get(w.dim() if w is not None else 0)
        return kind
    return None


def _head_names(model: nn.Module) -> set[str]:
    heads = {"lm_head"}
    get = getattr(model, "get_output_embeddings", None)
    if callable(get):
        try:
            out = get()
        except Exception:  # some HF models raise NotImplementedError here
            out = None
        if out is not None:
            heads |= {n for n, m in model.named_modules() if m is out}
    return heads


def discover_layers(model: nn.Module, example: Callable[[nn.Module], object] | None = None,
                    include_embeddings: bool = False, include_head: bool = False) -> list[tuple[LayerInfo, nn.Module]]:
    """Quantizable layers in model order. ``example(model)`` runs one forward on a single
    sample so conv MACs can use the real output size; without it convs count one position.
    Weights shared by two modules (tied embeddings) are listed once."""
    heads = _head_names(model)
    found, seen = [], set()
    for name, module in model.named_modules():
        kind = _kind(module) if not isinstance(module, torch.jit.ScriptModule) else _script_kind(module)
        if kind not in _KINDS:
            continue
        if kind == "Embedding" and not include_embeddings:
            continue
        if name in heads and not include_head:
            continue
        w = getattr(module, "weight", None)
        if w is None or w.dim() < 2 or w.data_ptr() in seen:
            continue
        seen.add(w.data_ptr())
        found.append((name, kind, module))
    spatial = _conv_positions(model, [m for _, k, m in found if k.startswith("Conv") and k != "Conv1D"], example)
    out = []
    for name, kind, module in found:
        w = module.weight
        shape = tuple(w.shape)
        numel = w.numel()
        in_features = shape[0] if kind == "Conv1D" else numel // shape[0]
        macs = 0 if kind == "Embedding" else numel * spatial.get(id(module), 1)
        out.append((LayerInfo(name, kind, shape, numel, in_features, macs), module))
    return out


def _conv_positions(model: nn.Module, convs: list[nn.Module], example) -> dict[int, int]:
    """Output positions per conv module from one forward pass, for MACs: forward hooks, or for
    a TorchScript model a probe that returns each conv op's output (proxies.capture)."""
    if not convs or example is None:
        return {}
    sizes: dict[int, int] = {}

    def sink(i, m, x, y, geom):
        sizes[id(m)] = int(y[0].shape[1:].numel())

    with torch.no_grad(), capture(model, convs, sink, inputs=False, outputs=True) as runner:
        example(runner)
    return sizes
