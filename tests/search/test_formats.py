"""Formats and their exact storage cost (DESIGN §2):
``numel*bits + n_groups*(16 + (0 if symmetric else bits))``, float = ``numel*16``."""
from __future__ import annotations

import numpy as np
import pytest

from search.budgets import CostModel
from search.formats import Format, FormatError, make_formats, n_groups, storage_bits
from search.layers import LayerInfo


def linear(name: str, out_features: int, in_features: int) -> LayerInfo:
    numel = out_features * in_features
    return LayerInfo(name, "linear", (out_features, in_features), numel, in_features, numel)


# ---------------------------------------------------------------- storage cost by hand


def test_asymmetric_grouped_cost_by_hand():
    # numel=4096, in_features=128 -> 32 rows; g64 -> 2 groups per row -> 64 groups.
    # 3-bit asym: 4096*3 + 64*(16 scale + 3 zero point) = 12288 + 1216 = 13504 bits.
    assert n_groups(4096, 128, 64) == 64
    assert storage_bits(Format(3, 64, False), 4096, 128) == 13504


def test_symmetric_grouped_cost_by_hand():
    # symmetric: no zero point -> 4096*3 + 64*16 = 12288 + 1024 = 13312 bits.
    assert storage_bits(Format(3, 64, True), 4096, 128) == 13312


def test_per_channel_cost_by_hand():
    # group_size None -> one group per output row: 32 groups.
    # 4-bit asym: 4096*4 + 32*(16+4) = 16384 + 640 = 17024 bits.
    assert n_groups(4096, 128, None) == 32
    assert storage_bits(Format(4, None, False), 4096, 128) == 17024
    # symmetric per-channel 8-bit: 4096*8 + 32*16 = 32768 + 512 = 33280 bits.
    assert storage_bits(Format(8, None, True), 4096, 128) == 33280


def test_partial_last_group_has_its_own_scale():
    # in_features=100, 10 rows, g64 -> ceil(100/64)=2 groups per row -> 20 groups.
    # 4-bit asym: 1000*4 + 20*(16+4) = 4000 + 400 = 4400 bits.
    assert n_groups(1000, 100, 64) == 20
    assert storage_bits(Format(4, 64, False), 1000, 100) == 4400
    # g128 > in_features: still one (partial) group per row -> 10 groups: 2000 + 10*18 = 2180.
    assert n_groups(1000, 100, 128) == 10
    assert storage_bits(Format(2, 128, False), 1000, 100) == 2180


def test_group_equal_to_in_features_is_one_group_per_row():
    # g128 on in_features=128: 32 groups -> 4096*2 + 32*18 = 8192 + 576 = 8768.
    assert n_groups(4096, 128, 128) == 32
    assert storage_bits(Format(2, 128, False), 4096, 128) == 8768


def test_float_costs_16_bits_per_weight_no_overhead():
    assert storage_bits(Format(16), 4096, 128) == 4096 * 16
    # whatever group size / symmetry were asked for, float has no scales
    assert storage_bits(Format(16, 32, True), 1000, 100) == 16000


def test_conv_reduction_dim():
    # conv 16 out, 8 in, 3x3: in_features = 8*3*3 = 72, numel = 1152; g32 -> ceil(72/32)=3 per row.
    # 4-bit sym: 1152*4 + 16*3*16 = 4608 + 768 = 5376.
    assert n_groups(1152, 72, 32) == 48
    assert storage_bits(Format(4, 32, True), 1152, 72) == 5376


# ---------------------------------------------------------------- DESIGN's avg_bits anchors


@pytest.fixture
def layers64():
    # every in_features divisible by 64, different shapes
    return [linear("enc.0.q", 384, 384), linear("enc.0.fc1", 1536, 384), linear("enc.0.fc2", 384, 1536),
            linear("head", 10, 64)]


