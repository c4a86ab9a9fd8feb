"""GPTQ: a hand-computed two-column case, the RTN identity when inputs are uncorrelated, the
grid it must stay on, its output error against RTN on calibration data, and the Hessians
it reads from Linear, HF Conv1D and grouped convolutions."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from proxies.gptq import HessianCollector, factor, gptq, input_rows
from proxies.quant import group_params, quantize_on_grid, rtn, to_2d
from proxies.quantizers import GPTQQuantizer, RTNQuantizer, build_quantizer, check_quantizer
from proxies.tasks import ClassifierTask
from search.formats import Format


def out_err(x: torch.Tensor, w: torch.Tensor, wq: torch.Tensor) -> float:
    return float(((x @ (wq - w).t()) ** 2).sum())


def correlated_inputs(n: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g) / d ** 0.5 + torch.eye(d)
    scale = torch.logspace(-1, 1, d)[torch.randperm(d, generator=g)]  # uneven channels, as in LLMs
    return (torch.randn(n, d, generator=g) @ mix) * scale


# ---------------------------------------------------------------- known answers


def test_two_columns_by_hand():
    # per-channel symmetric 2 bits: s = max|w| = 1.0, grid {−2, −1, 0, 1}·1.0
    # column 0: 0.6 → 1 (error Δ₁ = +0.4). OBS update of column 1 with H = [[4, 1.5], [1.5, 1]]:
    # w₂ ← w₂ − Δ₁·H₁₂/H₂₂ = 1.0 − 0.4·1.5 = 0.4 → rounds to 0. RTN would keep 1.
    w = torch.tensor([[0.6, 1.0]])
    h = torch.tensor([[4.0, 1.5], [1.5, 1.0]])
    fmt = Format(2, None, True)
    wq = gptq(w, factor(h, damp=1e-12, act_order=False), fmt)
    assert torch.allclose(wq, torch.tensor([[1.0, 0.0]]))
    assert torch.equal(rtn(w, fmt), torch.tensor([[1.0, 1.0]]))
    # and it is the better answer for this Hessian: ΔᵀHΔ = 0.44 < 0.64
    for q, expect in ((wq, 0.44), (rtn(w, fmt), 0.64)):
        d = (q - w)[0]
        assert float(d @ h @ d) == pytest.approx(expect)


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("fmt", [Format(3, 8), Format(4, None), Format(2, 16, True)])
def test_uncorrelated_inputs_reduce_to_rtn(fmt, act_order):
    # a diagonal Hessian means no column can compensate another: GPTQ is exactly RTN
    w = torch.randn(6, 32, generator=torch.Generator().manual_seed(1))
    h = torch.diag(torch.rand(32, generator=torch.Generator().manual_seed(2)) + 0.5)
    assert torch.allclose(gptq(w, factor(h, 0.01, act_order), fmt), rtn(w, fmt))


@pytest.mark.parametrize("act_order", [False, True])
def test_stays_on_the_priced_grid(act_order):
    # every group holds at most 2^bits distinct values, all on one (fp16 scale, zero) grid
    x = correlated_inputs(512, 64)
    w = torch.randn(8, 64)
    fmt = Format(3, 16)
    wq = gptq(w, factor(x.t() @ x / 512, 0.01, act_order), fmt)
    for grp in wq.reshape(8, 4, 16).reshape(-1, 16):
        vals = torch.unique(grp)
        assert len(vals) <= 8
        step = torch.diff(vals)
        s = step.min()
        assert torch.allclose(step / s, torch.round(step / s), atol=1e-4)


# ---------------------------------------------------------------- better than RTN where it matters


@pytest.mark.parametrize("fmt,act_order", [
    (Format(2, 32), True), (Format(3, 64), False), (Format(3, 64), True), (Format(4, 64), False),
    (Format(4, 64), True), (Format(3, None, True), False), (Format(3, None, True), True), (Format(8, 64), True)])
def test_single_linear_layer_beats_rtn_on_calibration_data(fmt, act_order):
    # (at 2 bits without act-order, GPTQ on these outlier-heavy inputs is worse than RTN —
    # the early low-energy columns push large errors onto the outlier columns; act-order fixes it)
    x = correlated_inputs(1024, 128)
    w = torch.randn(48, 128) * 0.05
    h = x.t() @ x / x.shape[0]
    wq = gptq(w, factor(h, 0.01, act_order), fmt)
    e_gptq, e_rtn = out_err(x, w, wq), out_err(x, w, rtn(w, fmt))
    assert e_gptq < 0.8 * e_rtn, (e_gptq, e_rtn)


def obs_reference(w: torch.Tensor, h: torch.Tensor, fmt: Format, damp: float) -> torch.Tensor:
    """GPTQ written the slow, obvious way: quantize column c, then move its error onto the
    remaining columns with the inverse of the remaining Hessian, recomputed every step."""
    W, cols, g = w.double().clone(), w.shape[1], fmt.group_size
    H = h.double() + damp * h.diagonal().mean() * torch.eye(cols, dtype=torch.float64)
    Q = torch.zeros_like(W)
    for c in range(cols):
        if c % g == 0:
            s, z, lo, hi = group_params(W[:, c:c + g].float(), fmt)
        q = quantize_on_grid(W[:, c:c + 1], s.double(), z.double(), lo, hi)
        Q[:, c:c + 1] = q
        hinv = torch.linalg.inv(H[c:, c:])
        W[:, c:] -= (W[:, c:c + 1] - q) / hinv[0, 0] * hinv[0:1, :]
    return Q


@pytest.mark.parametrize("block_size", [1, 16, 128])
def test_lazy_blocked_updates_equal_the_column_by_column_definition(block_size):
    x = correlated_inputs(512, 48)
    w = torch.randn(6, 48, generator=torch.Generator().manual_seed(3)) * 0.05
    h = x.t() @ x / 512
    fmt = Format(3, 16)
    got = gptq(w, factor(h, 0.01, act_order=False), fmt, block_size)
    assert torch.allclose(got.double(), obs_reference(w, h, fmt, 0.01), atol=1e-5)


def test_dead_inputs_and_singular_hessian():
    # a column never active gets weight 0 (it cannot matter), and a rank-deficient Hessian
    # (fewer rows than inputs) still factors because damping is raised until it does
    x = correlated_inputs(8, 32)
    x[:, 5] = 0
    f = factor(x.t() @ x / 8, damp=1e-9, act_order=True)
    assert f.dead[5] and f.damp > 1e-9
    wq = gptq(torch.randn(4, 32), f, Format(4, 8))
    assert torch.isfinite(wq).all() and (wq[:, 5] == 0).all()


# ---------------------------------------------------------------- Hessians from modules


def test_hessian_of_linear_and_conv1d_layouts():
    lin = nn.Linear(6, 3)
    x = torch.randn(2, 5, 6)
    rows = input_rows(lin, x)
    assert rows.shape == (1, 10, 6)
    with HessianCollector([lin]) as col:
        lin(x)
    h = col.hessians()[0]
    assert torch.allclose(h[0], x.reshape(-1, 6).t() @ x.reshape(-1, 6) / 10, atol=1e-6)


@pytest.mark.parametrize("conv", [nn.Conv2d(4, 6, 3, padding=1), nn.Conv2d(4, 8, 3, padding="same", groups=2),
                                  nn.Conv2d(4, 4, 3, stride=2, groups=4), nn.Conv1d(3, 5, 3, padding=1)])
def test_conv_rows_reproduce_the_convolution(conv):
    # the unfolded rows times the 2-D weight must give the conv's output (bias aside), per group
    x = torch.randn(2, conv.in_channels, 7, 7) if isinstance(conv, nn.Conv2d) else torch.randn(2, conv.in_channels, 9)
    rows = input_rows(conv, x)
    w2 = to_2d(conv).detach()
    per = w2.shape[0] // conv.groups
    y = (conv(x) - conv.bias.view(1, -1, *([1] * (x.dim() - 2)))).detach()
    y = y.reshape(2, conv.out_channels, -1).permute(0, 2, 1).reshape(-1, conv.out_channels)
    got = torch.cat([rows[gi] @ w2[gi * per:(gi + 1) * per].t() for gi in range(conv.groups)], dim=1)
    assert torch.allclose(got, y, atol=1e-5)


def test_mask_drops_padding_tokens():
    lin = nn.Linear(4, 2)
    x = torch.randn(2, 3, 4)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    with HessianCollector([lin]) as col:
        col.mask = mask
        lin(x)
    kept = x[mask]
    assert torch.allclose(col.hessians()[0][0], kept.t() @ kept / 3, atol=1e-6)


# ---------------------------------------------------------------- the quantizer objects


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_quantizer_on_a_model_beats_rtn_and_restores_nothing():
    torch.manual_seed(0)
    net = TinyNet()
    batches = [{"x": torch.randn(64, 1, 8, 8), "y": torch.randint(0, 10, (64,))} for _ in range(2)]
    before = [m.weight.detach().clone() for m in (net.conv, net.fc)]
    q = build_quantizer("gptq", {}, net, [net.conv, net.fc], ClassifierTask(), batches, names=["conv", "fc"])
    assert isinstance(q, GPTQQuantizer) and sorted(q.hessians) == [0, 1]
    assert all(torch.equal(b, m.weight) for b, m in zip(before, (net.conv, net.fc)))
    fmt = Format(3, 16)
    x = torch.cat([b["x"] for b in batches])
    with torch.no_grad():
        y = net(x)
        errs = {}
        for name, quant in (("gptq", q), ("rtn", RTNQuantizer([net.conv, net.fc]))):
            saved = net.fc.weight.clone()
            net.fc.weight.copy_(quant.weight(1, fmt))
            errs[name] = float(((net(x) - y) ** 2).mean())
            net.fc.weight.copy_(saved)
    assert errs["gptq"] < errs["rtn"]
    assert q.record() == {"method": "gptq", "damp": 0.01, "act_order": True, "hessian_samples": 128,
                          "hessian_disjoint": True}


@pytest.mark.parametrize("name,params,msg", [
    ("awq", {}, "unknown quantizer 'awq'"),
    ("rtn", {"damp": 0.1}, "quantizer 'rtn' has no parameter 'damp'; it takes no parameters"),
    ("gptq", {"dampening": 0.1}, "no parameter 'dampening'"),
    ("gptq", {"damp": 0}, "damp must be greater than 0, got 0"),
    ("gptq", {"damp": "abc"}, "damp must be a number, got 'abc'"),
    ("gptq", {"act_order": "yes"}, "act_order must be true or false"),
    ("gptq", {"block_size": 0}, "block_size must be greater than or equal to 1"),
    ("gptq", {"block_size": 2.5}, "block_size must be an integer"),
])
def test_bad_quantizer_choices_say_what_to_fix(name, params, msg):
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        check_quantizer(name, params)


def test_group_params_match_rtn():
    w = torch.randn(3, 16)
    s, z, lo, hi = group_params(w.reshape(3, 2, 8), Format(4, 8))
    assert s.shape == (3, 2, 1) and lo == 0 and hi == 15


# ---------------------------------------------------------------- capture: hooks and the TorchScript probe


class SamePad(nn.Conv2d):
    """A Conv2d subclass that pads TF-style inside forward: its ``padding`` attribute is 0."""

    def forward(self, x):
        return self._conv_forward(F.pad(x, [0, 1, 0, 1]), self.weight, self.bias)


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = SamePad(3, 6, 2, stride=2)
        self.same = nn.Conv2d(6, 6, 3, padding="same", groups=3)
        self.c1d = nn.Conv1d(6, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 16, 5)

    def forward(self, x):
        h = torch.relu(self.same(torch.relu(self.stem(x))))  # (n, 6, 4, 4)
        return self.fc(torch.relu(self.c1d(h.flatten(2))).flatten(1))


def _script(m):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.script(m)


def test_eager_subclass_that_pads_in_forward_gets_rows_from_the_real_padding():
    # the hook sees the unpadded input; the padding is inferred from the output's size
    m = Small().eval()
    x = torch.randn(2, 3, 7, 7)
    with HessianCollector([m.stem], m) as col:
        y = col.runner(x)
    padded = F.unfold(F.pad(x, [0, 1, 0, 1]), 2, stride=2).permute(0, 2, 1).reshape(-1, 12)
    assert torch.allclose(col.hessians()[0][0], padded.t() @ padded / padded.shape[0], atol=1e-5)
    assert y.shape == (2, 5)


def test_torchscript_hessians_equal_eager_ones_for_every_layer_kind():
    from proxies.discovery import discover_layers
    torch.manual_seed(0)
    m = Small().eval()
    sm = _script(m)
    x = torch.randn(3, 3, 7, 7)
    hs = []
    for model in (m, sm):
        mods = [mm for _, mm in discover_layers(model)]
        assert len(mods) == 4
        with HessianCollector(mods, model) as col:
            out = col.runner(x)
        assert torch.allclose(out, m(x), atol=1e-5)  # the probe returns the model's own output
        hs.append(col.hessians())
    assert sorted(hs[1]) == [0, 1, 2, 3]
    for i in range(4):
        assert hs[0][i].shape == hs[1][i].shape and torch.allclose(hs[0][i], hs[1][i], atol=1e-5)


def test_activation_moments_of_torchscript_models():
    from proxies.base import ProxyContext
    from proxies.discovery import discover_layers
    from proxies.primitives import _activation_moments
    torch.manual_seed(0)
    m = Small().eval()
    batches = [{"x": torch.randn(4, 3, 7, 7), "y": torch.zeros(4, dtype=torch.long)}]
    got = []
    for model in (m, _script(m)):
        pairs = discover_layers(model)
        ctx = ProxyContext(model, [p[0] for p in pairs], [p[1] for p in pairs], ClassifierTask(), batches,
                           [Format(4, None)])
        got.append(_activation_moments(ctx))
    # the stem's op input is padded in the script (the probe reads the conv's own input) and
    # not in the eager hook; every other layer sees the same inputs
    for a, b in zip(got[0][1:], got[1][1:]):
        assert torch.allclose(a, b, atol=1e-5)
    assert got[1][0].shape == got[0][0].shape == (3,)
