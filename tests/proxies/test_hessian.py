"""Sensitivity proxies on models whose answer is known.

Hutchinson against a quadratic loss ½·Σ_l w_lᵀA_l w_l (Hessian block A_l, so the trace is
known exactly); Fisher against linear regression (per-sample gradient r_i·x_i in closed form);
orthogonality against two perfectly redundant layers (CKA = 1); output error against a direct
computation; measured against a direct one-layer-at-a-time measurement, with and without the
block-prefix cache."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from proxies.base import ProxyContext, mean_loss, swapped
from proxies.discovery import discover_layers
from proxies.fisher import FisherProxy
from proxies.hessian import HessianTraceProxy
from proxies.measured import MeasuredProxy
from proxies.orthogonality import OrthogonalityProxy
from proxies.output_error import OutputErrorProxy
from proxies.quant import quantize_module_weight
from proxies.registry import PROXIES, get_proxy
from proxies.tasks import ClassifierTask, Task
from search.formats import Format, make_formats, storage_bits

FORMATS = make_formats([2, 3, 4, 8, 16], group_size=4)


def context(model: nn.Module, task: Task, batches: list[dict], formats=FORMATS, example=None, seed: int = 0) -> ProxyContext:
    pairs = discover_layers(model, example)
    return ProxyContext(model, [p[0] for p in pairs], [p[1] for p in pairs], task, batches, formats, seed)


# ---------------------------------------------------------------- Hutchinson on a quadratic


class Quadratic(nn.Module):
    """Two layers whose weights are the variables of the quadratic."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.a = nn.Linear(4, 3, bias=False)
        self.b = nn.Linear(3, 2, bias=False)
        for m in (self.a, self.b):
            with torch.no_grad():
                m.weight.copy_(torch.randn(m.weight.shape, generator=g))


def spd(n: int, seed: int) -> torch.Tensor:
    m = torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (m @ m.t() / n + torch.eye(n, dtype=torch.float64)).float()


class QuadraticTask(Task):
    """loss = c_batch · ½·Σ_l w_lᵀ A_l w_l: Hessian block of layer l is c·A_l."""

    metric = "loss"

    def __init__(self, mats: list[torch.Tensor]):
        self.mats = mats

    def loss(self, model, batch):
        total = sum(0.5 * m.weight.reshape(-1) @ (A @ m.weight.reshape(-1)) for m, A in zip((model.a, model.b), self.mats))
        return batch["c"][0] * total

    def sample_losses(self, model, batch, gen):
        return self.loss(model, batch).reshape(1)

    def evaluate(self, model, batches):
        return {"loss": float(self.loss(model, batches[0]))}


def hutchinson_sd(A: torch.Tensor) -> float:
    """Standard deviation of vᵀAv for Rademacher v: sqrt(2·Σ_{i≠j} A_ij²)."""
    off = A.double() - torch.diag(torch.diag(A.double()))
    return math.sqrt(2 * float((off ** 2).sum()))


@pytest.fixture
def quadratic():
    model = Quadratic()
    mats = [spd(12, 1), spd(6, 2)]
    return model, mats, context(model, QuadraticTask(mats), [{"c": torch.ones(1)}])


def test_hutchinson_trace_matches_known_trace(quadratic):
    _, mats, ctx = quadratic
    proxy = HessianTraceProxy(tol=1e-6, min_probes=8, max_probes=300)
    tr, se, probes = proxy.traces(ctx)
    assert probes == 300  # a tiny tolerance is never met: all probes are used
    truth = np.array([float(torch.trace(A)) for A in mats])
    assert np.all(se > 0)
    assert np.all(np.abs(tr - truth) < 4 * se), (tr, truth, se)
    # the reported standard error is the real one: sd(vᵀAv)/√n
    expected_se = np.array([hutchinson_sd(A) for A in mats]) / np.sqrt(probes)
    assert np.all((se > 0.7 * expected_se) & (se < 1.4 * expected_se)), (se, expected_se)


def test_hutchinson_stops_early_when_tolerance_is_loose(quadratic):
    _, _, ctx = quadratic
    proxy = HessianTraceProxy(tol=0.2, min_probes=4, max_probes=200)
    tr, se, probes = proxy.traces(ctx)
    assert 4 <= probes < 200
    assert np.max(se / np.abs(tr)) < 0.2  # it stopped because every layer met the tolerance


