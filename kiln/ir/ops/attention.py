"""Attention-era ops: attention (scaled dot-product, ONNX opset 23-25 semantics) and
rotary_embedding.

``attention`` takes 4-D ``q (B, Hq, Sq, D)``, ``k (B, Hkv, Skv, D)``, ``v (B, Hkv, Skv, Dv)``
(the frontend reshapes 3-D inputs and concatenates the past cache), then optionally a
mask and the per-batch valid key counts ``nonpad_kv_seqlen``. Grouped-query heads read kv
head ``h // (Hq / Hkv)``. Stages, as in the ONNX reference:

    qk[b,h,i,j]  = softcap(sum_d (q * c) (k * c)),  c = sqrt(scale)     (never inlined)
    s            = qk + bias   (bias: the float mask, and -inf where the boolean mask,
                                the causal frontier, the sliding window or the padding
                                disallow key j)
    max, sum     = row max of s; sum of exp(s - max)   (a row with no allowed key has
                                max -inf: it is treated as 0, so its probabilities are 0)
    p            = exp(s - max) / sum
    y[b,h,i,:]   = sum_j p * v

The optional second output is the QK product (modes 0/1: after softcap, as the reference),
QK plus bias (mode 2) or the probabilities (mode 3).
"""
from __future__ import annotations

from kiln.errors import ShapeError
from kiln.ir.compute import compute, rmax, rsum
from kiln.ir.dtype import INDEX, DType
from kiln.ir.expr import Cast, Const, Select, Un
from kiln.ir.graph import TensorType
from kiln.ir.ops import FusionKind, register
from kiln.ir.ops.nn import conj, static_shape

F32 = DType.float32


def _as(e, dt: DType):
    return e if e.dtype == dt else Cast(e, dt)


def _f(v, dt) -> Const:
    return Const(float(v), dt)


def _acc(dt: DType) -> DType:
    return F32 if dt is DType.float16 or dt.is_narrow_float else dt


# -- attention -------------------------------------------------------------------------------

def _attention_infer(ins, attrs):
    q = static_shape(ins[0], "attention q")
    k = static_shape(ins[1], "attention k")
    v = static_shape(ins[2], "attention v")
    if len(q) != 4 or len(k) != 4 or len(v) != 4:
        raise ShapeError(f"attention takes 4-D q, k, v (B, heads, seq, head_size); got {q}, {k}, {v}")
    if q[0] != k[0] or k[:3] != v[:3] or q[3] != k[3] or k[1] == 0 or q[1] % k[1]:
        raise ShapeError(f"attention shapes do not agree: q {q}, k {k}, v {v} (batch, kv heads dividing "
                         "q heads, equal head size of q and k, equal kv length)")
    if not ins[0].dtype.is_float or {ins[1].dtype, ins[2].dtype} != {ins[0].dtype}:
        raise ShapeError(f"attention q, k, v must share one float dtype; got {ins[0].dtype}, "
                         f"{ins[1].dtype}, {ins[2].dtype}")
    b, hq, sq, skv = q[0], q[1], q[2], k[2]
    if attrs.get("has_mask"):
        m = static_shape(ins[3], "attention mask")
        if len(m) > 4 or m[-1] > skv or any(a not in (1, n) for a, n in zip(m[-2::-1], (sq, hq, b))):
            raise ShapeError(f"attention mask {m} does not broadcast to (batch {b}, heads {hq}, "
                             f"q {sq}, kv <= {skv})")
    out = [TensorType((b, hq, sq, v[3]), ins[0].dtype)]
    if attrs.get("qk_mode", -1) >= 0:
        out.append(TensorType((b, hq, sq, skv), ins[0].dtype))
    return out


