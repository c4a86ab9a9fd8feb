"""Budget parsing, exact costs under every metric, feasibility checks with the feasible range."""
from __future__ import annotations

import numpy as np
import pytest

from search.budgets import METRICS, BudgetError, CostModel, check_budgets, group_min_cost, parse_budget, within
from search.formats import Format
from search.layers import LayerInfo, TieGroups

# ---------------------------------------------------------------- parse_budget


@pytest.mark.parametrize("text,expected", [
    ("avg_bits=3.3", ("avg_bits", 3.3)),
    (" avg_bits = 4 ", ("avg_bits", 4.0)),
    ("size_bytes=1e6", ("size_bytes", 1e6)),
    ("bops=123456789", ("bops", 123456789.0)),
    ("latency_ms=2.5", ("latency_ms", 2.5)),
])
def test_parse_budget_good(text, expected):
    name, value = parse_budget(text)
    assert (name, value) == expected
    assert isinstance(value, float)


@pytest.mark.parametrize("text", ["speed=3", "avg_bit=3", "AVG_BITS=3", "=3", "avg_bits", "avg_bits 3.3", "", "3.3"])
def test_parse_budget_bad_metric_or_shape(text):
    with pytest.raises(BudgetError) as e:
        parse_budget(text)
    # the message says what is accepted
    for m in METRICS:
        assert m in str(e.value)


@pytest.mark.parametrize("text", ["avg_bits=abc", "avg_bits=", "avg_bits=3.3.3", "size_bytes=1MB"])
def test_parse_budget_not_a_number(text):
    with pytest.raises(BudgetError, match="not a number"):
        parse_budget(text)


@pytest.mark.parametrize("text", ["avg_bits=-1", "avg_bits=0", "bops=-0.0", "avg_bits=nan", "avg_bits=inf", "avg_bits=-inf"])
def test_parse_budget_not_positive_finite(text):
    with pytest.raises(BudgetError, match="positive"):
        parse_budget(text)


def test_budget_error_is_value_error():
    assert issubclass(BudgetError, ValueError)


# ---------------------------------------------------------------- a hand example
#
# L0: linear (4, 64):  numel 256, in 64, rows 4, g64 -> 4 groups, macs 256
#   w2g64a: 256*2 + 4*(16+2) = 512 + 72   =  584 bits
#   w4g64a: 256*4 + 4*(16+4) = 1024 + 80  = 1104 bits
#   fp16:   256*16                         = 4096 bits
# L1: conv-like (3, 100): numel 300, in 100, rows 3, g64 -> 2 groups/row = 6 groups, macs 1000
#   w2g64a: 300*2 + 6*18 = 600 + 108  =  708 bits
#   w4g64a: 300*4 + 6*20 = 1200 + 120 = 1320 bits
#   fp16:   300*16                    = 4800 bits
# total numel 556.

FORMATS = [Format(2, 64, False), Format(4, 64, False), Format(16)]


@pytest.fixture
def layers():
    return [LayerInfo("blk.fc", "linear", (4, 64), 256, 64, 256),
            LayerInfo("blk.conv", "conv1d", (3, 100), 300, 100, 1000)]


def test_storage_matrix_by_hand(layers):
    costs = CostModel(layers, FORMATS)
    np.testing.assert_array_equal(costs.total_bits, [[584, 1104, 4096], [708, 1320, 4800]])
    assert costs.total_numel == 556


def test_cost_all_metrics_by_hand(layers):
    costs = CostModel(layers, FORMATS)
    c = costs.cost(np.array([0, 1]))  # L0 2-bit, L1 4-bit
    # bits 584 + 1320 = 1904
    assert c["size_bytes"] == 238.0
    assert c["avg_bits"] == pytest.approx(1904 / 556, rel=1e-15)
    # bops = (256*2 + 1000*4) * a_bits 16 = 4512 * 16 = 72192
    assert c["bops"] == 72192.0
    assert "latency_ms" not in c


def test_cost_bops_with_activation_bits(layers):
    costs = CostModel(layers, FORMATS, a_bits=8)
    assert costs.cost(np.array([0, 1]))["bops"] == 4512 * 8
    # float weights count 16 bits in bops too: (256*16 + 1000*2) * 8
    assert costs.cost(np.array([2, 0]))["bops"] == (4096 + 2000) * 8


