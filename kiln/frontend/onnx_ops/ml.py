"""Converters for the ai.onnx.ml operators that are plain tensor arithmetic: Binarizer,
ArrayFeatureExtractor, Scaler, Normalizer and LinearRegressor, plus the post-transforms
(logistic, softmax, softmax-zero) the regressors share. Tree ensembles are in
:mod:`kiln.frontend.onnx_ops.trees`.

The ai.onnx.ml domain versions its operators apart from the default domain, and its
versions only add attributes (``*_as_tensor`` forms in version 3), so each converter
registers once and reads whichever attribute form the model uses. Where the ONNX text
leaves a case open, ONNX Runtime's behaviour is the reference: Normalizer's MAX divides by
the largest value (not the largest magnitude) and leaves a row whose divisor is zero
unchanged; Scaler and Normalizer always produce float32.
"""
from __future__ import annotations

import numpy as np

from kiln.frontend.onnx_ops import converter
from kiln.frontend.onnx_ops.nn import static_shape
from kiln.ir.dtype import DType

ML = "ai.onnx.ml"


def op(ctx, name: str, inputs, attrs=None) -> str:
    """Emit one kiln op and return its (single) output."""
    return ctx.emit(name, list(inputs), attrs)[0]


def as_float32(ctx, x: str) -> str:
    """``x`` cast to float32 unless it already is (the ml operators take int32/int64/double inputs)."""
    return x if ctx.type(x).dtype is DType.float32 else op(ctx, "cast", [x], {"to": DType.float32.value})


def floats_attr(ctx, name: str, dtype, default=None) -> np.ndarray | None:
    """A list-of-floats attribute, or its ``<name>_as_tensor`` form (version 3), as an array."""
    value = ctx.attr(name + "_as_tensor")
    if value is None:
        value = ctx.attr(name, default)
    return None if value is None else np.asarray(value, dtype=np.float64).reshape(-1).astype(dtype)


def as_rows(ctx, x: str, what: str) -> tuple[str, tuple]:
    """``x`` as [N, C] (a 1-d input is one row, as ONNX Runtime treats it) and that shape."""
    shape = ctx.shape(x)
    if len(shape) == 1:
        return op(ctx, "reshape", [x], {"shape": (1, shape[0])}), (1, shape[0])
    if len(shape) != 2:
        ctx.fail(f"{what} has shape {tuple(shape)}; expected [N, C] or [C]")
    return x, tuple(shape)


def post_transform(ctx, scores: str, name: str) -> str:
    """The ml operators' ``post_transform`` over the last axis of [N, K] scores."""
    if name in ("NONE", "", None):
        return scores
    if name == "LOGISTIC":
        return op(ctx, "sigmoid", [scores])
    if name == "SOFTMAX":
        return op(ctx, "softmax", [scores], {"axis": -1})
    if name == "SOFTMAX_ZERO":  # softmax over the non-zero scores; zeros stay zero
        dt = ctx.type(scores).dtype.np
        zero = ctx.add_const(np.array(0, dt), "zero")
        peak = op(ctx, "reduce_max", [scores], {"axes": (1,), "keepdims": True})
        e = op(ctx, "exp", [op(ctx, "sub", [scores, peak])])
        e = op(ctx, "where", [op(ctx, "eq", [scores, zero]), zero, e])
        return op(ctx, "div", [e, op(ctx, "reduce_sum", [e], {"axes": (1,), "keepdims": True})])
    if name == "PROBIT":
        ctx.unsupported("post_transform PROBIT (the inverse normal CDF) is not implemented")
    ctx.fail(f"post_transform {name!r} is not one of NONE, LOGISTIC, SOFTMAX, SOFTMAX_ZERO, PROBIT")


def class_labels(ctx, attr: str) -> np.ndarray:
    """A classifier's int64 labels (``classlabels_ints`` / ``classlabels_int64s``); string
    labels are refused."""
    labels = ctx.attr(attr)
    if labels is None:
        if ctx.attr("classlabels_strings") is not None:
            ctx.unsupported("string class labels (classlabels_strings); Kiln's tensors are numeric")
        ctx.fail(f"{attr} is missing")
    return np.asarray(labels, np.int64)


