"""Converters for the neural-network aten ops: convolution, matrix products, batch/layer/group
norm, softmax, pooling, embedding and upsampling.

torch's layouts are ONNX's (NCHW activations, (OC, C/groups, *k) conv weights and
(C, OC/groups, *k) transposed-conv weights), so the kiln ops take the weights as they are.
torch pads symmetrically: ``padding=[p]`` becomes kiln ``pads=(p, p)``.
"""
from __future__ import annotations

import numpy as np

from kiln.frontend.onnx_ops.nn import _scaled
from kiln.frontend.onnx_ops.norm import _scale_shift_ops
from kiln.frontend.torch_ops import aten, int_list, prod
from kiln.ir.ops import normalize_axis


def _ones(ctx, shape, like: str, hint: str) -> str:
    return ctx.add_const(np.ones(shape, ctx.type(like).dtype.np), hint)


def _zeros(ctx, shape, like: str, hint: str) -> str:
    return ctx.add_const(np.zeros(shape, ctx.type(like).dtype.np), hint)


# -- convolution ------------------------------------------------------------------------------------

@aten("convolution.default")
def _convolution(ctx, a):
    x, w = ctx.value(a["input"]), ctx.value(a["weight"])
    nd = len(ctx.shape(w)) - 2
    pad = int_list(a["padding"], nd)
    attrs = {"strides": int_list(a["stride"], nd), "dilations": int_list(a["dilation"], nd),
             "pads": pad + pad, "group": int(a["groups"])}
    inputs = [x, w] + ([ctx.value(a["bias"])] if a["bias"] is not None else [])
    if not a["transposed"]:
        return ctx.emit("conv", inputs, attrs)[0]
    attrs["output_padding"] = int_list(a["output_padding"], nd)
    return ctx.emit("conv_transpose", inputs, attrs)[0]


# -- matrix products ---------------------------------------------------------------------------------

@aten("mm.default", "bmm.default")
def _mm(ctx, a):
    return ctx.emit("matmul", [ctx.value(a["self"]), ctx.value(a["mat2"])])[0]


def _gemm(ctx, bias_arg, a_arg, b_arg, beta, alpha) -> str:
    """beta * bias + alpha * (A @ B); alpha folds into a constant B (a weight) when it can."""
    a, b = ctx.value(a_arg), ctx.value(b_arg)
    if alpha != 1 and ctx.const(b) is not None:
        b, alpha = _scaled(ctx, b, float(alpha)), 1
    y = ctx.emit("matmul", [a, b])[0]
    if alpha != 1:
        y = ctx.emit("mul", [y, ctx.scalar(alpha, ctx.type(y).dtype)])[0]
    if beta == 0:  # torch ignores the bias entirely then (even nan or inf in it)
        return y
    return ctx.emit("add", [y, _scaled(ctx, ctx.value(bias_arg), float(beta))])[0]


@aten("addmm.default")
def _addmm(ctx, a):
    return _gemm(ctx, a["self"], a["mat1"], a["mat2"], a["beta"], a["alpha"])


# -- normalization ------------------------------------------------------------------------------------

def _batch_norm(ctx, a, training: bool) -> list:
    """(y, save_mean, save_rstd); only y is computed.

    With running statistics: x * scale + shift, scale and shift folded from the constants.
    ``training`` normalizes with the batch's own statistics instead: that is what
    InstanceNorm exports to (a batch norm of x viewed as (1, N*C, ...)) and what
    F.batch_norm(training=True) means; a module updating running statistics in place never
    gets here (its buffer mutation is rejected at export).
    """
    x = ctx.value(a["input"])
    xs = ctx.shape(x)
    c = xs[1]
    stat_shape = (c,) + (1,) * (len(xs) - 2)
    gamma = ctx.value(a["weight"]) if a["weight"] is not None else _ones(ctx, (c,), x, "bn_gamma")
    beta = ctx.value(a["bias"]) if a["bias"] is not None else _zeros(ctx, (c,), x, "bn_beta")
    if training or a.get("running_mean") is None:
        return [_batch_stats_norm(ctx, x, gamma, beta, float(a["eps"]), stat_shape), None, None]
    scale, shift = _scale_shift_ops(ctx, gamma, beta, ctx.value(a["running_mean"]), ctx.value(a["running_var"]),
                                    float(a["eps"]), ctx.type(x).dtype.np, stat_shape)
    return [ctx.emit("batch_norm", [x, scale, shift])[0], None, None]