def test_uniform_3bit_g64_asym_is_3_297_avg_bits(layers64):
    costs = CostModel(layers64, make_formats([3, 4], 64, False))
    c = costs.cost(np.zeros(len(layers64), dtype=np.int64))
    # (64*3 + 16 + 3) / 64 = 211/64
    assert c["avg_bits"] == pytest.approx(3.296875, abs=1e-12)
    assert round(c["avg_bits"], 3) == 3.297


def test_uniform_4bit_g64_asym_is_4_3125_avg_bits(layers64):
    costs = CostModel(layers64, make_formats([3, 4], 64, False))
    c = costs.cost(np.ones(len(layers64), dtype=np.int64))
    # (64*4 + 16 + 4) / 64 = 276/64
    assert c["avg_bits"] == pytest.approx(4.3125, abs=1e-12)
    numel = sum(l.numel for l in layers64)
    assert c["size_bytes"] == pytest.approx(numel * 4.3125 / 8)


def test_uniform_symmetric_and_float_avg_bits(layers64):
    costs = CostModel(layers64, [Format(4, 64, True), Format(16)])
    assert costs.cost(np.zeros(4, dtype=np.int64))["avg_bits"] == pytest.approx((256 + 16) / 64)
    assert costs.cost(np.ones(4, dtype=np.int64))["avg_bits"] == pytest.approx(16.0)


# ---------------------------------------------------------------- validation and labels


@pytest.mark.parametrize("bits", [0, 1, 9, 12, 15, 17, 32, -4])
def test_bad_bits_rejected(bits):
    with pytest.raises(FormatError, match="bits"):
        Format(bits)


@pytest.mark.parametrize("group_size", [0, -1, -64, (1 << 20) + 1])
def test_bad_group_size_rejected(group_size):
    with pytest.raises(FormatError, match="group_size"):
        Format(4, group_size)


def test_format_error_is_value_error():
    assert issubclass(FormatError, ValueError)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
def test_supported_bits(bits):
    assert Format(bits).bits == bits


def test_float_normalises_other_fields():
    f = Format(16, 32, True)
    assert f.is_float and f.group_size is None and f.symmetric is False
    assert f == Format(16)
    assert not Format(8).is_float


@pytest.mark.parametrize("fmt,label", [
    (Format(4, 64, False), "w4g64a"),
    (Format(3, 128, True), "w3g128s"),
    (Format(3, None, True), "w3pcs"),
    (Format(2, None, False), "w2pca"),
    (Format(16), "fp16"),
    (Format(16, 64, True), "fp16"),
])
def test_labels(fmt, label):
    assert fmt.label == label


def test_labels_distinct_across_candidates():
    fmts = [Format(b, g, s) for b in (2, 3, 4, 8) for g in (None, 32, 64) for s in (False, True)]
    assert len({f.label for f in fmts}) == len(fmts)


@pytest.mark.parametrize("fmt", [Format(4, 64, False), Format(3, None, True), Format(16)])
def test_dict_round_trip(fmt):
    assert Format.from_dict(fmt.to_dict()) == fmt


def test_defaults():
    f = Format(4)
    assert (f.group_size, f.symmetric) == (64, False)


# ---------------------------------------------------------------- make_formats


def test_make_formats_dedupes_and_sorts():
    fmts = make_formats([8, 4, 2, 4, 8, 3], group_size=128, symmetric=True)
    assert [f.bits for f in fmts] == [2, 3, 4, 8]
    assert all(f.group_size == 128 and f.symmetric for f in fmts)


def test_make_formats_accepts_float_and_string_like_ints():
    fmts = make_formats([16, "4", 4])  # type: ignore[list-item]
    assert fmts == [Format(4, 64, False), Format(16)]


def test_make_formats_empty_is_error():
    with pytest.raises(FormatError, match="no formats"):
        make_formats([])


def test_make_formats_bad_bits_is_error():
    with pytest.raises(FormatError):
        make_formats([1, 4])
