"""Converters for data-movement and indexing aten ops (views, permutes, concat/split, slices,
gathers, padding, repeat, flip, tril/triu) and for the ops that create tensors (full,
full_like, arange, scalar_tensor, empty).

Every view (view, squeeze, unsqueeze; reshape and flatten arrive as views) becomes the one
kiln ``reshape`` to the shape torch recorded for the node. Tensor factories become constants
of the recorded shape and dtype, so masks and position ids built from them fold away.
"""
from __future__ import annotations

import numpy as np

from kiln.frontend.onnx_ops.shape import emit_reshape, normalize_slice
from kiln.frontend.torch_ops import aten, dims, prod
from kiln.ir.dtype import DType
from kiln.ir.ops import normalize_axis

_INT64_MAX = 2 ** 63 - 1


def _axis(ctx, x: str, dim) -> int:
    return normalize_axis(int(dim), max(len(ctx.shape(x)), 1), "dim")


# -- views ----------------------------------------------------------------------------------------

@aten("view.default", "squeeze.dims", "unsqueeze.default")
def _view(ctx, a):
    return emit_reshape(ctx, ctx.value(a["self"]), ctx.out_type().shape)[0]


@aten("permute.default")
def _permute(ctx, a):
    x = ctx.value(a["self"])
    perm = tuple(_axis(ctx, x, d) for d in a["dims"])
    if perm == tuple(range(len(perm))):
        return x
    return ctx.emit("transpose", [x], {"perm": perm})[0]


@aten("expand.default")
def _expand(ctx, a):
    x, shape = ctx.value(a["self"]), ctx.out_type().shape
    if tuple(ctx.shape(x)) == shape:
        return x
    return ctx.emit("expand", [x], {"shape": shape})[0]


# -- concat and split -----------------------------------------------------------------------------------

@aten("cat.default")
def _cat(ctx, a):
    out = ctx.out_type()
    # torch still accepts legacy empty 1-D tensors of shape (0,) beside tensors of any rank
    names = [ctx.cast(ctx.value(t), out.dtype) for t in a["tensors"]
             if len(ctx.meta(t).shape) == len(out.shape) or ctx.meta(t).numel() > 0]
    if len(names) == 1:
        return names[0]
    return ctx.emit("concat", names, {"axis": _axis(ctx, names[0], a["dim"])})[0]


@aten("split_with_sizes.default")
def _split_with_sizes(ctx, a):
    """(chunk and split with one size arrive here too, their sizes resolved by torch)"""
    x = ctx.value(a["self"])
    sizes = tuple(int(s) for s in a["split_sizes"])
    if len(sizes) == 1:
        return [x]
    return ctx.emit("split", [x], {"axis": _axis(ctx, x, a["dim"]), "sizes": sizes}, num_outputs=len(sizes))


# -- slicing and indexing -------------------------------------------------------------------------------

def _slice(ctx, x: str, axes, starts, ends, steps) -> str:
    shape = tuple(ctx.shape(x))
    b, e, s = normalize_slice(shape, starts, ends, axes, steps)
    if s == (1,) * len(shape) and b == (0,) * len(shape) and e == shape:
        return x
    return ctx.emit("slice", [x], {"starts": b, "ends": e, "steps": s})[0]


@aten("slice.Tensor")
def _slice_tensor(ctx, a):
    x = ctx.value(a["self"])
    start = 0 if a["start"] is None else int(a["start"])
    end = _INT64_MAX if a["end"] is None else int(a["end"])
    return _slice(ctx, x, [_axis(ctx, x, a["dim"])], [start], [end], [int(a["step"])])


@aten("select.int")
def _select(ctx, a):
    """One index of one axis: a slice of length 1, then a view without that axis."""
    x = ctx.value(a["self"])
    axis, i = _axis(ctx, x, a["dim"]), int(a["index"])
    i = i + ctx.shape(x)[axis] if i < 0 else i
    return emit_reshape(ctx, _slice(ctx, x, [axis], [i], [i + 1], [1]), ctx.out_type().shape)[0]


@aten("flip.default")
def _flip(ctx, a):
    x = ctx.value(a["self"])
    axes = dims(a["dims"], len(ctx.shape(x))) if a["dims"] else ()
    if not axes:
        return x
    return _slice(ctx, x, axes, [-1] * len(axes), [-_INT64_MAX] * len(axes), [-1] * len(axes))


@aten("index.Tensor")
def _index(ctx, a):
    """``x[:, i]`` and ``x[i, j]``: integer index tensors become one gather.

    The indexed axes are merged into one (a view; non-adjacent ones are first permuted to
    the front, where torch puts their result) and the index tensors combine, broadcast,
    into row-major positions on the merged axis. Index tensors derived from ``arange``
    (as decomposed interpolations produce) are constants, so the positions fold.
    """
    x = ctx.value(a["self"])
    indices = list(a["indices"]) + [None] * (len(ctx.shape(x)) - len(a["indices"]))
    given = [k for k, t in enumerate(indices) if t is not None]
    names = [ctx.value(indices[k]) for k in given]
    if any(not ctx.type(n).dtype.is_int for n in names):
        ctx.unsupported("boolean mask indexing (its result shape depends on the data)")
    if given != list(range(given[0], given[-1] + 1)):  # separated by a slice: move to the front
        rest = [k for k in range(len(indices)) if k not in given]
        x = ctx.emit("transpose", [x], {"perm": tuple(given + rest)})[0]
        given = list(range(len(given)))
    shape = tuple(ctx.shape(x))
    first, last = given[0], given[-1] + 1
    if len(given) > 1:
        x = emit_reshape(ctx, x, shape[:first] + (prod(shape[first:last]),) + shape[last:])[0]
    position = _flat_position(ctx, names, shape[first:last])
    return ctx.emit("gather", [x, position], {"axis": first})[0]


