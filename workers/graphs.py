"""User models given as graphs: ``torch.export`` programs (``.pt2``) and TorchScript.

- ``load_export``: an exported program becomes an nn.Module whose layers are REAL
  nn.Linear / nn.Conv1d / nn.Conv2d / nn.Embedding modules. Each aten linear/conv/embedding
  op that reads a parameter is rewritten into a call of such a module holding the *same*
  Parameter objects, installed where the parameter lives (``features.0.weight`` → module
  ``features.0``). So forward hooks, weight swapping, GPTQ's Hessians and every activation
  proxy work as on an eager model, and layer names are the original model's. Programs have a
  static batch size: the returned ``ExportedModel`` runs any batch in chunks of it.
- ``fold_batchnorm``: BatchNorm folded into the conv/linear that feeds it, for eager modules,
  export programs and TorchScript, always checked on an example input.

TorchScript layers are found and probed by proxies.discovery / proxies.capture."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.utils import _pytree as pytree

from proxies.capture import attr_path, resolve, script_attr, script_ops
from proxies.discovery import _kind
from search.refs import archive_kind

aten = torch.ops.aten


class GraphError(ValueError):
    """A model graph that cannot be used as given; the message names the problem and the fix."""


# ---------------------------------------------------------------- loading an exported program


def is_export_archive(path: Path) -> bool:
    """A ``torch.export.save`` archive (``search.refs.archive_kind`` tells)."""
    return archive_kind(Path(path)) == "export"


def is_torchscript_archive(path: Path) -> bool:
    """A ``torch.jit.save`` archive: a zip with TorchScript code; a ``torch.save`` pickle zip
    has ``data.pkl`` but no code."""
    return archive_kind(Path(path)) == "torchscript"


def load_export(path: Path) -> tuple[nn.Module, tuple[int, ...] | None]:
    """Load a ``torch.export.save`` archive as an eval-mode module with real layer modules
    (see the module doc) and the declared per-sample input shape (None when dynamic)."""
    path = Path(path)
    if not is_export_archive(path):
        if is_torchscript_archive(path):
            raise GraphError(f"{str(path)!r} is a TorchScript archive, not a torch.export one; "
                             f"load it as torchscript:{path}")
        raise GraphError(f"{str(path)!r} is not a torch.export archive; save one with "
                         f"torch.export.save(torch.export.export(model.eval(), (example,)), 'model.pt2')")
    try:
        ep = torch.export.load(str(path))
    except Exception as e:  # torch raises many types for a damaged or foreign archive
        raise GraphError(f"{str(path)!r} could not be loaded as a torch.export program "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                         f"re-export it with this torch version ({torch.__version__})") from None
    users = [s for s in ep.graph_signature.input_specs if s.kind == torch.export.graph_signature.InputKind.USER_INPUT]
    if len(users) != 1:
        raise GraphError(f"the exported program takes {len(users)} user inputs; bitplan feeds one tensor "
                         f"(a batch of images or features): export a wrapper whose forward takes one tensor")
    if not ep.state_dict:
        raise GraphError("the exported program has no parameters (its weights were exported as constants); "
                         "export the nn.Module itself, not a function of frozen tensors")
    gm = ep.module()
    shape, batch, dtype = _declared_input(gm)
    rewrite_layers(gm)
    model = ExportedModel(gm, shape, batch, dtype).eval()
    model.free_batch()
    return model, shape


def _declared_input(gm: fx.GraphModule) -> tuple[tuple[int, ...] | None, int | None, torch.dtype | None]:
    """(per-sample shape, static batch size, dtype) of the program's tensor input; None
    where a dimension is dynamic."""
    for node in gm.graph.nodes:
        if node.op == "placeholder" and isinstance(node.meta.get("val"), torch.Tensor):
            val = node.meta["val"]
            dims = [d if isinstance(d, int) else None for d in val.shape]
            rest = tuple(dims[1:])
            return (None if None in rest else rest), (dims[0] if dims else None), val.dtype
    return None, None, None


# ---------------------------------------------------------------- the graph rewrite

_LAYER_OPS = {aten.linear.default: "Linear", aten.conv1d.default: "Conv", aten.conv1d.padding: "Conv",
              aten.conv2d.default: "Conv", aten.conv2d.padding: "Conv", aten.convolution.default: "Conv",
              aten.embedding.default: "Embedding"}


def _bound(node: fx.Node) -> dict[str, Any]:
    """An aten call's arguments by schema name, defaults filled in."""
    out = {}
    for i, arg in enumerate(node.target._schema.arguments):
        if i < len(node.args):
            out[arg.name] = node.args[i]
        elif arg.name in node.kwargs:
            out[arg.name] = node.kwargs[arg.name]
        else:
            out[arg.name] = arg.default_value if arg.has_default_value() else None
    return out


