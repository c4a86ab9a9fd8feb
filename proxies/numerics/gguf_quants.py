"""llama.cpp's GGUF block types, numerically exact: quantize as ggml's reference quantizers do
(``quantize_row_*_ref`` of ggml-quants.c, i.e. what ``llama-quantize`` writes without an
importance matrix), decode bit-exactly as ggml / gguf-py do, and pack into ggml's byte layout.

Everything is vectorized torch over all blocks of a weight: the per-(sub-)block searches of the
k-quants become an extra "candidate" dimension, and only the short loops over the 16 or 32
elements of a sub-block stay Python loops, because the reference accumulates its sums element by
element in float32 and reproducing that order is what makes the results bit-identical.

Float32 conventions kept from the C reference (x86-64, no FMA contraction, as ggml-base builds):

* every product / sum is a separate float32 operation in the reference's order (no fused ops,
  no reductions that reorder a sum);
* divisions are always tensor/tensor (torch turns ``t / python_scalar`` into a multiplication
  by the reciprocal on CUDA and ``scalar / t`` into ``reciprocal(t) * scalar`` everywhere);
* ``nearest_int`` is ggml's ``fval + 1.5·2^23`` bit trick, i.e. round-half-to-even (emulated
  bit for bit where its argument is not provably small; ``torch.round`` where it is);
* ``roundf`` (q8_0) rounds half away from zero, and the C casts ``(int8_t)(x + 8.5f)`` truncate;
* fp16 conversions are IEEE round-to-nearest-even, as ``GGML_FP32_TO_FP16``;
* C float -> int casts of out-of-range / NaN values give x86's 0x80000000 (code 0);
* running max / min scans: NaN never wins, and the first element attaining an extreme wins
  (this fixes the sign of zero extremes, e.g. q4_1's ``m``).

Checked byte for byte against ``ggml_quantize_chunk`` of ggml's CPU library (x86-64,
GGML_NATIVE=OFF) on Gaussian / Laplace / uniform / sparse / gridded / heavy-tailed / offset /
per-row-scaled weights and SmolLM2: all blocks equal for every type. Known differences:

* iq4_nl when an intermediate is NaN (only for |w| > 1.8e19, where w² overflows): we follow
  llama.cpp's current ``best_index_int8`` (NaN -> index 0); older ggml (binary search) gives 15;
* builds that contract a*b+c into FMA (aarch64, or x86 with -mfma on ggml-base) round some
  sums differently from this (and from the x86 reference build), so near-tie choices can flip;
* iq4_nl is quantized as ``quantize_iq4_nl`` (what ggml_quantize_chunk / llama-quantize run,
  7 scale candidates), not the one-shot ``quantize_row_iq4_nl_ref``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from gguf import GGMLQuantizationType as _QT

from search import runtime_formats as rf

QK_K = 256

# name -> (block_size, type_size_bytes, GGMLQuantizationType), from the one registry the cost
# model prices with (search/runtime_formats.py; the tests check it against gguf's sizes)
GGUF_TYPES: dict[str, tuple[int, int, _QT]] = {
    n: (rf.get(n).block, rf.get(n).block_bits // 8, _QT[n.upper()]) for n in rf.GGUF_TYPES}

KVALUES_IQ4NL = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)
_GROUP_MAX_EPS = 1e-15


def bits_per_weight(name: str) -> float:
    _spec(name)
    return rf.get(name).bits_per_weight


def _spec(name: str) -> tuple[int, int, _QT]:
    try:
        return GGUF_TYPES[name]
    except KeyError:
        raise ValueError(f"unknown GGUF type {name!r}; supported: {sorted(GGUF_TYPES)}") from None


@dataclass
class Blocks:
    """One weight quantized to a GGUF block type, field by field as ggml stores it.

    ``q``: (n_blocks, block) the integer code of every weight in element order, before ggml
      splits it into bit planes: uint8 ``0 .. 2^bits-1`` (value = code - offset for the
      symmetric types: q4_0 -8, q5_0 -16, q3_K -4, q6_K -32; iq4_nl: index into
      ``KVALUES_IQ4NL``), int8 for q8_0.
    ``d``: (n_blocks,) float16 block / super-block scale.
    ``dmin``: (n_blocks,) float16: super-block min scale (q2_K, q4_K, q5_K) or the block min
      ``m`` (q4_1, q5_1); None otherwise.
    ``scales``: (n_blocks, k) the sub-block scales packed as stored: q2_K 16 bytes (scale nibble
      | min nibble << 4), q3_K 12 bytes (16 6-bit signed scales + 32), q4_K / q5_K 12 bytes
      (8 6-bit scales + 8 6-bit mins), all uint8; q6_K 16 int8. None for the 32-blocks.
    Blocks are in row-major order: block ``i`` covers row ``i // (cols // block)``.
    """
    name: str
    shape: tuple[int, int]
    q: torch.Tensor
    d: torch.Tensor
    dmin: Optional[torch.Tensor] = None
    scales: Optional[torch.Tensor] = None


# ---------------------------------------------------------------- float32 helpers

def _full(ref: torch.Tensor, v: float) -> torch.Tensor:
    """A 0-dim float32 tensor on ``ref``'s device, for tensor/tensor divisions."""
    return torch.full((), float(np.float32(v)), dtype=torch.float32, device=ref.device)


def _div(a, b) -> torch.Tensor:
    """IEEE float32 a / b with either side possibly a Python number (see module doc)."""
    if not torch.is_tensor(a):
        a = _full(b, a)
    if not torch.is_tensor(b):
        b = _full(a, b).expand_as(a).contiguous() if a.dim() else _full(a, b)
    return torch.div(a, b)


