"""Quantized patterns -> integer kernels, as one declarative rule table.

QDQ models (what ``onnxruntime.quantization.quantize_static`` and ``kiln quantize`` write)
express int8 arithmetic as float ops between DequantizeLinear and QuantizeLinear:

    Q( [Relu|Clip]( Conv(DQ(x), DQ(w), DQ(b)) ) )          -> qconv
    Q( [Relu|Clip]( MatMul(DQ(a), DQ(w)) [+ DQ(b)] ) )      -> qmatmul   (Gemm too, transB or not)
    Q( [Relu]( Add(DQ(a), DQ(b)) ) )                        -> qadd
    Q( AveragePool / GlobalAveragePool ( DQ(x) ) )          -> qavg_pool / qglobal_avg_pool
    Q( Softmax( DQ(x) ) )                                   -> qsoftmax (exp table from x's scale)
    Q( MaxPool / Reshape / Transpose ( DQ(x) ) ), same scale -> the op on the integers
    Q( DQ(x) ), same scale and zero point                    -> x

QLinearConv / QLinearMatMul arrive from the frontend as ``conv_integer``/``matmul_integer``
followed by a float ``requantize``; they become the same ``qconv``/``qmatmul``.

Everything the integer op needs is computed here at compile time (see
``kiln/ir/ops/qlinear.py``): weights packed (O, ..., K) in int8, the bias quantized with
``x_scale * w_scale`` and the zero-point terms folded into it, the fixed-point multiplier
and shift. A pattern this pass cannot make exact in integers is left as it is -- blocked
weight scales, a weight zero point that does not fit int8 after subtraction, per-channel
activation scales, int16 data -- and runs as float (dequantize, op, quantize), which is
the reference semantics: slower, never wrong.

The pass runs first in the pipeline: constant folding would otherwise turn DQ(weights)
into float weights and the integers would be lost.
"""
from __future__ import annotations

import numpy as np

from kiln.ir.dtype import DType
from kiln.ir.graph import Graph
from kiln.ir.ops.qlinear import QTYPES, fixed_point
from kiln.passes.rewrite import Any, Const, Match, Op, Rewriter, Rule, apply_rules

ANY = dict(single_use=False)


# -- reading quantization parameters --------------------------------------------------------------

def _dq_params(rw: Rewriter, node, per_channel_axis: int | None = None, dtypes=QTYPES):
    """(x, scale, zero_point) of a DequantizeLinear node, the parameters as float64/int64
    arrays; None when they are not constants, are blocked, or are per axis other than
    ``per_channel_axis``."""
    if node.attrs.get("block_size"):
        return None
    x = node.inputs[0]
    s = rw.constants.get(node.inputs[1])
    zp_name = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] else None
    z = rw.constants.get(zp_name) if zp_name else np.zeros(1, np.int64)
    if s is None or z is None or rw.type(x).dtype not in dtypes:
        return None
    if s.size != 1 and (per_channel_axis is None or int(node.attrs.get("axis", 1)) != per_channel_axis):
        return None
    return x, s.astype(np.float64).reshape(-1), z.astype(np.int64).reshape(-1)


def _q_params(rw: Rewriter, node):
    """(scale, zero_point, dtype) of a per-tensor QuantizeLinear, else None."""
    s = rw.constants.get(node.inputs[1])
    zp_name = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] else None
    z = rw.constants.get(zp_name) if zp_name else np.zeros(1, np.int64)
    out = node.outputs[0].type.dtype
    if s is None or z is None or s.size != 1 or z.size != 1 or out not in QTYPES:
        return None
    if node.attrs.get("precision"):
        return None
    return float(s.reshape(-1)[0]), int(z.reshape(-1)[0]), out


def _quantize_value(v: float, scale: float, zp: int, dtype: DType) -> int:
    """What QuantizeLinear makes of the float ``v`` (float32 division, half to even)."""
    info = np.iinfo(dtype.np)
    q = np.round(np.float32(np.clip(v, -3.4e38, 3.4e38)) / np.float32(scale)) + zp
    return int(np.clip(q, info.min, info.max))


