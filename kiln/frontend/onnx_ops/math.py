"""Converters for Shrink, Swish, SwiGLU, BitShift, TopK, Hardmax, Einsum and Det, and for the
ops whose output shape depends on data: NonZero, Compress, Unique, NonMaxSuppression.

Shapes are static in Kiln, so an input that fixes an output shape (TopK's K, Compress's
condition) must be a constant (``ctx.require_const``: a run-time value is reported as
unsupported, naming the graph inputs to bind). NonZero, Unique and NonMaxSuppression
compute their output shape from all of their data; they are folded at compile time by the
ONNX reference implementation when every input is a constant, and unsupported otherwise.
"""
from __future__ import annotations

import numpy as np

from kiln.frontend.onnx_ops import converter
from kiln.frontend.onnx_ops.nn import static_shape
from kiln.ir.ops import normalize_axis


def fold_with_reference(ctx, node, why: str) -> list[str]:
    """Evaluate a node whose inputs are all constants with the ONNX reference implementation.

    Used for ops whose output shape depends on data: with constant inputs the outputs are
    constants too, so nothing runs at run time.
    """
    names = [ctx.input(i) if ctx.has_input(i) else "" for i in range(len(node.input))]
    arrays = [ctx.const(n) if n else None for n in names]
    if any(n and a is None for n, a in zip(names, arrays)):
        ctx.unsupported(f"{why}; Kiln supports it only when every input is a constant")
    from onnx.reference import ReferenceEvaluator
    import onnx
    from onnx import helper

    ins = [f"i{k}" if n else "" for k, n in enumerate(names)]
    outs = [f"o{k}" for k in range(len(node.output))]
    n2 = helper.make_node(node.op_type, ins, outs, domain=node.domain)
    n2.attribute.extend(node.attribute)
    feeds = {f"i{k}": a for k, a in enumerate(arrays) if a is not None}
    vis = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
           for k, a in feeds.items()]
    g = helper.make_graph([n2], "fold", vis, [helper.make_value_info(o, onnx.TypeProto()) for o in outs])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", ctx.opset)])
    results = ReferenceEvaluator(model).run(None, feeds)
    return [ctx.add_const(np.asarray(r), node.op_type.lower()) for r in results]


# -- elementwise ------------------------------------------------------------------------------

@converter("Shrink", since=9)
def _shrink(ctx, node):
    attrs = {"lambd": float(ctx.attr("lambd", 0.5)), "bias": float(ctx.attr("bias", 0.0))}
    return ctx.emit("shrink", [ctx.input(0)], attrs, out_names=ctx.outputs())


@converter("Swish", since=24)
def _swish(ctx, node):
    return ctx.emit("swish", [ctx.input(0)], {"alpha": float(ctx.attr("alpha", 1.0))},
                    out_names=ctx.outputs())


@converter("SwiGLU", since=28)
def _swiglu(ctx, node):
    return ctx.emit("swiglu", [ctx.input(0), ctx.input(1)], {"alpha": float(ctx.attr("alpha", 1.0))},
                    out_names=ctx.outputs())


@converter("BitShift", since=11)
def _bit_shift(ctx, node):
    direction = ctx.attr("direction")
    if direction not in ("LEFT", "RIGHT"):
        ctx.fail(f"direction must be LEFT or RIGHT; got {direction!r}")
    return ctx.emit("bit_shift", [ctx.input(0), ctx.input(1)], {"direction": direction},
                    out_names=ctx.outputs())


# -- TopK / Hardmax ----------------------------------------------------------------------------

@converter("TopK", since=1)
def _topk(ctx, node):
    """K is an attribute before opset 10 and an input after; largest/sorted since 11.

    ``sorted=0`` leaves the order unspecified: Kiln returns it sorted, which is one valid order.
    """
    x = ctx.input(0)
    xs = static_shape(ctx, x, "TopK input")
    if ctx.opset < 10:
        k = int(ctx.attr("k"))
    else:
        k_arr = ctx.require_const(1, "K")
        if k_arr.size != 1:
            ctx.fail(f"K must hold one value; got shape {k_arr.shape}")
        k = int(k_arr.reshape(-1)[0])
    axis = normalize_axis(int(ctx.attr("axis", -1)), len(xs), "TopK axis")
    if not 0 <= k <= xs[axis]:
        ctx.fail(f"K={k} must be in 0..{xs[axis]} (the length of axis {axis} of {xs})")
    attrs = {"axis": axis, "k": k, "largest": bool(ctx.attr("largest", 1))}
    outs = [n or ctx.fresh("topk") for n in ctx.outputs()]
    return ctx.emit("topk", [x], attrs, out_names=outs)


