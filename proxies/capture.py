"""What a layer's weight sees during a forward pass: its input activation, its output and the
op's geometry, for every call. Two implementations behind one API (``capture``):

- eager modules (and torch.export programs, whose layers are rewritten into real modules):
  forward hooks;
- TorchScript modules, which take no hooks: a *probe*, a copy of the module's inlined graph
  that also returns the input and output of every linear/conv op reading a layer's weight.
  Ops are mapped to layers by the ``prim::GetAttr`` chain from the graph's ``self`` (so
  ``self.features.0.weight`` is layer ``features.0``), and their stride/padding/dilation come
  from the op's own constant arguments, so a conv whose module pads in ``forward`` (F.pad,
  then a conv with padding 0) is described by what the op really does.

Users: GPTQ's Hessians (proxies.gptq), conv MACs (proxies.discovery) and the input statistics
of evolved proxies (proxies.primitives)."""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

# (layer index, module, op input, op output, geometry or None when unknown) → None
Sink = Callable[[int, nn.Module, torch.Tensor | None, torch.Tensor | None, "Geometry | None"], None]

_CONV_OPS = ("aten::conv1d", "aten::conv2d", "aten::_convolution")
_PROBED_OPS = ("aten::linear",) + _CONV_OPS


class _Unresolved(Exception):
    """A graph value that is not a constant (nor a module attribute) at probe-build time."""