def test_hutchinson_is_deterministic_for_a_seed(quadratic):
    _, _, ctx = quadratic
    proxy = HessianTraceProxy(tol=0.2, min_probes=4, max_probes=50)
    a, b = proxy.traces(ctx), proxy.traces(ctx)
    assert np.array_equal(a[0], b[0]) and a[2] == b[2]


def test_hutchinson_averages_the_hessian_over_batches():
    # batch curvatures 1 and 3: the data-averaged Hessian block is 2·A_l
    model, mats = Quadratic(), [spd(12, 1), spd(6, 2)]
    ctx = context(model, QuadraticTask(mats), [{"c": torch.ones(1)}, {"c": torch.full((1,), 3.0)}])
    tr, se, probes = HessianTraceProxy(tol=1e-6, min_probes=8, max_probes=200).traces(ctx)
    truth = np.array([2 * float(torch.trace(A)) for A in mats])
    assert probes == 200
    assert np.all(np.abs(tr - truth) < 4 * se), (tr, truth, se)


def test_hutchinson_unused_layer_has_zero_trace():
    class WithUnused(Quadratic):
        def __init__(self):
            super().__init__()
            self.c = nn.Linear(3, 3)  # never touched by the loss

    mats = [spd(12, 1), spd(6, 2)]
    ctx = context(WithUnused(), QuadraticTask(mats), [{"c": torch.ones(1)}])
    assert [l.name for l in ctx.layers] == ["a", "b", "c"]
    tr, se, probes = HessianTraceProxy(tol=0.2, min_probes=4, max_probes=100).traces(ctx)
    assert tr[2] == 0 and se[2] == 0 and probes < 100
    truth = np.array([float(torch.trace(A)) for A in mats])
    assert np.all(np.abs(tr[:2] - truth) < 4 * se[:2])


def test_hessian_table_is_half_trace_per_weight_times_quant_error(quadratic):
    model, mats, ctx = quadratic
    before = [m.weight.detach().clone() for m in ctx.modules]
    table = HessianTraceProxy(tol=1e-6, min_probes=8, max_probes=64).compute(ctx)
    d = table.diagnostics
    assert d["probes"] == 64 and len(d["trace"]) == 2 and all(s > 0 for s in d["trace_stderr"])
    for i, (m, layer) in enumerate(zip(ctx.modules, ctx.layers)):
        for k, f in enumerate(ctx.formats):
            dw2 = 0.0 if f.is_float else float(((quantize_module_weight(m, f) - m.weight.detach()) ** 2).sum())
            assert table.values[i, k] == pytest.approx(0.5 * d["trace"][i] / layer.numel * dw2, rel=1e-9, abs=1e-12)
            assert table.stderr[i, k] == pytest.approx(0.5 * d["trace_stderr"][i] / layer.numel * dw2, rel=1e-9, abs=1e-12)
    float_col = [f.is_float for f in ctx.formats].index(True)
    assert np.all(table.values[:, float_col] == 0)
    assert np.all(np.diff(table.values[:, :float_col], axis=1) < 0)  # more bits, less predicted loss
    # the model is left as it was: same weights, same requires_grad
    for m, w in zip(ctx.modules, before):
        assert torch.equal(m.weight, w)
    assert all(m.weight.requires_grad for m in ctx.modules)  # nn.Linear default, untouched
    for m in ctx.modules:
        m.weight.requires_grad_(False)
    HessianTraceProxy(tol=0.5, min_probes=2, max_probes=4).traces(ctx)
    assert not any(m.weight.requires_grad for m in ctx.modules)


# ---------------------------------------------------------------- Fisher on linear regression


class TwoInputs(nn.Module):
    """out = l1(x1) + l2(x2), scalar; each layer is one row of weights."""

    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(4, 1, bias=False)
        self.l2 = nn.Linear(8, 1, bias=False)

    def forward(self, x1, x2):
        return (self.l1(x1) + self.l2(x2)).squeeze(-1)


class RegressionTask(Task):
    metric = "mse"

    def loss(self, model, batch):
        return self.sample_losses(model, batch, None).mean()

    def sample_losses(self, model, batch, gen):
        return 0.5 * (model(batch["x1"], batch["x2"]) - batch["y"]) ** 2

    def evaluate(self, model, batches):
        return {"mse": float(np.mean([float(self.loss(model, b)) for b in batches]))}


