"""Data-movement ops: reshape (a view), transpose, concat, split, slice, expand, tile, pad,
depth_to_space and space_to_depth. (Gathers and friends live in ``indexing``.)

Every op here is injective: each output element reads one input element at an index
computed from the output index. Attributes are static Python ints and tuples, already
normalized by the frontend (non-negative axes, full-rank slice parameters).
"""
from __future__ import annotations

from kiln.errors import ShapeError
from kiln.ir.compute import compute
from kiln.ir.dtype import INDEX, DType
from kiln.ir.expr import Bin, Const, Select, idx
from kiln.ir.graph import TensorType
from kiln.ir.symbolic import as_dim, dims_equal, product
from kiln.ir.ops import FusionKind, broadcast_index, broadcast_shapes, register, transpose_hint


def _identity_compute(ins, outs, attrs):
    x, o = ins[0], outs[0]
    return [compute(o.name, o.shape, lambda *i: x[i], o.dtype)]


register("identity", FusionKind.ELEMENTWISE, lambda ins, a: [ins[0]], _identity_compute)


def _reshape_infer(ins, attrs):
    shape = tuple(as_dim(d) for d in attrs["shape"])
    src = ins[0]
    if not dims_equal(product(shape), product(src.shape)):
        raise ShapeError(f"cannot reshape {tuple(src.shape)} ({product(src.shape)} elements) to {shape}")
    return [TensorType(shape, src.dtype)]


def _reshape_compute(ins, outs, attrs):
    """Row-major re-indexing; only used when a reshape has to be materialized."""
    x, o = ins[0], outs[0]

    def body(*i):
        flat = Const(0, INDEX)
        for ax, n in zip(i, o.shape):
            flat = flat * n + ax
        ix = []
        for n in reversed(x.shape):
            ix.append(flat % n)
            flat = flat // n
        return x[tuple(reversed(ix))]

    return [compute(o.name, o.shape, body, o.dtype)]


register("reshape", FusionKind.VIEW, _reshape_infer, _reshape_compute)


# -- helpers ---------------------------------------------------------------------------

def static_shape(t: TensorType, op: str) -> tuple[int, ...]:
    """The static shape of ``t``; the data-movement ops need every dim known."""
    if not t.is_static:
        raise ShapeError(f"{op} needs a static input shape; got {tuple(t.shape)} "
                         "(give the symbolic dims with input shapes)")
    return tuple(int(d) for d in t.shape)


def _replace(index, axis: int, value) -> tuple:
    """``index`` with position ``axis`` replaced by ``value``."""
    ix = list(index)
    ix[axis] = value
    return tuple(ix)


def zero(dtype: DType) -> Const:
    """The zero of ``dtype`` as a constant expression."""
    return fill_value(0, dtype)


def fill_value(v, dtype: DType) -> Const:
    """``v`` as a constant of ``dtype`` (ints stay exact, bools are truth values)."""
    if dtype is DType.bool:
        return Const(bool(v), dtype)
    return Const(float(v) if dtype.is_float else int(v), dtype)


# -- transpose ---------------------------------------------------------------------------

def _transpose_infer(ins, attrs):
    shape = tuple(ins[0].shape)
    perm = tuple(int(p) for p in attrs["perm"])
    if sorted(perm) != list(range(len(shape))):
        raise ShapeError(f"transpose perm {perm} is not a permutation of 0..{len(shape) - 1} "
                         f"for input shape {shape}")
    return [TensorType(tuple(shape[p] for p in perm), ins[0].dtype)]


def _transpose_compute(ins, outs, attrs):
    x, o = ins[0], outs[0]
    perm = attrs["perm"]

    def body(*i):
        ix = [None] * len(perm)
        for k, p in enumerate(perm):  # output axis k walks input axis perm[k]
            ix[p] = i[k]
        return x[tuple(ix)]

    axis = list(perm).index(len(perm) - 1)  # the output axis that walks the input's last one
    return [compute(o.name, o.shape, body, o.dtype, hints=transpose_hint(axis, o.shape[axis], o.ndim))]


register("transpose", FusionKind.INJECTIVE, _transpose_infer, _transpose_compute)


# -- concat and split --------------------------------------------------------------------

def concat_infer(ins, attrs):
    axis = attrs["axis"]
    first = static_shape(ins[0], "concat")
    for t in ins[1:]:
        s = static_shape(t, "concat")
        same = len(s) == len(first) and all(a == b for k, (a, b) in enumerate(zip(s, first)) if k != axis)
        if not same or t.dtype != ins[0].dtype:
            raise ShapeError(f"concat along axis {axis}: input {t} does not match {ins[0]}; "
                             "expected equal rank, dtype and dims off the axis")
    if not 0 <= axis < len(first):
        raise ShapeError(f"concat axis {axis} is out of range for rank {len(first)}")
    total = sum(int(t.shape[axis]) for t in ins)
    return [TensorType(_replace(first, axis, total), ins[0].dtype)]


