"""Converters for Conv, ConvTranspose, MatMul and Gemm.

Padding is resolved here (``auto_pad``, ConvTranspose's ``output_shape``) so the graph ops
only ever see explicit ``pads``. ``resolve_pads`` is shared with the pooling converters.
"""
from __future__ import annotations

import numpy as np

from kiln.frontend.onnx_ops import converter


def static_shape(ctx, name: str, what: str) -> tuple[int, ...]:
    shape = ctx.shape(name)
    if not all(isinstance(d, int) for d in shape):
        ctx.fail(f"{what} has symbolic shape {tuple(shape)}; expected static dims "
                 "(give --input-shape for the model inputs)")
    return tuple(int(d) for d in shape)


def batch_shape(ctx, name: str, what: str) -> tuple:
    """``(N, C, *spatial)`` where only N may be symbolic (a dynamic batch)."""
    shape = tuple(ctx.shape(name))
    if not all(isinstance(d, int) for d in shape[1:]):
        ctx.fail(f"{what} has shape {shape}; only the batch dim may be symbolic here")
    return shape


def ints_attr(ctx, name: str, n: int, default: int) -> tuple[int, ...]:
    """An int-list attribute of length ``n``; the default fills every position."""
    v = ctx.attr(name)
    if v is None or len(v) == 0:
        return (default,) * n
    v = tuple(int(a) for a in v)
    if len(v) != n:
        ctx.fail(f"attribute {name} has {len(v)} values {v}; expected {n}")
    return v


