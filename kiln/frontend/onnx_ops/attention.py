"""Converters for Attention (opsets 23-25) and RotaryEmbedding (23).

Attention: 3-D inputs (B, S, heads * head_size) are split into heads with reshape and
transpose; an internal KV cache (past_key/past_value) is concatenated on the sequence axis
(giving present_key/present_value); then the 4-D ``attention`` op computes Y and, when the
node asks for it, the qk_matmul_output.
"""
from __future__ import annotations

import numpy as np
import onnx

from kiln.frontend.onnx_ops import converter
from kiln.frontend.onnx_ops.nn import static_shape
from kiln.ir.dtype import DType

_SOFTMAX_TYPES = {onnx.TensorProto.FLOAT: DType.float32, onnx.TensorProto.FLOAT16: DType.float16,
                  onnx.TensorProto.DOUBLE: DType.float64}


def _heads(ctx, x: str, heads: int, what: str) -> str:
    """(B, S, heads * size) -> (B, heads, S, size)."""
    b, s, hidden = static_shape(ctx, x, what)
    if heads < 1 or hidden % heads:
        ctx.fail(f"{what} hidden size {hidden} is not divisible by {heads} heads")
    x = ctx.emit("reshape", [x], {"shape": (b, s, heads, hidden // heads)})[0]
    return ctx.emit("transpose", [x], {"perm": (0, 2, 1, 3)})[0]


def _optional(ctx, i: int):
    return ctx.input(i) if ctx.has_input(i) else None


def _out(ctx, i: int):
    outs = ctx.outputs()
    return outs[i] if i < len(outs) and outs[i] else None


def _attention_attrs(ctx, q4: str, past_len: int) -> dict:
    d = static_shape(ctx, q4, "Q")[3]
    scale = ctx.attr("scale")
    scale = 1.0 / np.sqrt(d) if scale is None else float(scale)
    dt = ctx.type(q4).dtype.np
    mode = int(ctx.attr("qk_matmul_output_mode", 0))
    if mode not in (0, 1, 2, 3):
        ctx.fail(f"qk_matmul_output_mode must be 0..3; got {mode}")
    precision = int(ctx.attr("softmax_precision", 0) or 0)
    if precision and precision not in _SOFTMAX_TYPES:
        ctx.unsupported(f"softmax_precision {onnx.TensorProto.DataType.Name(precision)}")
    return {
        # Q and K are each scaled by sqrt(scale), rounded to their type, as the reference does
        "sqrt_scale": float(dt.type(np.sqrt(scale))),
        "is_causal": bool(ctx.attr("is_causal", 0)),
        "softcap": float(ctx.attr("softcap", 0.0) or 0.0),
        "left_window": int(ctx.attr("left_window_size", -1)),
        "right_window": int(ctx.attr("right_window_size", -1)),
        "softmax_dtype": _SOFTMAX_TYPES[precision].value if precision else None,
        "past_len": past_len,
        "qk_mode": mode if _out(ctx, 3) else -1,
    }


@converter("Attention", since=23)
def _attention(ctx, node):
    q, k, v = ctx.input(0), ctx.input(1), ctx.input(2)
    rank = len(static_shape(ctx, q, "Q"))
    if rank == 3:
        hq, hkv = ctx.attr("q_num_heads"), ctx.attr("kv_num_heads")
        if hq is None or hkv is None:
            ctx.fail("3-D inputs need the q_num_heads and kv_num_heads attributes")
        q, k, v = _heads(ctx, q, int(hq), "Q"), _heads(ctx, k, int(hkv), "K"), _heads(ctx, v, int(hkv), "V")
    elif rank != 4:
        ctx.fail(f"Q must be 3-D or 4-D; got rank {rank}")
    past_k, past_v, nonpad = _optional(ctx, 4), _optional(ctx, 5), _optional(ctx, 6)
    if (past_k is None) != (past_v is None):
        ctx.fail("past_key and past_value must be given together")
    if past_k is not None and nonpad is not None:
        ctx.fail("nonpad_kv_seqlen cannot be combined with past_key/past_value")
    past_len = 0
    if past_k is not None:
        past_len = static_shape(ctx, past_k, "past_key")[2]
        k = ctx.emit("concat", [past_k, k], {"axis": 2}, out_names=[_out(ctx, 1)] if _out(ctx, 1) else None)[0]
        v = ctx.emit("concat", [past_v, v], {"axis": 2}, out_names=[_out(ctx, 2)] if _out(ctx, 2) else None)[0]
    elif _out(ctx, 1) or _out(ctx, 2):
        ctx.fail("present_key/present_value need past_key/past_value inputs")
    attrs = _attention_attrs(ctx, q, past_len)
    mask = _optional(ctx, 3)
    attrs.update(has_mask=mask is not None, has_nonpad=nonpad is not None)
    ins = [q, k, v] + [n for n in (mask, nonpad) if n is not None]
    y4 = ctx.fresh("attn_y") if rank == 3 else (_out(ctx, 0) or ctx.fresh("attn_y"))
    names = [y4] + ([_out(ctx, 3)] if attrs["qk_mode"] >= 0 else [])
    outs = ctx.emit("attention", ins, attrs, out_names=names)
    y = outs[0]
    if rank == 3:
        b, h, s, dv = ctx.shape(y)
        y = ctx.emit("transpose", [y], {"perm": (0, 2, 1, 3)})[0]
        y = ctx.emit("reshape", [y], {"shape": (b, s, h * dv)}, out_names=[_out(ctx, 0)] if _out(ctx, 0) else None)[0]
    return [y, k if past_k is not None else "", v if past_k is not None else "",
            outs[1] if len(outs) > 1 else ""]


@converter("RotaryEmbedding", since=23)
def _rotary_embedding(ctx, node):
    x = ctx.input(0)
    xs = static_shape(ctx, x, "RotaryEmbedding input")
    heads = int(ctx.attr("num_heads", 0) or 0)
    if len(xs) == 3 and not heads:
        ctx.fail("3-D inputs (B, S, hidden) need the num_heads attribute")
    attrs = {"num_heads": heads or xs[1], "rotary_dim": int(ctx.attr("rotary_embedding_dim", 0) or 0),
             "interleaved": int(ctx.attr("interleaved", 0))}
    ins = [x, ctx.input(1), ctx.input(2)] + ([ctx.input(3)] if ctx.has_input(3) else [])
    return ctx.emit("rotary_embedding", ins, attrs, out_names=ctx.outputs())