def _bias(ins, attrs, dt):
    """``bias(b, h, i, j)``: an expression of the attention bias, or None when it is 0."""
    q, k = ins[0], ins[1]
    sq, skv = q.shape[2], k.shape[2]
    rest = list(ins[3:])
    mask = rest.pop(0) if attrs.get("has_mask") else None
    nonpad = rest.pop(0) if attrs.get("has_nonpad") else None
    causal = bool(attrs.get("is_causal"))
    left, right = int(attrs.get("left_window", -1)), int(attrs.get("right_window", -1))
    neg_inf = _f(float("-inf"), dt)

    def offset(b):
        """Keys before the query block: the past length, or nonpad[b] - Sq (external cache)."""
        if nonpad is not None:
            return _as(nonpad[b], INDEX) - sq
        return Const(int(attrs.get("past_len", 0)), INDEX)

    def bias(b, h, i, j):
        conds, value = [], None
        if mask is not None:
            full = (b, h, i, j)
            ix = tuple(0 if n == 1 and d < mask.ndim - 1 else full[4 - mask.ndim + d]
                       for d, n in enumerate(mask.shape))
            mv = mask[ix]
            short = mask.shape[-1] < skv  # keys past the mask are disallowed (the reference pads)
            if mv.dtype is DType.bool:
                conds.append(j.lt(mask.shape[-1]).land(mv) if short else mv)
            else:
                value = _as(mv, dt)
                if short:
                    conds.append(j.lt(mask.shape[-1]))
        if causal or left >= 0 or right >= 0:
            pos = i + offset(b)  # the query's absolute position
            if causal:
                conds.append(j.le(pos))
            if left >= 0:
                conds.append((pos - j).le(left))
            if right >= 0:
                conds.append((j - pos).le(right))
        if nonpad is not None:
            conds.append(j.lt(_as(nonpad[b], INDEX)))
        allowed = conj(conds)
        if allowed is None:
            return value
        return Select(allowed, value if value is not None else _f(0, dt), neg_inf)

    has_bias = mask is not None or nonpad is not None or causal or left >= 0 or right >= 0
    return bias if has_bias else None


def _rounder(dt: DType):
    """Rounding to ``dt`` of a value computed in its working type (float32 for float16):
    float16 results are rounded after every operation, as numpy (the reference) does."""
    if dt is DType.float16 or dt.is_narrow_float:
        return lambda e: Cast(Cast(e, dt), F32)
    return lambda e: e


def _attention_compute(ins, outs, attrs):
    q, k, v, y = ins[0], ins[1], ins[2], outs[0]
    qk_out = outs[1] if len(outs) > 1 else None
    mode = int(attrs.get("qk_mode", -1))
    dt = q.dtype                        # the type of Q, K, V and the outputs
    sm = DType(attrs["softmax_dtype"]) if attrs.get("softmax_dtype") else dt
    wd, ws = _acc(dt), _acc(sm)         # working types: float16 computes in float32 ...
    rd, rs = _rounder(dt), _rounder(sm)  # ... rounding each result back
    group = q.shape[1] // k.shape[1]
    d, skv = q.shape[3], k.shape[2]
    c = _f(attrs["sqrt_scale"], wd)
    cap = float(attrs.get("softcap", 0.0))
    bias = _bias(ins, attrs, wd)
    row = (q.shape[0], q.shape[1], q.shape[2], 1)

    def kv(h):
        return h if group == 1 else h // group

    def qk_body(b, h, i, j):
        s = rsum(lambda r: rd(_as(q[b, h, i, r], wd) * c) * rd(_as(k[b, kv(h), j, r], wd) * c), d)
        if cap > 0:
            s = rd(rd(Un("tanh", rd(rd(s) / _f(cap, wd)), wd)) * _f(cap, wd))
        return _as(s, dt)

    qk_name = qk_out.name if mode in (0, 1) else f"{y.name}__qk"
    qk = compute(qk_name, q.shape[:3] + (skv,), qk_body, dt, tag="matmul", inline=False)
    qkt = qk.tensor
    stages = [qk]

    def s_of(b, h, i, j):  # the score in the softmax's working type
        s = _as(qkt[b, h, i, j], wd)
        return _as(s if bias is None else rd(s + bias(b, h, i, j)), ws)

    if mode == 2:
        stages.append(compute(qk_out.name, qk_out.shape, lambda *i: _as(s_of(*i), dt), dt))
    mx = compute(f"{y.name}__max", row, lambda b, h, i, _: rmax(lambda j: s_of(b, h, i, j), skv),
                 ws, tag="reduce", inline=False)
    m = mx.tensor

    def safe_max(b, h, i):  # a fully masked row: exp(-inf - 0) = 0 everywhere
        v_ = m[b, h, i, 0]
        return Select(v_.eq(_f(float("-inf"), ws)), _f(0, ws), v_)

    def e(b, h, i, j):
        return rs(Un("exp_nonpos", rs(s_of(b, h, i, j) - safe_max(b, h, i)), ws))

    if sm.is_narrow_float:
        # numpy (the reference) sums a bfloat16 row in bfloat16, rounding after every term
        total = compute(f"{y.name}__sum", row, lambda b, h, i, _: rsum(lambda j: Cast(e(b, h, i, j), sm), skv),
                        sm, tag="reduce", inline=False)
    else:
        total = compute(f"{y.name}__sum", row, lambda b, h, i, _: rs(rsum(lambda j: e(b, h, i, j), skv)),
                        ws, tag="reduce", inline=False)
    t = total.tensor

    def p_body(b, h, i, j):
        s_ = t[b, h, i, 0]
        return _as(rs(e(b, h, i, j) / Select(s_.eq(_f(0, ws)), _f(1, ws), s_)), dt)

    p_name = qk_out.name if mode == 3 else f"{y.name}__p"
    p = compute(p_name, q.shape[:3] + (skv,), p_body, dt, inline=False)
    pt = p.tensor

    def y_body(b, h, i, r):
        return _as(rsum(lambda j: _as(pt[b, h, i, j], wd) * _as(v[b, kv(h), j, r], wd), skv), dt)

    stages += [mx, total, p, compute(y.name, y.shape, y_body, dt, tag="matmul")]
    return stages


