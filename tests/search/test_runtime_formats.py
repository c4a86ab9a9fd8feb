"""Runtime formats as candidates: exact storage (every scale counted, llama.cpp's fallback for
rows a block does not divide), labels, parsing, and policies that carry them."""
import json

import numpy as np
import pytest

from search import runtime_formats as rf
from search.budgets import CostModel
from search.formats import Format, FormatError, parse_format, parse_formats, storage_bits
from search.layers import LayerInfo
from search.policy import Policy, build_policy

# bytes per block as ggml defines them (ggml-common.h block_* structs): d/dmin fp16, packed scales, codes
GGML_BLOCKS = {"q2_K": (256, 2 + 2 + 16 + 64), "q3_K": (256, 2 + 12 + 32 + 64), "q4_K": (256, 2 + 2 + 12 + 128),
               "q5_K": (256, 2 + 2 + 12 + 32 + 128), "q6_K": (256, 2 + 16 + 128 + 64), "q8_0": (32, 2 + 32),
               "q4_0": (32, 2 + 16), "q4_1": (32, 4 + 16), "q5_0": (32, 2 + 4 + 16), "q5_1": (32, 4 + 4 + 16),
               "iq4_nl": (32, 2 + 16)}


@pytest.mark.parametrize("name", list(GGML_BLOCKS))
def test_gguf_sizes_match_ggml_and_the_gguf_package(name):
    gguf = pytest.importorskip("gguf")
    block, size = GGML_BLOCKS[name]
    f = rf.get(name)
    assert (f.block, f.block_bits) == (block, size * 8)
    assert gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name.upper()]] == (block, size)


def test_nominal_bits_per_weight():
    bpw = {n: rf.get(n).bits_per_weight for n in ("q2_K", "q3_K", "q4_K", "q5_K", "q6_K", "q8_0", "nvfp4", "mxfp4",
                                                   "mxfp8")}
    assert bpw == {"q2_K": 2.625, "q3_K": 3.4375, "q4_K": 4.5, "q5_K": 5.5, "q6_K": 6.5625, "q8_0": 8.5,
                   "nvfp4": 4.5, "mxfp4": 4.25, "mxfp8": 8.25}


@pytest.mark.parametrize("name,cols,stored", [
    ("q4_K", 1536, "q4_K"), ("q4_K", 576, "q5_0"), ("q5_K", 576, "q5_1"), ("q6_K", 576, "q8_0"),
    ("q3_K", 576, "q4_0"), ("q2_K", 384, "q4_0"), ("q4_K", 100, "f16"), ("q8_0", 48, "f16"), ("nvfp4", 100, "nvfp4")])
def test_llamacpp_fallback_for_rows_the_block_does_not_divide(name, cols, stored):
    assert rf.effective(name, cols) == stored
    fmt = Format.named(name).stored_as(cols)
    assert ("f16" if fmt.is_float else fmt.runtime) == stored


def test_storage_counts_every_scale():
    rows, cols = 576, 1536
    n = rows * cols
    assert storage_bits(Format.named("q4_K"), n, cols) == rows * 6 * 144 * 8
    assert storage_bits(Format.named("q4_K"), rows * 576, 576) == rows * 18 * 22 * 8  # as q5_0
    assert storage_bits(Format.named("nvfp4"), n, cols) == rows * (cols // 16) * (64 + 8) + 32
    assert storage_bits(Format.named("nvfp4"), rows * 40, 40) == rows * 3 * 72 + 32  # a padded last block
    assert storage_bits(Format.named("mxfp4"), n, cols) == rows * (cols // 32) * 136
    assert storage_bits(Format.named("fp8"), n, cols) == 8 * n + 32
    assert storage_bits(Format.named("fp8_pc"), n, cols) == 8 * n + 32 * rows
    assert storage_bits(Format.named("q8_0"), rows * 48, 48) == 16 * rows * 48


def test_cost_model_prices_the_type_each_layer_really_gets():
    layers = [LayerInfo("a", "linear", (576, 576), 576 * 576, 576, 576 * 576),
              LayerInfo("b", "linear", (576, 1536), 576 * 1536, 1536, 576 * 1536)]
    fmts = [Format.named("q4_K"), Format.named("q4_0")]
    costs = CostModel(layers, fmts)
    bits = costs.total_bits / np.array([[l.numel] for l in layers])
    assert bits.tolist() == [[5.5, 4.5], [4.5, 4.5]]
    assert costs.matrices["bops"][0, 0] == layers[0].macs * 5 * 16  # q5_0's 5 element bits, not q4_K's 4


def test_labels_parse_back():
    for text in ("q4_K", "nvfp4", "fp8_pc", "w4g128s", "w3g64a", "w8pcs"):
        assert parse_format(text).label == text
    assert parse_format("f16").is_float and parse_format("bf16").is_float
    with pytest.raises(FormatError, match="unknown format 'q4_k'"):
        parse_format("q4_k")
    with pytest.raises(FormatError, match="no formats"):
        parse_formats([])
    assert [f.label for f in parse_formats(["q6_K", "q4_K", "q4_K", "fp16"])] == ["q4_K", "q6_K", "fp16"]


def test_named_format_fields_cannot_disagree_with_the_runtime():
    with pytest.raises(FormatError, match="build it with Format.named"):
        Format(3, 256, False, "q4_K")
    assert Format.from_dict(Format.named("q5_K").to_dict()) == Format.named("q5_K")


def test_policy_records_runtime_and_fallback():
    layers = [LayerInfo("model.layers.0.self_attn.q_proj", "linear", (576, 576), 576 * 576, 576, 576 * 576),
              LayerInfo("model.layers.0.mlp.down_proj", "linear", (576, 1536), 576 * 1536, 1536, 576 * 1536)]
    fmts = [Format.named("q4_K"), Format(16)]
    p = build_policy("m", "0" * 64, layers, fmts, np.array([0, 0]), {"avg_bits": 5}, {"avg_bits": 5})
    d = json.loads(p.to_json())
    assert d["layers"][0]["runtime"] == "q4_K" and d["layers"][0]["stored_as"] == "q5_0"
    assert "stored_as" not in d["layers"][1]
    back = Policy.model_validate(d)
    assert back.assignment()["model.layers.0.mlp.down_proj"] == Format.named("q4_K")
    d["layers"][0]["runtime"] = "q9_K"
    with pytest.raises(ValueError, match="unknown format 'q9_K'"):
        Policy.model_validate(d)