@converter("Hardmax", since=1)
def _hardmax(ctx, node):
    """Opset >= 13: along one axis (default -1). Before: over the input coerced to 2-D at
    ``axis`` (default 1), i.e. over the flattened trailing block."""
    x = ctx.input(0)
    xs = static_shape(ctx, x, "Hardmax input")
    if ctx.opset >= 13:
        return ctx.emit("hardmax", [x], {"axis": int(ctx.attr("axis", -1))}, out_names=ctx.outputs())
    axis = int(ctx.attr("axis", 1))
    if not -len(xs) <= axis <= len(xs):
        ctx.fail(f"axis {axis} is out of range for rank {len(xs)}")
    axis = axis % len(xs) if axis < len(xs) else len(xs)
    outer, inner = int(np.prod(xs[:axis], dtype=np.int64)), int(np.prod(xs[axis:], dtype=np.int64))
    flat = ctx.emit("reshape", [x], {"shape": (outer, inner)})[0]
    y = ctx.emit("hardmax", [flat], {"axis": 1})[0]
    return ctx.emit("reshape", [y], {"shape": xs}, out_names=ctx.outputs())


# -- Einsum / Det ---------------------------------------------------------------------------------

def parse_einsum(ctx, equation: str, n_inputs: int):
    """``(input terms, output term)``; the implicit output is the letters used once, sorted,
    after the ellipsis dims (numpy's rule)."""
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != n_inputs:
        ctx.fail(f"equation {equation!r} names {len(terms)} operands; the node has {n_inputs}")
    for t in terms + [rhs]:
        body = t.replace("...", "", 1)
        if not all(c.isalpha() for c in body):
            ctx.fail(f"equation {equation!r}: subscripts {t!r} must be letters and at most one '...'")
    if not arrow:
        letters = [c for t in terms for c in t if c.isalpha()]
        once = sorted(c for c in set(letters) if letters.count(c) == 1)
        rhs = ("..." if any("..." in t for t in terms) else "") + "".join(once)
    if len(set(rhs.replace("...", ""))) != len(rhs.replace("...", "")):
        ctx.fail(f"equation {equation!r}: output subscripts {rhs!r} repeat a letter")
    return terms, rhs


def _scalar_via_reshape(ctx, op: str, ins, attrs, scalar: bool) -> list[str]:
    """Emit ``op``; a scalar result (which graph ops give as shape (1,)) is reshaped to ()."""
    if not scalar:
        return ctx.emit(op, ins, attrs, out_names=ctx.outputs())
    y = ctx.emit(op, ins, attrs)[0]
    return ctx.emit("reshape", [y], {"shape": ()}, out_names=ctx.outputs())


@converter("Einsum", since=12)
def _einsum(ctx, node):
    ins = [ctx.input(i) for i in range(len(node.input))]
    ranks = [len(static_shape(ctx, n, "Einsum operand")) for n in ins]
    terms, out = parse_einsum(ctx, str(ctx.attr("equation", "")), len(ins))
    ell = max((r - len(t) + 3 for r, t in zip(ranks, terms) if "..." in t), default=0)
    out_rank = len(out.replace("...", "")) + (ell if "..." in out else 0)
    return _scalar_via_reshape(ctx, "einsum", ins, {"inputs": tuple(terms), "output": out}, out_rank == 0)


@converter("Det", since=11)
def _det(ctx, node):
    x = ctx.input(0)
    xs = static_shape(ctx, x, "Det input")
    if len(xs) < 2 or xs[-1] != xs[-2]:
        ctx.fail(f"expected square matrices (..., n, n); got {xs}")
    if xs[-1] > 4:
        ctx.unsupported(f"Det of {xs[-1]} x {xs[-1]} matrices: Kiln implements n <= 4")
    return _scalar_via_reshape(ctx, "det", [x], {}, len(xs) == 2)


# -- data-dependent output shapes ----------------------------------------------------------------

@converter("NonZero", since=9)
def _nonzero(ctx, node):
    return fold_with_reference(ctx, node, "NonZero's output shape depends on the input data")


@converter("Unique", since=11)
def _unique(ctx, node):
    return fold_with_reference(ctx, node, "Unique's output shape depends on the input data")


@converter("NonMaxSuppression", since=10)
def _nms(ctx, node):
    return fold_with_reference(ctx, node, "NonMaxSuppression's output shape depends on the input data")


@converter("Compress", since=9)
def _compress(ctx, node):
    """A gather of the constant positions where ``condition`` holds (on the flattened input
    when there is no axis)."""
    x = ctx.input(0)
    xs = static_shape(ctx, x, "Compress input")
    # the condition fixes the output shape: a run-time one is reported as needing a constant
    cond = ctx.require_const(1, "condition")
    axis = ctx.attr("axis")
    if axis is None:
        x = ctx.emit("reshape", [x], {"shape": (int(np.prod(xs, dtype=np.int64)),)})[0]
        axis, n = 0, int(np.prod(xs, dtype=np.int64))
    else:
        axis = normalize_axis(int(axis), len(xs), "Compress axis")
        n = xs[axis]
    picked = np.nonzero(np.asarray(cond).reshape(-1)[:n])[0].astype(np.int64)
    return ctx.emit("gather", [x, ctx.add_const(picked, "compress_idx")], {"axis": axis},
                    out_names=ctx.outputs())