def regression_batches(n: int = 24):
    g = torch.Generator().manual_seed(5)
    x1 = torch.randn(n, 4, generator=g)
    x1[:, 0] = 0.0  # the first weight of l1 never gets a gradient: its Fisher entry is 0
    x2 = torch.randn(n, 8, generator=g)
    y = torch.randn(n, generator=g)
    return [{"x1": x1[:10], "x2": x2[:10], "y": y[:10]}, {"x1": x1[10:], "x2": x2[10:], "y": y[10:]}]


def closed_form_fisher(model: TwoInputs, batches, n: int) -> list[np.ndarray]:
    x1 = torch.cat([b["x1"] for b in batches])[:n].double()
    x2 = torch.cat([b["x2"] for b in batches])[:n].double()
    y = torch.cat([b["y"] for b in batches])[:n].double()
    with torch.no_grad():
        r = x1 @ model.l1.weight.double()[0] + x2 @ model.l2.weight.double()[0] - y  # residuals
    return [((r[:, None] * x) ** 2).mean(0).numpy()[None, :] for x in (x1, x2)]  # E[(r·x)²]


@pytest.mark.parametrize("cap", [64, 7])
def test_fisher_matches_closed_form(cap):
    model, batches = TwoInputs(), regression_batches()
    ctx = context(model, RegressionTask(), batches, formats=make_formats([2, 4, 16], group_size=4))
    table = FisherProxy(max_samples=cap).compute(ctx)
    n = min(cap, 24)
    assert table.diagnostics["samples"] == n
    fisher = closed_form_fisher(model, batches, n)
    assert fisher[0][0, 0] == 0
    for i, m in enumerate(ctx.modules):
        for k, f in enumerate(ctx.formats):
            dw = 0.0 if f.is_float else (quantize_module_weight(m, f) - m.weight).detach().double().numpy()
            want = 0.5 * float((fisher[i] * dw ** 2).sum())
            assert table.values[i, k] == pytest.approx(want, rel=1e-4, abs=1e-10)
    assert np.all(table.values >= 0)
    assert np.all(table.values[:, -1] == 0)  # the float column
    assert table.stderr is None


def test_fisher_is_zero_where_gradients_vanish():
    # x1 ≡ 0: layer l1 never gets a gradient, so its sensitivity is exactly zero for every format
    model, batches = TwoInputs(), regression_batches()
    for b in batches:
        b["x1"] = torch.zeros_like(b["x1"])
    ctx = context(model, RegressionTask(), batches, formats=make_formats([2, 8], group_size=4))
    values = FisherProxy().compute(ctx).values
    assert np.all(values[0] == 0) and np.all(values[1] > 0)


# ---------------------------------------------------------------- orthogonality


class Chain(nn.Module):
    def __init__(self, redundant: bool):
        super().__init__()
        self.l1 = nn.Linear(6, 5)
        self.l2 = nn.Linear(5, 5)
        self.l3 = nn.Linear(5, 4)
        if redundant:  # l2's features are 3× l1's: linear CKA = 1
            with torch.no_grad():
                self.l2.weight.copy_(3 * torch.eye(5))
                self.l2.bias.zero_()

    def forward(self, x):
        return self.l3(torch.tanh(self.l2(self.l1(x))))


class FeatureTask(Task):
    metric = "mse"

    def loss(self, model, batch):
        return (model(batch["x"]) ** 2).mean()

    def sample_losses(self, model, batch, gen):
        return (model(batch["x"]) ** 2).mean(-1)

    def evaluate(self, model, batches):
        return {"mse": float(self.loss(model, batches[0]))}


def feature_batches(n: int = 40):
    return [{"x": torch.randn(n, 6, generator=torch.Generator().manual_seed(6))}]


def test_orthogonality_redundant_pair_has_cka_one():
    torch.manual_seed(0)
    model = Chain(redundant=True)
    ctx = context(model, FeatureTask(), feature_batches(), formats=make_formats([2, 4, 8, 16], group_size=4))
    proxy = OrthogonalityProxy(beta=0.5, samples=32)
    grams = proxy.grams(ctx)
    cka = lambda a, b: float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b)))
    assert cka(grams[0], grams[1]) == pytest.approx(1.0, abs=1e-6)
    assert cka(grams[0], grams[2]) < 1 - 1e-3
    table = proxy.compute(ctx)
    theta = np.array(table.diagnostics["theta"])
    # θ_i = exp(−β·Σ_{j≠i} ORM_ij): l1 and l2 see the same features, so their θ are equal
    assert theta[0] == pytest.approx(theta[1], rel=1e-6)
    assert theta[0] == pytest.approx(math.exp(-0.5 * (1 + cka(grams[0], grams[2]))), rel=1e-6)
    w = np.array(table.diagnostics["weight"])
    assert w == pytest.approx([theta.mean(), theta[1:].mean(), theta[2]], rel=1e-12)