def test_cost_float_policy_equals_float_cost(layers):
    costs = CostModel(layers, FORMATS)
    c = costs.cost(np.array([2, 2]))
    for m in ("avg_bits", "size_bytes", "bops"):
        assert c[m] == pytest.approx(costs.float_cost(m))
    assert costs.float_cost("avg_bits") == 16.0
    assert costs.float_cost("size_bytes") == 556 * 2.0
    assert costs.float_cost("bops") == (256 + 1000) * 16 * 16


def test_cost_is_sum_of_matrix_rows(layers):
    costs = CostModel(layers, FORMATS)
    for choice in ([0, 0], [1, 2], [2, 0]):
        c = costs.cost(np.array(choice))
        for m in ("avg_bits", "size_bytes", "bops"):
            M = costs.matrix(m)
            assert c[m] == pytest.approx(M[0, choice[0]] + M[1, choice[1]])


# ---------------------------------------------------------------- check_budgets


def test_check_budgets_accepts_inside_and_at_the_ends(layers):
    costs = CostModel(layers, FORMATS)
    check_budgets(costs, {"avg_bits": 3.3})
    check_budgets(costs, {"avg_bits": 1292 / 556})  # exactly the cheapest policy
    check_budgets(costs, {"avg_bits": 16.0})  # exactly float
    check_budgets(costs, {"avg_bits": 4.0, "size_bytes": 500, "bops": 1e5})


def test_check_budgets_below_cheapest_names_range(layers):
    costs = CostModel(layers, FORMATS)
    # cheapest: (584 + 708) / 556 = 1292/556 = 2.3237410...
    with pytest.raises(BudgetError) as e:
        check_budgets(costs, {"avg_bits": 2.0})
    msg = str(e.value)
    # the range is rounded inward (lower bound up) so a value typed back from it is accepted
    assert "below" in msg and "[2.32375, 16]" in msg


def test_printed_feasible_range_is_accepted_when_typed_back(layers):
    import re
    costs = CostModel(layers, FORMATS)
    with pytest.raises(BudgetError) as e:
        check_budgets(costs, {"avg_bits": 2.0})
    lo, hi = (float(x) for x in re.search(r"\[([\d.e+-]+), ([\d.e+-]+)\]", str(e.value)).groups())
    check_budgets(costs, {"avg_bits": lo})
    check_budgets(costs, {"avg_bits": hi})


def test_check_budgets_above_float_names_range(layers):
    costs = CostModel(layers, FORMATS)
    with pytest.raises(BudgetError) as e:
        check_budgets(costs, {"avg_bits": 17})
    assert "above" in str(e.value) and "[2.32375, 16]" in str(e.value)
    # size: cheapest 1292/8 = 161.5 bytes, float 556*2 = 1112 bytes
    with pytest.raises(BudgetError) as e:
        check_budgets(costs, {"size_bytes": 2000})
    assert "[161.5, 1112]" in str(e.value)
    with pytest.raises(BudgetError) as e:
        check_budgets(costs, {"size_bytes": 100})
    assert "[161.5, 1112]" in str(e.value)


def test_check_budgets_bops_range(layers):
    costs = CostModel(layers, FORMATS)
    # cheapest 2-bit everywhere: (256 + 1000) * 2 * 16 = 40192; float 1256*16*16 = 321536
    with pytest.raises(BudgetError) as e:
        check_budgets(costs, {"bops": 40000})
    assert "[40192, 321536]" in str(e.value)


def test_check_budgets_second_budget_checked_too(layers):
    costs = CostModel(layers, FORMATS)
    with pytest.raises(BudgetError, match="size_bytes"):
        check_budgets(costs, {"avg_bits": 3.3, "size_bytes": 10})


def test_check_budgets_empty_and_unknown(layers):
    costs = CostModel(layers, FORMATS)
    with pytest.raises(BudgetError, match="no budget"):
        check_budgets(costs, {})
    with pytest.raises(BudgetError, match="unknown budget metric"):
        check_budgets(costs, {"speed": 3})


