"""The compressed-tensors checkpoint writer (workers/artifacts/ct_checkpoint.py): packing that
matches compressed-tensors' own bit for bit, codes recovered exactly from RTN and GPTQ results,
and a mixed-precision SmolLM2-135M checkpoint that transformers loads back to bitplan's ŵ exactly,
with the KL of the in-process fake-quantized model."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from proxies.quant import rtn
from search.formats import Format
from workers.artifacts import ct_checkpoint as ct


# ---------------------------------------------------------------- packing and codes (fast)


@pytest.mark.parametrize("bits", range(2, 9))
def test_packing_matches_compressed_tensors(bits):
    helpers = pytest.importorskip("compressed_tensors.compressors.pack_quantized.helpers")
    torch.manual_seed(bits)
    for rows, cols in [(3, 64), (5, 100), (7, 33)]:
        u = torch.randint(0, 1 << bits, (rows, cols))
        signed = (u - (1 << (bits - 1))).to(torch.int8)
        if ct.installed_packing() == "dense":
            assert torch.equal(ct.pack_codes(u, bits), helpers.pack_to_int32(signed, bits))
            # zero points: packed along the output dim
            assert torch.equal(ct.pack_codes(u.t().contiguous(), bits).t(), helpers.pack_to_int32(signed, bits, packed_dim=0))
        for packing in ("dense", "padded"):
            assert torch.equal(ct.unpack_codes(ct.pack_codes(u, bits, packing), bits, cols, packing), u)
    if bits in (2, 4, 8):  # the two layouts agree where bits divide 32
        assert torch.equal(ct.pack_codes(u, bits, "dense"), ct.pack_codes(u, bits, "padded"))


def _decode(layer, fmt: Format, packing: str = "dense") -> torch.Tensor:
    """ŵ from the stored tensors, by compressed-tensors' signed convention."""
    t = {k.rsplit(".", 1)[1]: v for k, v in layer.tensors.items()}
    rows, cols = t["weight_shape"].tolist()
    half = 1 << (fmt.bits - 1)
    q = ct.unpack_codes(t["weight_packed"], fmt.bits, cols, packing) - half
    s = t["weight_scale"].float()
    g = cols // s.shape[1]
    zp = torch.zeros_like(s)
    if "weight_zero_point" in t:
        zp = ct.unpack_codes(t["weight_zero_point"].t().contiguous(), fmt.bits, rows, packing).t().float() - half
    return ((q.float().reshape(rows, -1, g) - zp.unsqueeze(-1)) * s.unsqueeze(-1)).reshape(rows, cols)


@pytest.mark.parametrize("fmt", [Format(4, 64), Format(3, 32), Format(2, 64, True), Format(8, None), Format(5, 128, True),
                                 Format(4, 4096)])
def test_rtn_codes_decode_to_w_hat_exactly(fmt):
    torch.manual_seed(0)
    w = torch.randn(48, 256) * 0.05
    w[3, :64] = w[3, :64].abs() + 0.01  # a same-sign group: the range still includes 0
    layer = ct._int_layer("m", w, ct.LayerWeight(w), fmt, "dense", None)
    assert torch.equal(_decode(layer, fmt), rtn(w, fmt))
    assert layer.tensors["m.weight_scale"].dtype == torch.float16
    assert ("m.weight_zero_point" in layer.tensors) == (not fmt.symmetric)
    assert layer.scheme["weights"]["strategy"] == ("channel" if not fmt.group_size or fmt.group_size >= 256 else "group")


def test_gptq_codes_are_recovered_from_the_original_grid_or_refused():
    from proxies.gptq import factor, gptq
    torch.manual_seed(1)
    w = torch.randn(32, 128) * 0.05
    x = torch.randn(512, 128) * torch.linspace(0.2, 3, 128)
    h = x.t() @ x / 512
    for fmt in (Format(4, 32), Format(3, None, True)):
        wq = gptq(w, factor(h, act_order=True), fmt)  # static groups: the original weight's grid
        assert not torch.equal(wq, rtn(w, fmt))
        layer = ct._int_layer("m", w, ct.LayerWeight(w, wq), fmt, "dense", "weight")
        assert torch.equal(_decode(layer, fmt), wq)
    # without act-order a group's scale comes from the updated weights: not the original grid
    wq = gptq(w, factor(h, act_order=False), Format(4, 32))
    with pytest.raises(ct.CTExportError, match="grid"):
        ct._int_layer("m", w, ct.LayerWeight(w, wq), Format(4, 32), "dense", None)


def test_group_sizes_that_do_not_divide_are_refused():
    w = torch.randn(8, 576)
    with pytest.raises(ct.CTExportError, match="does not divide"):
        ct._int_layer("m", w, ct.LayerWeight(w), Format(4, 128), "dense", None)