def _clamp(m: Match, sy: float, zy: int, out: DType) -> tuple[int, int]:
    """The output range after a fused activation, in the quantized domain."""
    info = np.iinfo(out.np)
    lo, hi = int(info.min), int(info.max)
    act = m.nodes.get("act")
    if act is None:
        return lo, hi
    if act.op == "relu":
        return max(lo, zy), hi
    if "min" in act.attrs:
        lo = max(lo, _quantize_value(float(act.attrs["min"]), sy, zy, out))
    if "max" in act.attrs:
        hi = min(hi, _quantize_value(float(act.attrs["max"]), sy, zy, out))
    return lo, hi


def _centered_weights(w: np.ndarray, zw: np.ndarray, axis: int) -> np.ndarray | None:
    """``w - zw`` (zero point per ``axis``) as int8, or None when it does not fit."""
    shape = [1] * w.ndim
    if zw.size != 1:
        shape[axis] = zw.size
    c = w.astype(np.int64) - zw.reshape(shape)
    if c.min(initial=0) < -128 or c.max(initial=0) > 127:
        return None
    return c.astype(np.int8)


def _bias_q(bias_real: np.ndarray | None, acc_scale: np.ndarray, n: int) -> np.ndarray | None:
    if bias_real is None:
        return np.zeros(n, np.int64)
    b = np.broadcast_to(np.asarray(bias_real, np.float64).reshape(-1), (n,))
    q = np.round(b / acc_scale)
    if np.any(np.abs(q) > 2**31 - 1):
        return None
    return q.astype(np.int64)


def _bias_real(rw: Rewriter, m: Match, n: int):
    """The float bias of the matched op: DQ(int32) or a float constant; (ok, value)."""
    if "dqb" in m.nodes:
        p = _dq_params(rw, m.nodes["dqb"], per_channel_axis=0, dtypes=(DType.int32,))
        if p is None or p[0] not in rw.constants:
            return False, None
        b = rw.constants[p[0]].astype(np.int64).reshape(-1)
        if b.size != n:
            return False, None
        return True, (b - p[2]) * p[1]
    if "b" in m.arrays:
        b = np.asarray(m.arrays["b"])
        if b.dtype.kind != "f" or b.size not in (1, n):
            return False, None
        return True, b.astype(np.float64)
    return True, None


# -- building the integer ops --------------------------------------------------------------------------

def _epilogue(rw: Rewriter, w8: np.ndarray, red_axes, bias_q, real, zx: int, off: int):
    """bias (with the zero-point terms), mult and shift constants for an op with ``n`` outputs,
    and the attributes that describe them; None when the bias does not fit int32."""
    n = w8.shape[0]
    wsum = w8.astype(np.int64).sum(axis=red_axes).reshape(n)
    bias = bias_q - (zx + off) * wsum
    if np.any(np.abs(bias) > 2**31 - 1):
        return None
    mult, shift = fixed_point(np.broadcast_to(real, (n,)))
    consts = (rw.const(bias.astype(np.int32), "qbias"), rw.const(mult, "qmult"), rw.const(shift, "qshift"))
    return consts, {"min_shift": int(shift.min())}  # lets the epilogue clamp in int32 (qlinear.requant)


def build_qconv(rw: Rewriter, x: str, zx: int, w8: np.ndarray, bias_q, real, conv_attrs, zy: int,
                out: DType, lo: int, hi: int) -> str | None:
    """``qconv`` of activations ``x`` (zero point ``zx``) and centered int8 weights (OC, ICg, KH, KW)."""
    if w8.ndim != 4 or len(rw.type(x).shape) != 4:
        return None
    off = 128 if rw.type(x).dtype is DType.int8 else 0
    epilogue = _epilogue(rw, w8, (1, 2, 3), bias_q, real, zx, off)
    if epilogue is None:
        return None
    consts, facts = epilogue
    oc, icg, kh, kw = w8.shape
    packed = np.ascontiguousarray(w8.transpose(0, 2, 3, 1).reshape(oc, kh, kw * icg))
    attrs = {k: conv_attrs[k] for k in ("strides", "pads", "dilations", "group") if k in conv_attrs}
    attrs.update(kernel=(kh, kw), x_zp=zx, act_offset=off, y_zp=zy, lo=lo, hi=hi, dtype=out.value, **facts)
    return rw.emit("qconv", [x, rw.const(packed, "qweight"), *consts], attrs)