def resolve_pads(ctx, in_sizes, kernel, strides, dilations) -> tuple[int, ...]:
    """Explicit ``(begin..., end...)`` pads from ``auto_pad`` or the ``pads`` attribute.

    SAME_UPPER/SAME_LOWER pad so that out = ceil(in / stride), the odd element of the total
    at the end (UPPER) or the beginning (LOWER); VALID pads nothing.
    """
    nd = len(kernel)
    auto_pad = ctx.attr("auto_pad", "NOTSET") or "NOTSET"
    if auto_pad == "NOTSET":
        return ints_attr(ctx, "pads", 2 * nd, 0)
    if auto_pad == "VALID":
        return (0,) * (2 * nd)
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        ctx.fail(f"auto_pad {auto_pad!r} is not one of NOTSET, SAME_UPPER, SAME_LOWER, VALID")
    begin, end = [], []
    for n, k, s, d in zip(in_sizes, kernel, strides, dilations):
        out = -(-n // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - n)
        small, big = total // 2, total - total // 2
        begin.append(small if auto_pad == "SAME_UPPER" else big)
        end.append(big if auto_pad == "SAME_UPPER" else small)
    return tuple(begin + end)


def kernel_shape(ctx, w_shape) -> tuple[int, ...]:
    """``kernel_shape`` from the weights; the attribute, when given, must agree."""
    kernel = tuple(w_shape[2:])
    attr = ctx.attr("kernel_shape")
    if attr and tuple(int(k) for k in attr) != kernel:
        ctx.fail(f"kernel_shape {tuple(attr)} does not match the weights' spatial shape {kernel}")
    return kernel


# -- Conv -----------------------------------------------------------------------------------

@converter("Conv", since=1)
def _conv(ctx, node):
    x, w = ctx.input(0), ctx.input(1)
    xs, ws = batch_shape(ctx, x, "Conv input"), static_shape(ctx, w, "Conv weights")
    if len(ws) < 3 or len(xs) != len(ws):
        ctx.fail(f"expected input (N, C, *spatial) and weights (OC, C/group, *kernel) of equal rank "
                 f">= 3; got input {xs} and weights {ws}")
    kernel = kernel_shape(ctx, ws)
    nd = len(kernel)
    strides, dil = ints_attr(ctx, "strides", nd, 1), ints_attr(ctx, "dilations", nd, 1)
    attrs = {"strides": strides, "dilations": dil, "group": int(ctx.attr("group", 1)),
             "pads": resolve_pads(ctx, xs[2:], kernel, strides, dil)}
    inputs = [x, w] + ([ctx.input(2)] if ctx.has_input(2) else [])
    return ctx.emit("conv", inputs, attrs, out_names=ctx.outputs())


# -- ConvTranspose ----------------------------------------------------------------------------

def _split_total(total: int, more_at_begin: bool) -> tuple[int, int]:
    small = total // 2
    return (total - small, small) if more_at_begin else (small, total - small)


@converter("ConvTranspose", since=1)
def _conv_transpose(ctx, node):
    """``output_shape`` and SAME auto_pad become explicit pads (and extra output_padding).

    The default output length is s*(in-1) + output_padding + (k-1)*d + 1 - pads; a requested
    length below it is reached by padding (an odd total puts the extra element at the end for
    SAME_UPPER and at the beginning otherwise, as the ONNX spec and ONNX Runtime do), one above
    it by extending output_padding.
    """
    x, w = ctx.input(0), ctx.input(1)
    xs, ws = static_shape(ctx, x, "ConvTranspose input"), static_shape(ctx, w, "ConvTranspose weights")
    if len(ws) < 3 or len(xs) != len(ws):
        ctx.fail(f"expected input (N, C, *spatial) and weights (C, OC/group, *kernel) of equal rank "
                 f">= 3; got input {xs} and weights {ws}")
    kernel = kernel_shape(ctx, ws)
    nd = len(kernel)
    strides, dil = ints_attr(ctx, "strides", nd, 1), ints_attr(ctx, "dilations", nd, 1)
    out_pad = list(ints_attr(ctx, "output_padding", nd, 0))
    auto_pad = ctx.attr("auto_pad", "NOTSET") or "NOTSET"
    target = ctx.attr("output_shape")
    if target is not None and len(target) > 0:
        target = [int(t) for t in target][-nd:]
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        target = [n * s for n, s in zip(xs[2:], strides)]
    else:
        target = None
    if target is None:
        pads = (0,) * (2 * nd) if auto_pad == "VALID" else ints_attr(ctx, "pads", 2 * nd, 0)
    else:
        begin, end = [], []
        for i, (n, k, s, d) in enumerate(zip(xs[2:], kernel, strides, dil)):
            total = s * (n - 1) + out_pad[i] + (k - 1) * d + 1 - target[i]
            if total < 0:
                out_pad[i] -= total
                total = 0
            b, e = _split_total(total, auto_pad != "SAME_UPPER")
            begin.append(b)
            end.append(e)
        pads = tuple(begin + end)
    attrs = {"strides": strides, "dilations": dil, "group": int(ctx.attr("group", 1)),
             "pads": pads, "output_padding": tuple(out_pad)}
    inputs = [x, w] + ([ctx.input(2)] if ctx.has_input(2) else [])
    return ctx.emit("conv_transpose", inputs, attrs, out_names=ctx.outputs())


# -- MatMul -------------------------------------------------------------------------------------

@converter("MatMul", since=1)
def _matmul(ctx, node):
    """numpy.matmul semantics: 1-D operands are promoted to matrices and the unit dim dropped."""
    a, b = ctx.input(0), ctx.input(1)
    sa, sb = tuple(ctx.shape(a)), tuple(ctx.shape(b))  # symbolic dims are fine here
    if not sa or not sb:
        ctx.fail(f"MatMul operands must have rank >= 1; got {sa} and {sb}")
    if len(sa) >= 2 and len(sb) >= 2:
        return ctx.emit("matmul", [a, b], out_names=ctx.outputs())
    if len(sa) == 1:
        a = ctx.emit("reshape", [a], {"shape": (1, sa[0])})[0]
    if len(sb) == 1:
        b = ctx.emit("reshape", [b], {"shape": (sb[0], 1)})[0]
    y = ctx.emit("matmul", [a, b])[0]
    shape = list(ctx.shape(y))
    if len(sb) == 1:
        shape.pop(-1)
    if len(sa) == 1:
        shape.pop(-2 if len(sb) > 1 else -1)
    return ctx.emit("reshape", [y], {"shape": tuple(shape)}, out_names=ctx.outputs())


# -- Gemm ---------------------------------------------------------------------------------------

def _transposed(ctx, name: str, trans: bool) -> str:
    """``name`` transposed when ``trans``: constants in numpy, run-time values with a transpose op."""
    if not trans:
        return name
    if len(ctx.shape(name)) != 2:
        ctx.fail(f"Gemm operand {name!r} has shape {tuple(ctx.shape(name))}; expected a matrix")
    arr = ctx.const(name)
    if arr is not None:
        return ctx.add_const(np.ascontiguousarray(arr.T), "gemm_t")
    return ctx.emit("transpose", [name], {"perm": (1, 0)})[0]


def _scaled(ctx, name: str, factor: float) -> str:
    """``name * factor``: folded into a constant, or a mul by a scalar constant."""
    if factor == 1.0:
        return name
    dtype = ctx.type(name).dtype.np
    arr = ctx.const(name)
    if arr is not None:
        return ctx.add_const((arr * factor).astype(dtype), "gemm_scaled")
    return ctx.emit("mul", [name, ctx.add_const(np.asarray(factor, dtype=dtype), "gemm_alpha")])[0]


@converter("Gemm", since=1)
def _gemm(ctx, node):
    """Y = alpha * A' @ B' + beta * C, with A' = A.T if transA and B' = B.T if transB.

    alpha folds into a constant B (or A) when there is one; otherwise the product is scaled.
    The final op carries the node's output name; the fusion pass turns the trailing mul/add
    into the matmul's epilogue.
    """
    alpha, beta = float(ctx.attr("alpha", 1.0)), float(ctx.attr("beta", 1.0))
    a = _transposed(ctx, ctx.input(0), bool(ctx.attr("transA", 0)))
    b = _transposed(ctx, ctx.input(1), bool(ctx.attr("transB", 0)))
    for n in (a, b):
        if len(ctx.shape(n)) != 2:
            ctx.fail(f"Gemm operands must be matrices; got shapes {ctx.shape(a)} and {ctx.shape(b)}")
    if alpha != 1.0 and ctx.const(b) is not None:
        b, alpha = _scaled(ctx, b, alpha), 1.0
    elif alpha != 1.0 and ctx.const(a) is not None:
        a, alpha = _scaled(ctx, a, alpha), 1.0
    c = ctx.input(2) if ctx.has_input(2) and beta != 0.0 else None
    steps = [("matmul", [a, b])]
    if alpha != 1.0:
        steps.append(("mul", [None, ctx.add_const(np.asarray(alpha, dtype=ctx.type(a).dtype.np), "gemm_alpha")]))
    if c is not None:
        steps.append(("add", [None, _scaled(ctx, c, beta)]))
    y = None
    for k, (op, ins) in enumerate(steps):
        ins = [y if n is None else n for n in ins]
        last = k == len(steps) - 1
        y = ctx.emit(op, ins, out_names=ctx.outputs() if last else None)[0]
    return [y]
