"""Scatters: scatter_elements and scatter_nd, with ONNX's reductions (none/add/mul/max/min), and
tensor_scatter (a KV-cache update).

A scatter is written from the output's side so it stays a pure compute definition: each
output element reduces over the updates whose index targets it (O(outputs x updates on the
scattered axes), fine for the sizes ONNX models scatter). For ``reduction="none"`` a first
stage (``f"{out}__src"``) finds the *last* update that targets the element (later updates
overwrite earlier ones, as in the ONNX reference) and the output reads it, or keeps ``data``.
Negative indices count from the end of their axis; a target outside the data is never hit.
"""
from __future__ import annotations

from kiln.errors import ShapeError
from kiln.ir.compute import compute, reduce_init, rmax, rmin, rprod, rsum
from kiln.ir.dtype import INDEX, DType
from kiln.ir.expr import Bin, Cast, Const, Select, idx
from kiln.ir.ops import FusionKind, register
from kiln.ir.ops.indexing import wrap_index
from kiln.ir.ops.nn import conj, static_shape

REDUCTIONS = ("none", "add", "mul", "max", "min")
_REDUCE = {"add": (rsum, "sum", "add"), "mul": (rprod, "prod", "mul"),
           "max": (rmax, "max", "max"), "min": (rmin, "min", "min")}


def _check(ins, attrs, what):
    if attrs.get("reduction", "none") not in REDUCTIONS:
        raise ShapeError(f"{what} reduction {attrs.get('reduction')!r} is not one of {REDUCTIONS}")
    if ins[1].dtype not in (DType.int32, DType.int64):
        raise ShapeError(f"{what} indices have dtype {ins[1].dtype}; expected int32 or int64")
    if ins[2].dtype != ins[0].dtype:
        raise ShapeError(f"{what} updates have dtype {ins[2].dtype}; expected the data dtype {ins[0].dtype}")


def _combine(data_v, hits, reduction: str, dtype: DType):
    """``data`` combined with the reduction of the updates that hit it.

    The updates that miss contribute the identity of add/mul, or ``data`` itself for
    max/min (so no extreme-value literal is needed).
    """
    reducer, kind, op = _REDUCE[reduction]
    ident = Const(reduce_init(kind, dtype), dtype) if op in ("add", "mul") else data_v
    return Bin(op, data_v, hits(reducer, ident), dtype)


def _last_writer(name, shape, match, extents):
    """Stage: the largest linear update position ``j`` with ``match(out_index, j)``, else -1."""
    strides, s = [], 1
    for n in reversed(extents):
        strides.insert(0, s)
        s *= n

    def body(*i):
        def pos(*r):
            lin = None
            for v, st in zip(r, strides):
                t = v if st == 1 else v * st
                lin = t if lin is None else lin + t
            return Select(match(i, r), lin, Const(-1, INDEX))
        return rmax(pos, extents)

    return compute(name, shape, body, INDEX, tag="reduce", inline=False), strides


# -- scatter_elements -----------------------------------------------------------------------------

def _scatter_elements_infer(ins, attrs):
    data = static_shape(ins[0], "scatter_elements data")
    ind = static_shape(ins[1], "scatter_elements indices")
    upd = static_shape(ins[2], "scatter_elements updates")
    _check(ins, attrs, "scatter_elements")
    axis = int(attrs["axis"])
    if ind != upd or len(ind) != len(data) or not 0 <= axis < len(data):
        raise ShapeError(f"scatter_elements needs indices {ind} and updates {upd} of one shape and the "
                         f"rank of data {data}, and axis {axis} in range")
    if any(a > b for k, (a, b) in enumerate(zip(ind, data)) if k != axis):
        raise ShapeError(f"scatter_elements indices {ind} exceed data {data} off axis {axis}")
    return [ins[0]]


def _scatter_elements_compute(ins, outs, attrs):
    data, ind, upd, o = ins[0], ins[1], ins[2], outs[0]
    axis, reduction = int(attrs["axis"]), attrs.get("reduction", "none")
    m = ind.shape[axis]

    def at(i, r):
        return tuple(i[:axis]) + (r,) + tuple(i[axis + 1:])

    def inside(i):  # the output element's off-axis position exists in the updates
        return conj([i[d].lt(n) for d, n in enumerate(ind.shape) if d != axis and n < data.shape[d]])

    def match(i, r):
        hit = wrap_index(ind[at(i, r[0])], data.shape[axis], clamp=False).eq(i[axis])
        cond = inside(i)
        return hit if cond is None else cond.land(hit)  # '&&': no index read off the updates

    if reduction == "none":
        src, _ = _last_writer(f"{o.name}__src", o.shape, match, (m,))
        s = src.tensor

        def body(*i):
            return Select(s[i].ge(0), upd[at(i, s[i])], data[i])
        return [src, compute(o.name, o.shape, body, o.dtype)]

    def body(*i):
        hits = lambda red, ident: red(lambda r: Select(match(i, (r,)), upd[at(i, r)], ident), m)  # noqa: E731
        return _combine(data[i], hits, reduction, o.dtype)

    return [compute(o.name, o.shape, body, o.dtype, tag="reduce")]