def _ints(v: Any, nd: int) -> tuple[int, ...]:
    if isinstance(v, int):
        return (v,) * nd
    v = tuple(int(x) for x in v)
    return v * nd if len(v) == 1 else v


def _param(gm: fx.GraphModule, node: Any) -> nn.Parameter | None:
    """The Parameter a ``get_attr`` node reads, else None."""
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        return None
    try:
        return gm.get_parameter(node.target)
    except AttributeError:
        return None


def _spec(gm: fx.GraphModule, node: fx.Node) -> tuple | None:
    """What module a layer op node becomes: (holder path, kind, hashable config, bias target),
    or None when it cannot become one (weight not a parameter named ``weight``,
    bias not its sibling ``bias``, a transposed conv, …)."""
    kind = _LAYER_OPS[node.target]
    a = _bound(node)
    w_node = a["weight"]
    w = _param(gm, w_node)
    if w is None or not w_node.target.endswith(".weight"):
        return None
    holder = w_node.target[: -len(".weight")]
    if kind == "Embedding":
        pad = int(a["padding_idx"])
        return holder, kind, (pad if pad >= 0 else None, bool(a["scale_grad_by_freq"]), bool(a["sparse"])), None
    bias = a.get("bias")
    if bias is not None and (_param(gm, bias) is None or bias.target != f"{holder}.bias"):
        return None
    if bias is None and f"{holder}.bias" in dict(gm.named_parameters()) | dict(gm.named_buffers()):
        return None  # a holder with a ``bias`` the op ignores: a module would add it
    if kind == "Linear":
        if w.dim() != 2:
            return None
        return holder, kind, (), bias and bias.target
    nd = w.dim() - 2
    if nd not in (1, 2) or (node.target is aten.convolution.default and a["transposed"]):
        return None
    pad = a["padding"] if isinstance(a["padding"], str) else _ints(a["padding"], nd)
    cfg = (nd, _ints(a["stride"], nd), pad, _ints(a["dilation"], nd), int(a["groups"]))
    return holder, kind, cfg, bias and bias.target


def _make_module(gm: fx.GraphModule, holder: str, kind: str, cfg: tuple, bias: str | None) -> nn.Module | None:
    """A real layer module holding the holder's own Parameter objects."""
    w = gm.get_parameter(f"{holder}.weight")
    try:
        if kind == "Linear":
            m = nn.Linear(w.shape[1], w.shape[0], bias=False, device="meta")
        elif kind == "Embedding":
            pad, scale, sparse = cfg
            m = nn.Embedding(w.shape[0], w.shape[1], padding_idx=pad, scale_grad_by_freq=scale, sparse=sparse,
                             device="meta")
        else:
            nd, stride, pad, dil, groups = cfg
            cls = nn.Conv1d if nd == 1 else nn.Conv2d
            m = cls(w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), stride=stride, padding=pad, dilation=dil,
                    groups=groups, bias=False, device="meta")
    except (ValueError, RuntimeError):  # e.g. padding='same' with stride > 1
        return None
    m.weight = w
    if bias is not None:
        m.bias = gm.get_parameter(bias)
    return m