def build_qmatmul(rw: Rewriter, a: str, za: int, w8_nk: np.ndarray, bias_q, real, zy: int,
                  out: DType, lo: int, hi: int) -> str | None:
    """``qmatmul`` of ``a`` (..., M, K) and centered int8 weights given as (N, K)."""
    off = 128 if rw.type(a).dtype is DType.int8 else 0
    epilogue = _epilogue(rw, w8_nk, (1,), bias_q, real, za, off)
    if epilogue is None:
        return None
    consts, facts = epilogue
    attrs = dict(x_zp=za, act_offset=off, y_zp=zy, lo=lo, hi=hi, dtype=out.value, **facts)
    return rw.emit("qmatmul", [a, rw.const(np.ascontiguousarray(w8_nk), "qweight"), *consts], attrs)


# -- QDQ rules ---------------------------------------------------------------------------------------

def _qdq_conv(m: Match, rw: Rewriter):
    q = _q_params(rw, m.root)
    px = _dq_params(rw, m.nodes["dqx"])
    pw = _dq_params(rw, m.nodes["dqw"], per_channel_axis=0)
    if q is None or px is None or pw is None or pw[0] not in rw.constants:
        return None
    (sy, zy, out), (x, sx, zx), (w, sw, zw) = q, px, pw
    w8 = _centered_weights(rw.constants[w], zw, 0)
    if w8 is None:
        return None
    ok, b = _bias_real(rw, m, w8.shape[0])
    bias_q = _bias_q(b, sx[0] * sw, w8.shape[0]) if ok else None
    if bias_q is None:
        return None
    lo, hi = _clamp(m, sy, zy, out)
    return build_qconv(rw, x, int(zx[0]), w8, bias_q, sx[0] * sw / sy, m.nodes["op"].attrs, zy, out, lo, hi)


def _qdq_matmul(m: Match, rw: Rewriter):
    q = _q_params(rw, m.root)
    px = _dq_params(rw, m.nodes["dqx"])
    transposed = "tw" in m.nodes
    if transposed and tuple(m.nodes["tw"].attrs["perm"]) != (1, 0):
        return None
    pw = _dq_params(rw, m.nodes["dqw"], per_channel_axis=0 if transposed else 1)
    if q is None or px is None or pw is None or pw[0] not in rw.constants:
        return None
    (sy, zy, out), (x, sx, zx), (w, sw, zw) = q, px, pw
    wv = rw.constants[w]
    if wv.ndim != 2:
        return None
    w8 = _centered_weights(wv, zw, 0 if transposed else 1)
    if w8 is None:
        return None
    w8 = w8 if transposed else w8.T
    n = w8.shape[0]
    ok, b = _bias_real(rw, m, n)
    if "add" in m.nodes and tuple(m.nodes["add"].outputs[0].type.shape) != tuple(m.nodes["op"].outputs[0].type.shape):
        return None
    bias_q = _bias_q(b, sx[0] * sw, n) if ok else None
    if bias_q is None:
        return None
    lo, hi = _clamp(m, sy, zy, out)
    return build_qmatmul(rw, x, int(zx[0]), w8, bias_q, sx[0] * sw / sy, zy, out, lo, hi)


# The larger add multiplier is normalized to [2^20, 2^21): 21 bits, a relative error below
# 2^-21, far inside a quantization step; and for 8-bit operands both products, their sum and
# the rounding term fit int32, so ``qadd`` computes in int32 (``_qadd_compute``): one vector
# operation per step on x86, no 64-bit multiplies on a Cortex-M. (30 bits needed int64.)
ADD_SHIFT_BITS = 21


def _qdq_add(m: Match, rw: Rewriter):
    q = _q_params(rw, m.root)
    pa, pb = _dq_params(rw, m.nodes["dqa"]), _dq_params(rw, m.nodes["dqb"])
    if q is None or pa is None or pb is None:
        return None
    (sy, zy, out), (a, sa, za), (b, sb, zb) = q, pa, pb
    ra, rb = sa[0] / sy, sb[0] / sy
    top = max(ra, rb)
    if not np.isfinite(top) or top <= 0:
        return None
    shift = int(min(62, max(1, ADD_SHIFT_BITS - np.frexp(top)[1])))
    lo, hi = _clamp(m, sy, zy, out)
    attrs = dict(a_zp=int(za[0]), b_zp=int(zb[0]), y_zp=zy, ma=int(round(ra * 2**shift)),
                 mb=int(round(rb * 2**shift)), shift=shift, lo=lo, hi=hi, dtype=out.value)
    return rw.emit("qadd", [a, b], attrs)


