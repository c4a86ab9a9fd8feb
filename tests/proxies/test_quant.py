"""The RTN fake quantizer (DESIGN §3) on hand-computed examples, against a direct transcription
of the formulas on random weights, and through every weight layout (Linear, Conv, HF Conv1D)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from proxies.quant import from_2d, quantize_module_weight, rtn, to_2d
from search.formats import Format


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def fp16(x: float) -> float:
    return float(np.float16(x))


# ---------------------------------------------------------------- hand-computed examples


def test_asymmetric_on_grid_is_exact():
    # s = (1.5 − 0)/3 = 0.5, z = 0, q = [0, 1, 2, 3]
    w = t([[0.0, 0.5, 1.0, 1.5]])
    assert torch.equal(rtn(w, Format(2, 4)), w)


def test_asymmetric_rounds_and_shifts_by_zero_point():
    # s = (0.5 − (−1.0))/3 = 0.5, z = round(1.0/0.5) = 2
    # round(w/s) = round([−2, −0.4, 0.6, 1.0]) = [−2, 0, 1, 1]; q = +2 → [0, 2, 3, 3]; ŵ = (q − 2)·0.5
    w = t([[-1.0, -0.2, 0.3, 0.5]])
    assert torch.equal(rtn(w, Format(2, 4)), t([[-1.0, 0.0, 0.5, 0.5]]))


def test_asymmetric_zero_point_is_rounded():
    # s = 1.5/3 = 0.5, z = round(0.6/0.5) = round(1.2) = 1
    # round(w/s) = round([−1.2, 0.2, 0.8, 1.8]) = [−1, 0, 1, 2]; q = [0, 1, 2, 3]; ŵ = (q − 1)·0.5
    w = t([[-0.6, 0.1, 0.4, 0.9]])
    assert torch.equal(rtn(w, Format(2, 4)), t([[-0.5, 0.0, 0.5, 1.0]]))


def test_asymmetric_scale_is_rounded_to_fp16():
    # s = 1/3 is not an fp16 number: the stored scale is fp16(1/3) = 0.333251953125, so the
    # top code 3 decodes to 3·fp16(1/3) = 0.999755859375, not 1.0
    s = fp16(1 / 3)
    assert s != 1 / 3
    w = t([[0.0, 0.3, 0.7, 1.0]])
    out = rtn(w, Format(2, 4))
    assert torch.equal(out, t([[0.0, s, 2 * s, 3 * s]]))
    assert float(out[0, 3]) != 1.0


def test_same_sign_group_range_includes_zero():
    # an all-negative group: the range is extended to 0 so z fits in 2 bits (z ∈ [0, 3]):
    # s = (0 − (−1.5))/3 = 0.5, z = round(1.5/0.5) = 3; round(w/s) = [−3, −2, 0, −1]; q = [0, 1, 3, 2]
    w = t([[-1.5, -1.0, -0.2, -0.6]])
    assert torch.equal(rtn(w, Format(2, 4)), t([[-1.5, -1.0, 0.0, -0.5]]))
    # all-positive and far from zero: never saturates to one value
    w = t([[10.0, 10.5, 11.0, 11.5]])
    out = rtn(w, Format(8, 4))
    assert (out - w).abs().max() <= fp16(11.5 / 255) / 2 * 1.01


def test_constant_group_is_kept():
    w = t([[0.75, 0.75, 0.75, 0.75], [-3.0, -3.0, -3.0, -3.0]])
    assert torch.equal(rtn(w, Format(2, 4)), w)
    assert torch.equal(rtn(w, Format(3, 4, symmetric=True)), w)


def test_symmetric_hand_example():
    # 3 bits: s = max|w|/(2²−1) = 1.5/3 = 0.5; round(w/s) = round([−3, −0.4, 1.2, 2.4]) = [−3, 0, 1, 2]
    w = t([[-1.5, -0.2, 0.6, 1.2]])
    assert torch.equal(rtn(w, Format(3, 4, symmetric=True)), t([[-1.5, 0.0, 0.5, 1.0]]))


def test_symmetric_two_bits_has_levels_minus_one_zero_one():
    # 2 bits: s = max|w|/1 = 2.0; q ∈ {−2, −1, 0, 1}; round([1, −0.3, 0.45, −1]) = [1, 0, 0, −1]
    w = t([[2.0, -0.6, 0.9, -2.0]])
    assert torch.equal(rtn(w, Format(2, 4, symmetric=True)), t([[2.0, 0.0, 0.0, -2.0]]))


def test_groups_get_their_own_scales():
    # two groups of 4 in one row and a second row: every group is quantized on its own
    w = t([[0.0, 0.5, 1.0, 1.5, -1.0, -0.2, 0.3, 0.5],
           [-0.6, 0.1, 0.4, 0.9, 0.0, 0.3, 0.7, 1.0]])
    s = fp16(1 / 3)
    want = t([[0.0, 0.5, 1.0, 1.5, -1.0, 0.0, 0.5, 0.5],
              [-0.5, 0.0, 0.5, 1.0, 0.0, s, 2 * s, 3 * s]])
    assert torch.equal(rtn(w, Format(2, 4)), want)


def test_all_zero_group_stays_zero():
    w = torch.zeros(2, 8)
    for fmt in (Format(2, 4), Format(3, 4, symmetric=True), Format(4, None)):
        out = rtn(w, fmt)
        assert torch.isfinite(out).all() and torch.equal(out, w)


# ---------------------------------------------------------------- against the formulas


def reference_rtn(w: np.ndarray, fmt: Format) -> np.ndarray:
    """DESIGN §3 written out group by group, in float32 with an fp16 scale."""
    w = w.astype(np.float32)
    out = np.empty_like(w)
    g = fmt.group_size or w.shape[1]
    for r in range(w.shape[0]):
        for c0 in range(0, w.shape[1], g):
            x = w[r, c0:c0 + g]
            if fmt.symmetric:
                qmax = 2 ** (fmt.bits - 1) - 1
                s = np.float32(np.float16(np.abs(x).max() / np.float32(qmax)))
                q = np.clip(np.round(x / s), -qmax - 1, qmax)
                out[r, c0:c0 + g] = q * s
            else:
                qmax = 2 ** fmt.bits - 1
                lo, hi = min(x.min(), np.float32(0)), max(x.max(), np.float32(0))  # z must fit in `bits`
                s = np.float32(np.float16((hi - lo) / np.float32(qmax)))
                z = np.clip(np.round(-lo / s), 0, qmax)
                q = np.clip(np.round(x / s) + z, 0, qmax)
                out[r, c0:c0 + g] = (q - z) * s
    return out


@pytest.mark.parametrize("fmt", [Format(2, 8), Format(3, 16), Format(4, 5), Format(8, 8), Format(2, None),
                                 Format(3, 8, symmetric=True), Format(4, 7, symmetric=True), Format(6, None, symmetric=True)])
def test_matches_reference_on_random_weights(fmt):
    w = np.random.default_rng(fmt.bits * 100 + (fmt.group_size or 0)).normal(size=(6, 40)).astype(np.float32)
    np.testing.assert_array_equal(rtn(torch.from_numpy(w), fmt).numpy(), reference_rtn(w, fmt))


@pytest.mark.parametrize("symmetric", [False, True])
def test_partial_last_group_equals_that_group_alone(symmetric):
    # 10 columns in groups of 4: the last group has 2 columns and must be quantized as a group of 2
    w = torch.randn(5, 10, generator=torch.Generator().manual_seed(1))
    fmt = Format(3, 4, symmetric)
    out = rtn(w, fmt)
    last_alone = rtn(w[:, 8:].contiguous(), Format(3, 2, symmetric))
    assert torch.equal(out[:, 8:], last_alone)
    assert torch.equal(out[:, :8], rtn(w[:, :8].contiguous(), fmt))


def test_per_channel_uses_one_scale_per_row():
    w = torch.randn(4, 24, generator=torch.Generator().manual_seed(2))
    per_channel = rtn(w, Format(3, None))
    assert torch.equal(per_channel, rtn(w, Format(3, 24)))  # one group spanning the whole row
    for r in range(4):
        assert torch.equal(per_channel[r:r + 1], rtn(w[r:r + 1], Format(3, None)))
    # each row decodes to at most 2³ distinct values on a grid of step s = (max − min)/7
    for r in range(4):
        levels = torch.unique(per_channel[r])
        assert len(levels) <= 8
        s = fp16(float(w[r].max() - w[r].min()) / 7)
        steps = (levels[1:] - levels[:-1]) / s
        assert torch.allclose(steps, steps.round(), atol=1e-4)


def test_error_shrinks_with_bits():
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(3))
    err = {b: float(((rtn(w, Format(b, 64)) - w) ** 2).mean()) for b in (2, 3, 4, 8)}
    assert err[2] > err[3] > err[4] > err[8] > 0
    assert err[8] < err[2] / 1000  # each bit roughly quarters the squared error: 2⁻¹² ≈ 1/4096


@pytest.mark.parametrize("shift", [0.0, 3.0])
def test_error_is_at_most_half_a_step(shift):
    # shift = 3 makes every group positive (its range then runs from 0)
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(4)) + shift
    g = w.reshape(16, 16, 4)
    s = ((g.amax(-1).clamp_min(0) - g.amin(-1).clamp_max(0)) / 15).half().float()
    err = (rtn(w, Format(4, 4)) - w).abs().reshape(16, 16, 4)
    # |ŵ − w| ≤ s/2, plus the drift of the fp16 scale over 15 steps (15·2⁻¹¹·s)
    assert (err <= s[..., None] * 0.51).all()
    err = (rtn(w, Format(8, 4)) - w).abs().reshape(16, 16, 4)
    assert (err <= s[..., None] / 17 * (0.5 + 255 * 2 ** -11 + 1e-3)).all()  # 8-bit step = s·15/255


def test_float_format_returns_an_equal_copy():
    w = torch.randn(3, 8)
    out = rtn(w, Format(16))
    assert torch.equal(out, w)
    assert out.data_ptr() != w.data_ptr()
    out.add_(1)
    assert not torch.equal(out, w)


def test_keeps_dtype():
    w = torch.randn(4, 16).to(torch.bfloat16)
    assert rtn(w, Format(4, 8)).dtype == torch.bfloat16


# ---------------------------------------------------------------- layouts


def test_linear_layout_is_rows_by_in_features():
    m = nn.Linear(12, 5)
    assert to_2d(m).shape == (5, 12)
    assert torch.equal(from_2d(m, to_2d(m)), m.weight)
    w2 = rtn(to_2d(m).detach(), Format(3, 4))
    assert torch.equal(quantize_module_weight(m, Format(3, 4)), w2)


@pytest.mark.parametrize("conv", [nn.Conv2d(3, 8, (3, 2)), nn.Conv2d(8, 8, 3, groups=8), nn.Conv2d(6, 4, 3, groups=2),
                                  nn.Conv1d(4, 6, 5)])
def test_conv_groups_run_along_in_channels_times_kernel(conv):
    w = conv.weight.detach()
    two = to_2d(conv).detach()
    assert two.shape == (w.shape[0], w[0].numel())
    assert torch.equal(from_2d(conv, two), w)
    fmt = Format(3, 4)
    q = quantize_module_weight(conv, fmt)
    assert q.shape == w.shape
    assert torch.equal(q, rtn(w.reshape(w.shape[0], -1), fmt).reshape(w.shape))


class Conv1D(nn.Module):
    """The layout of ``transformers.pytorch_utils.Conv1D``: weight stored (in, out)."""

    def __init__(self, nf: int, nx: int):
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf))


def test_hf_conv1d_groups_along_its_first_dim():
    m = Conv1D(nf=6, nx=16)
    two = to_2d(m).detach()
    assert two.shape == (6, 16)
    assert torch.equal(two, m.weight.detach().t())
    back = from_2d(m, two)
    assert back.shape == m.weight.shape and torch.equal(back, m.weight)
    fmt = Format(2, 8)
    q = quantize_module_weight(m, fmt)
    assert q.shape == (16, 6)
    # groups run down the stored columns (the input dim), not along stored rows
    assert torch.equal(q, rtn(m.weight.detach().t().contiguous(), fmt).t())
    assert not torch.equal(q, rtn(m.weight.detach(), fmt))


def test_real_hf_conv1d_round_trip():
    pytest.importorskip("transformers")
    from transformers.pytorch_utils import Conv1D as HFConv1D
    m = HFConv1D(6, 16)
    nn.init.normal_(m.weight)
    assert to_2d(m).shape == (6, 16)
    assert torch.equal(from_2d(m, to_2d(m)), m.weight)
    assert quantize_module_weight(m, Format(4, 8)).shape == m.weight.shape
