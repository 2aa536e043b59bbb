"""Indexing ops: gather, gather_elements, gather_nd, one_hot and trilu.

The index tensors of the gathers are ordinary (run-time) inputs. As in ONNX, a negative
index counts from the end of its axis; an index still out of range after that is clamped
to the axis, so a bad index can never read outside the buffer (ONNX calls it an error).
"""
from __future__ import annotations

from kiln.errors import ShapeError
from kiln.ir.compute import compute
from kiln.ir.dtype import INDEX, DType
from kiln.ir.expr import Bin, Cast, Expr, Select, idx
from kiln.ir.graph import TensorType
from kiln.ir.ops import FusionKind, register
from kiln.ir.ops.shape import static_shape, zero

INDEX_DTYPES = (DType.int32, DType.int64)


def wrap_index(v: Expr, n: int, clamp: bool = True) -> Expr:
    """Index ``v`` (any integer dtype) as INDEX, negative values counted from ``n``."""
    v = v if v.dtype is INDEX else Cast(v, INDEX)
    v = Select(v.lt(0), v + n, v)
    if clamp:
        v = Bin("min", Bin("max", v, idx(0), INDEX), idx(max(n - 1, 0)), INDEX)
    return v


def _check_indices(t: TensorType, op: str):
    if t.dtype not in INDEX_DTYPES:
        raise ShapeError(f"{op} indices have dtype {t.dtype}; expected int32 or int64")


# -- gather ------------------------------------------------------------------------------

def _gather_infer(ins, attrs):
    data, ind = static_shape(ins[0], "gather"), static_shape(ins[1], "gather")
    _check_indices(ins[1], "gather")
    axis = attrs["axis"]
    if not 0 <= axis < len(data):
        raise ShapeError(f"gather axis {axis} is out of range for data shape {data}")
    return [TensorType(data[:axis] + ind + data[axis + 1:], ins[0].dtype)]


def _gather_compute(ins, outs, attrs):
    """out[a.., j.., b..] = data[a.., indices[j..], b..]"""
    data, ind, o = ins[0], ins[1], outs[0]
    axis, q = attrs["axis"], len(ind.shape)

    def body(*i):
        k = wrap_index(ind[tuple(i[axis:axis + q])], data.shape[axis])
        return data[tuple(i[:axis]) + (k,) + tuple(i[axis + q:])]

    return [compute(o.name, o.shape, body, o.dtype)]


register("gather", FusionKind.INJECTIVE, _gather_infer, _gather_compute)


def _gather_elements_infer(ins, attrs):
    data, ind = static_shape(ins[0], "gather_elements"), static_shape(ins[1], "gather_elements")
    _check_indices(ins[1], "gather_elements")
    axis = attrs["axis"]
    if len(data) != len(ind) or not 0 <= axis < len(data):
        raise ShapeError(f"gather_elements needs data {data} and indices {ind} of equal rank "
                         f"and an axis below it; got axis {axis}")
    if any(a > b for k, (a, b) in enumerate(zip(ind, data)) if k != axis):
        raise ShapeError(f"gather_elements indices {ind} exceed data {data} off axis {axis}")
    return [TensorType(ind, ins[0].dtype)]


def _gather_elements_compute(ins, outs, attrs):
    """out[i] = data[i with axis replaced by indices[i]]"""
    data, ind, o = ins[0], ins[1], outs[0]
    axis = attrs["axis"]

    def body(*i):
        k = wrap_index(ind[i], data.shape[axis])
        return data[tuple(i[:axis]) + (k,) + tuple(i[axis + 1:])]

    return [compute(o.name, o.shape, body, o.dtype)]


register("gather_elements", FusionKind.INJECTIVE, _gather_elements_infer, _gather_elements_compute)


def _gather_nd_infer(ins, attrs):
    data, ind = static_shape(ins[0], "gather_nd"), static_shape(ins[1], "gather_nd")
    _check_indices(ins[1], "gather_nd")
    b = int(attrs.get("batch_dims", 0))
    m = ind[-1] if ind else 0
    if not ind or b >= min(len(data), len(ind)) or data[:b] != ind[:b] or b + m > len(data):
        raise ShapeError(f"gather_nd with batch_dims {b} cannot index data {data} with indices {ind}: "
                         "expected equal batch dims and indices.shape[-1] <= rank(data) - batch_dims")
    return [TensorType(ind[:-1] + data[b + m:], ins[0].dtype)]


def _gather_nd_compute(ins, outs, attrs):
    """out[batch.., j.., rest..] = data[batch.., *indices[batch.., j.., :], rest..]"""
    data, ind, o = ins[0], ins[1], outs[0]
    b, q, m = int(attrs.get("batch_dims", 0)), len(ind.shape), ind.shape[-1]

    def body(*i):
        lead = tuple(i[:q - 1])
        picked = tuple(wrap_index(ind[lead + (idx(j),)], data.shape[b + j]) for j in range(m))
        return data[tuple(i[:b]) + picked + tuple(i[q - 1:])]

    return [compute(o.name, o.shape, body, o.dtype)]


register("gather_nd", FusionKind.INJECTIVE, _gather_nd_infer, _gather_nd_compute)


# -- one_hot -----------------------------------------------------------------------------

def _one_hot_infer(ins, attrs):
    ind, values = static_shape(ins[0], "one_hot"), static_shape(ins[1], "one_hot")
    axis, depth = attrs["axis"], int(attrs["depth"])
    if values != (2,) or depth < 0 or not 0 <= axis <= len(ind):
        raise ShapeError(f"one_hot needs values of shape (2,), depth >= 0 and axis in 0..{len(ind)}; "
                         f"got values {values}, depth {depth}, axis {axis}")
    return [TensorType(ind[:axis] + (depth,) + ind[axis:], ins[1].dtype)]


def _one_hot_compute(ins, outs, attrs):
    """out[.., d, ..] = on if wrap(indices[..]) == d else off; out-of-range rows are all off."""
    ind, values, o = ins[0], ins[1], outs[0]
    axis, depth = attrs["axis"], int(attrs["depth"])

    def body(*i):
        # float indices truncate toward zero, as ONNX Runtime casts them
        k = wrap_index(ind[tuple(i[:axis]) + tuple(i[axis + 1:])], depth, clamp=False)
        return Select(k.eq(i[axis]), values[1], values[0])

    return [compute(o.name, o.shape, body, o.dtype)]


register("one_hot", FusionKind.INJECTIVE, _one_hot_infer, _one_hot_compute)


# -- trilu -------------------------------------------------------------------------------

def _trilu_infer(ins, attrs):
    if len(ins[0].shape) < 2:
        raise ShapeError(f"trilu needs a tensor of rank >= 2; got shape {tuple(ins[0].shape)}")
    return [ins[0]]


def _trilu_compute(ins, outs, attrs):
    """Keep the elements on and above (upper) or below (lower) diagonal ``k``; zero the rest."""
    x, o = ins[0], outs[0]
    k, upper = int(attrs.get("k", 0)), bool(attrs.get("upper", True))

    def body(*i):
        d = i[-1] - i[-2]
        keep = d.ge(k) if upper else d.le(k)
        return Select(keep, x[i], zero(o.dtype))

    return [compute(o.name, o.shape, body, o.dtype)]


register("trilu", FusionKind.INJECTIVE, _trilu_infer, _trilu_compute)