def binary_outputs(ctx, s: str, cut: float, post: str, other: str) -> tuple[str, str]:
    """(positive?, [N, 2] scores) of one score column ``s`` [N, 1], as ONNX Runtime expands
    it: positive when ``s > cut``; scores ``[1 - s, s]`` (``other="complement"``) or
    ``[-s, s]`` (``"negation"``), with LOGISTIC ``[1 - sigmoid(s), sigmoid(s)]``."""
    if post not in ("NONE", "", None, "LOGISTIC"):
        ctx.unsupported(f"post_transform {post} for a binary classifier with one score column "
                        "(NONE and LOGISTIC are supported)")
    above = op(ctx, "gt", [s, ctx.add_const(np.array(cut, np.float32))])
    positive = op(ctx, "cast", [op(ctx, "reshape", [above], {"shape": (ctx.shape(s)[0],)})], {"to": DType.int64.value})
    one = ctx.add_const(np.array(1, np.float32))
    if post == "LOGISTIC":
        p = op(ctx, "sigmoid", [s])
        return positive, op(ctx, "concat", [op(ctx, "sub", [one, p]), p], {"axis": 1})
    first = op(ctx, "sub", [one, s]) if other == "complement" else op(ctx, "neg", [s])
    return positive, op(ctx, "concat", [first, s], {"axis": 1})


def classifier_outputs(ctx, labels: np.ndarray, best: str, scores: str) -> list[str]:
    """The label output (``labels[best]``) and, when the node has it, the scores output."""
    outs = ctx.outputs()
    result = ctx.emit("gather", [ctx.add_const(labels, "class_labels"), best], {"axis": 0}, out_names=outs[:1])
    if len(outs) > 1:
        result += ctx.emit("identity", [scores], out_names=outs[1:2])
    return result


def linear_scores(ctx, rows: str, channels: int, coef, intercepts, what: str) -> str:
    """``rows @ coef.reshape(k, channels).T + intercepts`` (intercepts optional): [N, k]."""
    k = coef.size // channels
    y = op(ctx, "matmul", [rows, ctx.add_const(np.ascontiguousarray(coef.reshape(k, channels).T), "coef")])
    if intercepts is None or not intercepts.size:
        return y
    if intercepts.size != k:
        ctx.fail(f"intercepts has {intercepts.size} values; expected one per {what} ({k})")
    return op(ctx, "add", [y, ctx.add_const(intercepts, "intercepts")])


@converter("Binarizer", domain=ML)
def _binarizer(ctx, node):
    x = ctx.input(0)
    dt = ctx.type(x).dtype
    t = float(ctx.attr("threshold", 0.0))
    # integers: x > t exactly when x > floor(t)
    thr = ctx.add_const(np.array(t if dt.is_float else np.floor(t), dt.np), "threshold")
    return ctx.emit("cast", [op(ctx, "gt", [x, thr])], {"to": dt.value}, out_names=ctx.outputs())


@converter("ArrayFeatureExtractor", domain=ML)
def _array_feature_extractor(ctx, node):
    x, idx = ctx.input(0), ctx.input(1)
    xs = static_shape(ctx, x, "ArrayFeatureExtractor X")
    if not ctx.type(idx).dtype.is_int:
        ctx.fail(f"Y (the indices) is {ctx.type(idx).dtype}; expected int64")
    n = int(np.prod(static_shape(ctx, idx, "ArrayFeatureExtractor Y")))
    known = ctx.const(idx)
    if known is not None and known.size and (known.min() < 0 or known.max() >= xs[-1]):
        ctx.fail(f"indices {known.reshape(-1).tolist()} reach past the last axis of X (size {xs[-1]}); "
                 f"expected 0..{xs[-1] - 1}")
    flat = op(ctx, "reshape", [idx], {"shape": (n,)})
    picked = op(ctx, "gather", [x, flat], {"axis": len(xs) - 1})
    shape = (1, n) if len(xs) == 1 else (*xs[:-1], n)
    return ctx.emit("reshape", [picked], {"shape": shape}, out_names=ctx.outputs())