# ---------------------------------------------------------------- a real checkpoint (integration)


def _policy() -> dict:
    """A mixed policy over SmolLM2-135M (in_features 576 for attention and gate/up, 1536 for
    down): 4-bit g64 asym, 3-bit g64 asym attention every third block, 8-bit g128 asym down
    projections, 2-bit g64 sym gate/up in one block, 8-bit and 4-bit per-channel sym, one float
    layer. Fused siblings (q/k/v, gate/up) share a format, as vLLM needs."""
    fmts = {}
    for i in range(30):
        p = f"model.layers.{i}"
        attn = Format(3, 64) if i % 3 == 0 else Format(4, 64)
        for x in ("q_proj", "k_proj", "v_proj", "o_proj"):
            fmts[f"{p}.self_attn.{x}"] = attn
        for x in ("gate_proj", "up_proj"):
            fmts[f"{p}.mlp.{x}"] = Format(2, 64, True) if i == 7 else Format(4, 64)
        fmts[f"{p}.mlp.down_proj"] = Format(8, 128)
    fmts["model.layers.5.self_attn.o_proj"] = Format(4, None, True)
    fmts["model.layers.9.mlp.down_proj"] = Format(8, None, True)
    fmts["model.layers.3.mlp.down_proj"] = Format(16)
    return fmts


@pytest.fixture(scope="module")
def smollm():
    from workers.sources import load_model
    return load_model("builtin:smollm2-135m")


def _tokens(tokenizer, n: int = 256) -> torch.Tensor:
    from workers.data import paragraphs
    text = "\n\n".join(paragraphs("wikitext2-test")[:40])
    ids = tokenizer(text, return_tensors="pt").input_ids[:, :n]
    assert ids.shape[1] == n
    return ids


@torch.no_grad()
def _kl(ref_logits: torch.Tensor, model: nn.Module, ids: torch.Tensor) -> float:
    """Mean KL(float ‖ model) of the next-token distributions."""
    lp = torch.log_softmax(model(ids).logits.double(), -1)
    lr = torch.log_softmax(ref_logits.double(), -1)
    return float((lr.exp() * (lr - lp)).sum(-1).mean())


