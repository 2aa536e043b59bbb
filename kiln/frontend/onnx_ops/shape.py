"""Converters for data-movement and indexing ops: Reshape, Flatten, Squeeze, Unsqueeze,
Transpose, Concat, Split, Slice, Expand, Tile, Pad, DepthToSpace, SpaceToDepth, Gather,
GatherElements, GatherND, OneHot, Trilu, ReverseSequence; and the ops known at compile
time: Shape, Size, Constant, ConstantOfShape, Range, EyeLike.

Reshape, Flatten, Squeeze and Unsqueeze all become the one ``reshape`` view op. Values that
fix an output shape (shapes, starts, pads, repeats ...) must be constants. Shape and Size
return constants, so the frontend folds Shape -> Gather -> Concat chains before these
converters read them. Index tensors of the gathers may be run-time inputs. The window
functions (HannWindow, HammingWindow, BlackmanWindow) of a constant size are constants too.
"""
from __future__ import annotations

import math

import numpy as np

from kiln.errors import ShapeError
from kiln.frontend.onnx_ops import converter
from kiln.ir.ops import normalize_axis
from kiln.ir.symbolic import as_dim, exact_quotient, product


# -- shared helpers ------------------------------------------------------------------------

def static_shape(ctx, name: str) -> tuple[int, ...]:
    """The static shape of value ``name``, or a clear error naming the symbolic dims."""
    shape = ctx.shape(name)
    if not all(isinstance(d, int) for d in shape):
        ctx.fail(f"input {name!r} has symbolic shape {tuple(shape)}; give its dims with input shapes")
    return tuple(int(d) for d in shape)


def ints(values) -> list[int]:
    """A list of Python ints from an attribute list or a constant array."""
    return [int(v) for v in np.asarray(values).reshape(-1)]


def axes_arg(ctx, rank: int, input_index: int, attr_before: int, what: str = "axes"):
    """Axes as an attribute (opset < ``attr_before``) or a constant input; None when absent."""
    if ctx.opset < attr_before:
        axes = ctx.attr("axes")
    else:
        axes = ctx.require_const(input_index, what) if ctx.has_input(input_index) else None
    return None if axes is None else [normalize_axis(a, rank, what) for a in ints(axes)]


def emit_reshape(ctx, x: str, shape) -> list[str]:
    """The ``reshape`` view of ``x`` (``x`` itself when the shape does not change)."""
    shape = tuple(as_dim(d) for d in shape)
    if shape == tuple(ctx.shape(x)):
        return [x]
    return ctx.emit("reshape", [x], {"shape": shape}, out_names=ctx.outputs()[:1])


# -- reshape family ---------------------------------------------------------------------------

def resolve_reshape(in_shape: tuple, spec, allowzero: bool) -> tuple[int, ...]:
    """ONNX Reshape's target: 0 copies the input dim (unless allowzero), one -1 is inferred."""
    spec = ints(spec)
    out = []
    for k, d in enumerate(spec):
        if d == 0 and not allowzero:
            if k >= len(in_shape):
                raise ShapeError(f"reshape target {tuple(spec)} copies dim {k} (a 0) that input "
                                 f"shape {in_shape} does not have")
            d = in_shape[k]
        elif d < -1:
            raise ShapeError(f"reshape target {tuple(spec)} has dim {d}; expected >= -1")
        out.append(d)
    if out.count(-1) > 1:
        raise ShapeError(f"reshape target {tuple(spec)} has more than one -1")
    if -1 in out:
        known = product(d for d in out if not (isinstance(d, int) and d == -1))
        size = product(in_shape)
        inferred = exact_quotient(size, known)
        if inferred is None:
            raise ShapeError(f"cannot reshape {in_shape} ({size} elements) to {tuple(spec)}: "
                             f"{size} is not a multiple of {known}")
        out[out.index(-1)] = inferred
    return tuple(out)


@converter("Reshape", since=1)
def _reshape(ctx, node):
    x = ctx.input(0)
    spec = ctx.attr("shape") if ctx.opset < 5 else ctx.require_const(1, "shape")
    target = resolve_reshape(tuple(ctx.shape(x)), spec, bool(ctx.attr("allowzero", 0)))
    return emit_reshape(ctx, x, target)


