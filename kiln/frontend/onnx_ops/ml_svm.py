"""Converters for support vector machines (ai.onnx.ml SVMRegressor and SVMClassifier), as
scikit-learn's SVR, NuSVR and SVC export them.

The kernel between every sample and every support vector is one matmul (``x @ SV^T``)
followed by the kernel's elementwise function; a regressor is then one more matmul with the
dual coefficients. A classifier is libsvm's one-vs-one machine: the decision value of the
pair of classes (i, j) sums class i's support vectors weighted by coefficient row j - 1 and
class j's by row i, plus ``rho`` -- for all pairs at once, one matmul with a constant
[support vectors, pairs] matrix. Each pair votes for i when its value is positive, else for
j; the label is the first class with the most votes. Scores are the pairs' decision values;
with two classes ONNX Runtime gives ``[-f, f]``. Probabilities (``prob_a``/``prob_b``) are
refused: for more than two classes they need libsvm's iterative pairwise coupling, and for
two, ONNX Runtime and scikit-learn 1.9 do not give Platt's ``1 / (1 + exp(A f + B))`` of the
decision value Kiln computes (checked: 1.2e-5 where that formula gives 2.0e-3), so Kiln
would return other numbers.
"""
from __future__ import annotations

import numpy as np

from kiln.frontend.onnx_ops import converter
from kiln.frontend.onnx_ops.ml import (ML, as_float32, as_rows, class_labels, classifier_outputs, floats_attr, op,
                                       post_transform)
from kiln.ir.dtype import DType


def _kernel(ctx, rows: str, vectors: np.ndarray, kind: str, params) -> str:
    """[N, S]: the SVM kernel between every row and every support vector."""
    gamma, coef0, degree = (list(params) + [0.0, 0.0, 0.0])[:3]
    dot = op(ctx, "matmul", [rows, ctx.add_const(np.ascontiguousarray(vectors.T), "support_vectors")])
    f32 = np.float32

    def affine(t: str) -> str:  # gamma * t + coef0
        return op(ctx, "add", [op(ctx, "mul", [t, ctx.add_const(f32(gamma))]), ctx.add_const(f32(coef0))])
    if kind == "LINEAR":
        return dot
    if kind == "POLY":
        return op(ctx, "pow", [affine(dot), ctx.add_const(f32(degree))])
    if kind == "SIGMOID":
        return op(ctx, "tanh", [affine(dot)])
    if kind == "RBF":  # |x - v|^2 = |x|^2 - 2 x.v + |v|^2, clamped at 0 against rounding
        x2 = op(ctx, "reduce_sum_square", [rows], {"axes": (1,), "keepdims": True})
        v2 = ctx.add_const((vectors.astype(np.float64) ** 2).sum(axis=1).astype(f32), "support_norms")
        d2 = op(ctx, "add", [op(ctx, "sub", [x2, op(ctx, "mul", [dot, ctx.add_const(f32(2))])]), v2])
        d2 = op(ctx, "max", [d2, ctx.add_const(f32(0))])
        return op(ctx, "exp", [op(ctx, "mul", [d2, ctx.add_const(f32(-gamma))])])
    ctx.fail(f"kernel_type {kind!r} is not one of LINEAR, POLY, RBF, SIGMOID")


@converter("SVMRegressor", domain=ML)
def _svm_regressor(ctx, node):
    """``sum_i coefficients[i] * K(x, support_vectors[i]) + rho`` (scikit-learn's SVR, NuSVR)."""
    x = as_float32(ctx, ctx.input(0))
    rows, (_, channels) = as_rows(ctx, x, "SVMRegressor X")
    if int(ctx.attr("one_class", 0)):
        ctx.unsupported("one_class=1 (OneClassSVM's +1/-1 output)")
    n = int(ctx.attr("n_supports", 0))
    vectors = floats_attr(ctx, "support_vectors", np.float32, [])
    coef = floats_attr(ctx, "coefficients", np.float32, [])
    if n <= 0 or vectors.size != n * channels or coef.size != n:
        ctx.fail(f"{n} support vectors need {n * channels} support_vectors values (features = {channels}) and "
                 f"{n} coefficients; got {vectors.size} and {coef.size}")
    k = _kernel(ctx, rows, vectors.reshape(n, channels), ctx.attr("kernel_type", "LINEAR"),
                floats_attr(ctx, "kernel_params", np.float64, []))
    y = op(ctx, "matmul", [k, ctx.add_const(coef.reshape(n, 1), "dual_coef")])
    rho = floats_attr(ctx, "rho", np.float32, [0.0])
    y = op(ctx, "add", [y, ctx.add_const(rho[:1], "rho")])
    y = post_transform(ctx, y, ctx.attr("post_transform", "NONE"))
    return ctx.emit("identity", [y], out_names=ctx.outputs())


