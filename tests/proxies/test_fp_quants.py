"""NVFP4 / MXFP4 / MXFP8 / FP8 numerics (proxies/numerics/fp_quants.py) against the references
that define them: gguf-py's MXFP4/NVFP4 decoders (bit-exact), compressed-tensors' own quantize /
dequantize and compressors (bit-exact), torchao's MX / NVFP4 CPU quantizers, and ModelOpt's NVFP4
formulas; exact storage costs; error order on Gaussian and real weights."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from proxies.numerics import fp_quants as fq

NAMES = tuple(fq.FP_FORMATS)
E2M1 = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def weights(rows=256, cols=512, seed=0) -> torch.Tensor:
    """Gaussian weights with an outlier row, a zero block and a zero row-start: every scale path."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 0.02
    if rows > 5:
        w[3] *= 50
        w[5, :64] = 0
    return w


def rel_rmse(a: torch.Tensor, w: torch.Tensor) -> float:
    return float((a.float() - w.float()).norm() / w.float().norm())


def pos0(x: torch.Tensor) -> torch.Tensor:
    """-0.0 -> +0.0 (our decoder keeps the sign of a zero code, ggml's does not)."""
    return x + 0.0


def bits(x: torch.Tensor) -> torch.Tensor:
    return pos0(x.float()).view(torch.int32)


# ------------------------------------------------------------------------------ costs


def test_format_table():
    assert fq.FP_FORMATS == {"nvfp4": (16, 4.5), "mxfp4": (32, 4.25), "mxfp8": (32, 8.25),
                             "fp8": (None, 8.0), "fp8_pc": (None, 8.0)}