@converter("Flatten", since=1)
def _flatten(ctx, node):
    x = ctx.input(0)
    shape = tuple(ctx.shape(x))
    axis = int(ctx.attr("axis", 1))
    if not -len(shape) <= axis <= len(shape):
        ctx.fail(f"axis {axis} is out of range for shape {shape}; expected -{len(shape)}..{len(shape)}")
    axis = axis + len(shape) if axis < 0 else axis
    return emit_reshape(ctx, x, (product(shape[:axis]), product(shape[axis:])))


@converter("Squeeze", since=1)
def _squeeze(ctx, node):
    x = ctx.input(0)
    shape = tuple(ctx.shape(x))
    axes = axes_arg(ctx, len(shape), 1, 13)
    if axes is None:
        axes = [k for k, n in enumerate(shape) if n == 1]
    bad = [a for a in axes if shape[a] != 1]
    if bad:
        ctx.fail(f"cannot squeeze axes {bad} of shape {shape}: their dims are not 1")
    return emit_reshape(ctx, x, [n for k, n in enumerate(shape) if k not in axes])


@converter("Unsqueeze", since=1)
def _unsqueeze(ctx, node):
    x = ctx.input(0)
    shape = tuple(ctx.shape(x))
    raw = ctx.attr("axes") if ctx.opset < 13 else ctx.require_const(1, "axes")
    rank = len(shape) + len(ints(raw))
    axes = sorted(normalize_axis(a, rank, "axes") for a in ints(raw))
    if len(set(axes)) != len(axes):
        ctx.fail(f"axes {ints(raw)} repeat an axis")
    rest = iter(shape)
    return emit_reshape(ctx, x, [1 if k in axes else next(rest) for k in range(rank)])


# -- transpose, concat, split ------------------------------------------------------------------

@converter("Transpose", since=1)
def _transpose(ctx, node):
    x = ctx.input(0)
    rank = len(ctx.shape(x))
    perm = ints(ctx.attr("perm", list(range(rank))[::-1]))
    if sorted(perm) != list(range(rank)):
        ctx.fail(f"perm {perm} is not a permutation of 0..{rank - 1} for input shape {tuple(ctx.shape(x))}")
    if perm == list(range(rank)):
        return [x]
    return ctx.emit("transpose", [x], {"perm": tuple(perm)}, out_names=ctx.outputs())


@converter("Concat", since=1)
def _concat(ctx, node):
    names = [n for n in ctx.inputs() if n]
    rank = len(ctx.shape(names[0]))
    axis = normalize_axis(int(ctx.attr("axis", 1)), rank)
    if len(names) == 1:
        return [names[0]]
    return ctx.emit("concat", names, {"axis": axis}, out_names=ctx.outputs())