register("attention", FusionKind.OPAQUE, _attention_infer, _attention_compute, num_outputs=2)


# -- rotary_embedding ----------------------------------------------------------------------------

def _rotary_infer(ins, attrs):
    x = static_shape(ins[0], "rotary_embedding input")
    cos = static_shape(ins[1], "rotary_embedding cos_cache")
    if len(x) not in (3, 4) or not ins[0].dtype.is_float:
        raise ShapeError(f"rotary_embedding needs a float input (B, H, S, D) or (B, S, H*D); got {ins[0]}")
    heads = x[1] if len(x) == 4 else int(attrs["num_heads"])
    size = x[3] if len(x) == 4 else (x[2] // heads if heads else 0)
    rot = int(attrs.get("rotary_dim", 0)) or size
    if not size or rot % 2 or rot > size or cos[-1] != rot // 2 or static_shape(ins[2], "sin_cache") != cos:
        raise ShapeError(f"rotary_embedding caches {cos} must end in rotary_dim/2 = {rot // 2} "
                         f"(head size {size}); got input {x}")
    return [ins[0]]


def _rotary_compute(ins, outs, attrs):
    """Rotate pairs (x1, x2) of the first ``rotary_dim`` features of each head by the cached
    angle of the token's position: halves (x[k], x[k + R/2]) or neighbours (x[2k], x[2k+1])."""
    from kiln.ir.ops.indexing import wrap_index

    x, cos, sin, o = ins[0], ins[1], ins[2], outs[0]
    pos = ins[3] if len(ins) > 3 else None
    four = x.ndim == 4
    size = x.shape[3] if four else x.shape[2] // int(attrs["num_heads"])
    rot = int(attrs.get("rotary_dim", 0)) or size
    half, inter = rot // 2, bool(attrs.get("interleaved", 0))

    def body(*i):
        b, s = (i[0], i[2]) if four else (i[0], i[1])
        d = i[3] if four else i[2] % size

        def at(dd):  # element dd of the same head
            return x[tuple(i[:3]) + (dd,)] if four else x[i[0], i[1], i[2] - d + dd]

        def cache(t, kk):
            if pos is None:
                return t[b, s, kk]
            return t[wrap_index(pos[b, s], t.shape[0]), kk]

        if inter:
            k, first = d // 2, (d % 2).eq(0)
            partner = Select(first, d + 1, d - 1)
        else:
            first = d.lt(half)
            k = Select(first, d, d - half)
            partner = Select(first, d + half, d - half)
        c, sn, me, other = cache(cos, k), cache(sin, k), at(d), at(partner)
        rotated = Select(first, c * me - sn * other, sn * other + c * me)
        return rotated if rot == size else Select(d.lt(rot), rotated, me)

    return [compute(o.name, o.shape, body, o.dtype)]


register("rotary_embedding", FusionKind.INJECTIVE, _rotary_infer, _rotary_compute)
