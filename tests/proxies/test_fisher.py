"""Per-sample gradients for the Fisher proxy: the torch.func (vmap) path gives the loop's numbers
(same seeded label draws), chunks stay bounded, and a model vmap cannot run falls back to the
loop and says so."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import proxies.fisher as fisher
from proxies.base import ProxyContext
from proxies.discovery import discover_layers
from proxies.fisher import FisherProxy, gradient_moments
from proxies.tasks import ClassifierTask, EmbeddingTask
from search.formats import make_formats


class SameCNN(nn.Module):
    """Depthwise/pointwise convs with "same" padding and BatchNorm (eval mode), a Linear head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding="same")
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding="same", groups=8)
        self.pw = nn.Conv2d(8, 16, 1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        h = torch.relu(self.bn(self.stem(x)))
        h = torch.relu(self.pw(torch.relu(self.dw(h))))
        return self.fc(h.mean((2, 3)))


def _ctx(model, task, batches, example, seed=0):
    pairs = discover_layers(model, example)
    return ProxyContext(model, [p[0] for p in pairs], [p[1] for p in pairs], task, batches,
                        make_formats([2, 4, 16], group_size=8), seed)


@pytest.fixture(scope="module")
def cnn_ctx():
    torch.manual_seed(0)
    model = SameCNN()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(1)
    task = ClassifierTask()
    batches = task.prepare(model, [{"x": torch.randn(n, 3, 6, 6, generator=g)} for n in (9, 9, 5)])
    return _ctx(model, task, batches, lambda m: m(torch.zeros(1, 3, 6, 6)))


def _same(a, b):
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("cap", [23, 14])
def test_vmap_equals_loop_on_a_cnn(cnn_ctx, cap):
    info_l, info_v = {}, {}
    m1l, m2l, nl = gradient_moments(cnn_ctx, cap, info=info_l, method="loop")
    m1v, m2v, nv = gradient_moments(cnn_ctx, cap, info=info_v, method="vmap")
    assert nl == nv == cap and info_l["per_sample_gradients"] == "loop" and info_v["per_sample_gradients"] == "vmap"
    _same(m1l, m1v)
    _same(m2l, m2v)
    assert all(float(s.sum()) > 0 for s in m2v)


def test_small_chunks_give_the_same_numbers(cnn_ctx, monkeypatch):
    want = gradient_moments(cnn_ctx, 20, method="vmap")
    monkeypatch.setattr(fisher, "MAX_CHUNK", 2)
    got = gradient_moments(cnn_ctx, 20, method="vmap")
    _same(want[0], got[0])
    _same(want[1], got[1])


def test_vmap_equals_loop_on_the_digits_cnn():
    from workers import digits
    model = digits.load()
    for p in model.parameters():
        p.requires_grad_(False)
    x, _ = digits.split("calib")
    task = ClassifierTask()
    batches = task.prepare(model, [{"x": a} for a in x[:48].split(20)])
    ctx = _ctx(model, task, batches, lambda m: m(torch.zeros(1, 1, 8, 8)), seed=3)
    loop, vm = gradient_moments(ctx, 48, method="loop"), gradient_moments(ctx, 48, method="vmap")
    _same(loop[1], vm[1])
    assert loop[2] == vm[2] == 48


def test_the_table_says_which_path_ran(cnn_ctx):
    table = FisherProxy(max_samples=16).compute(cnn_ctx)
    assert table.diagnostics["per_sample_gradients"] == "vmap" and table.diagnostics["samples"] == 16
    assert np.all(table.values[:, :2] > 0) and np.all(table.values[:, -1] == 0)


def test_torchscript_falls_back_to_the_loop(cnn_ctx):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(cnn_ctx.model)
    example = lambda m: m(torch.zeros(1, 3, 6, 6))
    ctx = _ctx(scripted, cnn_ctx.task, cnn_ctx.batches, example)
    if not ctx.modules:
        pytest.skip("layer discovery does not see this TorchScript module's layers")
    info = {}
    got = gradient_moments(ctx, 12, info=info)
    assert info["per_sample_gradients"] == "single (one sample per backward; vmap failed: _NoVmap: TorchScript module)"
    want = gradient_moments(ctx, 12, method="loop")
    _same(want[1], got[1])


class DataDependent(nn.Module):
    """Python control flow on a tensor's value: vmap cannot run it."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        if float(x.sum()) > 1e9:
            return self.fc(x) * 2
        return self.fc(x)


def test_data_dependent_control_flow_falls_back_with_the_reason():
    torch.manual_seed(0)
    model = DataDependent().eval()
    task = ClassifierTask()
    batches = task.prepare(model, [{"x": torch.randn(6, 4)}])
    ctx = _ctx(model, task, batches, None)
    info = {}
    got = gradient_moments(ctx, 6, info=info)
    assert info["per_sample_gradients"].startswith("single (one sample per backward; vmap failed: RuntimeError")
    _same(gradient_moments(ctx, 6, method="loop")[1], got[1])
    with pytest.raises(Exception):
        gradient_moments(ctx, 6, method="vmap")


class FixedBatch(DataDependent):
    """Runs only whole batches (like a program traced at a fixed batch size)."""

    def forward(self, x):
        if x.shape[0] < 2:
            raise RuntimeError("this model needs the batch size it was traced with")
        return super().forward(x)


def test_a_model_that_cannot_run_one_sample_falls_back_to_the_loop():
    torch.manual_seed(0)
    model = FixedBatch().eval()
    task = ClassifierTask()
    batches = task.prepare(model, [{"x": torch.randn(6, 4)}])
    ctx = _ctx(model, task, batches, None)
    info = {}
    got = gradient_moments(ctx, 6, info=info)
    why = info["per_sample_gradients"]
    assert why.startswith("loop (vmap failed: ") and "single failed: RuntimeError: this model needs the batch" in why
    _same(gradient_moments(ctx, 6, method="loop")[1], got[1])
    assert got[2] == 6


class TinyEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(30, 8)
        self.lin = nn.Linear(8, 8)

    def forward(self, input_ids, attention_mask):
        from transformers.modeling_outputs import BaseModelOutput
        return BaseModelOutput(last_hidden_state=torch.tanh(self.lin(self.emb(input_ids))))


def test_embedding_task_vmap_equals_loop():
    torch.manual_seed(0)
    model = TinyEncoder().eval()
    task = EmbeddingTask()
    ids = torch.randint(0, 30, (7, 5))
    mask = torch.ones(7, 5, dtype=torch.long)
    mask[3:, 4:] = 0
    batches = task.prepare(model, [{"input_ids": ids, "attention_mask": mask}])
    ctx = _ctx(model, task, batches, None)
    info = {}
    vm, loop = gradient_moments(ctx, 7, info=info), gradient_moments(ctx, 7, method="loop")
    assert info["per_sample_gradients"] == "vmap"
    _same(loop[1], vm[1])