def _batch_stats_norm(ctx, x: str, gamma: str, beta: str, eps: float, stat_shape) -> str:
    """Normalize over every axis but the channels (biased variance), then the affine."""
    xs = tuple(ctx.shape(x))
    if xs[0] == 1 and len(xs) >= 3:  # one sample: exactly instance_norm's statistics
        return ctx.emit("instance_norm", [x, gamma, beta], {"epsilon": eps})[0]
    reduce = {"axes": tuple(k for k in range(len(xs)) if k != 1), "keepdims": True}
    dt = ctx.type(x).dtype
    diff = ctx.emit("sub", [x, ctx.emit("reduce_mean", [x], reduce)[0]])[0]
    var = ctx.emit("reduce_mean", [ctx.emit("mul", [diff, diff])[0]], reduce)[0]
    std = ctx.emit("sqrt", [ctx.emit("add", [var, ctx.scalar(eps, dt)])[0]])[0]
    y = ctx.emit("div", [diff, std])[0]
    y = ctx.emit("mul", [y, ctx.emit("reshape", [gamma], {"shape": stat_shape})[0]])[0]
    return ctx.emit("add", [y, ctx.emit("reshape", [beta], {"shape": stat_shape})[0]])[0]


@aten("_native_batch_norm_legit_no_training.default")
def _bn_no_training(ctx, a):
    return _batch_norm(ctx, a, training=False)


@aten("_native_batch_norm_legit.default", "_native_batch_norm_legit.no_stats", "native_batch_norm.default")
def _bn(ctx, a):
    return _batch_norm(ctx, a, training=bool(a["training"]))


@aten("native_layer_norm.default")
def _layer_norm(ctx, a):
    """(y, mean, rstd); the statistics are computed only when the graph reads them."""
    x = ctx.value(a["input"])
    norm_shape = tuple(int(d) for d in a["normalized_shape"])
    attrs = {"axis": len(ctx.shape(x)) - len(norm_shape), "epsilon": float(a["eps"])}
    scale = ctx.value(a["weight"]) if a["weight"] is not None else _ones(ctx, norm_shape, x, "ln_scale")
    ins = [x, scale] + ([ctx.value(a["bias"])] if a["bias"] is not None else [])
    y = ctx.emit("layer_norm", ins, attrs)[0]
    if ctx.used_results() & {1, 2}:
        return [y] + ctx.emit("layer_norm_stats", [x], attrs)
    return [y, None, None]