def test_orthogonality_values_decrease_with_bits():
    torch.manual_seed(1)
    ctx = context(Chain(redundant=False), FeatureTask(), feature_batches(), formats=make_formats([2, 3, 4, 8, 16], group_size=None))
    table = OrthogonalityProxy().compute(ctx)
    v = table.values
    assert np.all(v[:, -1] == 0)  # float
    assert np.all(np.diff(v, axis=1) < 0)  # per-channel overhead is small: 8 bits costs less than float
    theta = np.array(table.diagnostics["theta"])
    assert np.all((theta > 0) & (theta <= 1))
    # linear in effective bits: Ω_i(k) = w_i·(16 − b_eff)
    w = np.array(table.diagnostics["weight"])
    for i, layer in enumerate(ctx.layers):
        for k, f in enumerate(ctx.formats):
            assert v[i, k] == pytest.approx(w[i] * (16 - storage_bits(f, layer.numel, layer.in_features) / layer.numel))


# ---------------------------------------------------------------- output error


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 16, 8, bias=False)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def image_batches():
    g = torch.Generator().manual_seed(7)
    return [{"x": torch.randn(12, 2, 4, 4, generator=g)}, {"x": torch.randn(5, 2, 4, 4, generator=g)}]


def test_output_error_decreases_with_bits_and_matches_direct():
    torch.manual_seed(2)
    model, batches = Mixed(), image_batches()
    ctx = context(model, FeatureTask(), batches, formats=make_formats([2, 3, 4, 8, 16], group_size=4))
    table = OutputErrorProxy().compute(ctx)
    v = table.values
    assert np.all(v[:, -1] == 0) and np.all(v[:, :-1] > 0)
    assert np.all(np.diff(v, axis=1) < 0)
    assert np.all(v[:, 0] < 1.0) and np.all(v[:, 3] < 1e-3)  # 8 bits: tiny relative error
    # fc (no bias): ‖X(Ŵ−W)ᵀ‖² / ‖XWᵀ‖² on its own inputs, the ReLU'd conv features
    with torch.no_grad():
        x = torch.cat([torch.relu(model.conv(b["x"])).flatten(1) for b in batches])
        y = x @ model.fc.weight.t()
        for k, f in enumerate(ctx.formats[:-1]):
            yq = x @ quantize_module_weight(model.fc, f).t()
            assert v[1, k] == pytest.approx(float(((yq - y) ** 2).sum() / (y ** 2).sum()), rel=1e-4)


def test_output_error_chunking_does_not_change_values():
    torch.manual_seed(3)
    model, batches = Mixed(), image_batches()
    ctx = context(model, FeatureTask(), batches, formats=make_formats([2, 4], group_size=4))
    a = OutputErrorProxy(chunk=16).compute(ctx).values
    b = OutputErrorProxy(chunk=1).compute(ctx).values
    np.testing.assert_allclose(a, b, rtol=1e-6)


# ---------------------------------------------------------------- measured (and the block-prefix cache)


def direct_measurement(ctx: ProxyContext, rows: list[int], context_fmt: Format | None = None) -> np.ndarray:
    """Quantize one layer at a time (others float, or in ``context_fmt``) and measure the loss change."""
    values = np.zeros((len(ctx.layers), len(ctx.formats)))
    quantized = [[quantize_module_weight(m, f) for f in ctx.formats] for m in ctx.modules]  # from float weights
    c = None if context_fmt is None else ctx.formats.index(context_fmt)
    others = [q[c] if c is not None else m.weight.detach().clone() for m, q in zip(ctx.modules, quantized)]
    with swapped(ctx.modules, others):
        base = mean_loss(ctx)
        for i in rows:
            for k, f in enumerate(ctx.formats):
                if k == c or (c is None and f.is_float):
                    continue
                with swapped([ctx.modules[i]], [quantized[i][k]]):
                    values[i, k] = mean_loss(ctx) - base
    return values