def concat_compute(ins, outs, attrs):
    """A chain of Selects on the axis index; each branch loads at the shifted index."""
    axis, o = attrs["axis"], outs[0]
    parts, off = [], 0
    for t in ins:
        if t.shape[axis] > 0:  # empty inputs contribute nothing (and have no element to load)
            parts.append((t, off))
        off += t.shape[axis]

    def load(t, start, i):
        return t[_replace(i, axis, i[axis] - start)]

    def body(*i):
        if not parts:
            return zero(o.dtype)
        expr = load(*parts[-1], i)
        for t, start in reversed(parts[:-1]):
            expr = Select(i[axis].lt(start + t.shape[axis]), load(t, start, i), expr)
        return expr

    return [compute(o.name, o.shape, body, o.dtype)]


register("concat", FusionKind.INJECTIVE, concat_infer, concat_compute)


def _split_infer(ins, attrs):
    shape = static_shape(ins[0], "split")
    axis, sizes = attrs["axis"], tuple(int(s) for s in attrs["sizes"])
    if not 0 <= axis < len(shape):
        raise ShapeError(f"split axis {axis} is out of range for rank {len(shape)}")
    if sum(sizes) != shape[axis] or any(s < 0 for s in sizes):
        raise ShapeError(f"split sizes {sizes} do not add up to dim {shape[axis]} of axis {axis} "
                         f"of input shape {shape}")
    return [TensorType(_replace(shape, axis, s), ins[0].dtype) for s in sizes]


def _split_compute(ins, outs, attrs):
    x, axis = ins[0], attrs["axis"]
    stages, off = [], 0
    for o in outs:
        stages.append(compute(o.name, o.shape,
                              lambda *i, start=off: x[_replace(i, axis, i[axis] + start)], o.dtype))
        off += o.shape[axis]
    return stages


register("split", FusionKind.INJECTIVE, _split_infer, _split_compute, num_outputs=2)


# -- slice -------------------------------------------------------------------------------