# ---------------------------------------------------------------- latency


def test_latency_needs_a_table(layers):
    costs = CostModel(layers, FORMATS)
    with pytest.raises(BudgetError, match="latency table"):
        check_budgets(costs, {"latency_ms": 1.0})
    with pytest.raises(BudgetError, match="latency table"):
        costs.matrix("latency_ms")


def test_latency_lookup_by_label_or_bits(layers):
    table = {
        "blk.fc": {"w2g64a": 1.0, "w4g64a": 2.0, "fp16": 5.0, "2": 99.0},  # label wins over bits
        "blk.conv": {"2": 0.5, "4": 0.75, "float": 3.0},
    }
    costs = CostModel(layers, FORMATS, latency_table=table)
    np.testing.assert_array_equal(costs.matrix("latency_ms"), [[1.0, 2.0, 5.0], [0.5, 0.75, 3.0]])
    assert costs.cost(np.array([0, 1]))["latency_ms"] == 1.75
    # float end of the range: slowest entry of each row (incl. entries for other formats)
    assert costs.float_cost("latency_ms") == 99.0 + 3.0
    with pytest.raises(BudgetError) as e:
        check_budgets(costs, {"latency_ms": 1.0})
    assert "[1.5, 102]" in str(e.value)
    check_budgets(costs, {"latency_ms": 1.5})


def test_latency_lookup_by_bits_for_float(layers):
    table = {"blk.fc": {"2": 1, "4": 2, "16": 4}, "blk.conv": {"2": 1, "4": 2, "16": 4}}
    costs = CostModel(layers, FORMATS, latency_table=table)
    assert costs.cost(np.array([2, 2]))["latency_ms"] == 8.0


def test_latency_missing_layer_or_format(layers):
    with pytest.raises(BudgetError, match="blk.conv"):
        CostModel(layers, FORMATS, latency_table={"blk.fc": {"2": 1, "4": 2, "16": 3}})
    with pytest.raises(BudgetError, match="w4g64a"):
        CostModel(layers, FORMATS, latency_table={"blk.fc": {"2": 1, "16": 3}, "blk.conv": {"2": 1, "4": 2, "16": 3}})


# ---------------------------------------------------------------- ties


def test_group_min_cost_by_hand():
    M = np.array([[1.0, 5.0], [5.0, 1.0], [2.0, 3.0]])
    assert group_min_cost(M, TieGroups()) == 4.0  # 1 + 1 + 2
    assert group_min_cost(M, TieGroups([[0, 1]])) == 8.0  # min(6, 6) + 2
    assert group_min_cost(M, TieGroups([[0, 1, 2]])) == 8.0  # min(8, 9)
    assert group_min_cost(M, TieGroups([[1, 2]])) == 1.0 + 4.0  # 1 + min(7, 4)


def test_ties_raise_the_cheapest_budget():
    layers = [LayerInfo(f"attn.{n}", "linear", (4, 64), 256, 64, 256) for n in ("q_proj", "k_proj")]
    fmts = [Format(2), Format(4)]
    table = {"attn.q_proj": {"2": 1.0, "4": 5.0}, "attn.k_proj": {"2": 5.0, "4": 1.0}}
    costs = CostModel(layers, fmts, latency_table=table)
    check_budgets(costs, {"latency_ms": 3.0})  # q 2-bit + k 4-bit = 2 ms
    with pytest.raises(BudgetError) as e:
        check_budgets(costs, {"latency_ms": 3.0}, TieGroups([[0, 1]]))
    assert "[6, 10]" in str(e.value)
    check_budgets(costs, {"latency_ms": 6.0}, TieGroups([[0, 1]]))


# ---------------------------------------------------------------- within


def test_within():
    assert within({"avg_bits": 3.3, "bops": 10.0}, {"avg_bits": 3.3})
    assert within({"avg_bits": 3.3 * (1 + 1e-12)}, {"avg_bits": 3.3})
    assert not within({"avg_bits": 3.31}, {"avg_bits": 3.3})
    assert not within({"avg_bits": 3.0, "bops": 11.0}, {"avg_bits": 3.3, "bops": 10.0})
    assert within({"avg_bits": 3.0}, {})