@pytest.fixture(scope="module")
def digits_ctx():
    from workers import digits
    from workers.sources import load_model
    lm = load_model("builtin:digits-cnn")
    x, y = digits.split("calib")
    batches = lm.task.prepare(lm.model, [{"x": x[:40], "y": y[:40]}, {"x": x[40:64], "y": y[40:64]}])
    return context(lm.model, lm.task, batches, formats=make_formats([2, 4, 16], group_size=64),
                   example=lambda m: m(torch.zeros(1, 1, 8, 8)))


def test_measured_chunk_fills_only_its_rows_and_equals_direct(digits_ctx):
    ctx = digits_ctx
    assert [l.name for l in ctx.layers] == ["conv1", "conv2", "dw", "pw", "fc1", "fc2"]
    before = [m.weight.detach().clone() for m in ctx.modules]
    table = MeasuredProxy(layers=[1, 4]).compute(ctx)
    v = table.values
    assert np.all(v[[0, 2, 3, 5]] == 0)
    assert np.all(v[[1, 4], :2] != 0) and np.all(v[:, 2] == 0)
    np.testing.assert_allclose(v, direct_measurement(ctx, [1, 4]), rtol=1e-6, atol=1e-9)
    assert v[1, 0] > v[1, 1] and v[4, 0] > v[4, 1]  # 2 bits hurts more than 4
    assert table.diagnostics["base_loss"] == pytest.approx(mean_loss(ctx), rel=1e-9)
    for m, w in zip(ctx.modules, before):
        assert torch.equal(m.weight, w)


def test_measured_predicts_a_far_finer_cell_from_the_coarser_one(digits_ctx):
    """With 2- and 8-bit formats the 8-bit weight error is thousands of times smaller: that
    cell is predicted from the 2-bit one (scaled by the error ratio), not measured, and lands
    near the direct measurement; ``extrapolate=None`` measures it exactly."""
    import dataclasses
    from proxies.measured import predicted_from
    ctx = dataclasses.replace(digits_ctx, formats=make_formats([2, 8], group_size=64))
    table = MeasuredProxy(layers=[1, 4]).compute(ctx)
    direct = direct_measurement(ctx, [1, 4])
    assert table.diagnostics["predicted_cells"] == 2 and table.diagnostics["forward_passes"] == 3
    np.testing.assert_allclose(table.values[:, 0], direct[:, 0], rtol=1e-6, atol=1e-9)  # measured
    # predicted: positive, negligible beside the coarse cell and as near the direct measurement
    # as that measurement's own float32 resolution allows (an 8-bit cell's loss change on 64
    # samples is ~1e-7, at the rounding level of the loss: 0.23x and 1.7x on an AVX-512 EPYC)
    coarse, fine = table.values[[1, 4], 0], table.values[[1, 4], 1]
    assert np.all(fine > 0) and np.all(fine < 0.01 * coarse)
    assert np.all(np.abs(fine - direct[[1, 4], 1]) < 1e-3 * coarse), (fine, direct[[1, 4], 1])
    exact = MeasuredProxy(layers=[1, 4], extrapolate=None).compute(ctx)
    np.testing.assert_allclose(exact.values, direct, rtol=1e-6, atol=1e-9)
    assert exact.diagnostics["predicted_cells"] == 0 and table.params["extrapolate"] == 64
    # the plan: coarsest measured first; a cell is predicted from the finest measured cell far enough above it
    assert predicted_from({0: 100.0, 1: 25.0, 2: 0.3, 3: 0.2}, 64) == {2: 1, 3: 1}
    assert predicted_from({0: 100.0, 1: 25.0, 2: 0.3}, None) == {}
    assert predicted_from({0: 0.0, 1: 0.0}, 64) == {}  # nothing to scale from