@pytest.mark.parametrize("rows,cols", [(1536, 576), (576, 1536), (7, 100), (1, 1), (3, 33)])
def test_storage_bits_exact(rows, cols):
    nb16, nb32 = -(-cols // 16), -(-cols // 32)
    expect = {
        "nvfp4": rows * nb16 * (16 * 4 + 8) + 32,
        "mxfp4": rows * nb32 * (32 * 4 + 8),
        "mxfp8": rows * nb32 * (32 * 8 + 8),
        "fp8": rows * cols * 8 + 32,
        "fp8_pc": rows * cols * 8 + 32 * rows,
    }
    for name, b in expect.items():
        assert fq.storage_bits(name, rows, cols) == b
        assert fq.bits_per_weight(name, rows, cols) == b / (rows * cols)
    # the planner's cost model prices the same bits
    from search import runtime_formats as rf
    for name in NAMES:
        assert rf.storage_bits(name, rows * cols, cols) == fq.storage_bits(name, rows, cols)


def test_storage_bits_numbers():
    # a 1536x576 SmolLM2 MLP weight
    assert fq.storage_bits("nvfp4", 1536, 576) == 3_981_344          # 4.5 bpw + 32
    assert fq.storage_bits("mxfp4", 1536, 576) == 3_760_128          # 4.25 bpw
    assert fq.storage_bits("mxfp8", 1536, 576) == 7_299_072          # 8.25 bpw
    assert fq.storage_bits("fp8", 1536, 576) == 7_077_920            # 8 bpw + 32
    assert fq.storage_bits("fp8_pc", 1536, 576) == 7_127_040         # 8 bpw + 32/row


# ------------------------------------------------------------------------------ element codecs


def test_e2m1_round_to_nearest_even_and_saturation():
    x = torch.tensor([0.0, 0.2, 0.25, 0.26, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 5.01, 6.0, 7.0, 100.0])
    rne = torch.tensor([0.0, 0.0, 0.0, 0.5, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0, 6.0, 6.0, 6.0])
    got = fq._e2m1_decode(fq._e2m1_encode(x.clamp(-6, 6)))
    assert torch.equal(got, rne)
    assert torch.equal(fq._e2m1_decode(fq._e2m1_encode(-x.clamp(-6, 6))), -rne)
    # every code decodes to its value and encodes back
    codes = torch.arange(16, dtype=torch.uint8)
    vals = fq._e2m1_decode(codes)
    assert vals[:8].tolist() == list(E2M1) and vals[8:].tolist() == [-v for v in E2M1]
    assert torch.equal(fq._e2m1_encode(vals), codes)


def test_e4m3_codes_roundtrip():
    codes = torch.arange(256, dtype=torch.uint8)
    codes = codes[(codes & 0x7F) != 0x7F]                            # drop the two NaNs
    vals = fq._e4m3_decode(codes)
    assert torch.equal(fq._e4m3_encode(vals), codes)
    assert fq._e4m3_decode(fq._e4m3_encode(torch.tensor([1e6, -1e6]))).tolist() == [448.0, -448.0]


def test_e8m0_decode_exact():
    e = torch.arange(255, dtype=torch.uint8)
    assert torch.equal(fq._e8m0_to_float(e).double(), torch.pow(2.0, e.double() - 127))


# ------------------------------------------------------------------------------ API


@pytest.mark.parametrize("name", NAMES)
def test_quantize_shapes_padding_and_dtypes(name):
    w = weights(7, 100).to(torch.bfloat16)
    q = fq.quantize(w, name)
    block = fq.FP_FORMATS[name].block
    padded = 100 if block is None else -(-100 // block) * block
    assert q.shape == (7, 100) and q.codes.shape == (7, padded) and q.codes.dtype == torch.uint8
    d = fq.dequantize(q)
    assert d.dtype == torch.float32 and d.shape == (7, 100)
    f = fq.fake_quant(w, name)
    assert f.dtype == torch.bfloat16 and f.shape == w.shape
    assert torch.equal(f, d.to(torch.bfloat16))
    # padding is exactly zero and does not move a scale: the first 96 columns quantize alike
    assert (fq._e2m1_decode(q.codes) if name in ("nvfp4", "mxfp4") else fq._e4m3_decode(q.codes))[:, 100:].abs().sum() == 0
    if block is not None and name != "nvfp4":
        assert torch.equal(fq.dequantize(fq.quantize(w[:, :96], name)), d[:, :96])


def test_scale_dtypes_and_shapes():
    w = weights(64, 128)
    q = fq.quantize(w, "nvfp4")
    assert q.scales.dtype == torch.float8_e4m3fn and q.scales.shape == (64, 8)
    assert q.global_scale.dtype == torch.float32 and q.global_scale.shape == (1,)
    assert float(q.global_scale) == np.float32(2688.0) / np.float32(w.abs().max())
    for name in ("mxfp4", "mxfp8"):
        q = fq.quantize(w, name)
        assert q.scales.dtype == torch.uint8 and q.scales.shape == (64, 4) and q.global_scale is None
    assert fq.quantize(w, "fp8").scales.shape == (1,)
    assert fq.quantize(w, "fp8_pc").scales.shape == (64, 1)


def test_exact_grid_values_survive():
    # a weight already on each format's grid comes back unchanged
    g = torch.Generator().manual_seed(1)
    v = torch.tensor(E2M1)[torch.randint(0, 8, (16, 64), generator=g)] * torch.where(
        torch.rand(16, 64, generator=g) < 0.5, -1.0, 1.0)
    v[:, ::16] = 6.0                                                  # every block's amax is 6
    for name in ("mxfp4", "mxfp8", "nvfp4"):
        assert torch.equal(fq.fake_quant(v * 0.25, name), v * 0.25), name


def test_zero_and_nonfinite():
    z = torch.zeros(4, 64)
    for name in NAMES:
        assert torch.equal(fq.fake_quant(z, name), z)
    q = fq.quantize(z, "nvfp4")
    assert float(q.global_scale) == 1.0 and (q.scales.float() == 0.125).all()
    with pytest.raises(ValueError):
        fq.quantize(torch.tensor([[1.0, float("nan")]]), "fp8")
    with pytest.raises(ValueError):
        fq.quantize(torch.ones(3), "fp8")
    with pytest.raises(ValueError):
        fq.quantize(torch.ones(2, 2), "int4")


def test_mx_floor_rule_is_ocp():
    # amax in [2^k, 2^(k+1)): X = 2^(k - emax); amax/X in [4, 8) for FP4, [256, 512) for E4M3
    g = torch.Generator().manual_seed(2)
    w = torch.randn(512, 64, generator=g) * torch.logspace(-6, 3, 512).unsqueeze(1)
    for name, emax in (("mxfp4", 2), ("mxfp8", 8)):
        q = fq.quantize(w, name)
        amax = w.view(512, 2, 32).abs().amax(-1).double()
        e = q.scales.double() - 127
        assert torch.equal(e, torch.floor(torch.log2(amax)) - emax)
        # the compressed-tensors rule moves up exactly the blocks whose amax mantissa is >= 1.75
        qc = fq.quantize(w, name, mx_scale="ct")
        bump = (amax / torch.exp2(torch.floor(torch.log2(amax)))) >= 1.75
        assert torch.equal(qc.scales.double() - q.scales.double(), bump.double())
    with pytest.raises(ValueError):
        fq.quantize(w, "mxfp4", mx_scale="ceil")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
def test_cuda_matches_cpu_bit_exact():
    w = weights(384, 576)
    for name in NAMES:
        for rule in ("floor", "ct"):
            qc, qg = fq.quantize(w, name, mx_scale=rule), fq.quantize(w.cuda(), name, mx_scale=rule)
            assert torch.equal(qc.codes, qg.codes.cpu()), name
            assert torch.equal(qc.scales.view(torch.uint8) if qc.scales.dtype.itemsize == 1 else qc.scales,
                               (qg.scales.view(torch.uint8) if qg.scales.dtype.itemsize == 1 else qg.scales).cpu())
            assert torch.equal(bits(fq.dequantize(qc)), bits(fq.dequantize(qg).cpu())), name
        f = fq.fake_quant(w.cuda().half(), name)
        assert f.is_cuda and f.dtype == torch.float16


# ------------------------------------------------------------------------------ GGUF (gguf-py)


def _gguf():
    return pytest.importorskip("gguf")


def _gguf_decode(b: np.ndarray, name: str) -> torch.Tensor:
    gguf = _gguf()
    from gguf.quants import dequantize
    t = {"mxfp4": gguf.GGMLQuantizationType.MXFP4, "nvfp4": gguf.GGMLQuantizationType.NVFP4}[name]
    return torch.from_numpy(np.ascontiguousarray(dequantize(b, t)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gguf_mxfp4_bit_exact(seed):
    w = weights(128, 256, seed)
    for rule in ("floor", "ct"):
        q = fq.quantize(w, "mxfp4", mx_scale=rule)
        b = fq.gguf_pack(q)
        assert b.dtype == np.uint8 and b.shape == (128, 256 // 32 * 17)
        assert torch.equal(_gguf_decode(b, "mxfp4").view(torch.int32), bits(fq.dequantize(q)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gguf_nvfp4_bit_exact_and_tensor_scale(seed):
    w = weights(128, 256, seed)
    q = fq.quantize(w, "nvfp4")
    b = fq.gguf_pack(q)
    assert b.dtype == np.uint8 and b.shape == (128, 256 // 64 * 36)
    g = _gguf_decode(b, "nvfp4")
    # the 36-byte block holds e2m1 codes and UE4M3 block scales only: bit-exact without gs
    assert torch.equal(g.view(torch.int32), bits(fq.dequantize(q, apply_global_scale=False)))
    # llama.cpp multiplies by the separate F32 tensor <name>.scale = fl(1/gs); compressed-tensors
    # decodes e2m1 * fl(s_b/gs): the same number rounded differently, within 2 ulp
    sc = torch.from_numpy(fq.gguf_tensor_scale(q))
    assert sc.dtype == torch.float32 and float(sc) == np.float32(1.0) / np.float32(q.global_scale)
    ulp = (bits(g * sc).long() - bits(fq.dequantize(q)).long()).abs().max()
    assert int(ulp) <= 2


def test_gguf_bytes_match_ggml_quantizer_off_ties():
    # gguf-py's own MXFP4 quantizer writes the very same bytes on (tie-free) random weights
    gguf = _gguf()
    from gguf.quants import quantize
    w = weights(128, 512)
    assert np.array_equal(quantize(w.numpy(), gguf.GGMLQuantizationType.MXFP4),
                          fq.gguf_pack(fq.quantize(w, "mxfp4")))


def test_ggml_mxfp4_differences_are_the_documented_ones():
    gguf = _gguf()
    from gguf.quants import quantize
    T = gguf.GGMLQuantizationType.MXFP4
    # (1) ties: X = 1 (amax 4); 0.75, 1.75, 3.5 round down in ggml (first minimum), up under RNE
    t = torch.zeros(1, 32)
    t[0, 0] = 4.0
    t[0, 1:8] = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])
    t[0, 8:15] = -t[0, 1:8]
    ours = fq.fake_quant(t, "mxfp4")[0, 1:8].tolist()
    ggml = _gguf_decode(quantize(t.numpy(), T), "mxfp4")[0, 1:8].tolist()
    assert ours == [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0]
    assert ggml == [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0]
    # (2) floor(log2f(amax)) in float rounds up just below a power of two; frexp is exact
    a = np.nextafter(np.float32(1024), np.float32(0))
    x = np.zeros((1, 32), np.float32)
    x[0, 0] = a
    assert quantize(x, T)[0, 0] == 127 + 10 - 2
    assert int(fq.quantize(torch.from_numpy(x), "mxfp4").scales[0, 0]) == 127 + 9 - 2


def test_gguf_pack_rejects():
    with pytest.raises(ValueError):
        fq.gguf_pack(fq.quantize(weights(4, 96), "nvfp4"))          # 96 % 64
    with pytest.raises(ValueError):
        fq.gguf_pack(fq.quantize(weights(4, 64), "fp8"))


# ------------------------------------------------------------------------------ compressed-tensors


def _ct():
    pytest.importorskip("compressed_tensors")
    warnings.filterwarnings("ignore")
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle import forward
    from compressed_tensors.quantization.utils import calculate_qparams, generate_gparam
    return QuantizationArgs, forward, calculate_qparams, generate_gparam


def _ct_qparams(w, name):
    QuantizationArgs, forward, calculate_qparams, generate_gparam = _ct()
    args = QuantizationArgs.model_validate(fq.compressed_tensors_args(name))
    gs = None
    if name == "fp8":
        s, zp = calculate_qparams(w.min(), w.max(), args)
    elif name == "fp8_pc":
        s, zp = calculate_qparams(w.amin(1, keepdim=True), w.amax(1, keepdim=True), args)
    else:
        b = w.unflatten(-1, (-1, fq.FP_FORMATS[name].block))
        if name == "nvfp4":
            gs = generate_gparam(w.min(), w.max())
        s, zp = calculate_qparams(b.amin(-1), b.amax(-1), args, global_scale=gs)
    return args, s, zp, gs


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("seed", [0, 1])
def test_compressed_tensors_qdq_bit_exact(name, seed):
    """compressed-tensors' own scales + quantize/dequantize (CPU path) = ours, bit for bit (MX
    with its exponent rule, mx_scale="ct")."""
    _, forward, _, _ = _ct()
    w = weights(256, 512, seed)
    args, s, zp, gs = _ct_qparams(w, name)
    q = fq.quantize(w, name, mx_scale="ct")
    if name == "nvfp4":
        assert torch.equal(gs, q.global_scale) and torch.equal(s, q.scales.float())
    elif name in ("mxfp4", "mxfp8"):
        assert torch.equal(s, fq._e8m0_to_float(q.scales))
    else:
        assert torch.equal(s, q.scales)
    ours = fq.dequantize(q)
    assert torch.equal(bits(forward.fake_quantize(w, s, zp, args, global_scale=gs)), bits(ours))
    xq = forward.quantize(w, s, zp, args, global_scale=gs)
    assert torch.equal(bits(forward.dequantize(xq, s, zp, args, global_scale=gs)), bits(ours))


@pytest.mark.parametrize("name", ["mxfp4", "mxfp8"])
def test_compressed_tensors_mx_vs_ocp_floor(name):
    """With the OCP floor rule the MX scales differ from compressed-tensors' on the blocks whose
    amax mantissa is >= 1.75, and only there; those blocks saturate under OCP."""
    _, forward, _, _ = _ct()
    w = weights()
    args, s, zp, _ = _ct_qparams(w, name)
    ct = forward.fake_quantize(w, s, zp, args)
    q = fq.quantize(w, name)
    amax = w.view(256, -1, 32).abs().amax(-1).double()
    bump = (amax / torch.exp2(torch.floor(torch.log2(amax)))) >= 1.75
    assert torch.equal(s != fq._e8m0_to_float(q.scales), bump & (amax > 0))
    same = ~bump.repeat_interleave(32, dim=1)
    assert torch.equal(ct[same], fq.dequantize(q)[same])
    assert rel_rmse(fq.dequantize(q), w) > rel_rmse(ct, w)


def test_compressed_tensors_args_are_the_presets():
    QuantizationArgs, *_ = _ct()
    from compressed_tensors.quantization.quant_scheme import PRESET_SCHEMES
    for name, preset in (("nvfp4", "NVFP4A16"), ("mxfp4", "MXFP4A16"), ("mxfp8", "MXFP8"),
                         ("fp8", "FP8"), ("fp8_pc", "FP8_DYNAMIC")):
        d = fq.compressed_tensors_args(name)
        # (a symmetric scheme serializes no zp_dtype, so a parsed config differs from the preset
        # object only in that unused field)
        assert QuantizationArgs.model_validate(d).model_dump(mode="json") == d, name
        assert d == PRESET_SCHEMES[preset]["weights"].model_dump(mode="json"), name
    assert [fq.compressed_tensors_format(n) for n in NAMES] == [
        "nvfp4-pack-quantized", "mxfp4-pack-quantized", "mxfp8-quantized", "float-quantized", "float-quantized"]


def _raw(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8) if t.dtype.itemsize == 1 else t


@pytest.mark.parametrize("name", NAMES)
def test_compressed_tensors_checkpoint_tensors(name):
    """Our state = what compressed-tensors' compressor writes from the same scales (names, dtypes,
    shapes, bytes); its decompressor reads ours back to our dequantized weight."""
    _ct()
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    w = weights(128, 256)
    q = fq.quantize(w, name, mx_scale="ct")
    state = fq.compressed_tensors_state(q, "model.layers.0.mlp.down_proj")
    scheme = QuantizationScheme(targets=["Linear"],
                                weights=QuantizationArgs.model_validate(fq.compressed_tensors_args(name)))
    comp = BaseCompressor.get_value_from_registry(fq.compressed_tensors_format(name))
    sd = {"weight": w}
    if name == "nvfp4":
        sd |= {"weight_scale": q.scales.float(), "weight_global_scale": q.global_scale}
    elif name in ("mxfp4", "mxfp8"):
        sd |= {"weight_scale": fq._e8m0_to_float(q.scales)}
    else:
        sd |= {"weight_scale": q.scales}
    out = comp.compress(sd, scheme)
    local = {k.removeprefix("model.layers.0.mlp.down_proj."): v for k, v in state.items()}
    assert set(local) == set(out) == set(comp.compression_param_names(scheme))
    for k, v in out.items():
        assert local[k].dtype == v.dtype and local[k].shape == v.shape, k
        assert torch.equal(_raw(local[k]), _raw(v)), k
    d = comp.decompress(local, scheme)["weight"]
    assert torch.equal(d, fq.dequantize(q).to(d.dtype))
    if fq.FP_FORMATS[name].block:
        with pytest.raises(ValueError):
            fq.compressed_tensors_state(fq.quantize(weights(4, 40), name), "x")


def test_compressed_tensors_state_names():
    q = fq.quantize(weights(32, 64), "nvfp4")
    st = fq.compressed_tensors_state(q, "blk")
    assert {k: (v.dtype, tuple(v.shape)) for k, v in st.items()} == {
        "blk.weight_packed": (torch.uint8, (32, 32)),
        "blk.weight_scale": (torch.float8_e4m3fn, (32, 4)),
        "blk.weight_global_scale": (torch.float32, (1,))}


# ------------------------------------------------------------------------------ torchao, ModelOpt


def _torchao():
    pytest.importorskip("torchao")
    warnings.filterwarnings("ignore")
    from torchao.prototype.mx_formats import kernels, mx_tensor, nvfp4_tensor
    from torchao.prototype.mx_formats.config import ScaleCalculationMode
    return mx_tensor, nvfp4_tensor, kernels, ScaleCalculationMode


@pytest.mark.parametrize("name", ["mxfp4", "mxfp8"])
def test_torchao_mx_bit_exact(name):
    mx_tensor, _, _, M = _torchao()
    et = torch.float4_e2m1fn_x2 if name == "mxfp4" else torch.float8_e4m3fn
    w = weights()
    modes = [(M.FLOOR, "floor")] + ([(M.EVEN, "ct")] if name == "mxfp4" else [])  # EVEN == CT for FP4 only
    for mode, rule in modes:
        s, d = mx_tensor.to_mx(w, et, 32, scaling_mode=mode)
        hp = mx_tensor.to_dtype(d, s, et, 32, torch.float32)
        q = fq.quantize(w, name, mx_scale=rule)
        assert torch.equal(s.view(torch.uint8), q.scales)
        assert torch.equal(bits(hp), bits(fq.dequantize(q)))


def test_torchao_nvfp4_same_codes():
    """torchao (per_tensor_scale = amax/2688, x*((1/pts)/s)): the same codes on this sample (in
    general about 1 code in 10^7 flips on the other rounding order); the same block scales except
    all-zero blocks (torchao clamps to the FP8 min normal 2^-6, compressed-tensors uses 0.125);
    decoded values within 1 ulp (s*pts vs s/gs)."""
    _, nv, kernels, _ = _torchao()
    w = weights()
    s, d = nv.nvfp4_quantize(w, 16, per_tensor_scale=nv.per_tensor_amax_to_scale(w.abs().amax()))
    q = fq.quantize(w, "nvfp4")
    codes = kernels.unpack_uint4(d).view(q.codes.shape)
    assert torch.equal(codes, q.codes)
    zero_block = w.view(256, -1, 16).abs().amax(-1) == 0
    assert torch.equal(s.view(torch.uint8) != q.scales.view(torch.uint8), zero_block)
    tao = (kernels.f4_unpacked_to_f32(codes).view(256, -1, 16)
           * (s.float() * nv.per_tensor_amax_to_scale(w.abs().amax())).unsqueeze(-1)).view(256, 512)
    assert int((bits(tao).long() - bits(fq.dequantize(q)).long()).abs().max()) <= 1


def _modelopt_nvfp4(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ModelOpt's NVFP4QTensor formulas (a transcription of the definition, not its code):
    scale_2 = amax/(6*448); s_b = fp8(amax_b/(6*scale_2)), 0 -> 1; w/(s_b*scale_2) -> E2M1 RNE."""
    s2 = w.abs().amax().float() / (6.0 * 448.0)
    b = w.view(w.shape[0], -1, 16)
    sb = b.abs().amax(-1) / (6.0 * s2)
    sb = torch.where(sb == 0, torch.ones_like(sb), sb).to(torch.float8_e4m3fn)
    codes = fq._e2m1_encode((b / (sb.float() * s2).unsqueeze(-1)).clamp(-6, 6)).view(w.shape)
    return codes, sb, s2


def test_modelopt_nvfp4_agreement():
    """ModelOpt divides in another order than compressed-tensors: the grids are the same and the
    codes/scales almost always agree (only float32 rounding of the scale can flip a boundary)."""
    for seed in range(3):
        w = weights(seed=seed)
        w[5, :64] = 0.001                                       # no zero blocks (ModelOpt uses 1.0)
        codes, sb, s2 = _modelopt_nvfp4(w)
        q = fq.quantize(w, "nvfp4")
        assert (sb.view(torch.uint8) == q.scales.view(torch.uint8)).float().mean() > 0.999
        assert (codes == q.codes).float().mean() > 0.9999
        assert float(s2) == pytest.approx(1.0 / float(q.global_scale), rel=1e-6)


# ------------------------------------------------------------------------------ error order


def test_relative_rmse_gaussian_order(capsys):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(1536, 576, generator=g) * 0.02
    e = {n: rel_rmse(fq.fake_quant(w, n), w) for n in NAMES}
    e["mxfp4_ct"] = rel_rmse(fq.fake_quant(w, "mxfp4", mx_scale="ct"), w)
    e["mxfp8_ct"] = rel_rmse(fq.fake_quant(w, "mxfp8", mx_scale="ct"), w)
    with capsys.disabled():
        print("\nrelative RMSE, Gaussian 1536x576: " + ", ".join(f"{k} {v:.4f}" for k, v in e.items()))
    assert e["nvfp4"] < e["mxfp4_ct"] < e["mxfp4"] < 0.15
    assert max(e["fp8"], e["fp8_pc"], e["mxfp8"]) < 0.04 < e["nvfp4"]
    assert e["fp8_pc"] <= e["fp8"] * 1.01
    assert e["mxfp8_ct"] < e["mxfp8"]


@pytest.mark.integration
def test_real_weights_smollm2(capsys):
    from workers.sources import load_model
    lm = load_model("builtin:smollm2-135m")
    layers = {n: m.weight.detach() for n, m in lm.model.named_modules()
              if isinstance(m, torch.nn.Linear) and any(f"layers.{i}." in n for i in (0, 15, 29))}
    assert layers
    rows = []
    for n, w in layers.items():
        e = {f: rel_rmse(fq.fake_quant(w, f), w) for f in NAMES}
        e["mxfp4_ct"] = rel_rmse(fq.fake_quant(w, "mxfp4", mx_scale="ct"), w)
        rows.append((n, tuple(w.shape), e))
        assert e["nvfp4"] < e["mxfp4"] and max(e["fp8"], e["fp8_pc"], e["mxfp8"]) < e["nvfp4"]
    with capsys.disabled():
        print("\nrelative RMSE, SmolLM2-135M:")
        for n, shape, e in rows:
            print(f"  {n:40s} {str(shape):12s} " + " ".join(f"{k} {v:.4f}" for k, v in e.items()))