@converter("Scaler", domain=ML)
def _scaler(ctx, node):
    x = as_float32(ctx, ctx.input(0))
    channels = ctx.shape(x)[-1]
    parts = []
    for name in ("offset", "scale"):
        v = floats_attr(ctx, name, np.float32, [0.0] if name == "offset" else [1.0])
        if v.size not in (1, channels):
            ctx.fail(f"{name} has {v.size} values; expected 1 or one per feature ({channels})")
        parts.append(ctx.add_const(v, name))
    return ctx.emit("mul", [op(ctx, "sub", [x, parts[0]]), parts[1]], out_names=ctx.outputs())


@converter("Normalizer", domain=ML)
def _normalizer(ctx, node):
    x = as_float32(ctx, ctx.input(0))
    rows, _ = as_rows(ctx, x, "Normalizer X")
    norm = ctx.attr("norm", "MAX")
    keep = {"axes": (1,), "keepdims": True}
    if norm == "MAX":
        d = op(ctx, "reduce_max", [rows], keep)
    elif norm == "L1":
        d = op(ctx, "reduce_l1", [rows], keep)
    elif norm == "L2":
        d = op(ctx, "reduce_l2", [rows], keep)
    else:
        ctx.fail(f"norm {norm!r} is not one of MAX, L1, L2")
    zero = ctx.add_const(np.array(0, np.float32), "zero")
    y = op(ctx, "where", [op(ctx, "eq", [d, zero]), rows, op(ctx, "div", [rows, d])])
    return ctx.emit("reshape", [y], {"shape": tuple(ctx.shape(x))}, out_names=ctx.outputs())


@converter("LinearRegressor", domain=ML)
def _linear_regressor(ctx, node):
    x = as_float32(ctx, ctx.input(0))
    rows, (_, channels) = as_rows(ctx, x, "LinearRegressor X")
    targets = int(ctx.attr("targets", 1))
    coef = floats_attr(ctx, "coefficients", np.float32)
    if coef is None or coef.size != targets * channels:
        ctx.fail(f"coefficients has {0 if coef is None else coef.size} values; expected targets x features "
                 f"= {targets} x {channels}")
    y = linear_scores(ctx, rows, channels, coef, floats_attr(ctx, "intercepts", np.float32), "target")
    y = post_transform(ctx, y, ctx.attr("post_transform", "NONE"))
    return ctx.emit("identity", [y], out_names=ctx.outputs())


@converter("LinearClassifier", domain=ML)
def _linear_classifier(ctx, node):
    """Scores ``x W^T + b`` per class, the label of the largest raw score. One row of
    coefficients for two labels (a binary logistic regression) is one score ``s``, positive
    when ``s > 0``, expanded as ONNX Runtime does: ``[1 - s, s]``, or with LOGISTIC
    ``[1 - sigmoid(s), sigmoid(s)]`` (ONNX's reference gives ``[-s, s]`` without a transform)."""
    labels = class_labels(ctx, "classlabels_ints")
    x = as_float32(ctx, ctx.input(0))
    rows, (_, channels) = as_rows(ctx, x, "LinearClassifier X")
    coef = floats_attr(ctx, "coefficients", np.float32)
    if coef is None or coef.size == 0 or coef.size % channels:
        ctx.fail(f"coefficients has {0 if coef is None else coef.size} values; expected classes x features "
                 f"(features = {channels})")
    classes = coef.size // channels
    binary = classes == 1 and labels.size == 2
    if not binary and classes != labels.size:
        ctx.fail(f"coefficients hold {classes} rows; expected one per class label ({labels.size})")
    scores = linear_scores(ctx, rows, channels, coef, floats_attr(ctx, "intercepts", np.float32),
                           "row of coefficients")
    post = ctx.attr("post_transform", "NONE")
    if binary:
        best, probs = binary_outputs(ctx, scores, 0.0, post, "complement")
    else:
        best = op(ctx, "argmax", [scores], {"axis": 1, "keepdims": False})
        probs = post_transform(ctx, scores, post)
    return classifier_outputs(ctx, labels, best, probs)