def _split_sizes(ctx, n: int, count: int) -> list[int]:
    """Sizes from the split input/attribute, else an equal split into ``count`` parts."""
    if ctx.has_input(1):
        return ints(ctx.require_const(1, "split"))
    if ctx.opset < 13 and ctx.attr("split") is not None:
        return ints(ctx.attr("split"))
    if ctx.opset >= 18 and ctx.attr("num_outputs") is not None:
        count = int(ctx.attr("num_outputs"))
        chunk = -(-n // count)  # ONNX 18: the last chunk may be smaller
        return [min(chunk, n - k * chunk) for k in range(count)]
    if n % count:
        ctx.fail(f"cannot split dim {n} into {count} equal parts; give the split sizes")
    return [n // count] * count


@converter("Split", since=1)
def _split(ctx, node):
    x = ctx.input(0)
    shape = static_shape(ctx, x)
    axis = normalize_axis(int(ctx.attr("axis", 0)), len(shape))
    outs = ctx.outputs()
    sizes = _split_sizes(ctx, shape[axis], len(outs))
    if len(sizes) != len(outs):
        ctx.fail(f"split sizes {sizes} give {len(sizes)} parts for {len(outs)} outputs")
    if len(outs) == 1 and sizes == [shape[axis]]:
        return [x]
    names = [o or ctx.fresh("split") for o in outs]
    return ctx.emit("split", [x], {"axis": axis, "sizes": tuple(sizes)}, out_names=names,
                    num_outputs=len(outs))


# -- slice -------------------------------------------------------------------------------------

def take_range(ctx, x: str, axis: int, start: int, stop: int) -> str:
    """``x[..., start:stop, ...]`` on ``axis``: one ``slice`` (``x`` itself when that is all of it)."""
    shape = ctx.shape(x)
    if start == 0 and stop == shape[axis]:
        return x
    starts = tuple(start if k == axis else 0 for k in range(len(shape)))
    ends = tuple(stop if k == axis else n for k, n in enumerate(shape))
    return ctx.emit("slice", [x], {"starts": starts, "ends": ends, "steps": (1,) * len(shape)})[0]


def normalize_slice(shape, starts, ends, axes, steps):
    """Full-rank (starts, ends, steps) clamped as ONNX Slice does."""
    full = [[0, n, 1] for n in shape]
    for b, e, a, s in zip(starts, ends, axes, steps):
        n = shape[a]
        if s == 0:
            raise ShapeError(f"slice step for axis {a} is 0")
        b = b + n if b < 0 else b
        e = e + n if e < 0 else e
        if s > 0:
            b, e = min(max(b, 0), n), min(max(e, 0), n)
        else:
            b, e = min(max(b, 0), n - 1), min(max(e, -1), n - 1)
        full[a] = [b, e, s]
    return tuple(tuple(col) for col in zip(*full)) if full else ((), (), ())


@converter("Slice", since=1)
def _slice(ctx, node):
    x = ctx.input(0)
    shape = static_shape(ctx, x)
    if ctx.opset < 10:
        starts, ends = ints(ctx.attr("starts")), ints(ctx.attr("ends"))
        axes = ctx.attr("axes")
        steps = None
    else:
        starts, ends = ints(ctx.require_const(1, "starts")), ints(ctx.require_const(2, "ends"))
        axes = ctx.require_const(3, "axes") if ctx.has_input(3) else None
        steps = ctx.require_const(4, "steps") if ctx.has_input(4) else None
    axes = list(range(len(starts))) if axes is None else ints(axes)
    axes = [normalize_axis(a, len(shape), "axes") for a in axes]
    steps = [1] * len(starts) if steps is None else ints(steps)
    if not len(starts) == len(ends) == len(axes) == len(steps) or len(set(axes)) != len(axes):
        ctx.fail(f"starts {starts}, ends {ends}, axes {axes}, steps {steps} must have equal "
                 "lengths and distinct axes")
    b, e, s = normalize_slice(shape, starts, ends, axes, steps)
    if s == (1,) * len(shape) and b == (0,) * len(shape) and e == shape:
        return [x]
    return ctx.emit("slice", [x], {"starts": b, "ends": e, "steps": s}, out_names=ctx.outputs())


# -- expand, tile, pad -------------------------------------------------------------------------

@converter("Expand", since=8)
def _expand(ctx, node):
    x = ctx.input(0)
    shape = ints(ctx.require_const(1, "shape"))
    return ctx.emit("expand", [x], {"shape": tuple(shape)}, out_names=ctx.outputs())


@converter("Tile", since=6)
def _tile(ctx, node):
    x = ctx.input(0)
    reps = ints(ctx.require_const(1, "repeats"))
    if all(r == 1 for r in reps) and len(reps) == len(ctx.shape(x)):
        return [x]
    return ctx.emit("tile", [x], {"repeats": tuple(reps)}, out_names=ctx.outputs())


def _pad_args(ctx, rank: int):
    """(pads, value) in full-rank ONNX layout (all begins, then all ends)."""
    if ctx.opset < 11:
        return ints(ctx.attr("pads")), float(ctx.attr("value", 0.0))
    pads = ints(ctx.require_const(1, "pads"))
    value = ctx.require_const(2, "constant_value").reshape(-1)[0].item() if ctx.has_input(2) else 0
    axes = axes_arg(ctx, rank, 3, 18) if ctx.opset >= 18 else None
    if axes is not None:
        if len(pads) != 2 * len(axes):
            ctx.fail(f"pads {pads} must hold 2 values per axis of {axes}")
        full = [0] * (2 * rank)
        for k, a in enumerate(axes):
            full[a], full[a + rank] = pads[k], pads[k + len(axes)]
        pads = full
    return pads, value


@converter("Pad", since=2)
def _pad(ctx, node):
    x = ctx.input(0)
    rank = len(static_shape(ctx, x))
    pads, value = _pad_args(ctx, rank)
    if len(pads) != 2 * rank:
        ctx.fail(f"pads {pads} must hold {2 * rank} values for an input of rank {rank}")
    if not any(pads):
        return [x]
    attrs = {"pads": tuple(pads), "mode": ctx.attr("mode", "constant"), "value": value}
    return ctx.emit("pad", [x], attrs, out_names=ctx.outputs())


# -- depth_to_space, space_to_depth ------------------------------------------------------------

@converter("DepthToSpace", since=1)
def _depth_to_space(ctx, node):
    attrs = {"blocksize": int(ctx.attr("blocksize")), "mode": ctx.attr("mode", "DCR")}
    return ctx.emit("depth_to_space", [ctx.input(0)], attrs, out_names=ctx.outputs())


@converter("SpaceToDepth", since=1)
def _space_to_depth(ctx, node):
    attrs = {"blocksize": int(ctx.attr("blocksize")), "mode": ctx.attr("mode", "DCR")}
    return ctx.emit("space_to_depth", [ctx.input(0)], attrs, out_names=ctx.outputs())


# -- gathers, one_hot, trilu ------------------------------------------------------------------

def _axis(ctx, rank: int, default: int = 0) -> int:
    return normalize_axis(int(ctx.attr("axis", default)), rank)


@converter("Gather", since=1)
def _gather(ctx, node):
    data, ind = ctx.input(0), ctx.input(1)
    axis = _axis(ctx, len(ctx.shape(data)))
    return ctx.emit("gather", [data, ind], {"axis": axis}, out_names=ctx.outputs())


@converter("GatherElements", since=11)
def _gather_elements(ctx, node):
    data, ind = ctx.input(0), ctx.input(1)
    axis = _axis(ctx, len(ctx.shape(data)))
    return ctx.emit("gather_elements", [data, ind], {"axis": axis}, out_names=ctx.outputs())


@converter("GatherND", since=11)
def _gather_nd(ctx, node):
    attrs = {"batch_dims": int(ctx.attr("batch_dims", 0))}
    return ctx.emit("gather_nd", [ctx.input(0), ctx.input(1)], attrs, out_names=ctx.outputs())


@converter("OneHot", since=9)
def _one_hot(ctx, node):
    ind = ctx.input(0)
    depth = ctx.require_const(1, "depth").reshape(-1)[0]
    rank = len(static_shape(ctx, ind)) + 1
    attrs = {"axis": normalize_axis(int(ctx.attr("axis", -1)), rank), "depth": int(depth)}
    return ctx.emit("one_hot", [ind, ctx.input(2)], attrs, out_names=ctx.outputs())


@converter("Trilu", since=14)
def _trilu(ctx, node):
    k = ints(ctx.require_const(1, "k"))[0] if ctx.has_input(1) else 0
    attrs = {"upper": bool(ctx.attr("upper", 1)), "k": k}
    return ctx.emit("trilu", [ctx.input(0)], attrs, out_names=ctx.outputs())


# -- values known at compile time: each converter returns a constant ---------------------------

@converter("Shape", since=1)
def _shape(ctx, node):
    """The static shape as int64; opset 15 slices it with start/end like Python."""
    shape = static_shape(ctx, ctx.input(0))
    start, end = int(ctx.attr("start", 0)), ctx.attr("end")
    sliced = shape[start:] if end is None else shape[start:int(end)]
    return [ctx.add_const(np.array(sliced, dtype=np.int64), "shape")]


@converter("Size", since=1)
def _size(ctx, node):
    shape = static_shape(ctx, ctx.input(0))
    return [ctx.add_const(np.array(math.prod(shape), dtype=np.int64), "size")]


_CONSTANT_ATTRS = {
    "value_float": np.float32, "value_floats": np.float32,
    "value_int": np.int64, "value_ints": np.int64,
}


@converter("Constant", since=1)
def _constant(ctx, node):
    value = ctx.attr("value")
    if value is not None:
        return [ctx.add_const(np.asarray(value), "const")]
    for name, dtype in _CONSTANT_ATTRS.items():
        v = ctx.attr(name)
        if v is not None:
            return [ctx.add_const(np.asarray(v, dtype=dtype), "const")]
    kinds = [a.name for a in node.attribute]
    ctx.unsupported(f"constant kind {kinds} is not supported; expected value, value_float(s) or value_int(s)")


@converter("ConstantOfShape", since=9)
def _constant_of_shape(ctx, node):
    shape = ints(ctx.require_const(0, "shape"))
    value = ctx.attr("value")
    value = np.zeros(1, np.float32) if value is None else np.asarray(value).reshape(-1)
    return [ctx.add_const(np.full(shape, value[0], dtype=value.dtype), "fill")]


@converter("Range", since=11)
def _range(ctx, node):
    """start + k * delta for k < max(ceil((limit - start) / delta), 0), in the inputs' dtype."""
    start, limit, delta = (ctx.require_const(i, what).reshape(()) for i, what in
                           enumerate(("start", "limit", "delta")))
    dtype = start.dtype
    if delta == 0:
        ctx.fail("delta is 0")
    if np.issubdtype(dtype, np.integer):
        n = max(-(-(int(limit) - int(start)) // int(delta)), 0)
    else:
        n = max(math.ceil((float(limit) - float(start)) / float(delta)), 0)
    values = start + np.arange(n, dtype=dtype) * delta
    return [ctx.add_const(values.astype(dtype), "range")]


@converter("EyeLike", since=9)
def _eye_like(ctx, node):
    from kiln.frontend.onnx import onnx_dtype

    x = ctx.input(0)
    shape = static_shape(ctx, x)
    if len(shape) != 2:
        ctx.fail(f"input must be 2-D; got shape {shape}")
    dtype = onnx_dtype(ctx.attr("dtype")).np if ctx.attr("dtype") is not None else ctx.type(x).dtype.np
    return [ctx.add_const(np.eye(*shape, k=int(ctx.attr("k", 0)), dtype=dtype), "eye")]


# Window functions of a constant size are constants (ONNX's reference formulas, in float64).
_WINDOWS = {
    "HannWindow": lambda n, m: np.sin(n * np.pi / m) ** 2,
    "HammingWindow": lambda n, m: 25 / 46 - np.cos(n * np.pi * 2 / m) * (21 / 46),
    "BlackmanWindow": lambda n, m: 0.42 - 0.5 * np.cos(n * np.pi * 2 / m) + 0.08 * np.cos(n * np.pi * 4 / m),
}


def _window(formula):
    def convert(ctx, node):
        from kiln.frontend.onnx import onnx_dtype

        size = ints(ctx.require_const(0, "size"))[0]
        dtype = onnx_dtype(int(ctx.attr("output_datatype", 1))).np
        span = size if int(ctx.attr("periodic", 1)) else size - 1
        with np.errstate(all="ignore"):  # size 1, symmetric: 0/0, as the reference computes it
            values = formula(np.arange(size, dtype=np.float64), span)
        return [ctx.add_const(values.astype(dtype), "window")]
    return convert


for _op, _formula in _WINDOWS.items():
    converter(_op, since=17)(_window(_formula))


@converter("ReverseSequence", since=10)
def _reverse_sequence(ctx, node):
    """out[b, t] = x[b, L[b] - 1 - t] for t < L[b], else x[b, t]: a gather_elements along the
    time axis whose index is built from the (possibly run-time) lengths L."""
    x, lens = ctx.input(0), ctx.input(1)
    shape = static_shape(ctx, x)
    batch_axis, time_axis = int(ctx.attr("batch_axis", 1)), int(ctx.attr("time_axis", 0))
    if sorted((batch_axis, time_axis)) != [0, 1] or len(shape) < 2:
        ctx.fail(f"batch_axis {batch_axis} and time_axis {time_axis} must be 0 and 1 of an input "
                 f"of rank >= 2; got shape {shape}")
    along = lambda axis, n: tuple(n if k == axis else 1 for k in range(len(shape)))  # noqa: E731
    steps = shape[time_axis]
    t = ctx.add_const(np.arange(steps, dtype=np.int64).reshape(along(time_axis, steps)), "rs_t")
    if ctx.type(lens).dtype.value != "int64":
        lens = ctx.emit("cast", [lens], {"to": "int64"})[0]
    lens = ctx.emit("reshape", [lens], {"shape": along(batch_axis, shape[batch_axis])})[0]
    one = ctx.add_const(np.asarray(1, np.int64), "rs_one")
    flipped = ctx.emit("sub", [ctx.emit("sub", [lens, one])[0], t])[0]
    index = ctx.emit("where", [ctx.emit("lt", [t, lens])[0], flipped, t])[0]
    index = ctx.emit("expand", [index], {"shape": shape})[0]
    return ctx.emit("gather_elements", [x, index], {"axis": time_axis}, out_names=ctx.outputs())
