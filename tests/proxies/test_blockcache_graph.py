"""The graph-suffix cache of the measured proxy on torch.export programs: tables equal those of
plain full runs, for any subset and order of rows, at an operating point, with a layer module
called twice, with a static batch baked into the program; and the suffix really skips the
prefix (counted with a hook, no timing)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from proxies import blockcache
from proxies.base import ProxyContext
from proxies.discovery import discover_layers
from proxies.measured import MeasuredProxy
from proxies.tasks import ClassifierTask
from search.formats import make_formats
from workers.graphs import load_export

FORMATS = make_formats([2, 3, 16], group_size=8)


class Net(nn.Module):
    """stem conv+BN → residual block (depthwise + pointwise, BN) → a conv applied twice (one
    module, two calls) → pooled Linear head."""

    def __init__(self, flatten_batch: bool = False):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.pw = nn.Conv2d(8, 8, 1)
        self.twice = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 5)
        self.flatten_batch = flatten_batch

    def forward(self, x):
        h = torch.relu(self.bn0(self.stem(x)))
        h = h + self.pw(torch.relu(self.bn1(self.dw(h))))
        h = torch.relu(self.twice(torch.relu(self.twice(h))))
        h = h.mean((2, 3))
        if self.flatten_batch:
            h = h.reshape(1, -1)  # bakes the export batch (1) into the program
        return self.head(h)


def _randomize_bn(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def exported(tmp_path, flatten_batch: bool = False):
    torch.manual_seed(0)
    model = Net(flatten_batch).eval()
    _randomize_bn(model)
    ep = torch.export.export(model, (torch.randn(1, 3, 16, 16),))
    path = tmp_path / "net.pt2"
    torch.export.save(ep, path)
    loaded, shape = load_export(path)
    assert shape == (3, 16, 16)
    return loaded


def context(model: nn.Module) -> ProxyContext:
    g = torch.Generator().manual_seed(8)
    task = ClassifierTask()
    # 20 samples run in chunks of 8 (8, 8, 4); 5 in one program call
    raw = [{"x": torch.randn(n, 3, 16, 16, generator=g)} for n in (20, 5)]
    batches = task.prepare(model, raw)
    pairs = discover_layers(model, lambda m: m(torch.zeros(1, 3, 16, 16)))
    return ProxyContext(model, [p[0] for p in pairs], [p[1] for p in pairs], task, batches, FORMATS)


@pytest.fixture
def graph_ctx(tmp_path):
    model = exported(tmp_path)
    assert model.batch is None  # the export batch was freed
    return context(model)


def plain_table(ctx: ProxyContext, monkeypatch, **params) -> np.ndarray:
    with monkeypatch.context() as mp:
        mp.setattr(blockcache, "GRAPH_SUFFIX", False)
        table = MeasuredProxy(**params).compute(ctx)
    assert table.diagnostics["trunk"] == ""
    return table.values


def test_graph_cache_equals_full_runs(graph_ctx, monkeypatch):
    ctx = graph_ctx
    assert [l.name for l in ctx.layers] == ["stem", "dw", "pw", "twice", "head"]
    before = [m.weight.detach().clone() for m in ctx.modules]
    table = MeasuredProxy().compute(ctx)
    assert table.diagnostics["trunk"] == "graph"
    want = plain_table(ctx, monkeypatch)
    np.testing.assert_allclose(table.values, want, rtol=1e-5, atol=1e-12)
    assert np.all(table.values[:, :2] > 0) and np.all(table.values[:, 2] == 0)
    for m, w in zip(ctx.modules, before):
        assert torch.equal(m.weight, w)
    assert "forward" not in ctx.model.__dict__ and "_run" not in ctx.model.__dict__  # unpatched


def test_graph_cache_shuffled_subset_of_rows(graph_ctx, monkeypatch):
    ctx = graph_ctx
    rows = [4, 0, 3]
    values = MeasuredProxy(layers=rows).compute(ctx).values
    assert np.all(values[[1, 2]] == 0)
    np.testing.assert_allclose(values, plain_table(ctx, monkeypatch, layers=rows), rtol=1e-5, atol=1e-12)
    full = MeasuredProxy().compute(ctx).values
    np.testing.assert_allclose(values[rows], full[rows], rtol=1e-5, atol=1e-12)


def test_graph_cache_going_back_restarts_from_the_inputs(graph_ctx):
    ctx = graph_ctx
    ran = []
    cache = blockcache.prefix_cache(ctx.model, lambda bi: ctx.task.loss(ctx.model, ctx.batches[bi]), len(ctx.batches))
    with torch.no_grad():
        plain = [float(ctx.task.loss(ctx.model, b)) for b in ctx.batches]
        for name in ("head", "stem", "twice", "dw"):  # forward, back, forward, back
            p = cache.block_of(name)
            ran.append(p)
            with cache.skip_until(p):
                for bi, b in enumerate(ctx.batches):
                    cache.current = bi
                    assert float(ctx.task.loss(ctx.model, b)) == plain[bi]
    assert 0 < ran[1] < ran[3] < ran[2] < ran[0]


def test_graph_cache_at_an_operating_point(graph_ctx, monkeypatch):
    ctx = graph_ctx
    label = FORMATS[1].label
    values = MeasuredProxy(context=label).compute(ctx).values
    np.testing.assert_allclose(values, plain_table(ctx, monkeypatch, context=label), rtol=1e-5, atol=1e-12)


def test_graph_cache_starts_at_the_first_call_of_a_reused_layer(graph_ctx):
    ctx = graph_ctx
    gm = ctx.model.program
    calls = [i for i, n in enumerate(gm.graph.nodes) if n.op == "call_module" and n.target == "twice"]
    assert len(calls) == 2  # one module, called twice
    cache = blockcache.prefix_cache(ctx.model, lambda bi: ctx.task.loss(ctx.model, ctx.batches[bi]), len(ctx.batches))
    assert cache.block_of("twice") == calls[0]
    assert 0 < cache.block_of("stem") < cache.block_of("dw") < cache.block_of("pw") < calls[0] < cache.block_of("head")


def test_graph_cache_skips_the_prefix(graph_ctx, monkeypatch):
    ctx = graph_ctx
    stem = ctx.model.get_submodule("stem")
    calls = []
    hook = stem.register_forward_hook(lambda *a: calls.append(1))
    try:
        per_run = 3 + 1  # program calls per pass over the data: chunks 8, 8, 4 and one of 5
        values = MeasuredProxy(layers=[4]).compute(ctx).values
        # record the inputs (that pass gives the base loss), advance the state: never again per format
        assert len(calls) == 2 * per_run
        calls.clear()
        want = plain_table(ctx, monkeypatch, layers=[4])
        assert len(calls) == (1 + 2) * per_run  # the base loss and two formats, all in full
    finally:
        hook.remove()
    np.testing.assert_allclose(values, want, rtol=1e-5, atol=1e-12)


def test_graph_cache_with_a_static_batch(tmp_path, monkeypatch):
    model = exported(tmp_path, flatten_batch=True)
    assert model.batch == 1  # the batch is baked in: every sample is one program call
    ctx = context(model)
    table = MeasuredProxy(layers=[3, 1]).compute(ctx)
    assert table.diagnostics["trunk"] == "graph"
    np.testing.assert_allclose(table.values, plain_table(ctx, monkeypatch, layers=[3, 1]), rtol=1e-5, atol=1e-12)


def test_inputs_other_than_the_recorded_batch_run_in_full(graph_ctx):
    ctx = graph_ctx
    cache = blockcache.prefix_cache(ctx.model, lambda bi: ctx.task.loss(ctx.model, ctx.batches[bi]), len(ctx.batches))
    recorded = ctx.batches[0]["x"]
    x = recorded.clone()  # equal values, another tensor: not the recorded input
    calls = []
    hook = ctx.model.get_submodule("stem").register_forward_hook(lambda *a: calls.append(1))
    try:
        with torch.no_grad(), cache.skip_until(cache.block_of("head")):
            cache.current = 0
            n0 = len(calls)
            got = ctx.model(x)
            n1 = len(calls)
            replayed = ctx.model(recorded)
            n2 = len(calls)
            cache.current = 1  # the recorded input of another batch: in full too
            other = ctx.model(recorded)
            n3 = len(calls)
    finally:
        hook.remove()
    assert n1 - n0 == 3 and n2 == n1 and n3 - n2 == 3  # 20 samples = 3 program calls
    assert torch.equal(got, replayed) and torch.equal(got, other)


class EarlyRead(nn.Module):
    """The last layer's weight is also read (functionally) right at the start."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        s = self.head.weight.abs().mean()
        h = torch.relu(self.b(torch.relu(self.a(x))))
        return self.head(h.mean((2, 3)) * s)


def test_graph_cache_starts_at_a_functional_read_of_the_weight(tmp_path, monkeypatch):
    torch.manual_seed(1)
    ep = torch.export.export(EarlyRead().eval(), (torch.randn(1, 3, 16, 16),))
    torch.export.save(ep, tmp_path / "early.pt2")
    model, _ = load_export(tmp_path / "early.pt2")
    ctx = context(model)
    assert [l.name for l in ctx.layers] == ["a", "b", "head"]
    cache = blockcache.prefix_cache(ctx.model, lambda bi: ctx.task.loss(ctx.model, ctx.batches[bi]), len(ctx.batches))
    assert 0 < cache.block_of("head") < cache.block_of("a")  # the abs() of the weight comes first
    values = MeasuredProxy().compute(ctx).values
    np.testing.assert_allclose(values, plain_table(ctx, monkeypatch), rtol=1e-5, atol=1e-12)
    assert np.all(values[2, :2] > 0)