def _install(gm: fx.GraphModule, holder: str, module: nn.Module) -> None:
    """Put ``module`` at ``holder``, keeping the old holder's other parameters, buffers and
    children (other graph nodes may read them)."""
    old = gm.get_submodule(holder)
    for name, p in old._parameters.items():
        if name not in ("weight", "bias"):
            module.register_parameter(name, p)
    for name, b in old._buffers.items():
        module.register_buffer(name, b, persistent=name not in old._non_persistent_buffers_set)
    for name, child in old._modules.items():
        module.add_module(name, child)
    parent_path, _, leaf = holder.rpartition(".")
    setattr(gm.get_submodule(parent_path) if parent_path else gm, leaf, module)


def rewrite_layers(gm: fx.GraphModule) -> list[str]:
    """Turn every rewritable linear/conv/embedding op into ``call_module`` of a real layer
    module (see the module doc); returns the installed module paths. A weight read by several
    ops with the same configuration becomes one module called several times; ops that differ,
    or cannot be expressed as a module, stay functional (and are not layers)."""
    groups: dict[str, list[tuple[fx.Node, tuple]]] = {}
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target in _LAYER_OPS:
            spec = _spec(gm, node)
            if spec is not None and spec[0]:
                groups.setdefault(spec[0], []).append((node, spec))
    done = []
    for holder, uses in groups.items():
        if len({s[1:] for _, s in uses}) != 1 or not isinstance(gm.get_submodule(holder), nn.Module):
            continue
        _, kind, cfg, bias = uses[0][1]
        module = _make_module(gm, holder, kind, cfg, bias)
        if module is None:
            continue
        _install(gm, holder, module)
        for node, _ in uses:
            with gm.graph.inserting_before(node):
                # the input from the node now (an earlier replacement may have changed it)
                new = gm.graph.call_module(holder, (_bound(node)["indices" if kind == "Embedding" else "input"],))
            new.meta = dict(node.meta)
            node.replace_all_uses_with(new)
            gm.graph.erase_node(node)
        done.append(holder)
    gm.graph.lint()
    gm.recompile()
    return done


# ---------------------------------------------------------------- static batch sizes