def _pairs(n: int) -> list[tuple[int, int]]:
    """libsvm's order of the one-vs-one pairs: (0, 1), (0, 2), ..., (1, 2), ..."""
    return [(i, j) for i in range(n) for j in range(i + 1, n)]


@converter("SVMClassifier", domain=ML)
def _svm_classifier(ctx, node):
    labels = class_labels(ctx, "classlabels_ints")
    n = labels.size
    per_class = [int(v) for v in ctx.attr("vectors_per_class", [])]
    if not per_class:
        ctx.unsupported("a linear SVMClassifier (no vectors_per_class): export LinearSVC as LinearClassifier")
    x = as_float32(ctx, ctx.input(0))
    rows, (_, channels) = as_rows(ctx, x, "SVMClassifier X")
    total = sum(per_class)
    vectors = floats_attr(ctx, "support_vectors", np.float32, [])
    coef = floats_attr(ctx, "coefficients", np.float64, [])
    pairs = _pairs(n)
    rho = floats_attr(ctx, "rho", np.float32, [])
    if (len(per_class) != n or n < 2 or vectors.size != total * channels or coef.size != (n - 1) * total
            or rho.size != len(pairs)):
        ctx.fail(f"{n} classes with vectors_per_class {per_class} need {total * channels} support_vectors values "
                 f"(features = {channels}), {(n - 1) * total} coefficients and {len(pairs)} rho values; got "
                 f"{vectors.size}, {coef.size} and {rho.size}")
    if ctx.attr("prob_a") is not None or ctx.attr("prob_b") is not None:
        ctx.unsupported("SVM probabilities (prob_a/prob_b: libsvm's pairwise coupling); export the SVC with "
                        "probability=False for labels and decision values")
    coef = coef.reshape(n - 1, total)
    start = np.concatenate([[0], np.cumsum(per_class)])
    decide = np.zeros((total, len(pairs)))  # decision of pair p = K @ decide[:, p] + rho[p]
    for p, (i, j) in enumerate(pairs):
        decide[start[i]:start[i + 1], p] = coef[j - 1, start[i]:start[i + 1]]
        decide[start[j]:start[j + 1], p] = coef[i, start[j]:start[j + 1]]
    k = _kernel(ctx, rows, vectors.reshape(total, channels), ctx.attr("kernel_type", "LINEAR"),
                floats_attr(ctx, "kernel_params", np.float64, []))
    dec = op(ctx, "add", [op(ctx, "matmul", [k, ctx.add_const(decide.astype(np.float32), "ovo")]),
                          ctx.add_const(rho, "rho")])                                          # [N, pairs]
    # votes: pair (i, j) adds 1 to i when positive, else to j
    for_i, for_j = np.zeros((len(pairs), n), np.float32), np.zeros((len(pairs), n), np.float32)
    for p, (i, j) in enumerate(pairs):
        for_i[p, i], for_j[p, j] = 1, 1
    positive = op(ctx, "cast", [op(ctx, "gt", [dec, ctx.add_const(np.float32(0))])], {"to": DType.float32.value})
    votes = op(ctx, "add", [op(ctx, "matmul", [positive, ctx.add_const(for_i - for_j, "votes")]),
                            ctx.add_const(for_j.sum(axis=0), "votes_against")])
    best = op(ctx, "argmax", [votes], {"axis": 1, "keepdims": False})
    post = ctx.attr("post_transform", "NONE")
    if n > 2:
        return classifier_outputs(ctx, labels, best, post_transform(ctx, dec, post))
    if post not in ("NONE", "", None):
        ctx.unsupported(f"post_transform {post} for a two-class SVMClassifier (NONE is supported)")
    return classifier_outputs(ctx, labels, best, op(ctx, "concat", [op(ctx, "neg", [dec]), dec], {"axis": 1}))