def slice_length(start: int, end: int, step: int) -> int:
    """Number of elements of ``range(start, end, step)`` (ends already clamped as ONNX)."""
    if step == 0:
        raise ShapeError("slice step must not be 0")
    return max(0, -(-(end - start) // step))


def _slice_infer(ins, attrs):
    shape = static_shape(ins[0], "slice")
    starts, ends, steps = (tuple(attrs[k]) for k in ("starts", "ends", "steps"))
    if not len(starts) == len(ends) == len(steps) == len(shape):
        raise ShapeError(f"slice of shape {shape} needs starts/ends/steps of rank {len(shape)}; "
                         f"got {starts}, {ends}, {steps}")
    out = []
    for n, b, e, s in zip(shape, starts, ends, steps):
        m = slice_length(b, e, s)
        if m and not (0 <= b < n and 0 <= b + (m - 1) * s < n):
            raise ShapeError(f"slice {b}:{e}:{s} reads outside a dim of size {n} (shape {shape})")
        out.append(m)
    return [TensorType(tuple(out), ins[0].dtype)]


def _slice_compute(ins, outs, attrs):
    x, o = ins[0], outs[0]
    starts, steps = attrs["starts"], attrs["steps"]
    return [compute(o.name, o.shape,
                    lambda *i: x[tuple(b + a * s for a, b, s in zip(i, starts, steps))], o.dtype)]


register("slice", FusionKind.INJECTIVE, _slice_infer, _slice_compute)


# -- expand and tile ---------------------------------------------------------------------

def _expand_infer(ins, attrs):
    shape = broadcast_shapes(static_shape(ins[0], "expand"), tuple(int(d) for d in attrs["shape"]))
    return [TensorType(shape, ins[0].dtype)]


def _expand_compute(ins, outs, attrs):
    x, o = ins[0], outs[0]
    return [compute(o.name, o.shape, lambda *i: x[broadcast_index(x, i)], o.dtype)]


register("expand", FusionKind.INJECTIVE, _expand_infer, _expand_compute)


def _tile_infer(ins, attrs):
    shape, reps = static_shape(ins[0], "tile"), tuple(int(r) for r in attrs["repeats"])
    if len(reps) != len(shape) or any(r < 0 for r in reps):
        raise ShapeError(f"tile repeats {reps} must be {len(shape)} non-negative ints for shape {shape}")
    return [TensorType(tuple(n * r for n, r in zip(shape, reps)), ins[0].dtype)]


def _tile_compute(ins, outs, attrs):
    x, o = ins[0], outs[0]
    reps = attrs["repeats"]
    return [compute(o.name, o.shape,
                    lambda *i: x[tuple(a if r == 1 else a % n for a, n, r in zip(i, x.shape, reps))],
                    o.dtype)]


register("tile", FusionKind.INJECTIVE, _tile_infer, _tile_compute)


# -- pad ---------------------------------------------------------------------------------

PAD_MODES = ("constant", "reflect", "edge", "wrap")


def _pad_infer(ins, attrs):
    shape, pads = static_shape(ins[0], "pad"), tuple(int(p) for p in attrs["pads"])
    r, mode = len(shape), attrs.get("mode", "constant")
    if len(pads) != 2 * r:
        raise ShapeError(f"pad of shape {shape} needs {2 * r} pads (begins then ends); got {pads}")
    if mode not in PAD_MODES:
        raise ShapeError(f"pad mode {mode!r} is not supported; expected one of {PAD_MODES}")
    out = tuple(n + pads[k] + pads[k + r] for k, n in enumerate(shape))
    if any(d < 0 for d in out):
        raise ShapeError(f"pads {pads} remove more than the input shape {shape} holds")
    if mode != "constant" and any(n == 0 and d > 0 for n, d in zip(shape, out)):
        raise ShapeError(f"{mode} padding of an empty dim is undefined (shape {shape})")
    return [TensorType(out, ins[0].dtype)]


def _pad_source(j, n: int, begin: int, end: int, mode: str):
    """The input index that output index ``j + begin`` copies in a non-constant mode."""
    if begin <= 0 and end <= 0:
        return j
    if mode == "wrap":
        return j % n
    if mode == "reflect" and n > 1:
        j = Select(j.lt(0), -j, j)
        return Select(j.ge(n), (2 * (n - 1)) - j, j)
    # edge (and reflect of a size-1 dim, which can only repeat its one element)
    return Bin("min", Bin("max", j, idx(0), INDEX), idx(n - 1), INDEX)


def _pad_compute(ins, outs, attrs):
    x, o = ins[0], outs[0]
    r, pads, mode = len(x.shape), attrs["pads"], attrs.get("mode", "constant")
    value = fill_value(attrs.get("value", 0), o.dtype)

    def body(*i):
        src = [a - pads[k] for k, a in enumerate(i)]
        if mode != "constant":
            return x[tuple(_pad_source(j, n, pads[k], pads[k + r], mode)
                           for k, (j, n) in enumerate(zip(src, x.shape)))]
        inside = None
        for k, (j, n) in enumerate(zip(src, x.shape)):
            conds = ([j.ge(0)] if pads[k] > 0 else []) + ([j.lt(n)] if pads[k + r] > 0 else [])
            for c in conds:
                inside = c if inside is None else inside.land(c)
        return x[tuple(src)] if inside is None else Select(inside, x[tuple(src)], value)

    return [compute(o.name, o.shape, body, o.dtype, tag="pad")]


register("pad", FusionKind.INJECTIVE, _pad_infer, _pad_compute)


# -- depth_to_space and space_to_depth ---------------------------------------------------

def _d2s_infer(ins, attrs):
    shape, b = static_shape(ins[0], "depth_to_space"), int(attrs["blocksize"])
    if len(shape) != 4 or b < 1 or shape[1] % (b * b):
        raise ShapeError(f"depth_to_space needs an NCHW input with C divisible by blocksize² "
                         f"({b}²); got shape {shape}")
    if attrs.get("mode", "DCR") not in ("DCR", "CRD"):
        raise ShapeError(f"depth_to_space mode {attrs['mode']!r} is not DCR or CRD")
    n, c, h, w = shape
    return [TensorType((n, c // (b * b), h * b, w * b), ins[0].dtype)]


def _d2s_compute(ins, outs, attrs):
    x, o, b = ins[0], outs[0], attrs["blocksize"]
    c_out = o.shape[1]
    dcr = attrs.get("mode", "DCR") == "DCR"

    def body(n, c, y, xx):
        by, bx = y % b, xx % b
        # DCR: channels are (block_y, block_x, c); CRD: (c, block_y, block_x)
        ch = (by * b + bx) * c_out + c if dcr else (c * b + by) * b + bx
        return x[n, ch, y // b, xx // b]

    return [compute(o.name, o.shape, body, o.dtype)]


register("depth_to_space", FusionKind.INJECTIVE, _d2s_infer, _d2s_compute)


def _s2d_infer(ins, attrs):
    shape, b = static_shape(ins[0], "space_to_depth"), int(attrs["blocksize"])
    if len(shape) != 4 or b < 1 or shape[2] % b or shape[3] % b:
        raise ShapeError(f"space_to_depth needs an NCHW input with H and W divisible by the "
                         f"blocksize {b}; got shape {shape}")
    n, c, h, w = shape
    return [TensorType((n, c * b * b, h // b, w // b), ins[0].dtype)]


def _s2d_compute(ins, outs, attrs):
    x, o, b = ins[0], outs[0], attrs["blocksize"]
    c_in = x.shape[1]
    dcr = attrs.get("mode", "DCR") == "DCR"

    def body(n, ch, y, xx):
        # DCR: output channels are (block_y, block_x, c); CRD (opset 28): (c, block_y, block_x)
        if dcr:
            c, bx, by = ch % c_in, (ch // c_in) % b, ch // (c_in * b)
        else:
            c, by, bx = ch // (b * b), (ch // b) % b, ch % b
        return x[n, c, y * b + by, xx * b + bx]

    return [compute(o.name, o.shape, body, o.dtype)]


register("space_to_depth", FusionKind.INJECTIVE, _s2d_infer, _s2d_compute)