@pytest.mark.integration
def test_a_mixed_smollm2_checkpoint_loads_back_to_bitplans_weights(tmp_path, smollm):
    pytest.importorskip("compressed_tensors")
    from workers import digits
    lm = smollm
    model = lm.model
    fmts = _policy()
    hf_dir = digits.cache_dir() / "smollm2-135m-hf"
    originals = {n: m.weight.detach().clone() for n, m in model.named_modules() if n in fmts}
    out = tmp_path / "ct"
    summary = ct.write_compressed_tensors(model, lm.tokenizer, fmts, originals, out, hf_dir if hf_dir.is_dir() else None)

    # what was written
    cfg = json.loads((out / "config.json").read_text())["quantization_config"]
    assert cfg["quant_method"] == "compressed-tensors" and cfg["format"] == "mixed-precision"
    assert cfg["quantization_status"] == "compressed"
    assert cfg["ignore"] == ["model.layers.3.mlp.down_proj", "lm_head"]
    schemes = {(g["weights"]["num_bits"], g["weights"]["group_size"], g["weights"]["symmetric"], g["weights"]["strategy"])
               for g in cfg["config_groups"].values()}
    assert schemes == {(4, 64, False, "group"), (3, 64, False, "group"), (8, 128, False, "group"),
                       (2, 64, True, "group"), (4, None, True, "channel"), (8, None, True, "channel")}
    assert all(t.startswith("re:^") and t.endswith("$") for g in cfg["config_groups"].values() for t in g["targets"])
    assert (out / "tokenizer.json").is_file() and (out / "model.safetensors").is_file()
    from safetensors import safe_open
    with safe_open(out / "model.safetensors", "pt") as f:
        keys = set(f.keys())
        assert f.get_tensor("model.layers.0.self_attn.q_proj.weight_packed").dtype == torch.int32
        assert f.get_tensor("model.layers.0.self_attn.q_proj.weight_scale").dtype == torch.float16
        assert f.get_tensor("model.layers.1.self_attn.q_proj.weight_zero_point").shape == (576 * 4 // 32, 9)
        assert f.get_tensor("model.layers.3.mlp.down_proj.weight").dtype == torch.float32
    assert "model.layers.5.self_attn.o_proj.weight_zero_point" not in keys  # symmetric
    assert "model.layers.0.self_attn.q_proj.weight" not in keys and "lm_head.weight" not in keys  # tied to embed
    assert summary["layers"]["model.layers.1.self_attn.q_proj"]["bytes"] == 576 * 576 // 2 + 576 * 9 * 2 + 72 * 9 * 4 + 16
    assert summary["file_bytes"] == (out / "model.safetensors").stat().st_size
    assert any("w3g64a" in n for n in summary["vllm_notes"])  # 2/3-bit: transformers only

    # loaded back by transformers + compressed-tensors (decompressed on CPU)
    loaded = ct.load_with_transformers(out, dtype=torch.float32, attn_implementation="eager")
    fake = copy.deepcopy(model)
    lmods, fmods = dict(loaded.named_modules()), dict(fake.named_modules())
    with torch.no_grad():
        for n, f in fmts.items():
            fmods[n].weight.copy_(rtn(originals[n], f))
    for n, f in fmts.items():
        assert torch.equal(lmods[n].weight, fmods[n].weight), n  # bit-exact, float layer included
    fstate = fake.state_dict()
    for k, v in loaded.state_dict().items():
        if k in fstate:
            assert torch.equal(v, fstate[k]), k

    ids = _tokens(lm.tokenizer)
    with torch.no_grad():
        ref = model(ids).logits
    kl_loaded, kl_fake = _kl(ref, loaded, ids), _kl(ref, fake, ids)
    assert kl_fake > 1e-3  # the policy does change the model
    assert kl_loaded == pytest.approx(kl_fake, rel=1e-5)


@pytest.mark.integration
def test_a_symmetric_checkpoint_loads_with_plain_from_pretrained(tmp_path, smollm):
    """Without zero points nothing needs working around: the standard transformers call."""
    pytest.importorskip("compressed_tensors")
    from transformers import AutoModelForCausalLM
    lm = smollm
    model = lm.model
    fmts = {f"model.layers.{i}.mlp.down_proj": Format(4, 64, True) if i % 2 else Format(8, None, True) for i in range(30)}
    fmts.update({f"model.layers.{i}.self_attn.{x}": Format(4, 32, True) for i in range(0, 30, 4)
                 for x in ("q_proj", "k_proj", "v_proj")})
    ct.write_compressed_tensors(model, lm.tokenizer, fmts, None, tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        loaded(ids)  # compressed-tensors decompresses on the first forward pass
    mods = dict(loaded.named_modules())
    for n, f in fmts.items():
        assert torch.equal(mods[n].weight, rtn(dict(model.named_modules())[n].weight.detach(), f)), n


@pytest.mark.integration
def test_fp_formats_plug_in_when_their_numerics_exist(tmp_path, smollm):
    fp = pytest.importorskip("proxies.numerics.fp_quants")
    lm = smollm
    model = lm.model
    fmts = {"model.layers.0.mlp.down_proj": "nvfp4", "model.layers.1.mlp.down_proj": "fp8_pc",
            "model.layers.2.mlp.down_proj": "fp8", "model.layers.3.mlp.down_proj": Format(4, 64),
            "model.layers.4.mlp.down_proj": "mxfp4", "model.layers.5.mlp.down_proj": "mxfp8",
            "model.layers.6.mlp.down_proj": Format.named("nvfp4")}
    summary = ct.write_compressed_tensors(model, lm.tokenizer, fmts, None, tmp_path)
    assert summary["format"] == "mixed-precision"
    loaded = ct.load_with_transformers(tmp_path, dtype=torch.float32)
    mods, orig = dict(loaded.named_modules()), dict(model.named_modules())
    for n, f in fmts.items():
        w = orig[n].weight.detach()
        want = rtn(w, f) if isinstance(f, Format) and not f.runtime else fp.fake_quant(w, getattr(f, "runtime", f))
        assert torch.equal(mods[n].weight, want.to(mods[n].weight.dtype)), n


def test_split_fused_projections_are_flagged_for_vllm():
    a, b = json.dumps({"w": 4}), json.dumps({"w": 8})
    split = ct._split_fused({"m.attn.q_proj": a, "m.attn.k_proj": a, "m.attn.v_proj": b, "m.mlp.gate_proj": a,
                             "m.mlp.up_proj": a, "n.mlp.gate_proj": a, "n.mlp.up_proj": "float"})
    assert split == ["m.attn.{k_proj,q_proj,v_proj}", "n.mlp.{gate_proj,up_proj}"]
    assert ct._targets(["m.attn.q_proj", "m.attn.k_proj", "m.attn.v_proj", "m.attn.o_proj"]) == [
        r"re:^m\.attn\.(?:k_proj|q_proj|v_proj|qkv_proj)$", r"re:^m\.attn\.o_proj$"]