def test_measured_holds_quantized_copies_only_up_to_a_bound(digits_ctx, monkeypatch):
    """A layer's quantized copies are kept between its weight errors and its passes only while
    they fit the bound (a 7B MLP layer in 12 formats would be ~2 GB); past it the measured cells
    quantize again, with the same table."""
    import proxies.measured as measured
    from proxies.measured import weight_errors
    w0 = torch.zeros(4, 8)
    copies = {0: torch.full((4, 8), 2.0), 1: torch.full((4, 8), 1.0), 2: torch.full((4, 8), 0.5)}
    errors, held = weight_errors(copies.__getitem__, [0, 1, 2], w0, held_bytes=2 * 4 * 8 * 4)
    assert errors == {0: 128.0, 1: 32.0, 2: 8.0} and list(held) == [0, 1]
    assert weight_errors(copies.__getitem__, [0, 1, 2], w0, held_bytes=0)[1] == {}
    import dataclasses
    ctx = dataclasses.replace(digits_ctx, formats=make_formats([2, 4, 8], group_size=64))
    kept = MeasuredProxy(layers=[1, 4]).compute(ctx)
    monkeypatch.setattr(measured, "HELD_BYTES", 0)
    again = MeasuredProxy(layers=[1, 4]).compute(ctx)
    np.testing.assert_array_equal(again.values, kept.values)
    assert again.diagnostics["predicted_cells"] == kept.diagnostics["predicted_cells"] > 0


def test_measured_cells_carry_their_paired_standard_errors(digits_ctx):
    """A cell is the mean over the calibration samples of (loss with the layer quantized − loss
    without); its standard error is that of the 64 per-sample differences."""
    from proxies.base import swapped
    ctx = digits_ctx
    table = MeasuredProxy(layers=[1, 4]).compute(ctx)
    se = table.stderr
    assert se is not None and se.shape == table.values.shape
    assert np.all(se[[0, 2, 3, 5]] == 0) and np.all(se[[1, 4], :2] > 0) and np.all(se[:, 2] == 0)

    def per_sample():
        with torch.no_grad():
            return torch.cat([ctx.task.sample_loss_values(ctx.model, b) for b in ctx.batches]).double().numpy()

    base = per_sample()
    w = ctx.modules[1].weight.detach()
    with swapped([ctx.modules[1]], [ctx.quantize(1, ctx.formats[0], w)]):
        diff = per_sample() - base
    assert len(diff) == 64
    assert se[1, 0] == pytest.approx(np.std(diff, ddof=1) / np.sqrt(64), rel=1e-6)
    assert table.values[1, 0] == pytest.approx(diff.mean(), rel=1e-5)
    assert se[1, 0] < table.values[1, 0]  # 2 bits on conv2 is a real loss, not noise


def test_measured_rejects_bad_layer_chunks(digits_ctx):
    with pytest.raises(ValueError, match="out of range"):
        MeasuredProxy(layers=[6]).compute(digits_ctx)
    with pytest.raises(ValueError, match="layers must be a list, got 'fc1'"):
        MeasuredProxy(layers="fc1")
    with pytest.raises(ValueError, match="layer indices"):
        MeasuredProxy(layers=[-1])


