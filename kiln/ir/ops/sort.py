"""Order-based ops: topk (values and indices) and hardmax.

``topk`` is a rank formulation, O(n^2) per slice but branch-free and shared by every
target: ``rank[i]`` counts the elements that beat element ``i`` (a larger value, or an equal
value at a lower index: ONNX breaks ties by the lower index), and output ``j`` of a slice
is the element whose rank is ``j``. The ranks are a stage of their own (``f"{out}__rank"``);
the values are gathered at the indices.
"""
from __future__ import annotations

from kiln.errors import ShapeError
from kiln.ir.compute import compute, rmax, rmin, rsum
from kiln.ir.dtype import INDEX
from kiln.ir.expr import Const, Select
from kiln.ir.graph import TensorType
from kiln.ir.ops import FusionKind, normalize_axis, register
from kiln.ir.ops.nn import static_shape


def _at(i, axis, k):
    """Index ``i`` with position ``k`` on ``axis``."""
    return tuple(i[:axis]) + (k,) + tuple(i[axis + 1:])


# -- topk -----------------------------------------------------------------------------------

def _topk_infer(ins, attrs):
    x = static_shape(ins[0], "topk input")
    axis = normalize_axis(int(attrs["axis"]), len(x), "topk axis")
    k = int(attrs["k"])
    if not 0 <= k <= x[axis]:
        raise ShapeError(f"topk k={k} must be in 0..{x[axis]} (the length of axis {axis} of {x})")
    shape = _at(x, axis, k)
    return [TensorType(shape, ins[0].dtype), TensorType(shape, INDEX)]


def _topk_compute(ins, outs, attrs):
    x, vals, inds = ins[0], outs[0], outs[1]
    axis = normalize_axis(int(attrs["axis"]), x.ndim, "topk axis")
    n, largest = x.shape[axis], bool(attrs.get("largest", True))
    one, nil = Const(1, INDEX), Const(0, INDEX)

    def rank_body(*i):
        me = x[i]

        def beats(r):
            other = x[_at(i, axis, r)]
            better = other.gt(me) if largest else other.lt(me)
            return Select(better.lor(other.eq(me).land(r.lt(i[axis]))), one, nil)
        return rsum(beats, n)

    rank = compute(f"{vals.name}__rank", x.shape, rank_body, INDEX, tag="reduce", inline=False)
    rk = rank.tensor

    def index_body(*j):  # exactly one element of the slice has rank j
        return rsum(lambda r: Select(rk[_at(j, axis, r)].eq(j[axis]), r, nil), n)

    def value_body(*j):
        return x[_at(j, axis, inds[j])]

    return [rank, compute(inds.name, inds.shape, index_body, INDEX, tag="reduce"),
            compute(vals.name, vals.shape, value_body, vals.dtype)]


register("topk", FusionKind.REDUCTION, _topk_infer, _topk_compute, num_outputs=2)


# -- hardmax ----------------------------------------------------------------------------------

def _hardmax_infer(ins, attrs):
    x = static_shape(ins[0], "hardmax input")
    normalize_axis(int(attrs.get("axis", -1)), len(x), "hardmax axis")
    return [ins[0]]


def _hardmax_compute(ins, outs, attrs):
    """1 at the first maximum along ``axis``, 0 elsewhere: a max stage, a first-index stage."""
    x, o = ins[0], outs[0]
    axis = normalize_axis(int(attrs.get("axis", -1)), x.ndim, "hardmax axis")
    n = x.shape[axis]
    red = _at(x.shape, axis, 1)
    mx = compute(f"{o.name}__max", red, lambda *i: rmax(lambda r: x[_at(i, axis, r)], n),
                 x.dtype, tag="reduce", inline=False)
    m = mx.tensor
    first = compute(f"{o.name}__first", red,
                    lambda *i: rmin(lambda r: Select(x[_at(i, axis, r)].eq(m[i]), r, Const(n, INDEX)), n),
                    INDEX, tag="reduce", inline=False)
    f = first.tensor
    one = Const(1.0 if o.dtype.is_float else 1, o.dtype)
    nil = Const(0.0 if o.dtype.is_float else 0, o.dtype)
    body = lambda *i: Select(f[_at(i, axis, 0)].eq(i[axis]), one, nil)  # noqa: E731
    return [mx, first, compute(o.name, o.shape, body, o.dtype)]


register("hardmax", FusionKind.REDUCTION, _hardmax_infer, _hardmax_compute)