register("scatter_elements", FusionKind.REDUCTION, _scatter_elements_infer, _scatter_elements_compute)


# -- scatter_nd ------------------------------------------------------------------------------------

def _scatter_nd_infer(ins, attrs):
    data = static_shape(ins[0], "scatter_nd data")
    ind = static_shape(ins[1], "scatter_nd indices")
    upd = static_shape(ins[2], "scatter_nd updates")
    _check(ins, attrs, "scatter_nd")
    k = ind[-1] if ind else 0
    if not ind or k > len(data) or upd != ind[:-1] + data[k:]:
        raise ShapeError(f"scatter_nd updates must have shape indices.shape[:-1] + data.shape[k:] "
                         f"= {ind[:-1] + data[k:] if ind else '?'}; got data {data}, indices {ind}, "
                         f"updates {upd}")
    return [ins[0]]


def _scatter_nd_compute(ins, outs, attrs):
    """out[head, tail] reduces updates[j, tail] over the j with indices[j, :] == head."""
    data, ind, upd, o = ins[0], ins[1], ins[2], outs[0]
    reduction = attrs.get("reduction", "none")
    k = ind.shape[-1]
    extents = ind.shape[:-1]

    def match(i, r):
        conds = [wrap_index(ind[tuple(r) + (idx(d),)], data.shape[d], clamp=False).eq(i[d]) for d in range(k)]
        return conj(conds) if conds else Const(True, DType.bool)

    if reduction == "none":
        src, strides = _last_writer(f"{o.name}__src", o.shape, match, extents)
        s = src.tensor

        def body(*i):
            j = tuple((s[i] // st) % n for st, n in zip(strides, extents))
            return Select(s[i].ge(0), upd[j + tuple(i[k:])], data[i])
        return [src, compute(o.name, o.shape, body, o.dtype)]

    def body(*i):
        hits = lambda red, ident: red(  # noqa: E731
            lambda *r: Select(match(i, r), upd[tuple(r) + tuple(i[k:])], ident), extents)
        return _combine(data[i], hits, reduction, o.dtype)

    return [compute(o.name, o.shape, body, o.dtype, tag="reduce")]


register("scatter_nd", FusionKind.REDUCTION, _scatter_nd_infer, _scatter_nd_compute)


# -- tensor_scatter (a KV-cache update) ------------------------------------------------------------
# ONNX TensorScatter (opset 24): ``update`` written into ``past`` along ``axis`` from each batch
# row's write index on. From the output's side: position s of the axis reads the update at
# s - start (mod the axis length when circular) if that lies in the update, else ``past``.
# A linear write index past max_sequence_length - sequence_length (invalid in ONNX; ONNX
# Runtime fails) drops the part of the update that would fall off the cache.

def _tensor_scatter_infer(ins, attrs):
    past = static_shape(ins[0], "tensor_scatter past_cache")
    upd = static_shape(ins[1], "tensor_scatter update")
    axis = int(attrs["axis"])
    if len(upd) != len(past) or not 1 <= axis < len(past):
        raise ShapeError(f"tensor_scatter needs update {upd} of the rank of past_cache {past} and an axis "
                         f"after the batch axis; got axis {axis}")
    if any(a != b for k, (a, b) in enumerate(zip(upd, past)) if k != axis) or upd[axis] > past[axis]:
        raise ShapeError(f"tensor_scatter update {upd} must match past_cache {past} off axis {axis} and be "
                         f"no longer on it")
    if ins[1].dtype != ins[0].dtype:
        raise ShapeError(f"tensor_scatter update has dtype {ins[1].dtype}; expected {ins[0].dtype}")
    if len(ins) > 2:
        w = static_shape(ins[2], "tensor_scatter write_indices")
        if w != (past[0],) or ins[2].dtype not in (DType.int32, DType.int64):
            raise ShapeError(f"tensor_scatter write_indices must be int64 of shape ({past[0]},) (one per batch "
                             f"row); got {ins[2].dtype} {w}")
    if attrs.get("mode", "linear") not in ("linear", "circular"):
        raise ShapeError(f"tensor_scatter mode {attrs.get('mode')!r} is not 'linear' or 'circular'")
    return [ins[0]]


def _tensor_scatter_compute(ins, outs, attrs):
    past, upd, o = ins[0], ins[1], outs[0]
    write = ins[2] if len(ins) > 2 else None
    axis, circular = int(attrs["axis"]), attrs.get("mode", "linear") == "circular"
    length, seq = past.shape[axis], upd.shape[axis]

    def body(*i):
        start = Cast(write[(i[0],)], INDEX) if write is not None else idx(0)
        rel = i[axis] - start
        if circular:
            rel = Bin("mod", rel, idx(length), INDEX)  # floor modulo: never negative
        hit = rel.ge(0).land(rel.lt(seq))
        clamped = Bin("min", Bin("max", rel, idx(0), INDEX), idx(seq - 1), INDEX)  # no read off the update
        at = tuple(i[:axis]) + (clamped,) + tuple(i[axis + 1:])
        return Select(hit, upd[at], past[i])

    return [compute(o.name, o.shape, body, o.dtype)]


register("tensor_scatter", FusionKind.INJECTIVE, _tensor_scatter_infer, _tensor_scatter_compute)