def _same_params(m: Match, rw: Rewriter):
    """A Q after DQ (around data movement) with equal scale and zero point: x, or the op on x."""
    q = _q_params(rw, m.root)
    p = _dq_params(rw, m.nodes["dqx"])
    if q is None or p is None or p[1].size != 1 or rw.type(p[0]).dtype is not q[2]:
        return None
    if np.float32(p[1][0]) != np.float32(q[0]) or int(p[2][0]) != q[1]:
        return None
    op = m.nodes.get("op")
    if op is None:
        return p[0]
    return rw.emit(op.op, [p[0]], op.attrs)


# -- average pooling and softmax (kiln/ir/ops/qpool.py, qsoftmax.py) ----------------------------------

def _per_tensor_io(m: Match, rw: Rewriter):
    """((sy, zy, out), (x, sx, zx)) of a DQ -> op -> Q match, per-tensor on both sides."""
    q = _q_params(rw, m.root)
    p = _dq_params(rw, m.nodes["dqx"])
    if q is None or p is None or p[1].size != 1 or p[2].size != 1:
        return None
    return q, (p[0], float(p[1][0]), int(p[2][0]))


def _qdq_avg_pool(m: Match, rw: Rewriter):
    from kiln.ir.ops.qpool import MAX_TAPS, count_multipliers, window_counts

    io = _per_tensor_io(m, rw)
    if io is None:
        return None
    (sy, zy, out), (x, sx, zx) = io
    op = m.nodes["op"]
    shape = rw.type(x).shape
    if not all(isinstance(d, int) for d in shape):
        return None
    attrs = dict(x_zp=zx, y_zp=zy, lo=int(np.iinfo(out.np).min), hi=int(np.iinfo(out.np).max), dtype=out.value)
    if op.op == "global_avg_pool":
        count = int(np.prod(shape[2:]))
        if len(shape) < 3 or count > MAX_TAPS:
            return None
        mult, shift = count_multipliers(sx, sy, [count])
        attrs["min_shift"] = int(shift.min())   # the high-word epilogue, as the convolutions'
        return rw.emit("qglobal_avg_pool", [x, rw.const(mult, "qmult"), rw.const(shift, "qshift")], attrs)
    kernel = int(np.prod(op.attrs["kernel_shape"]))
    counts = set(window_counts(shape, op.attrs).reshape(-1).tolist())
    if kernel > MAX_TAPS or 0 in counts:
        return None
    # indexed by the count; counts no window has get multiplier 0 (and no say in min_shift)
    table = sorted(counts) if len(counts) == 1 else [c if c in counts else 0 for c in range(kernel + 1)]
    mult, shift = count_multipliers(sx, sy, table)
    attrs["min_shift"] = int(shift.min())
    attrs.update({k: op.attrs[k] for k in ("kernel_shape", "strides", "pads", "dilations", "ceil_mode",
                                           "count_include_pad") if k in op.attrs})
    return rw.emit("qavg_pool", [x, rw.const(mult, "qmult"), rw.const(shift, "qshift")], attrs)


def _qdq_softmax(m: Match, rw: Rewriter):
    from kiln.ir.ops import normalize_axis
    from kiln.ir.ops.qsoftmax import exp_table, reciprocal_numerator

    io = _per_tensor_io(m, rw)
    if io is None:
        return None
    (sy, zy, out), (x, sx, _) = io
    shape = rw.type(x).shape
    axis = normalize_axis(int(m.nodes["op"].attrs.get("axis", -1)), len(shape), "softmax axis")
    if not isinstance(shape[axis], int):
        return None
    tab = exp_table(sx, shape[axis])
    rec = reciprocal_numerator(sy, tab[1]) if tab is not None else None
    if rec is None:
        return None
    attrs = dict(axis=axis, numer=rec[0], frac_bits=rec[1], table_bits=tab[1], y_zp=zy,
                 lo=int(np.iinfo(out.np).min), hi=int(np.iinfo(out.np).max), dtype=out.value)
    return rw.emit("qsoftmax", [x, rw.const(tab[0], "qexp")], attrs)


# -- QLinearConv / QLinearMatMul (conv_integer / matmul_integer + requantize) -------------------------

