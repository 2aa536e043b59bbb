"""MatMulInteger / ConvInteger with constant weights -> packed integer kernels.

The frontend imports ONNX MatMulInteger and ConvInteger as ``matmul_integer`` /
``conv_integer``: exact int32 semantics, but a generic loop that subtracts both zero points
in the inner loop and reads the weights along their outer axis. When the weights are a
constant this pass rewrites them, as one ``(pattern, function)`` table, into
``qmatmul_i32`` / ``qconv_i32`` (``kiln/ir/ops/integer_acc.py``): weights centered on their
zero point and packed at compile time so the reduction is contiguous, the activation zero
point (a constant, or computed at run time by DynamicQuantizeLinear) applied once per
output through precomputed weight sums. Results are identical integers.

It runs after the ``quantize`` pass, which turns QLinearMatMul/QLinearConv (which reach it
as ``requantize(matmul_integer)``) into requantizing kernels first; what it leaves here
still gets the integer kernel, with the float requantize as its fused epilogue.

Left as they are (exact, slower): weights that are not constants, a weight zero point that
does not fit int8 after subtraction, per-row activation zero points, 1-D convolutions and
batched constant weights.

The same table moves weight-only matmuls (``matmul_wq``, from MatMulNBits) into the
column-blocked layout of ``matmul_wq_cols`` (``kiln/ir/ops/weight_only_cols.py``) when the
number of output columns is a multiple of the block: one more compile-time repacking.
"""
from __future__ import annotations

import numpy as np

from kiln.ir.graph import Graph
from kiln.passes.quantize import _centered_weights
from kiln.passes.rewrite import Match, Op, Rewriter, Rule, apply_rules


def _activation_zero_point(rw: Rewriter, name: str, x: str) -> str | None:
    """The activation zero point as a one-element value of the activation's type, or None."""
    t = rw.type(name)
    if t.dtype is not rw.type(x).dtype or int(np.prod([int(d) for d in t.shape], dtype=np.int64)) != 1:
        return None
    return name


def _weights(rw: Rewriter, w: str, zp: str, axis: int) -> np.ndarray | None:
    """``W - W_zp`` as int8 (zero point per ``axis`` or per tensor), or None."""
    wv, zv = rw.constants.get(w), rw.constants.get(zp)
    if wv is None or zv is None:
        return None
    zv = zv.reshape(-1)
    if zv.size not in (1, wv.shape[axis]):
        return None
    return _centered_weights(wv, zv.astype(np.int64), axis)


def _matmul(m: Match, rw: Rewriter):
    a, w, azp, wzp = m.root.inputs
    if rw.type(w).shape is None or len(rw.type(w).shape) != 2 or len(rw.type(a).shape) < 2:
        return None
    w8 = _weights(rw, w, wzp, 1)
    za = _activation_zero_point(rw, azp, a)
    if w8 is None or za is None:
        return None
    packed = np.ascontiguousarray(w8.T)                         # (N, K): the reduction contiguous
    wsum = packed.astype(np.int64).sum(axis=1)
    if np.abs(wsum).max(initial=0) * 255 > 2**31 - 1:          # (zp + off) * wsum must fit int32
        return None
    return rw.emit("qmatmul_i32", [a, rw.const(packed, "qweight"), rw.const(wsum.astype(np.int32), "qwsum"), za])


def _conv(m: Match, rw: Rewriter):
    x, w, xzp, wzp = m.root.inputs
    if len(rw.type(x).shape) != 4:
        return None
    w8 = _weights(rw, w, wzp, 0)
    za = _activation_zero_point(rw, xzp, x)
    if w8 is None or za is None or w8.ndim != 4:
        return None
    oc, icg, kh, kw = w8.shape
    packed = np.ascontiguousarray(w8.transpose(0, 2, 3, 1).reshape(oc, kh, kw * icg))
    wsum = w8.astype(np.int64).reshape(oc, -1).sum(axis=1)
    if np.abs(wsum).max(initial=0) * 255 > 2**31 - 1:
        return None
    attrs = {k: m.root.attrs[k] for k in ("strides", "pads", "dilations", "group") if k in m.root.attrs}
    attrs["kernel"] = (kh, kw)
    return rw.emit("qconv_i32", [x, rw.const(packed, "qweight"), rw.const(wsum.astype(np.int32), "qwsum"), za], attrs)


def _weight_only_columns(m: Match, rw: Rewriter):
    from kiln.ir.ops.weight_only_cols import COLUMN_BLOCK as T

    x, packed, scale, zero = m.root.inputs
    arrays = [rw.constants.get(v) for v in (packed, scale, zero)]
    if any(a is None for a in arrays) or arrays[0].shape[0] % T:
        return None
    q, s, z = arrays
    n = q.shape[0]

    def blocked(a):  # (N, ...) -> (N/T, ..., T)
        return np.ascontiguousarray(a.reshape(n // T, T, a.shape[1]).transpose(0, 2, 1))

    offset = (-(s.astype(np.float64) * z.astype(np.float64))).astype(np.float32)
    ins = [x, rw.const(blocked(q), "wq_cols"), rw.const(blocked(s.astype(np.float32)), "wq_scale"),
           rw.const(blocked(offset), "wq_offset")]
    return rw.emit("matmul_wq_cols", ins, dict(m.root.attrs))


RULES: list[Rule] = [
    (Op("matmul_integer", single_use=False), _matmul),
    (Op("conv_integer", single_use=False), _conv),
    (Op("matmul_wq", single_use=False), _weight_only_columns),
]


def pack_integer_ops(graph: Graph) -> Graph:
    """Rewrite constant-weight ``matmul_integer``/``conv_integer``/``matmul_wq`` (see the module
    docstring)."""
    if not any(n.op in ("matmul_integer", "conv_integer", "matmul_wq") for n in graph.nodes):
        return graph
    return apply_rules(graph, RULES)


def _im2col(m: Match, rw: Rewriter):
    if m.root.attrs.get("im2col"):
        return None
    return rw.emit(m.root.op, list(m.root.inputs), {**m.root.attrs, "im2col": 1})


def _pad_rows(m: Match, rw: Rewriter):
    x = rw.type(m.root.inputs[0])
    if m.root.attrs.get("pad_rows") or x.dtype.is_float or len(x.shape) != 4 or len(m.root.outputs) != 1:
        return None
    return rw.emit("max_pool", list(m.root.inputs), {**m.root.attrs, "pad_rows": 1})


def stage_windows(graph: Graph) -> Graph:
    """Mark integer convolutions to copy each output pixel's window into one run (im2col, see
    ``kiln/ir/ops/qlinear.py``), and integer 2-D max pools to read a padded copy of their
    input rows (``kiln/ir/ops/pool.py``). Only for targets that ask for it
    (``Capabilities.window_copies``: the host CPUs, whose dot products run in register tiles):
    the copies cost memory, which a CPU with megabytes of cache does not notice and a
    microcontroller's arena does."""
    if not any(n.op in ("qconv", "qconv_i32", "max_pool") for n in graph.nodes):
        return graph
    return apply_rules(graph, [(Op("qconv", single_use=False), _im2col), (Op("qconv_i32", single_use=False), _im2col),
                               (Op("max_pool", single_use=False), _pad_rows)])