@dataclass(frozen=True)
class Geometry:
    """How a conv op slides its kernel: stride, dilation, groups and padding as the op got it
    (ints per spatial dim, or 'same'/'valid'); ``pads`` (lo, hi per dim, first dim first) when
    the padding was inferred from shapes instead. ``None`` fields for linear ops."""

    stride: tuple[int, ...] | None = None
    padding: tuple[int, ...] | str | None = None
    dilation: tuple[int, ...] | None = None
    groups: int = 1
    pads: tuple[tuple[int, int], ...] | None = None

    def explicit_pads(self, kernel: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
        """(lo, hi) zero padding per spatial dim that the op applies to its input."""
        if self.pads is not None:
            return self.pads
        if self.padding == "valid":
            return tuple((0, 0) for _ in kernel)
        if self.padding == "same":
            out = []
            for k, d in zip(kernel, self.dilation):
                total = d * (k - 1)
                out.append((total // 2, total - total // 2))
            return tuple(out)
        return tuple((p, p) for p in self.padding)


def _tuple(v: Any, nd: int) -> tuple[int, ...]:
    if isinstance(v, int):
        return (v,) * nd
    v = tuple(int(x) for x in v)
    return v * nd if len(v) == 1 else v


def module_geometry(module: nn.Module) -> Geometry:
    """A conv module's own geometry (its attributes), or an empty one for other layers."""
    if not isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return Geometry()
    nd = module.weight.dim() - 2
    pad = module.padding if isinstance(module.padding, str) else _tuple(module.padding, nd)
    return Geometry(_tuple(module.stride, nd), pad, _tuple(module.dilation, nd), int(module.groups))


def out_positions(geom: Geometry, kernel: tuple[int, ...], size: tuple[int, ...]) -> tuple[int, ...]:
    """Output spatial size of a conv with ``geom`` on an input of spatial ``size``."""
    pads = geom.explicit_pads(kernel)
    return tuple((n + lo + hi - d * (k - 1) - 1) // s + 1
                 for n, (lo, hi), k, d, s in zip(size, pads, kernel, geom.dilation, geom.stride))


def fitted_geometry(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Geometry:
    """The module's geometry, or — when its output does not have the size that geometry gives
    (a conv subclass that pads inside ``forward``, e.g. "same" padding of TF ports) — the
    same geometry with the padding inferred from the shapes, TF style (extra pad at the end)."""
    geom = module_geometry(module)
    if geom.stride is None:
        return geom
    kernel = tuple(module.weight.shape[2:])
    size, got = tuple(x.shape[2:]), tuple(y.shape[2:])
    if out_positions(geom, kernel, size) == got:
        return geom
    pads = []
    for n, o, k, d, s in zip(size, got, kernel, geom.dilation, geom.stride):
        total = max((o - 1) * s + d * (k - 1) + 1 - n, 0)
        pads.append((total // 2, total - total // 2))
    return Geometry(geom.stride, None, geom.dilation, geom.groups, tuple(pads))


# ---------------------------------------------------------------- TorchScript graphs


def attr_path(value: torch._C.Value, me: torch._C.Value) -> list[str] | None:
    """The attribute names from the graph's ``self`` to ``value`` (``["features", "0",
    "weight"]``), or None when ``value`` is not such a ``prim::GetAttr`` chain."""
    names = []
    while value is not me:
        node = value.node()
        if node.kind() != "prim::GetAttr":
            return None
        names.append(node.s("name"))
        value = next(node.inputs())
    return names[::-1]


def script_attr(root: torch.jit.ScriptModule, path: list[str]) -> Any:
    """The object at ``path`` under a ScriptModule (get_submodule is not supported there)."""
    obj: Any = root
    for name in path:
        obj = getattr(obj, name)
    return obj


def resolve(value: torch._C.Value, root: torch.jit.ScriptModule, me: torch._C.Value) -> Any:
    """A graph value known before running: a constant, a list/tuple of such, or a module
    attribute (``self.conv.stride``). Raises _Unresolved otherwise."""
    node = value.node()
    kind = node.kind()
    if kind == "prim::Constant":
        return value.toIValue()
    if kind in ("prim::ListConstruct", "prim::TupleConstruct"):
        return [resolve(v, root, me) for v in node.inputs()]
    path = attr_path(value, me)
    if path is not None:
        return script_attr(root, path)
    raise _Unresolved(kind)


@dataclass(frozen=True)
class ScriptOp:
    """One linear/conv op of a TorchScript graph that reads layer ``index``'s weight."""

    index: int
    path: str
    node: torch._C.Node
    geometry: Geometry | None  # None: a conv whose geometry is not constant


def _conv_geometry(node: torch._C.Node, root, me, nd: int) -> Geometry | None:
    args = list(node.inputs())
    try:
        if node.kind() == "aten::_convolution":
            if resolve(args[6], root, me):  # transposed
                return None
            stride, padding, dilation, groups = (resolve(args[i], root, me) for i in (3, 4, 5, 8))
        else:
            stride, padding, dilation, groups = (resolve(args[i], root, me) for i in (3, 4, 5, 6))
    except _Unresolved:
        return None
    pad = padding if isinstance(padding, str) else _tuple(padding, nd)
    return Geometry(_tuple(stride, nd), pad, _tuple(dilation, nd), int(groups))


def script_ops(root: torch.jit.ScriptModule, graph: torch._C.Graph,
               modules: list[nn.Module] | None = None) -> list[ScriptOp]:
    """The top-level linear/conv ops of ``graph`` (``root``'s inlined graph) that read the
    ``weight`` of a submodule — of one of ``modules`` when given, indexed by position there
    (else by order of appearance of distinct modules)."""
    me = next(graph.inputs())
    by_path = {path: m for path, m in root.named_modules()}
    index = {id(m): i for i, m in enumerate(modules)} if modules is not None else {}
    out = []
    for node in graph.nodes():
        if node.kind() not in _PROBED_OPS:
            continue
        path = attr_path(list(node.inputs())[1], me)
        if not path or path[-1] != "weight":
            continue
        mpath = ".".join(path[:-1])
        module = by_path.get(mpath)
        if module is None:
            continue
        if modules is None:
            index.setdefault(id(module), len(index))
        elif id(module) not in index:
            continue
        geom = Geometry() if node.kind() == "aten::linear" else \
            _conv_geometry(node, root, me, module.weight.dim() - 2)
        out.append(ScriptOp(index[id(module)], mpath, node, geom))
    return out


class ScriptProbe:
    """A TorchScript module's forward that also returns, per probed op, its input and/or
    output: ``probe(*args) -> (model output, [(op, x or None, y or None), ...])``."""

    def __init__(self, root: torch.jit.ScriptModule, modules: list[nn.Module] | None = None,
                 inputs: bool = True, outputs: bool = False):
        self.root = root
        graph = root.inlined_graph
        self.ops = script_ops(root, graph, modules)
        self.inputs, self.outputs = inputs, outputs
        ret = graph.return_node()
        values = [ret.inputsAt(0)]
        for op in self.ops:
            if inputs:
                values.append(next(op.node.inputs()))
            if outputs:
                values.append(op.node.output())
        tup = graph.create("prim::TupleConstruct", values)
        tup.insertBefore(ret)
        tup.output().setType(torch._C.TupleType([v.type() for v in values]))
        ret.replaceInput(0, tup.output())
        self.fn = torch._C._create_function_from_graph("bitplan_probe", graph)

    def __call__(self, *args, **kwargs) -> tuple[Any, list[tuple[ScriptOp, torch.Tensor | None, torch.Tensor | None]]]:
        res = self.fn(self.root._c, *args, **kwargs)
        it = iter(res[1:])
        got = []
        for op in self.ops:
            x = next(it) if self.inputs else None
            y = next(it) if self.outputs else None
            got.append((op, x, y))
        return res[0], got


class _ProbedModel:
    """Stands in for a ScriptModule while capturing: calls run the probe and feed the sink;
    anything else (attributes, methods) goes to the module."""

    def __init__(self, root: torch.jit.ScriptModule, probe: ScriptProbe, modules: list[nn.Module], sink: Sink):
        self._root, self._probe, self._modules, self._sink = root, probe, modules, sink

    def __call__(self, *args, **kwargs):
        out, got = self._probe(*args, **kwargs)
        for op, x, y in got:  # geometry None: a conv whose stride/padding are not constants
            self._sink(op.index, self._modules[op.index], x, y, op.geometry)
        return out

    def __getattr__(self, name):
        return getattr(self._root, name)


@contextlib.contextmanager
def capture(model: nn.Module, modules: list[nn.Module], sink: Sink, inputs: bool = True,
            outputs: bool = False) -> Iterator[Any]:
    """Within the block, every forward of the yielded stand-in (the model itself for eager
    modules) calls ``sink(i, module, x, y, geometry)`` for each call of ``modules[i]``; ``x``
    is None unless ``inputs``, ``y`` None unless ``outputs``. Hooks are always removed."""
    if isinstance(model, torch.jit.ScriptModule):
        probe = ScriptProbe(model, modules, inputs, outputs)
        yield _ProbedModel(model, probe, modules, sink)
        return

    def hook(i: int):
        def fn(m, inp, out):
            x = inp[0].detach() if inp else None
            y = out.detach() if isinstance(out, torch.Tensor) else None
            geom = fitted_geometry(m, x, y) if x is not None and y is not None else module_geometry(m)
            sink(i, m, x if inputs else None, y if outputs else None, geom)
        return fn

    handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(modules)]
    try:
        yield model
    finally:
        for h in handles:
            h.remove()
