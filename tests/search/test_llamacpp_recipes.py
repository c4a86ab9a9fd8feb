"""llama.cpp's per-tensor type choice (bench/llamacpp_recipes.py), checked against assignments
written out by hand from the rules of src/llama-quant.cpp and against type counts llama.cpp printed
for published GGUF files."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "bench" / "llamacpp_recipes.py"
_spec = importlib.util.spec_from_file_location("bench_llamacpp_recipes", _PATH)
rec = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rec)


def llama_tensors(n_layer, hidden, inter, kv_rows, vocab, lm_head=True):
    """(hf_name, rows=out, cols=in) for a Llama-family checkpoint."""
    t = [("model.embed_tokens", vocab, hidden)]
    for i in range(n_layer):
        p = f"model.layers.{i}."
        t += [
            (p + "self_attn.q_proj", hidden, hidden),
            (p + "self_attn.k_proj", kv_rows, hidden),
            (p + "self_attn.v_proj", kv_rows, hidden),
            (p + "self_attn.o_proj", hidden, hidden),
            (p + "mlp.gate_proj", inter, hidden),
            (p + "mlp.up_proj", inter, hidden),
            (p + "mlp.down_proj", hidden, inter),
        ]
    if lm_head:
        t.append(("lm_head", vocab, hidden))
    return t


def smollm2_135m():
    # 30 layers, hidden 576, intermediate 1536, 9 heads / 3 kv heads of 64 -> k/v rows 192, vocab 49152
    return llama_tensors(30, 576, 1536, 192, 49152)


def linear_names(tensors):
    return [n for n, _, _ in tensors if ".layers." in n]


def L(i, s):
    return f"model.layers.{i}.{s}"


# use_more_bits(i, 30): i < 30//8=3, i >= 7*30//8=26, or (i-3) % 3 == 2
SMOL_MORE_BITS = {0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29}


# ---------------------------------------------------------------- helpers


def test_use_more_bits_by_hand():
    assert {i for i in range(30) if rec.use_more_bits(i, 30)} == SMOL_MORE_BITS
    # 32 layers: first 4, last 4 (28..31), and 6, 9, ..., 27 -> 16 layers
    assert {i for i in range(32) if rec.use_more_bits(i, 32)} == (
        {0, 1, 2, 3, 28, 29, 30, 31} | {6, 9, 12, 15, 18, 21, 24, 27})


def test_hf_to_gguf_name():
    assert rec.hf_to_gguf_name("model.embed_tokens") == "token_embd"
    assert rec.hf_to_gguf_name("lm_head") == "output"
    assert rec.hf_to_gguf_name("model.norm") == "output_norm"
    assert rec.hf_to_gguf_name("model.layers.3.self_attn.v_proj") == "blk.3.attn_v"
    assert rec.hf_to_gguf_name("model.layers.3.self_attn.o_proj.weight") == "blk.3.attn_output"
    assert rec.hf_to_gguf_name("model.layers.3.mlp.down_proj") == "blk.3.ffn_down"
    assert rec.hf_to_gguf_name("model.layers.7.block_sparse_moe.experts.5.w2") == "blk.7.ffn_down_exps"
    with pytest.raises(ValueError):
        rec.hf_to_gguf_name("vision_tower.blocks.0.attn")


# ---------------------------------------------------------------- SmolLM2-135M, by hand


def test_smollm2_q4_k_m_by_hand():
    t = smollm2_135m()
    ty = rec.llamacpp_types("Q4_K_M", t, n_layer=30, tied_embeddings=True)
    # Tied: token_embd takes the output rule; 576 % 256 != 0 (q4_K block) -> q8_0 (fits 32).
    assert ty["model.embed_tokens"] == "q8_0"
    assert ty["lm_head"] == "q8_0"  # the same tensor
    for i in range(30):
        more = i in SMOL_MORE_BITS
        # attn_v: q6_K in use_more_bits layers; cols 576 -> fallback q6_K -> q8_0, q4_K -> q5_0
        assert ty[L(i, "self_attn.v_proj")] == ("q8_0" if more else "q5_0"), i
        # ffn_down: q6_K in use_more_bits layers; cols 1536 = 6*256 fits -> no fallback
        assert ty[L(i, "mlp.down_proj")] == ("q6_K" if more else "q4_K"), i
        # everything else q4_K, all with 576 columns -> q5_0
        for s in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj"):
            assert ty[L(i, s)] == "q5_0", (i, s)
    lin = linear_names(t)
    assert rec.type_counts(ty, lin) == {"q4_K": 16, "q5_0": 166, "q6_K": 14, "q8_0": 14}


def test_smollm2_q3_k_m_by_hand():
    t = smollm2_135m()
    ty = rec.llamacpp_types("Q3_K_M", t, n_layer=30, tied_embeddings=True)
    assert ty["model.embed_tokens"] == "q8_0"  # 576 % 256 != 0 -> q8_0
    for i in range(30):
        # attn_v: first two attn_v tensors q5_K (-> q5_1 at 576 cols), then q4_K (-> q5_0)
        assert ty[L(i, "self_attn.v_proj")] == ("q5_1" if i < 2 else "q5_0"), i
        # ffn_down: i < 30//16 = 1 -> q5_K, else q4_K (llama is not Falcon); 1536 cols fit
        assert ty[L(i, "mlp.down_proj")] == ("q5_K" if i < 1 else "q4_K"), i
        # attn_output: q4_K -> q5_0 at 576 cols
        assert ty[L(i, "self_attn.o_proj")] == "q5_0", i
        # q, k, gate, up: default q3_K, 576 cols -> current source falls back to q4_0
        for s in ("self_attn.q_proj", "self_attn.k_proj", "mlp.gate_proj", "mlp.up_proj"):
            assert ty[L(i, s)] == "q4_0", (i, s)
    lin = linear_names(t)
    assert rec.type_counts(ty, lin) == {"q4_0": 120, "q4_K": 29, "q5_0": 58, "q5_1": 2, "q5_K": 1}


def test_smollm2_q3_k_m_legacy_fallback_is_iq4_nl():
    t = smollm2_135m()
    ty = rec.llamacpp_types("Q3_K_M", t, n_layer=30, tied_embeddings=True, revision="legacy")
    lin = linear_names(t)
    assert rec.type_counts(ty, lin) == {"iq4_nl": 120, "q4_K": 29, "q5_0": 58, "q5_1": 2, "q5_K": 1}


def test_smollm2_bits_per_weight():
    t = smollm2_135m()
    lin = linear_names(t)
    assert len(lin) == 210
    q4 = rec.llamacpp_types("Q4_K_M", t, n_layer=30, tied_embeddings=True)
    q3 = rec.llamacpp_types("Q3_K_M", t, n_layer=30, tied_embeddings=True)
    # per layer: q,o 576*576 = 331776; k,v 192*576 = 110592; gate,up,down 1536*576 = 884736
    q, kv, ff = 331776, 110592, 884736
    n_w = 30 * (2 * q + 2 * kv + 3 * ff)
    # Q4_K_M: q,k,o,gate,up q5_0 (5.5) everywhere; v q8_0 in 14 layers, q5_0 in 16;
    # down q6_K in 14 layers, q4_K in 16
    q4_bits = (30 * (2 * q + kv + 2 * ff) * 5.5 + kv * (14 * 8.5 + 16 * 5.5)
               + ff * (14 * 6.5625 + 16 * 4.5))
    assert rec.mean_bits_per_weight(q4, t, lin) == pytest.approx(q4_bits / n_w)
    # Q3_K_M: q,k,gate,up q4_0 (4.5); o q5_0 (5.5); v q5_1 (6.0) x2, q5_0 x28; down q5_K x1, q4_K x29
    q3_bits = (30 * (q + kv + 2 * ff) * 4.5 + 30 * q * 5.5 + kv * (2 * 6.0 + 28 * 5.5)
               + ff * (1 * 5.5 + 29 * 4.5))
    assert rec.mean_bits_per_weight(q3, t, lin) == pytest.approx(q3_bits / n_w)
    assert rec.mean_bits_per_weight(q4, t, lin) == pytest.approx(5.5344, abs=1e-4)
    assert rec.mean_bits_per_weight(q3, t, lin) == pytest.approx(4.6344, abs=1e-4)


# ---------------------------------------------------------------- Llama-7B shaped


def test_llama7b_q4_k_m():
    t = llama_tensors(32, 4096, 11008, 4096, 32000)
    ty = rec.llamacpp_types("Q4_K_M", t, n_layer=32)
    more = {i for i in range(32) if rec.use_more_bits(i, 32)}
    assert len(more) == 16
    for i in range(32):
        want = "q6_K" if i in more else "q4_K"
        assert ty[L(i, "self_attn.v_proj")] == want
        assert ty[L(i, "mlp.down_proj")] == want  # 11008 = 43*256 fits
        for s in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj"):
            assert ty[L(i, s)] == "q4_K"
    assert ty["lm_head"] == "q6_K"
    assert ty["model.embed_tokens"] == "q4_K"  # untied: default type
    # Published: TheBloke/Llama-2-7B-GGUF llama-2-7b.Q4_K_M.gguf as loaded by llama.cpp
    # (log in utilityai/llama-cpp-rs README): type f32: 65, q4_K: 193, q6_K: 33.
    assert rec.type_counts(ty) == {"q4_K": 193, "q6_K": 33}


def test_published_mistral7b_q3_k_m_counts():
    # TheBloke Mistral-7B-Instruct-v0.2 Q3_K_M loaded by llama.cpp (32 layers, 4096/14336,
    # 8 kv heads, vocab 32000): q3_K 129, q4_K 92, q5_K 4, q6_K 1.
    t = llama_tensors(32, 4096, 14336, 1024, 32000)
    ty = rec.llamacpp_types("Q3_K_M", t, n_layer=32)
    assert rec.type_counts(ty) == {"q3_K": 129, "q4_K": 92, "q5_K": 4, "q6_K": 1}
    assert ty[L(31, "self_attn.o_proj")] == "q4_K"
    assert ty[L(31, "mlp.gate_proj")] == "q3_K"
    assert ty[L(31, "mlp.down_proj")] == "q4_K"


def test_published_llama31_8b_q3_k_l_counts():
    # Meta-Llama-3.1-8B-Instruct Q3_K_L (vocab 128256, 8 kv heads): q3_K 129, q5_K 96, q6_K 1.
    t = llama_tensors(32, 4096, 14336, 1024, 128256)
    ty = rec.llamacpp_types("Q3_K_L", t, n_layer=32)
    assert rec.type_counts(ty) == {"q3_K": 129, "q5_K": 96, "q6_K": 1}


# ---------------------------------------------------------------- other rules


def test_q2_k_attn_v_depends_on_gqa():
    gqa4 = rec.llamacpp_types("Q2_K", llama_tensors(32, 4096, 14336, 1024, 32000), n_layer=32)
    mha = rec.llamacpp_types("Q2_K", llama_tensors(32, 4096, 11008, 4096, 32000), n_layer=32)
    assert gqa4[L(5, "self_attn.v_proj")] == "q4_K"
    assert mha[L(5, "self_attn.v_proj")] == "q3_K"
    assert mha[L(5, "mlp.down_proj")] == "q3_K" and mha[L(5, "self_attn.o_proj")] == "q3_K"
    assert mha[L(5, "self_attn.q_proj")] == "q2_K"


def test_q4_k_s_and_q5_k_m():
    t = llama_tensors(32, 4096, 11008, 4096, 32000)
    s = rec.llamacpp_types("Q4_K_S", t, n_layer=32)
    assert [s[L(i, "self_attn.v_proj")] for i in range(6)] == ["q5_K"] * 4 + ["q4_K"] * 2
    assert [s[L(i, "mlp.down_proj")] for i in range(6)] == ["q5_K"] * 4 + ["q4_K"] * 2
    m = rec.llamacpp_types("Q5_K_M", t, n_layer=32)
    assert m[L(6, "mlp.down_proj")] == "q6_K" and m[L(7, "mlp.down_proj")] == "q5_K"


def test_70b_attn_v_bumped():
    t = llama_tensors(80, 8192, 28672, 1024, 128256)
    ty = rec.llamacpp_types("Q3_K_M", t, n_layer=80)
    assert ty[L(40, "self_attn.v_proj")] == "q5_K"  # q4_K -> q5_K for the 70B type
    ty4 = rec.llamacpp_types("Q4_K_M", t, n_layer=80)
    assert ty4[L(11, "self_attn.v_proj")] == "q5_K"  # not use_more_bits -> q4_K -> q5_K
    assert ty4[L(0, "self_attn.v_proj")] == "q6_K"


def test_moe8_rules_and_expert_names():
    t = [("model.embed_tokens", 32000, 4096), ("lm_head", 32000, 4096)]
    for i in range(32):
        p = f"model.layers.{i}."
        t += [(p + "self_attn.q_proj", 4096, 4096), (p + "self_attn.k_proj", 1024, 4096),
              (p + "self_attn.v_proj", 1024, 4096), (p + "self_attn.o_proj", 4096, 4096),
              (p + "block_sparse_moe.gate", 8, 4096)]
        for e in range(8):
            t += [(p + f"block_sparse_moe.experts.{e}.w1", 14336, 4096),
                  (p + f"block_sparse_moe.experts.{e}.w2", 4096, 14336),
                  (p + f"block_sparse_moe.experts.{e}.w3", 14336, 4096)]
    ty = rec.llamacpp_types("Q4_K_M", t, n_layer=32, n_expert=8)
    assert ty[L(3, "self_attn.v_proj")] == "q8_0"
    assert ty[L(3, "self_attn.k_proj")] == "q8_0"
    assert ty[L(3, "self_attn.o_proj")] == "q5_K"
    assert ty[L(3, "block_sparse_moe.gate")] == "f32"
    # ffn_down layer is parsed from the name; every expert of a layer gets the same type
    assert {ty[L(6, f"block_sparse_moe.experts.{e}.w2")] for e in range(8)} == {"q6_K"}
    assert {ty[L(5, f"block_sparse_moe.experts.{e}.w2")] for e in range(8)} == {"q4_K"}


def test_fallback_to_f16_and_errors():
    # 100 columns: neither the 256- nor the 32-block divides -> f16
    t = [("model.layers.0.mlp.up_proj", 64, 100), ("model.layers.0.mlp.down_proj", 64, 96)]
    ty = rec.llamacpp_types("Q4_K_M", t, n_layer=1)
    assert ty["model.layers.0.mlp.up_proj"] == "f16"
    # q8_0 has no fallback: llama.cpp throws
    with pytest.raises(ValueError):
        rec.llamacpp_types("Q8_0", t, n_layer=1)
    with pytest.raises(ValueError):
        rec.llamacpp_types("IQ2_XS", t, n_layer=1)


def test_flat_ftypes_smollm2():
    t = smollm2_135m()
    lin = linear_names(t)
    q8 = rec.llamacpp_types("Q8_0", t, n_layer=30, tied_embeddings=True)
    assert rec.type_counts(q8, lin) == {"q8_0": 210} and q8["model.embed_tokens"] == "q8_0"
    q40 = rec.llamacpp_types("Q4_0", t, n_layer=30, tied_embeddings=True)
    # tied embedding: 576 % 32 == 0 -> q6_K, then 576 % 256 != 0 -> q8_0
    assert rec.type_counts(q40, lin) == {"q4_0": 210} and q40["model.embed_tokens"] == "q8_0"