class ExportedModel(nn.Module):
    """An exported program as a module that takes any batch. The program's submodules,
    parameters and buffers are this module's own (shared, not copied), so layer and state
    names are the original model's (``features.0``, ``features.0.weight``) with no prefix; the
    program itself is ``.program``. A static batch size B runs in chunks of B (the last
    chunk padded with copies of its last sample, the padding trimmed from the output)."""

    def __init__(self, program: fx.GraphModule, input_shape: tuple[int, ...] | None, batch: int | None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        object.__setattr__(self, "program", program)
        object.__setattr__(self, "_modules", program._modules)
        object.__setattr__(self, "_parameters", program._parameters)
        object.__setattr__(self, "_buffers", program._buffers)
        self.input_shape, self.batch, self.dtype = input_shape, batch, dtype
        self.chunk = 8

    def forward(self, x: torch.Tensor) -> Any:
        self._check(x)
        if self.dtype is not None and x.is_floating_point() and self.dtype.is_floating_point:
            x = x.to(self.dtype)
        n, b = x.shape[0], self.batch
        if b is None and n > self.chunk:
            # free batch: still in chunks, which on CPUs is as fast as one large batch of a
            # CNN (activations stay in cache) and bounds the memory of big inputs
            return _merge([self._run(x[i:i + self.chunk]) for i in range(0, n, self.chunk)], n, self.chunk)
        if b is None or n == b:
            return self._run(x)
        outs = []
        for i in range(0, n, b):
            chunk = x[i:i + b]
            if chunk.shape[0] < b:
                chunk = torch.cat([chunk, chunk[-1:].expand(b - chunk.shape[0], *chunk.shape[1:])])
            outs.append(self._run(chunk))
        return _merge(outs, n, b)

    def free_batch(self, n: int = 3, seed: int = 0) -> bool:
        """Most programs exported at batch 1 compute nothing that depends on the batch size
        except the export guard: without the guard, a batch of ``n`` gives, sample by sample,
        the outputs of ``n`` single runs, and then whole batches run at once (an order of
        magnitude faster on a CNN than chunks of 1). Programs that hard-code the batch (a
        ``view(1, -1)``) fail the check and keep running in chunks."""
        if self.batch is None or self.input_shape is None or not (self.dtype is None or self.dtype.is_floating_point):
            return False
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(n * self.batch, *self.input_shape, generator=gen, dtype=self.dtype or torch.float32)
        with torch.no_grad():
            chunked = _first_tensor(self(x))
            guards = [nd for nd in self.program.graph.nodes if nd.op == "call_module" and nd.target == "_guards_fn"]
            if any(nd.users for nd in guards):
                return False
            guard_args = [tuple(nd.args) for nd in guards]
            batch = self.batch
            try:
                for nd in guards:
                    self.program.graph.erase_node(nd)
                self.program.recompile()
                self.batch = None
                ok = _same(chunked, _first_tensor(self(x)))
            except Exception:  # noqa: BLE001 - any failure means the batch is baked in
                ok = False
            if not ok:
                self.batch = batch
                self._restore_guards(guard_args)
            return ok

    def _restore_guards(self, guard_args: list[tuple]) -> None:
        """Put the erased guard calls back, right after the inputs, as export placed them."""
        if not guard_args:
            return
        graph = self.program.graph
        last_input = [nd for nd in graph.nodes if nd.op == "placeholder"][-1]
        for args in guard_args:
            with graph.inserting_after(last_input):
                graph.call_module("_guards_fn", args, {})
        self.program.recompile()

    def _check(self, x: torch.Tensor) -> None:
        if self.input_shape is not None and tuple(x.shape[1:]) != self.input_shape:
            raise GraphError(_shape_message(self.input_shape, tuple(x.shape[1:])))

    def _run(self, x: torch.Tensor) -> Any:
        try:
            return self.program(x)
        except AssertionError as e:  # the program's shape guard (``_guards_fn``)
            raise GraphError(_shape_message(self.input_shape, tuple(x.shape[1:]), str(e).splitlines()[0])) from None


def _shape_message(want: tuple | None, got: tuple, detail: str = "") -> str:
    size = f"--image-size {want[-1]}" if want and len(want) == 3 else "data of that shape"
    why = f" ({detail})" if detail else ""
    return (f"the program was exported for inputs of shape {want}; the data gives {got}{why}: "
            f"fix: {size}, or re-export the model for the data's shape (dynamic_shapes=...)")


def _merge(outs: list[Any], n: int, b: int) -> Any:
    """Chunk outputs → one output of the same structure: batched tensors concatenated and
    trimmed to ``n``, anything else taken from the first chunk."""
    flat = [pytree.tree_flatten(o) for o in outs]
    spec = flat[0][1]
    leaves = []
    for j, first in enumerate(flat[0][0]):
        if isinstance(first, torch.Tensor) and first.dim() and first.shape[0] == b:
            leaves.append(torch.cat([f[0][j] for f in flat])[:n])
        else:
            leaves.append(first)
    return pytree.tree_unflatten(leaves, spec)


# ---------------------------------------------------------------- BatchNorm folding


def _fold(w: torch.Tensor, b: torch.Tensor | None, gamma: torch.Tensor | None, beta: torch.Tensor | None,
          mean: torch.Tensor, var: torch.Tensor, eps: float) -> None:
    """Fold BN(x) = γ(x−μ)/√(σ²+ε)+β into the layer before it: w, b scaled by γ/√(σ²+ε) per
    output channel; the BN left as a pure shift (γ=1, μ=0, σ²=1−ε, β=β−γμ/√(σ²+ε); without β,
    μ carries the shift), so no graph edit is needed and a conv without bias still works."""
    k = torch.rsqrt(var.double() + eps)
    if gamma is not None:
        k = k * gamma.double()
    shift = (beta.double() if beta is not None else 0) - k * mean.double()
    w.mul_(k.to(w.dtype).view(-1, *([1] * (w.dim() - 1))))
    if b is not None:
        b.mul_(k.to(b.dtype))
    if gamma is not None:
        gamma.fill_(1.0)
    var.fill_(1.0 - eps)
    if beta is not None:
        beta.copy_(shift.to(beta.dtype))
        mean.zero_()
    else:
        mean.copy_((-shift).to(mean.dtype))


def _snapshot(ts: list[torch.Tensor | None]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(t, t.detach().clone()) for t in ts if t is not None]


def _restore(saved: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    for t, v in saved:
        t.copy_(v)


def _first_tensor(out: Any) -> torch.Tensor:
    leaves = [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
    if not leaves:
        raise GraphError("the model's output holds no tensor")
    return leaves[0]


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    a, b = a.double(), b.double()
    scale = max(float(a.abs().max()) if a.numel() else 0.0, 1.0)
    return bool(torch.allclose(a, b, rtol=1e-4, atol=1e-5 * scale))


def fold_batchnorm(model: nn.Module, example: torch.Tensor) -> list[dict]:
    """Fold every eval-mode BatchNorm that directly (and only) consumes a conv's or linear's
    output into that layer's weight, in place; returns [{"conv": layer, "bn": batchnorm}].
    Checked on ``example``: a fold that changes the output is undone (eager models), and if
    the folded model's output still differs, every fold is undone and GraphError raised."""
    eager = not isinstance(model, (torch.jit.ScriptModule, ExportedModel, fx.GraphModule))
    with torch.no_grad():
        ref = _first_tensor(model(example)).clone()
        if isinstance(model, torch.jit.ScriptModule):
            pairs = _script_pairs(model)
        elif not eager:
            pairs = _graph_pairs(model.program if isinstance(model, ExportedModel) else model)
        else:
            pairs = _eager_pairs(model, example)
        folds, saved = [], []
        for names, tensors in pairs:
            snap = _snapshot(list(tensors[:6]))
            _fold(*tensors)
            if eager and not _same(ref, _first_tensor(model(example))):
                _restore(snap)  # the layer's output had another user
                continue
            saved += snap
            folds.append({"conv": names[0], "bn": names[1]})
        if folds and not _same(ref, _first_tensor(model(example))):
            _restore(saved[::-1])
            raise GraphError(f"folding BatchNorm changed the model's output ({len(folds)} folds undone); "
                             f"run without fold_batchnorm")
    return folds


Pair = tuple[tuple[str, str], tuple]  # ((layer name, bn name), (w, b, gamma, beta, mean, var, eps))


def _bn_usable(bn: nn.Module) -> bool:
    return isinstance(bn, (nn.BatchNorm1d, nn.BatchNorm2d)) and not bn.training and bn.running_mean is not None


def _eager_pairs(model: nn.Module, example: torch.Tensor) -> list[Pair]:
    """(layer, BN) pairs where the BN's input tensor IS the layer's output (forward hooks on
    one run of ``example``); modules called more than once are left alone."""
    names = {id(m): n for n, m in model.named_modules()}
    layers = [m for m in model.modules() if _kind(m) in ("Linear", "Conv1d", "Conv2d")]
    bns = [m for m in model.modules() if _bn_usable(m)]
    outs: dict[int, tuple[nn.Module, torch.Tensor]] = {}
    calls: dict[int, int] = {}
    found: list[tuple[nn.Module, nn.Module]] = []

    def on_layer(m, inp, out):
        calls[id(m)] = calls.get(id(m), 0) + 1
        if isinstance(out, torch.Tensor):
            outs[id(out)] = (m, out)

    def on_bn(m, inp):
        calls[id(m)] = calls.get(id(m), 0) + 1
        hit = outs.get(id(inp[0])) if inp else None
        if hit is not None and hit[1] is inp[0]:
            found.append((hit[0], m))

    hs = [m.register_forward_hook(on_layer) for m in layers] + [m.register_forward_pre_hook(on_bn) for m in bns]
    try:
        model(example)
    finally:
        for h in hs:
            h.remove()
    out = []
    for layer, bn in found:
        if calls[id(layer)] == 1 and calls[id(bn)] == 1 and bn.num_features == layer.weight.shape[0]:
            out.append(((names[id(layer)], names[id(bn)]), (layer.weight, layer.bias, bn.weight, bn.bias,
                                                    bn.running_mean, bn.running_var, float(bn.eps))))
    return out


_BN_OPS = {aten.batch_norm.default: 7, aten._native_batch_norm_legit_no_training.default: 6}


def _graph_pairs(gm: fx.GraphModule) -> list[Pair]:
    """(layer, BN) pairs in a rewritten export graph: a batch_norm node in inference mode whose
    input is a call_module of a conv/linear module with no other user."""
    out, used = [], set()
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in _BN_OPS:
            continue
        src = node.args[0]
        if not isinstance(src, fx.Node) or src.op != "call_module" or len(src.users) != 1:
            continue
        layer = gm.get_submodule(src.target)
        if _kind(layer) not in ("Linear", "Conv1d", "Conv2d") or src.target in used:
            continue
        if node.target is aten.batch_norm.default and node.args[5]:
            continue  # training-mode batch norm
        ts = [_tensor(gm, a) for a in node.args[1:5]]
        if ts[2] is None or ts[3] is None or ts[2].numel() != layer.weight.shape[0]:
            continue
        if sum(1 for n in gm.graph.nodes if src.target == n.target and n.op == "call_module") != 1:
            continue  # one module called at several places: its weight serves them all
        used.add(src.target)
        bn_name = ".".join(node.args[3].target.split(".")[:-1]) if isinstance(node.args[3], fx.Node) else node.name
        out.append(((src.target, bn_name), (layer.weight, layer.bias, *ts, float(node.args[_BN_OPS[node.target]]))))
    return out


def _tensor(gm: fx.GraphModule, node: Any) -> torch.Tensor | None:
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        return None
    obj: Any = gm
    for part in node.target.split("."):
        obj = getattr(obj, part)
    return obj if isinstance(obj, torch.Tensor) else None


_SHAPE_ONLY = ("aten::size", "aten::dim", "aten::len", "aten::numel")


def _data_uses(value: torch._C.Value) -> int:
    """Uses of a graph value that read its data (BatchNorm's scripted forward also asks the
    input's size, in a training-only branch)."""
    return sum(1 for u in value.uses() if u.user.kind() not in _SHAPE_ONLY)


def _script_pairs(sm: torch.jit.ScriptModule) -> list[Pair]:
    """(layer, BN) pairs in a TorchScript graph: aten::batch_norm (not training) whose input is
    the output of a conv/linear op reading a layer's weight, and nothing else uses it."""
    graph = sm.inlined_graph
    me = next(graph.inputs())
    ops = {op.node.output().debugName(): op for op in script_ops(sm, graph)}
    counts: dict[str, int] = {}
    for op in ops.values():
        counts[op.path] = counts.get(op.path, 0) + 1
    out = []
    for node in graph.nodes():
        if node.kind() != "aten::batch_norm":
            continue
        args = list(node.inputs())
        op = ops.get(args[0].debugName())
        if op is None or _data_uses(args[0]) != 1 or counts[op.path] != 1:
            continue
        try:
            if resolve(args[5], sm, me):
                continue  # training-mode batch norm
            eps = float(resolve(args[7], sm, me))
        except Exception:
            continue
        paths = [attr_path(a, me) for a in args[1:5]]
        if paths[2] is None or paths[3] is None:
            continue
        ts = [script_attr(sm, p) if p is not None else None for p in paths]
        layer = script_attr(sm, op.path.split(".")) if op.path else sm
        w = layer.weight
        bias_path = attr_path(list(op.node.inputs())[2], me)
        b = script_attr(sm, bias_path) if bias_path is not None else None
        if ts[2].numel() != w.shape[0] or (w.dim() == 2 and op.node.kind() != "aten::linear"):
            continue
        out.append(((op.path, ".".join(paths[2][:-1])), (w, b, *ts, eps)))
    return out


__all__ = ["GraphError", "ExportedModel", "fold_batchnorm", "is_export_archive", "is_torchscript_archive", "load_export",
           "rewrite_layers"]