def _qlinear(m: Match, rw: Rewriter):
    op = m.nodes["op"]
    mult, yzp = m.arrays["mult"], m.arrays["yzp"]
    out = m.root.outputs[0].type.dtype
    if yzp.size != 1 or out not in QTYPES:
        return None
    xzp, wzp = rw.constants.get(op.inputs[2]), rw.constants.get(op.inputs[3])
    w = rw.constants.get(op.inputs[1])
    if xzp is None or wzp is None or w is None or xzp.size != 1:
        return None
    zy = int(yzp.reshape(-1)[0])
    info = np.iinfo(out.np)
    bias = np.asarray(m.arrays["bias"]).astype(np.int64).reshape(-1) if "bias" in m.arrays else None
    x, zx = op.inputs[0], int(xzp.reshape(-1)[0])
    if op.op == "conv_integer":
        oc = w.shape[0]
        w8 = _centered_weights(w, wzp.reshape(-1), 0)
        real = np.broadcast_to(mult.astype(np.float64).reshape(-1), (oc,)) if mult.size in (1, oc) else None
        if w8 is None or real is None or (bias is not None and bias.size != oc):
            return None
        return build_qconv(rw, x, zx, w8, bias if bias is not None else np.zeros(oc, np.int64), real,
                           op.attrs, zy, out, int(info.min), int(info.max))
    if w.ndim != 2 or wzp.size not in (1, w.shape[1]) or m.arrays["mult"].size not in (1, w.shape[1]):
        return None
    w8 = _centered_weights(w, wzp.reshape(-1), 1)
    if w8 is None:
        return None
    n = w.shape[1]
    real = np.broadcast_to(mult.astype(np.float64).reshape(-1), (n,))
    return build_qmatmul(rw, x, zx, w8.T, np.zeros(n, np.int64), real, zy, out, int(info.min), int(info.max))


# -- the table ---------------------------------------------------------------------------------------

def _dq(name):
    return Op("dequantize_linear", name=name, **ANY)


def _q(inner):
    """QuantizeLinear of ``inner`` with and without an explicit zero point."""
    return [Op("quantize_linear", inner, Const("sy")), Op("quantize_linear", inner, Const("sy"), Const("zy"))]


def _activations(inner):
    return [inner, Op("relu", inner, name="act"), Op("clip", inner, name="act")]


def _conv_patterns():
    bias = [(), (_dq("dqb"),), (Const("b"),)]
    for b in bias:
        conv = Op("conv", _dq("dqx"), _dq("dqw"), *b, name="op")
        for act in _activations(conv):
            yield from _q(act)


def _matmul_patterns():
    for w in (_dq("dqw"), Op("transpose", _dq("dqw"), name="tw")):
        mm = Op("matmul", _dq("dqx"), w, name="op")
        for inner in (mm, Op("add", mm, _dq("dqb"), name="add"), Op("add", mm, Const("b"), name="add")):
            for act in _activations(inner):
                yield from _q(act)


def _add_patterns():
    add = Op("add", _dq("dqa"), _dq("dqb"))
    for inner in (add, Op("relu", add, name="act")):
        yield from _q(inner)


def _movement_patterns():
    yield from _q(_dq("dqx"))
    for op in ("max_pool", "reshape", "transpose", "global_max_pool"):
        yield from _q(Op(op, _dq("dqx"), name="op"))


def _pool_softmax_patterns():
    for op in ("avg_pool", "global_avg_pool", "softmax"):
        yield from _q(Op(op, _dq("dqx"), name="op"))


def _qlinear_patterns():
    for op in ("conv_integer", "matmul_integer"):
        acc = Op(op, name="op")
        for inner in (acc, Op("add", acc, Const("bias"))):
            yield Op("requantize", inner, Const("mult"), Const("yzp"))


RULES: list[Rule] = (
    [(p, _qdq_conv) for p in _conv_patterns()]
    + [(p, _qdq_matmul) for p in _matmul_patterns()]
    + [(p, _qdq_add) for p in _add_patterns()]
    + [(p, _same_params) for p in _movement_patterns()]
    + [(p, _qdq_softmax if p.args[0].op == "softmax" else _qdq_avg_pool) for p in _pool_softmax_patterns()]
    + [(p, _qlinear) for p in _qlinear_patterns()]
)


def quantize_integer_ops(graph: Graph) -> Graph:
    """Rewrite quantized patterns into integer kernels (see the module docstring)."""
    if not any(n.op in ("quantize_linear", "requantize") for n in graph.nodes):
        return graph
    return apply_rules(graph, RULES)