def _flat_position(ctx, names: list[str], sizes) -> str:
    """Row-major position of the index tuple (negative indices counted from the end)."""
    if len(names) == 1:
        return names[0]  # gather wraps negative indices itself
    total, stride = None, prod(sizes)
    for name, n in zip(names, sizes):
        stride //= n
        i = ctx.cast(name, DType.int64)
        negative = ctx.emit("lt", [i, ctx.scalar(0, DType.int64)])[0]
        i = ctx.emit("where", [negative, ctx.emit("add", [i, ctx.scalar(n, DType.int64)])[0], i])[0]
        if stride != 1:
            i = ctx.emit("mul", [i, ctx.scalar(stride, DType.int64)])[0]
        total = i if total is None else ctx.emit("add", [total, i])[0]
    return total


@aten("index_select.default")
def _index_select(ctx, a):
    x = ctx.value(a["self"])
    ind = ctx.value(a["index"])
    if len(ctx.shape(ind)) == 0:  # a 0-d index selects like a 1-element one
        ind = ctx.emit("reshape", [ind], {"shape": (1,)})[0]
    return ctx.emit("gather", [x, ind], {"axis": _axis(ctx, x, a["dim"])})[0]


@aten("gather.default")
def _gather(ctx, a):
    x = ctx.value(a["self"])
    return ctx.emit("gather_elements", [x, ctx.value(a["index"])], {"axis": _axis(ctx, x, a["dim"])})[0]


# -- padding, repeat, tril/triu ----------------------------------------------------------------------------

def _pads(ctx, x: str, pad) -> tuple[int, ...]:
    """torch's (left, right) pairs from the last dim backwards -> ONNX (begins..., ends...)."""
    rank = len(ctx.shape(x))
    pad = [int(p) for p in pad]
    if len(pad) % 2 or len(pad) // 2 > rank:
        ctx.fail(f"pad {pad} must hold (before, after) pairs for at most {rank} dims")
    begins, ends = [0] * rank, [0] * rank
    for k in range(len(pad) // 2):
        begins[rank - 1 - k], ends[rank - 1 - k] = pad[2 * k], pad[2 * k + 1]
    return tuple(begins + ends)


@aten("constant_pad_nd.default")
def _constant_pad(ctx, a):
    x = ctx.value(a["self"])
    pads = _pads(ctx, x, a["pad"])
    if not any(pads):
        return x
    return ctx.emit("pad", [x], {"pads": pads, "mode": "constant", "value": a["value"]})[0]


def _mode_pad(mode: str):
    def convert(ctx, a):
        x = ctx.value(a["self"])
        return ctx.emit("pad", [x], {"pads": _pads(ctx, x, a["padding"]), "mode": mode})[0]
    return convert


aten("reflection_pad1d.default", "reflection_pad2d.default", "reflection_pad3d.default",
     preserve=True)(_mode_pad("reflect"))
aten("replication_pad1d.default", "replication_pad2d.default", "replication_pad3d.default",
     preserve=True)(_mode_pad("edge"))


@aten("repeat.default")
def _repeat(ctx, a):
    x = ctx.value(a["self"])
    reps = [int(r) for r in a["repeats"]]
    shape = tuple(ctx.shape(x))
    if len(reps) > len(shape):  # extra repeats add leading dims
        shape = (1,) * (len(reps) - len(shape)) + shape
        x = emit_reshape(ctx, x, shape)[0]
    if all(r == 1 for r in reps):
        return x
    return ctx.emit("tile", [x], {"repeats": tuple(reps)})[0]


def _trilu(upper: bool):
    def convert(ctx, a):
        return ctx.emit("trilu", [ctx.value(a["self"])], {"upper": upper, "k": int(a["diagonal"])})[0]
    return convert


aten("tril.default", preserve=True)(_trilu(False))
aten("triu.default", preserve=True)(_trilu(True))


# -- tensor factories: constants of the recorded shape and dtype ----------------------------------------

def _filled(ctx, value) -> str:
    out = ctx.out_type()
    return ctx.add_const(np.full(out.shape, value, dtype=out.dtype.np), "fill")


@aten("full.default", "full_like.default")
def _full(ctx, a):
    return _filled(ctx, a["fill_value"])


@aten("empty.memory_format", "empty_strided.default", "new_empty_strided.default")
def _empty(ctx, a):
    return _filled(ctx, 0)  # empty tensors: any contents are correct, zeros are reproducible


@aten("scalar_tensor.default")
def _scalar_tensor(ctx, a):
    return _filled(ctx, a["s"])


@aten("arange.start_step")
def _arange(ctx, a):
    """start + k * step for the recorded length, computed in float64 and cast (as torch)."""
    out = ctx.out_type()
    start, step = a["start"], a["step"]
    values = float(start) + np.arange(out.shape[0], dtype=np.float64) * float(step)
    if not out.dtype.is_float:
        values = int(start) + np.arange(out.shape[0], dtype=np.int64) * int(step)
    return ctx.add_const(values.astype(out.dtype.np), "arange")


# -- bookkeeping ops that compute nothing ----------------------------------------------------------------

@aten("_assert_tensor_metadata.default", "_assert_scalar.default", "_assert_async.msg",
      "_assert_async.default", "sym_constrain_range.default", "sym_constrain_range_for_size.default")
def _no_op(ctx, a):
    return None