@aten("native_group_norm.default")
def _group_norm(ctx, a):
    """Layer norm of x viewed as (N, G, C/G * HxW), then the per-channel affine."""
    x = ctx.value(a["input"])
    xs = tuple(ctx.shape(x))
    n, c, g = xs[0], xs[1], int(a["group"])
    grouped = ctx.emit("reshape", [x], {"shape": (n, g, prod(xs) // (n * g))})[0]
    one = _ones(ctx, (1,), x, "gn_one")
    y = ctx.emit("layer_norm", [grouped, one], {"axis": 2, "epsilon": float(a["eps"])})[0]
    y = ctx.emit("reshape", [y], {"shape": xs})[0]
    per_channel = (c,) + (1,) * (len(xs) - 2)
    for arg, op in (("weight", "mul"), ("bias", "add")):
        if a[arg] is not None:
            p = ctx.emit("reshape", [ctx.value(a[arg])], {"shape": per_channel})[0]
            y = ctx.emit(op, [y, p])[0]
    return [y, None, None]


def _softmax(kiln_op: str):
    def convert(ctx, a):
        if a["half_to_float"]:
            ctx.unsupported("half_to_float=True (a CUDA-only half-precision variant)")
        x = ctx.value(a["self"])
        axis = normalize_axis(int(a["dim"]), max(len(ctx.shape(x)), 1), "softmax dim")
        return ctx.emit(kiln_op, [x], {"axis": axis})[0]
    return convert


aten("_softmax.default")(_softmax("softmax"))
aten("_log_softmax.default")(_softmax("log_softmax"))


# -- pooling --------------------------------------------------------------------------------------------

def _window(a, nd: int) -> dict:
    """kernel_shape, strides (empty means the kernel), symmetric pads, dilations, ceil_mode."""
    kernel = int_list(a["kernel_size"], nd)
    pad = int_list(a["padding"], nd)
    return {"kernel_shape": kernel, "strides": int_list(a["stride"], nd) if a["stride"] else kernel,
            "pads": pad + pad, "dilations": int_list(a.get("dilation", 1), nd),
            "ceil_mode": int(bool(a["ceil_mode"]))}


def _max_pool(nd: int):
    def convert(ctx, a):
        return [ctx.emit("max_pool", [ctx.value(a["self"])], _window(a, nd))[0], None]
    return convert


aten("max_pool2d_with_indices.default")(_max_pool(2))
aten("max_pool3d_with_indices.default")(_max_pool(3))


def _avg_pool(nd: int):
    def convert(ctx, a):
        if a.get("divisor_override") is not None:
            ctx.unsupported("divisor_override")
        attrs = _window(a, nd)
        attrs["count_include_pad"] = int(bool(a["count_include_pad"]))
        return ctx.emit("avg_pool", [ctx.value(a["self"])], attrs)[0]
    return convert


aten("avg_pool2d.default")(_avg_pool(2))
aten("avg_pool3d.default")(_avg_pool(3))


def _adaptive(kiln_op: str, nd: int, with_indices: bool):
    """Adaptive pooling whose windows are all alike: each input dim a multiple of its output dim."""
    def convert(ctx, a):
        x = ctx.value(a["self"])
        spatial = tuple(ctx.shape(x))[-nd:]
        out = int_list(a["output_size"], nd)
        if any(o < 1 or n % o for n, o in zip(spatial, out)):
            ctx.unsupported(f"output size {out} does not divide the input size {spatial} "
                            "(windows of unequal sizes)")
        kernel = tuple(n // o for n, o in zip(spatial, out))
        if kernel == (1,) * nd:  # one input element per window: the identity
            return [x, None] if with_indices else x
        attrs = {"kernel_shape": kernel, "strides": kernel, "pads": (0,) * (2 * nd)}
        if kiln_op == "avg_pool":
            attrs["count_include_pad"] = 0
        y = ctx.emit(kiln_op, [x], attrs)[0]
        return [y, None] if with_indices else y
    return convert


aten("_adaptive_avg_pool2d.default")(_adaptive("avg_pool", 2, False))
aten("_adaptive_avg_pool3d.default")(_adaptive("avg_pool", 3, False))
aten("adaptive_max_pool2d.default")(_adaptive("max_pool", 2, True))
aten("adaptive_max_pool3d.default")(_adaptive("max_pool", 3, True))


# -- embedding ---------------------------------------------------------------------------------------------

@aten("embedding.default")
def _embedding(ctx, a):
    """Rows of the weight table: a gather on axis 0 (padding_idx only matters for training)."""
    return ctx.emit("gather", [ctx.value(a["weight"]), ctx.value(a["indices"])], {"axis": 0})[0]


# -- upsampling --------------------------------------------------------------------------------------------

def _resize(ctx, a, mode: str, coord: str, nearest: str = "floor", cubic: bool = False) -> str:
    """A kiln resize to torch's recorded output shape.

    torch maps output index i to source coordinate i * s (nearest) or (i + 0.5) * s - 0.5
    (linear, clamped at 0) with s = 1 / scale_factor when a factor is given, else in / out;
    kiln divides by ``scales``, so they are the factors or out / in.
    """
    x = ctx.value(a["input"])
    xs, out = tuple(ctx.shape(x)), ctx.out_type().shape
    nd = len(xs) - 2
    factors = a.get("scale_factors")
    if factors:
        factors = list(factors) * nd if len(factors) == 1 else list(factors)
        spatial = [float(np.float32(f)) for f in factors]
    else:
        spatial = [float(np.float32(o) / np.float32(n)) for o, n in zip(out[2:], xs[2:])]
    attrs = {"mode": mode, "coordinate_transformation_mode": coord, "nearest_mode": nearest,
             "sizes": tuple(out), "scales": (1.0, 1.0) + tuple(spatial)}
    if cubic:
        attrs.update({"cubic_coeff_a": -0.75, "exclude_outside": 0})
    return ctx.emit("resize", [x], attrs)[0]


def _linear_coord(a) -> str:
    # torch's half-pixel mapping keeps the formula for one-pixel outputs (ONNX's
    # pytorch_half_pixel maps those to 0), and kiln clamps the coordinate at 0 as torch does
    return "align_corners" if a["align_corners"] else "half_pixel"


@aten("upsample_nearest1d.vec", "upsample_nearest2d.vec", "upsample_nearest3d.vec", preserve=True)
def _upsample_nearest(ctx, a):
    return _resize(ctx, a, "nearest", "asymmetric")


@aten("_upsample_nearest_exact1d.vec", "_upsample_nearest_exact2d.vec", "_upsample_nearest_exact3d.vec",
      preserve=True)
def _upsample_nearest_exact(ctx, a):
    return _resize(ctx, a, "nearest", "tf_half_pixel_for_nn")


@aten("upsample_linear1d.vec", "upsample_bilinear2d.vec", "upsample_trilinear3d.vec", preserve=True)
def _upsample_linear(ctx, a):
    return _resize(ctx, a, "linear", _linear_coord(a))


@aten("upsample_bicubic2d.vec", preserve=True)
def _upsample_bicubic(ctx, a):
    return _resize(ctx, a, "cubic", _linear_coord(a), cubic=True)