def _nearest_int(v: torch.Tensor) -> torch.Tensor:
    """ggml's nearest_int bit for bit (int32): add 1.5·2^23 and read the low mantissa bits."""
    t = (v + 12582912.0).view(torch.int32)
    return (t & 0x007FFFFF) - 0x00400000


def _round_clamp(v: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """clamp(nearest_int(v), lo, hi) as float, for v provably finite and |v| < 2^22
    (where nearest_int is exactly round-half-even)."""
    return torch.round(torch.clamp(v, lo, hi))


def _sqrt(v: torch.Tensor) -> torch.Tensor:
    """Correctly rounded float32 sqrt (as sqrtss / sqrtf). torch's CPU float32 sqrt is not
    (≈15 % of results off by an ulp here), so take it in float64 and then settle the last bit
    exactly: the midpoints to the neighbouring floats square exactly in float64."""
    y = torch.sqrt(v.double()).float()
    inf = torch.full_like(y, float("inf"))
    up = torch.nextafter(y, inf)
    lo = torch.nextafter(y, -inf)
    yd, vd = y.double(), v.double()
    mu = (yd + up.double()) * 0.5
    ml = (yd + lo.double()) * 0.5
    y = torch.where(vd > mu * mu, up, y)
    return torch.where((vd < ml * ml) & (y > 0), lo, y)


def _fp16(v: torch.Tensor) -> torch.Tensor:
    return v.to(torch.float16)


def _first_absmax(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(amax, max): the largest |x| along ``dim`` and the signed value of its FIRST occurrence,
    as the reference's ``if (ax > amax) { amax = ax; max = x; }`` scan from amax = 0 finds it
    (so an all-zero group gives max = +0)."""
    ax = x.abs()
    ax = torch.where(torch.isnan(ax), torch.zeros_like(ax), ax)      # NaN never compares greater
    amax = ax.amax(dim, keepdim=True)
    n = x.shape[dim]
    shape = [1] * x.dim()
    shape[dim] = n
    ar = torch.arange(n, device=x.device).view(shape)
    idx = torch.where(ax == amax, ar, n).amin(dim, keepdim=True).clamp_max(n - 1)
    mx = x.gather(dim, idx)
    mx = torch.where(amax > 0, mx, torch.zeros_like(mx))
    return amax.squeeze(dim), mx.squeeze(dim)


def _first_extreme(x: torch.Tensor, dim: int, largest: bool) -> torch.Tensor:
    """min (or max) along ``dim`` as the reference's running ``if (v < min) min = v;`` finds it:
    the value of the FIRST element that attains it, which settles the sign of a zero extreme."""
    v = (x.amax if largest else x.amin)(dim, keepdim=True)
    n = x.shape[dim]
    shape = [1] * x.dim()
    shape[dim] = n
    ar = torch.arange(n, device=x.device).view(shape)
    idx = torch.where(x == v, ar, n).amin(dim, keepdim=True).clamp_max(n - 1)
    return x.gather(dim, idx).squeeze(dim)


def _pos_max(t: torch.Tensor, dim: int) -> torch.Tensor:
    """``m = 0; for v: if (v > m) m = v;``: the largest positive value, else +0 (never -0)."""
    m = torch.where(torch.isnan(t), torch.zeros_like(t), t).amax(dim)
    return torch.where(m > 0, m, torch.zeros_like(m))


def _seq_sum(terms) -> torch.Tensor:
    """sum = 0; for t in terms: sum += t  (float32, in order)."""
    acc = None
    for t in terms:
        acc = (torch.zeros_like(t) + t) if acc is None else acc + t
    return acc


# ---------------------------------------------------------------- reference searches

def _make_qkx2(x: torch.Tensor, w: torch.Tensor, nmax: int, rmin: float, rdelta: float,
               nstep: int, use_mad: bool):
    """make_qkx2_quants for every sub-block at once. x, w: (n, S) element-major.
    Returns (scale (S,), the_min (S,), L (n, S) float codes).

    The reference's candidate loop is sequential: an accepted candidate replaces ``min``, and
    every later candidate's iscale ``(rmin + rdelta*is + nmax)/(max - min)`` and codes
    ``nearest_int(iscale*(x - min))`` use that new min. So candidates run one after another
    here (vectorized over sub-blocks and elements); only the element sums are Python loops."""
    n, S = x.shape
    mn = _first_extreme(x, 0, False)
    mx = _first_extreme(x, 0, True)
    sum_w = w[0].clone()
    sum_x = sum_w * x[0]
    for i in range(1, n):
        sum_w = sum_w + w[i]
        sum_x = sum_x + w[i] * x[i]
    mn = torch.where(mn > 0, torch.zeros_like(mn), mn)
    degenerate = mx == mn
    fmax = float(nmax)
    iscale = _div(fmax, mx - mn)
    scale = _div(1.0, iscale)
    xmin, xmax = x.amin(0), x.amax(0)

    def codes(isc, m, out=None):
        # clamp(nearest_int(isc*(x - m)), 0, nmax); torch.round equals nearest_int while
        # |isc*(x - m)| < 2^22, which the extreme elements bound (monotone in x). Outside
        # (a degenerate fitted min) fall back to ggml's bit trick. Degenerate groups are dropped.
        v = torch.sub(x, m, out=out)
        v.mul_(isc)
        lo, hi = isc * (xmin - m), isc * (xmax - m)
        if bool((((lo.abs() < 4194304) & (hi.abs() < 4194304)) | degenerate).all()):
            return v.clamp_(0.0, fmax).round_()
        return v.copy_(torch.clamp(_nearest_int(v), 0, nmax))

    L = codes(iscale, mn)
    err = scale * L + mn - x
    err = err.abs() if use_mad else err * err
    err = err * w
    best = _seq_sum(err.unbind(0))

    c = np.float32(rmin) + np.float32(rdelta) * np.arange(nstep + 1, dtype=np.float32)
    c = (c + np.float32(nmax)).astype(np.float32)
    # preallocated work buffers: fresh multi-MB tensors per op cost more than the arithmetic
    l = torch.empty_like(x)
    e = torch.empty_like(x)
    T = torch.empty(3, n, S, dtype=torch.float32, device=x.device)
    acc = torch.empty(3, S, dtype=torch.float32, device=x.device)
    cur = torch.empty(S, dtype=torch.float32, device=x.device)
    acc_isc = torch.zeros_like(mn)          # iscale and min the accepted codes were made with
    acc_mn = torch.zeros_like(mn)
    took = torch.zeros(S, dtype=torch.bool, device=x.device)
    for k in range(nstep + 1):
        isc = torch.div(_full(x, float(c[k])), mx - mn)
        codes(isc, mn, out=l)
        torch.mul(w, l, out=T[0])
        torch.mul(T[0], l, out=T[1])
        torch.mul(T[0], x, out=T[2])
        acc.zero_()
        for i in range(n):
            acc += T[:, i]
        sum_l, sum_l2, sum_xl = acc.unbind(0)
        D = sum_w * sum_l2 - sum_l * sum_l
        this_scale = torch.div(sum_w * sum_xl - sum_x * sum_l, D)
        this_min = torch.div(sum_l2 * sum_x - sum_l * sum_xl, D)
        pos = this_min > 0
        this_min = torch.where(pos, torch.zeros_like(this_min), this_min)
        this_scale = torch.where(pos, torch.div(sum_xl, sum_l2), this_scale)
        torch.mul(l, this_scale, out=e)
        e.add_(this_min).sub_(x)
        if use_mad:
            e.abs_()
        else:
            e.mul_(e)
        e.mul_(w)
        cur.zero_()
        for i in range(n):
            cur += e[i]
        upd = (D > 0) & (cur < best)
        best = torch.where(upd, cur, best)
        scale = torch.where(upd, this_scale, scale)
        acc_isc = torch.where(upd, isc, acc_isc)
        acc_mn = torch.where(upd, mn, acc_mn)
        mn = torch.where(upd, this_min, mn)
        took |= upd
    L = torch.where(took, codes(acc_isc, acc_mn), L)
    L = torch.where(degenerate, torch.zeros_like(L), L)
    scale = torch.where(degenerate, torch.zeros_like(scale), scale)
    return scale, -mn, L


def _make_qx(x: torch.Tensor, nmax: int):
    """make_qx_quants(n, nmax, x, L, rmse_type=1, qw=NULL) for every sub-block (x: (n, S)).
    Returns (scale (S,), L (n, S) float codes incl. the +nmax offset; 0 for an all-zero group)."""
    n, S = x.shape
    amax, mx = _first_absmax(x, 0)
    zero = amax < _GROUP_MAX_EPS
    mxs = torch.where(zero, torch.ones_like(mx), mx)
    # candidate 0 is the plain iscale = -nmax/max, then is = -9..-1, 1..9
    cs = [np.float32(-nmax)] + [-(np.float32(nmax) + np.float32(0.1) * np.float32(i))
                                for i in range(-9, 10) if i]
    c = torch.from_numpy(np.array(cs, dtype=np.float32)).to(x.device).view(-1, 1)
    isc = torch.div(c, mxs.view(1, S))                           # (C, S)
    C = isc.shape[0]
    sumlx = torch.zeros(C, S, dtype=torch.float32, device=x.device)
    suml2 = torch.zeros_like(sumlx)
    l = torch.empty_like(sumlx)
    tmp = torch.empty_like(sumlx)
    lo, hi = float(-nmax), float(nmax - 1)
    for i in range(n):
        wi = x[i] * x[i]
        wx = wi * x[i]
        torch.mul(isc, x[i], out=l)
        l.clamp_(lo, hi).round_()
        torch.mul(l, wx, out=tmp)
        sumlx += tmp
        torch.mul(l, wi, out=tmp)
        tmp.mul_(l)
        suml2 += tmp
    scale = torch.where(suml2[0] != 0, torch.div(sumlx[0], suml2[0]), torch.zeros_like(mx))
    best = scale * sumlx[0]
    bi = torch.zeros(S, dtype=torch.long, device=x.device)
    for k in range(1, C):
        upd = (suml2[k] > 0) & (sumlx[k] * sumlx[k] > best * suml2[k])
        scale = torch.where(upd, torch.div(sumlx[k], suml2[k]), scale)
        best = torch.where(upd, scale * sumlx[k], best)
        bi = torch.where(upd, k, bi)
    isc_b = isc.gather(0, bi.view(1, S))
    L = _round_clamp(isc_b * x, lo, hi) + nmax
    L = torch.where(zero, torch.zeros_like(L), L)
    scale = torch.where(zero, torch.zeros_like(scale), scale)
    return scale, L


def _make_q3(x: torch.Tensor, nmax: int = 4):
    """make_q3_quants(n, nmax, x, L, do_rmse=true) for every sub-block (x: (n, S)).
    Returns (scale (S,), L (n, S) int codes incl. +nmax; 0 for an all-zero group)."""
    n, S = x.shape
    amax, mx = _first_absmax(x, 0)
    zero = amax < _GROUP_MAX_EPS
    mxs = torch.where(zero, torch.ones_like(mx), mx)
    iscale = _div(float(-nmax), mxs)
    lo, hi = float(-nmax), float(nmax - 1)
    w = x * x
    wx = w * x
    Lf = _round_clamp(iscale * x, lo, hi)                        # (n, S), |iscale*x| <= nmax
    sumlx = _seq_sum(wx[i] * Lf[i] for i in range(n))
    suml2 = _seq_sum(w[i] * Lf[i] * Lf[i] for i in range(n))
    Lf = list(Lf.unbind(0))
    for _ in range(5):
        changed = torch.zeros(S, dtype=torch.bool, device=x.device)
        for i in range(n):
            Li = Lf[i]
            slx = sumlx - wx[i] * Li
            sl2 = suml2 - w[i] * Li * Li
            # nearest_int of a possibly huge ratio (slx tiny) is emulated bit for bit
            new_l = torch.clamp(_nearest_int(torch.div(x[i] * sl2, slx)), -nmax, nmax - 1).float()
            slx2 = slx + wx[i] * new_l
            sl22 = sl2 + w[i] * new_l * new_l
            acc = ((slx > 0) & (new_l != Li) & (sl22 > 0)
                   & (slx2 * slx2 * suml2 > sumlx * sumlx * sl22))
            Lf[i] = torch.where(acc, new_l, Li)
            sumlx = torch.where(acc, slx2, sumlx)
            suml2 = torch.where(acc, sl22, suml2)
            changed |= acc
        if not bool(changed.any()):
            break
    L = torch.stack(Lf, 0) + nmax
    scale = torch.where(suml2 > 0, torch.div(sumlx, suml2), torch.zeros_like(sumlx))
    L = torch.where(zero, torch.zeros_like(L), L)
    scale = torch.where(zero, torch.zeros_like(scale), scale)
    return scale, L


_IQ4NL_LO, _IQ4NL_HI = -232, 228          # floor(2·al) beyond these picks index 0 / 15 anyway


def _iq4nl_luts(device) -> tuple[torch.Tensor, torch.Tensor]:
    """best_index_int8(16, kvalues_iq4nl, al) counts the midpoint sums val[j-1]+val[j] that
    2·al reaches (the reference's branch-free binary search). The sums are integers, so the
    count depends only on floor(2·al): tabulate it (index and value) over the useful range."""
    v = np.array(KVALUES_IQ4NL, dtype=np.int64)
    thr = v[:-1] + v[1:]
    f = np.arange(_IQ4NL_LO, _IQ4NL_HI + 1)
    idx = (f[:, None] >= thr[None, :]).sum(1)
    return (torch.tensor(idx, dtype=torch.long, device=device),
            torch.tensor(v[idx], dtype=torch.float32, device=device))


def _iq4nl_slot(al: torch.Tensor) -> torch.Tensor:
    """The LUT slot of 2·al (NaN -> the slot of index 0, as the reference's comparisons give)."""
    x2 = al + al
    x2 = torch.nan_to_num(x2, nan=float(_IQ4NL_LO))
    return x2.floor_().clamp_(_IQ4NL_LO, _IQ4NL_HI).sub_(_IQ4NL_LO).long()


# ---------------------------------------------------------------- per-type quantizers

def _c_cast_byte(v: torch.Tensor) -> torch.Tensor:
    """The low byte (int32) of a C float -> integer cast as x86-64 compiles it (cvttss2si):
    truncation toward zero, and 0x80000000 (low byte 0) for NaN / out-of-range values, so an
    overflowed 1/d (a block of subnormals) gives code 0 as in ggml."""
    ok = torch.isfinite(v) & (v.abs() < 2147483648.0)
    t = torch.where(ok, torch.trunc(v), torch.zeros_like(v))
    return t.to(torch.int64).to(torch.int32) & 0xFF


def _q_simple(x: torch.Tensor, name: str) -> Blocks:
    """q4_0 / q4_1 / q5_0 / q5_1 / q8_0: x (nb, 32)."""
    nb = x.shape[0]
    if name in ("q4_0", "q5_0"):
        _, mx = _first_absmax(x, 1)
        d = _div(mx, -8.0 if name == "q4_0" else -16.0)
        idv = torch.where(d != 0, _div(1.0, torch.where(d != 0, d, torch.ones_like(d))), torch.zeros_like(d))
        off, top = (8.5, 15) if name == "q4_0" else (16.5, 31)
        b = _c_cast_byte(x * idv[:, None] + off)                # (int8_t)(x*id + 8.5f)
        q = torch.clamp(((b + 128) & 0xFF) - 128, max=top) & 0xFF   # MIN(top, int8) -> uint8
        q = q & (0xF if name == "q4_0" else 0x1F)                # the bits that are stored
        return Blocks(name, (0, 0), q.to(torch.uint8), _fp16(d))
    if name in ("q4_1", "q5_1"):
        mn = _first_extreme(x, 1, False)
        mx = _first_extreme(x, 1, True)
        top = 15 if name == "q4_1" else 31
        d = _div(mx - mn, float(top))
        idv = torch.where(d != 0, _div(1.0, torch.where(d != 0, d, torch.ones_like(d))), torch.zeros_like(d))
        b = _c_cast_byte((x - mn[:, None]) * idv[:, None] + 0.5)
        if name == "q4_1":
            q = torch.clamp(((b + 128) & 0xFF) - 128, max=15) & 0xF   # MIN(15, (int8_t)(...))
        else:
            q = b & 0x1F                                          # (uint8_t)(...), 5 bits stored
        return Blocks(name, (0, 0), q.to(torch.uint8), _fp16(d), dmin=_fp16(mn))
    if name == "q8_0":
        amax = x.abs().amax(1)
        d = _div(amax, 127.0)
        idv = torch.where(d != 0, _div(1.0, torch.where(d != 0, d, torch.ones_like(d))), torch.zeros_like(d))
        v = x * idv[:, None]
        t = torch.trunc(v)                                       # roundf: half away from zero
        q = t + torch.sign(v) * ((v - t).abs() >= 0.5).to(v.dtype)
        q = ((_c_cast_byte(q) + 128) & 0xFF) - 128
        return Blocks(name, (0, 0), q.to(torch.int8), _fp16(d))
    raise AssertionError(name)


def _q_iq4nl(x: torch.Tensor, ntry: int = 7) -> Blocks:
    """quantize_iq4_nl without an importance matrix (what ggml_quantize_chunk / llama-quantize
    run): weights x², the first guess d = max/127, then iscale candidates (itry - 127)/max for
    itry in -ntry..ntry, keep the best weighted least-squares d, and re-index with 1/d."""
    nb, n = x.shape
    xt = x.t().contiguous()                                       # (32, nb)
    dev = x.device
    vals_i = np.array(KVALUES_IQ4NL, dtype=np.int32)
    lut_idx, lut_val = _iq4nl_luts(dev)
    w = xt * xt
    amax, mx = _first_absmax(xt, 0)
    zero = amax < _GROUP_MAX_EPS
    mxs = torch.where(zero, torch.ones_like(mx), mx)
    sgn = -1.0 if ntry > 0 else 1.0
    d0 = _div(mxs * sgn, float(vals_i[0]))
    id0 = _div(1.0, d0)
    cand = [id0.view(1, nb)]
    if ntry > 0:
        c = torch.tensor(np.arange(-ntry, ntry + 1, dtype=np.int32) + vals_i[0],
                         dtype=torch.float32, device=dev).view(-1, 1)
        cand.append(torch.div(c, mxs.view(1, nb)))
    ids = torch.cat(cand, 0)                                      # (C, nb)
    C = ids.shape[0]
    sumqx = torch.zeros(C, nb, dtype=torch.float32, device=dev)
    sumq2 = torch.zeros_like(sumqx)
    al = torch.empty_like(sumqx)
    tmp = torch.empty_like(sumqx)
    for j in range(n):
        torch.mul(ids, xt[j], out=al)
        q = torch.take(lut_val, _iq4nl_slot(al))
        wq = q * w[j]
        torch.mul(wq, xt[j], out=tmp)
        sumqx += tmp
        wq.mul_(q)
        sumq2 += wq
    d = torch.where(sumq2[0] > 0, torch.div(sumqx[0], sumq2[0]), torch.zeros_like(mx))
    best = d * sumqx[0]
    for k in range(1, C):
        upd = (sumq2[k] > 0) & (sumqx[k] * sumqx[k] > best * sumq2[k])
        d = torch.where(upd, torch.div(sumqx[k], sumq2[k]), d)
        best = torch.where(upd, d * sumqx[k], best)
    d = torch.where(zero, torch.zeros_like(d), d)
    if ntry > 0:
        idv = torch.where(d != 0, _div(1.0, torch.where(d != 0, d, torch.ones_like(d))), torch.zeros_like(d))
        L = torch.take(lut_idx, _iq4nl_slot(idv.view(1, nb) * xt))
    else:   # quantize_row_iq4_nl_ref keeps the first pass's indices
        L = torch.take(lut_idx, _iq4nl_slot(id0.view(1, nb) * xt))
        L = torch.where(zero.view(1, nb), torch.zeros_like(L), L)
    return Blocks("iq4_nl", (0, 0), L.t().contiguous().to(torch.uint8), _fp16(d))


def _pack_k4_scales(ls: torch.Tensor, lm: torch.Tensor) -> torch.Tensor:
    """The 12-byte 6-bit scale/min packing of q4_K / q5_K (inverse of get_scale_min_k4).
    ls, lm: (nb, 8) int in 0..63."""
    out = torch.zeros(ls.shape[0], 12, dtype=torch.int32, device=ls.device)
    out[:, 0:4] = ls[:, 0:4] | ((ls[:, 4:8] >> 4) << 6)
    out[:, 4:8] = lm[:, 0:4] | ((lm[:, 4:8] >> 4) << 6)
    out[:, 8:12] = (ls[:, 4:8] & 0xF) | ((lm[:, 4:8] & 0xF) << 4)
    return out.to(torch.uint8)


def _unpack_k4_scales(sc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    s = sc.to(torch.int32)
    ls = torch.cat([s[:, 0:4] & 63, (s[:, 8:12] & 0xF) | ((s[:, 0:4] >> 6) << 4)], 1)
    lm = torch.cat([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], 1)
    return ls, lm


def _pack_q3_scales(l: torch.Tensor) -> torch.Tensor:
    """q3_K: 16 6-bit values (0..63) into 12 bytes: low nibbles of 0..7 / 8..15 in bytes 0..7,
    the 2 high bits of j at byte 8 + j%4, bit 2*(j/4)."""
    out = torch.zeros(l.shape[0], 12, dtype=torch.int32, device=l.device)
    out[:, 0:8] = (l[:, 0:8] & 0xF) | ((l[:, 8:16] & 0xF) << 4)
    h = l >> 4                                                    # (nb, 16)
    for g in range(4):
        out[:, 8:12] |= h[:, 4 * g:4 * g + 4] << (2 * g)
    return out.to(torch.uint8)


def _unpack_q3_scales(sc: torch.Tensor) -> torch.Tensor:
    s = sc.to(torch.int32)
    low = torch.cat([s[:, 0:8] & 0xF, s[:, 0:8] >> 4], 1)
    hb = s[:, 8:12]
    high = torch.cat([(hb >> (2 * g)) & 3 for g in range(4)], 1)
    return low | (high << 4)                                      # 0..63, value = this - 32


def _q2_K(x: torch.Tensor) -> Blocks:
    nb = x.shape[0]
    xs = x.reshape(nb * 16, 16).t()                               # (16, S)
    xs = xs.contiguous()
    scales, mins, L = _make_qkx2(xs, xs.abs(), 3, -0.5, 0.1, 15, True)
    scales = scales.view(nb, 16)
    mins = mins.view(nb, 16)
    L = L.t().reshape(nb, 16, 16)
    max_scale = _pos_max(scales, 1)
    max_min = _pos_max(mins, 1)
    has_s = max_scale > 0
    has_m = max_min > 0
    one = torch.ones_like(max_scale)
    isc = _div(15.0, torch.where(has_s, max_scale, one))
    ls = torch.where(has_s[:, None], _nearest_int(isc[:, None] * scales), 0) & 0xFF
    imn = _div(15.0, torch.where(has_m, max_min, one))
    lm = torch.where(has_m[:, None], _nearest_int(imn[:, None] * mins), 0)
    sc = (ls | (lm << 4)) & 0xFF
    d = _fp16(torch.where(has_s, _div(max_scale, 15.0), torch.zeros_like(max_scale)))
    dmin = _fp16(torch.where(has_m, _div(max_min, 15.0), torch.zeros_like(max_min)))
    dl = d.float()[:, None] * (sc & 0xF).float()                  # (nb, 16)
    ml = dmin.float()[:, None] * (sc >> 4).float()
    L = _final_codes(x.view(nb, 16, 16), dl, L, 0, 3, ml)
    return Blocks("q2_K", (0, 0), L.reshape(nb, 256).to(torch.uint8), d, dmin=dmin,
                  scales=sc.to(torch.uint8))


def _final_codes(xb: torch.Tensor, dl: torch.Tensor, L: torch.Tensor, lo: int, hi: int,
                 ml: torch.Tensor | None = None, shift: int = 0) -> torch.Tensor:
    """llama.cpp's second pass: codes recomputed from the stored (quantized) sub-block scale
    ``dl`` and min ``ml``; a sub-block whose stored scale is 0 keeps the search's codes ``L``."""
    dls = torch.where(dl != 0, dl, torch.ones_like(dl))
    num = xb if ml is None else xb + ml[:, :, None]
    lq = torch.clamp(_nearest_int(torch.div(num, dls[:, :, None])), lo, hi) + shift
    return torch.where((dl != 0)[:, :, None], lq.float(), L)


def _q3_K(x: torch.Tensor) -> Blocks:
    nb = x.shape[0]
    xs = x.reshape(nb * 16, 16).t().contiguous()
    scales, L = _make_q3(xs, 4)
    scales = scales.view(nb, 16)
    L = L.t().reshape(nb, 16, 16)
    amax, max_scale = _first_absmax(scales, 1)
    has = max_scale != 0
    isc = _div(-32.0, torch.where(has, max_scale, torch.ones_like(max_scale)))
    l = _nearest_int(isc[:, None] * scales)
    l = ((l + 128) & 0xFF) - 128                                   # int8_t l = nearest_int(...)
    l = torch.clamp(l, -32, 31) + 32
    l = torch.where(has[:, None], l, 0)
    sc = _pack_q3_scales(l)
    d = _fp16(torch.where(has, _div(1.0, isc), torch.zeros_like(isc)))
    dl = d.float()[:, None] * (_unpack_q3_scales(sc) - 32).float()
    L = _final_codes(x.view(nb, 16, 16), dl, L, -4, 3, shift=4)
    return Blocks("q3_K", (0, 0), L.reshape(nb, 256).to(torch.uint8), d, scales=sc)


def _q45_K(x: torch.Tensor, name: str) -> Blocks:
    nb = x.shape[0]
    nmax = 15 if name == "q4_K" else 31
    xs = x.reshape(nb * 8, 32).t().contiguous()                    # (32, S)
    sum_x2 = _seq_sum(xs[i] * xs[i] for i in range(32))
    av_x = _sqrt(_div(sum_x2, 32.0))
    w = av_x + xs.abs()
    if name == "q4_K":
        scales, mins, L = _make_qkx2(xs, w, 15, -1.0, 0.1, 20, False)
    else:
        scales, mins, L = _make_qkx2(xs, w, 31, -0.5, 0.1, 15, False)
    scales = scales.view(nb, 8)
    mins = mins.view(nb, 8)
    L = L.t().reshape(nb, 8, 32)
    max_scale = _pos_max(scales, 1)
    max_min = _pos_max(mins, 1)
    one = torch.ones_like(max_scale)
    inv_s = torch.where(max_scale > 0, _div(63.0, torch.where(max_scale > 0, max_scale, one)), 0.0)
    inv_m = torch.where(max_min > 0, _div(63.0, torch.where(max_min > 0, max_min, one)), 0.0)
    ls = torch.clamp(_nearest_int(inv_s[:, None] * scales) & 0xFF, max=63)
    lm = torch.clamp(_nearest_int(inv_m[:, None] * mins) & 0xFF, max=63)
    sc = _pack_k4_scales(ls, lm)
    d = _fp16(_div(max_scale, 63.0))
    dmin = _fp16(_div(max_min, 63.0))
    dl = d.float()[:, None] * ls.float()
    ml = dmin.float()[:, None] * lm.float()
    L = _final_codes(x.view(nb, 8, 32), dl, L, 0, nmax, ml)
    return Blocks(name, (0, 0), L.reshape(nb, 256).to(torch.uint8), d, dmin=dmin, scales=sc)


def _q6_K(x: torch.Tensor) -> Blocks:
    nb = x.shape[0]
    xs = x.reshape(nb * 16, 16).t().contiguous()
    scales, L = _make_qx(xs, 32)
    scales = scales.view(nb, 16)
    L = L.t().reshape(nb, 16, 16)
    amax, max_scale = _first_absmax(scales, 1)
    zero = amax < _GROUP_MAX_EPS
    ms = torch.where(zero, torch.ones_like(max_scale), max_scale)
    isc = _div(-128.0, ms)
    d = _fp16(torch.where(zero, torch.zeros_like(isc), _div(1.0, isc)))
    s = torch.clamp(_nearest_int(isc[:, None] * scales), max=127)
    s = ((s + 128) & 0xFF) - 128                                   # stored as int8
    s = torch.where(zero[:, None], 0, s)
    dl = d.float()[:, None] * s.float()
    ok = (dl != 0)[:, :, None]
    dls = torch.where(dl != 0, dl, torch.ones_like(dl))
    lq = torch.clamp(_nearest_int(torch.div(x.view(nb, 16, 16), dls[:, :, None])), -32, 31) + 32
    L = torch.where(ok, lq.float(), L)
    L = torch.where(zero[:, None, None], torch.zeros_like(L), L)
    return Blocks("q6_K", (0, 0), L.reshape(nb, 256).to(torch.uint8), d, scales=s.to(torch.int8))


# ---------------------------------------------------------------- public API

def quantize(w2d: torch.Tensor, name: str) -> Blocks:
    """Quantize a (rows, cols) weight to GGUF type ``name`` as llama.cpp's reference quantizer
    does (no importance matrix). ``cols`` must be a multiple of the type's block size; otherwise
    ValueError (llama.cpp then falls back to another type; that choice is the caller's)."""
    block, _, _ = _spec(name)
    if w2d.dim() != 2:
        raise ValueError(f"expected a 2-D weight, got shape {tuple(w2d.shape)}")
    rows, cols = w2d.shape
    if cols % block:
        raise ValueError(f"{name}: row length {cols} is not a multiple of the block size {block}")
    with torch.no_grad():
        x = w2d.detach().to(torch.float32).reshape(-1, block).contiguous()
        if name == "q2_K":
            b = _q2_K(x)
        elif name == "q3_K":
            b = _q3_K(x)
        elif name in ("q4_K", "q5_K"):
            b = _q45_K(x, name)
        elif name == "q6_K":
            b = _q6_K(x)
        elif name == "iq4_nl":
            b = _q_iq4nl(x)
        else:
            b = _q_simple(x, name)
    b.shape = (rows, cols)
    return b


def dequantize(b: Blocks) -> torch.Tensor:
    """float32 (rows, cols), bit-exact with ggml's dequantize_row_* / gguf.quants.dequantize."""
    name = b.name
    block, _, _ = _spec(name)
    d = b.d.float()[:, None]
    q = b.q
    if name in ("q4_0", "q5_0"):
        y = d * (q.to(torch.int32) - (8 if name == "q4_0" else 16)).float()
    elif name in ("q4_1", "q5_1"):
        y = d * q.float() + b.dmin.float()[:, None]
    elif name == "q8_0":
        y = q.float() * d
    elif name == "iq4_nl":
        kv = torch.tensor(KVALUES_IQ4NL, dtype=torch.float32, device=q.device)
        y = d * kv[q.long()]
    else:
        nb = q.shape[0]
        if name == "q2_K":
            sc = b.scales.to(torch.int32)
            dl = d * (sc & 0xF).float()
            ml = b.dmin.float()[:, None] * (sc >> 4).float()
            y = dl[:, :, None] * q.view(nb, 16, 16).float() - ml[:, :, None]
        elif name == "q3_K":
            dl = d * (_unpack_q3_scales(b.scales) - 32).float()
            y = dl[:, :, None] * (q.view(nb, 16, 16).to(torch.int32) - 4).float()
        elif name in ("q4_K", "q5_K"):
            ls, lm = _unpack_k4_scales(b.scales)
            dl = d * ls.float()
            ml = b.dmin.float()[:, None] * lm.float()
            y = dl[:, :, None] * q.view(nb, 8, 32).float() - ml[:, :, None]
        elif name == "q6_K":
            dl = d * b.scales.float()
            y = dl[:, :, None] * (q.view(nb, 16, 16).to(torch.int32) - 32).float()
        else:
            raise AssertionError(name)
    return y.reshape(b.shape)


def fake_quant(w2d: torch.Tensor, name: str) -> torch.Tensor:
    """dequantize(quantize(w2d, name)) in w2d's dtype and device."""
    return dequantize(quantize(w2d, name)).to(w2d.dtype)


def _bits_le(v: torch.Tensor, nbits: int) -> torch.Tensor:
    """(..., 8·k) 0/1 -> (..., k) bytes, bit i of byte j = v[..., 8j + i]."""
    v = v.to(torch.int32).reshape(*v.shape[:-1], -1, 8)
    sh = torch.arange(8, device=v.device, dtype=torch.int32)
    return (v << sh).sum(-1)


def _f16_bytes(t: torch.Tensor) -> torch.Tensor:
    u = t.contiguous().view(torch.int16).to(torch.int32) & 0xFFFF
    return torch.stack([u & 0xFF, u >> 8], -1)


def pack(b: Blocks) -> np.ndarray:
    """The bytes a GGUF file stores for ``b``: uint8 (rows, cols // block * type_size)."""
    name = b.name
    block, size, _ = _spec(name)
    q = b.q.to(torch.int32)
    nb = q.shape[0]
    d = _f16_bytes(b.d)
    if name in ("q4_0", "iq4_nl"):
        parts = [d, (q[:, :16] & 0xF) | ((q[:, 16:] & 0xF) << 4)]
    elif name == "q4_1":
        parts = [d, _f16_bytes(b.dmin), (q[:, :16] & 0xF) | ((q[:, 16:] & 0xF) << 4)]
    elif name in ("q5_0", "q5_1"):
        qh = _bits_le((q >> 4) & 1, 32)
        qs = (q[:, :16] & 0xF) | ((q[:, 16:] & 0xF) << 4)
        parts = [d] + ([_f16_bytes(b.dmin)] if name == "q5_1" else []) + [qh, qs]
    elif name == "q8_0":
        parts = [d, q & 0xFF]
    elif name in ("q2_K", "q3_K"):
        L = q.view(nb, 2, 4, 32)
        low = L & 3
        qs = (low[:, :, 0] | (low[:, :, 1] << 2) | (low[:, :, 2] << 4) | (low[:, :, 3] << 6)).reshape(nb, 64)
        if name == "q2_K":
            parts = [b.scales.to(torch.int32), qs, d, _f16_bytes(b.dmin)]
        else:
            hi = (q.view(nb, 8, 32) >> 2) & 1                     # hmask[m] bit k <- L[32k + m]
            hmask = (hi << torch.arange(8, device=q.device, dtype=torch.int32).view(1, 8, 1)).sum(1)
            parts = [hmask, qs, b.scales.to(torch.int32), d]
    elif name in ("q4_K", "q5_K"):
        L = q.view(nb, 4, 2, 32)
        qs = ((L[:, :, 0] & 0xF) | ((L[:, :, 1] & 0xF) << 4)).reshape(nb, 128)
        parts = [d, _f16_bytes(b.dmin), b.scales.to(torch.int32)]
        if name == "q5_K":
            hi = ((L >> 4) & 1).reshape(nb, 8, 32)                # bit 2c + h <- L[64c + 32h + l]
            qh = (hi << torch.arange(8, device=q.device, dtype=torch.int32).view(1, 8, 1)).sum(1)
            parts.append(qh)
        parts.append(qs)
    elif name == "q6_K":
        L = q.view(nb, 2, 4, 32)
        lo = L & 0xF
        ql = torch.stack([lo[:, :, 0] | (lo[:, :, 2] << 4), lo[:, :, 1] | (lo[:, :, 3] << 4)], 2).reshape(nb, 128)
        hi = L >> 4
        qh = (hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)).reshape(nb, 64)
        parts = [ql, qh, b.scales.to(torch.int32) & 0xFF, d]
    else:
        raise AssertionError(name)
    out = torch.cat([p.reshape(nb, -1).to(torch.int32) for p in parts], 1).to(torch.uint8)
    assert out.shape[1] == size, (name, out.shape)
    rows, cols = b.shape
    return out.cpu().numpy().reshape(rows, cols // block * size)


def unpack(data: np.ndarray, name: str, shape: tuple[int, int]) -> Blocks:
    """Inverse of ``pack``: ggml's bytes of a (rows, cols) weight back into ``Blocks``."""
    block, size, _ = _spec(name)
    rows, cols = shape
    raw = torch.from_numpy(np.ascontiguousarray(data, dtype=np.uint8).reshape(-1, size).copy())
    nb = raw.shape[0]
    r = raw.to(torch.int32)

    def f16(a):
        return (a[:, 0] | (a[:, 1] << 8)).to(torch.int16).view(torch.float16)

    def nib32(qs):
        return torch.cat([qs & 0xF, qs >> 4], 1)

    dmin = scales = None
    if name in ("q4_0", "iq4_nl"):
        d, q = f16(r[:, 0:2]), nib32(r[:, 2:18])
    elif name == "q4_1":
        d, dmin, q = f16(r[:, 0:2]), f16(r[:, 2:4]), nib32(r[:, 4:20])
    elif name in ("q5_0", "q5_1"):
        o = 2 if name == "q5_0" else 4
        d = f16(r[:, 0:2])
        dmin = f16(r[:, 2:4]) if name == "q5_1" else None
        qh = r[:, o:o + 4]
        bits = ((qh[:, :, None] >> torch.arange(8, dtype=torch.int32)) & 1).reshape(nb, 32)
        q = nib32(r[:, o + 4:o + 20]) | (bits << 4)
    elif name == "q8_0":
        d, q = f16(r[:, 0:2]), raw[:, 2:34].view(torch.int8)
    elif name in ("q2_K", "q3_K"):
        if name == "q2_K":
            scales, qs, d, dmin = raw[:, 0:16], r[:, 16:80], f16(r[:, 80:82]), f16(r[:, 82:84])
        else:
            hm, qs, scales, d = r[:, 0:32], r[:, 32:96], raw[:, 96:108], f16(r[:, 108:110])
        low = torch.stack([(qs.view(nb, 2, 32) >> (2 * g)) & 3 for g in range(4)], 2).reshape(nb, 256)
        q = low
        if name == "q3_K":
            hi = ((hm[:, None, :] >> torch.arange(8, dtype=torch.int32).view(1, 8, 1)) & 1).reshape(nb, 256)
            q = low | (hi << 2)
    elif name in ("q4_K", "q5_K"):
        d, dmin, scales = f16(r[:, 0:2]), f16(r[:, 2:4]), raw[:, 4:16]
        qs = r[:, -128:].view(nb, 4, 32)
        q = torch.stack([qs & 0xF, qs >> 4], 2).reshape(nb, 256)
        if name == "q5_K":
            qh = r[:, 16:48]
            hi = ((qh[:, None, :] >> torch.arange(8, dtype=torch.int32).view(1, 8, 1)) & 1).reshape(nb, 256)
            q = q | (hi << 4)
    elif name == "q6_K":
        ql, qh, scales, d = r[:, 0:128].view(nb, 2, 2, 32), r[:, 128:192].view(nb, 2, 32), \
            raw[:, 192:208].view(torch.int8), f16(r[:, 208:210])
        lo = torch.stack([ql[:, :, 0] & 0xF, ql[:, :, 1] & 0xF, ql[:, :, 0] >> 4, ql[:, :, 1] >> 4], 2)
        hi = torch.stack([(qh >> (2 * g)) & 3 for g in range(4)], 2)
        q = (lo | (hi << 4)).reshape(nb, 256)
    else:
        raise AssertionError(name)
    if name != "q8_0":
        q = q.to(torch.uint8)
    return Blocks(name, (rows, cols), q, d, dmin=dmin,
                  scales=None if scales is None else scales.clone())