class Block(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.fc1 = nn.Linear(d, 2 * d)
        self.fc2 = nn.Linear(2 * d, d)

    def forward(self, h):
        return h + self.fc2(torch.relu(self.fc1(h)))


class TrunkNet(nn.Module):
    """stem → ModuleList of residual blocks (the trunk the prefix cache replays) → head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(8, 16)
        self.blocks = nn.ModuleList([Block(16) for _ in range(4)])
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        h = self.stem(x)
        for blk in self.blocks:
            h = blk(h)
        return self.head(h)


@pytest.fixture
def trunk_ctx():
    torch.manual_seed(4)
    model = TrunkNet().eval()
    g = torch.Generator().manual_seed(8)
    raw = [{"x": torch.randn(n, 8, generator=g), "y": torch.randint(0, 3, (n,), generator=g)} for n in (16, 16, 7)]
    task = ClassifierTask()
    return context(model, task, task.prepare(model, raw), formats=make_formats([2, 3, 16], group_size=8))


def test_measured_with_block_cache_equals_direct(trunk_ctx):
    ctx = trunk_ctx
    table = MeasuredProxy().compute(ctx)
    assert table.diagnostics["trunk"] == "blocks"
    want = direct_measurement(ctx, list(range(len(ctx.layers))))
    np.testing.assert_allclose(table.values, want, rtol=1e-6, atol=1e-9)
    assert np.all(table.values[:, :2] != 0)
    assert all(isinstance(b, Block) for b in ctx.model.blocks)  # the real blocks are back


def test_measured_block_cache_skips_the_prefix(trunk_ctx):
    ctx = trunk_ctx
    calls = []
    hook = ctx.model.blocks[0].register_forward_hook(lambda *a: calls.append(1))
    try:
        last = [i for i, l in enumerate(ctx.layers) if l.name.startswith("blocks.3.")]
        values = MeasuredProxy(layers=last).compute(ctx).values
    finally:
        hook.remove()
    np.testing.assert_allclose(values, direct_measurement(ctx, last), rtol=1e-6, atol=1e-9)
    n_batches, n_measurements = len(ctx.batches), len(last) * 2
    # block 0 runs to record the cache (that pass gives the base loss), not once per measurement
    assert len(calls) < n_batches * (1 + n_measurements)


def test_measured_at_an_operating_point_equals_direct(trunk_ctx):
    ctx = trunk_ctx
    w3 = Format(3, 8)
    table = MeasuredProxy(context=w3.label).compute(ctx)
    want = direct_measurement(ctx, list(range(len(ctx.layers))), context_fmt=w3)
    np.testing.assert_allclose(table.values, want, rtol=1e-6, atol=1e-9)
    assert np.all(table.values[:, 1] == 0)  # the context format itself
    assert table.diagnostics["context"] == "w3g8a"
    with pytest.raises(ValueError, match="not one of the job's formats"):
        MeasuredProxy(context="w5g8a").compute(ctx)


@pytest.mark.integration
def test_measured_block_cache_is_exact_on_minilm():
    from workers.batches import build_batches, plan_for
    from workers.sources import load_model
    lm = load_model("builtin:minilm-l6")
    calib, _, _ = build_batches(lm, plan_for(lm, "pydoc", "pydoc", n_calib=4, n_eval=1, seq_len=16))
    batches = lm.task.prepare(lm.model, calib)
    ctx = context(lm.model, lm.task, batches, formats=[Format(2, 64)])
    rows = [i for i, l in enumerate(ctx.layers) if l.name.startswith("encoder.layer.4.")][:2]
    assert len(rows) == 2
    table = MeasuredProxy(layers=rows).compute(ctx)
    assert table.diagnostics["trunk"] == "encoder.layer"
    want = direct_measurement(ctx, rows)
    assert np.all(want[rows] > 0)
    np.testing.assert_allclose(table.values, want, rtol=1e-5, atol=1e-9)


# ---------------------------------------------------------------- parameters


@pytest.mark.parametrize("name", sorted(PROXIES))
def test_unknown_parameter_names_the_accepted_ones(name):
    cls = PROXIES[name]
    with pytest.raises(ValueError) as err:
        get_proxy(name, no_such_param=1)
    msg = str(err.value)
    assert "no_such_param" in msg
    for accepted in cls.defaults():
        assert accepted in msg


def test_unknown_proxy_names_the_choices():
    with pytest.raises(ValueError, match="unknown proxy 'nope'.*hessian_trace.*measured"):
        get_proxy("nope")


@pytest.mark.parametrize("params", [{"tol": 0}, {"tol": 1.5}, {"min_probes": 1}, {"min_probes": 10, "max_probes": 5}])
def test_hessian_rejects_bad_parameters(params):
    with pytest.raises(ValueError, match="hessian_trace"):
        HessianTraceProxy(**params)


def _tiny_sdpa_bert():
    from transformers import BertConfig, BertModel
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=16, attn_implementation="sdpa")
    return BertModel(cfg, add_pooling_layer=False).eval()


def _double_backward(model) -> None:
    ids = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(0))
    w = model.encoder.layer[0].attention.self.query.weight
    w.requires_grad_(True)
    loss = model(input_ids=ids).last_hidden_state.pow(2).sum()
    (g,) = torch.autograd.grad(loss, [w], create_graph=True)
    torch.autograd.grad((g * torch.ones_like(g)).sum(), [w])


def test_eager_attention_gives_a_sdpa_model_its_double_backward_and_restores_it():
    """Models load on fused attention (SDPA) for speed; it has no double backward, so the
    Hutchinson proxy runs inside ``eager_attention``, which must hand the model back as it was."""
    from proxies.base import eager_attention
    model = _tiny_sdpa_bert()
    assert model.config._attn_implementation == "sdpa"
    with pytest.raises(RuntimeError, match="not implemented"):
        _double_backward(model)
    with eager_attention(model):
        assert model.config._attn_implementation == "eager"
        _double_backward(model)
    assert model.config._attn_implementation == "sdpa"
    with eager_attention(nn.Linear(2, 2)):  # not a transformers model: left alone
        pass
