"""Converter for LinearAttention (opset 27): the recurrence unrolled over the tokens.

ONNX defines the op as the sequential recurrence over a state S (B, H_kv, d_k, d_v):

    linear       S = S + k v^T
    gated        S = exp(g) S + k v^T
    delta        S = S + beta k (v - S^T k)^T
    gated_delta  S' = exp(g) S;  S = S' + beta k (v - S'^T k)^T

and o_t = scale q_t^T S per token, each query head reading the state of its key/value head
(grouped-query attention: H_q a multiple of H_kv). As RNN/GRU/LSTM (recurrent.py), each
token becomes a handful of graph ops -- outer products as broadcast multiplies, S^T k and
q^T S as batched matmuls -- which suits decoding (T = 1) and short prefills; ``MAX_TOKENS``
bounds the unrolling (a chunked kernel for long prefills is not built).
"""
from __future__ import annotations

import numpy as np

from kiln.frontend.onnx_ops import converter
from kiln.frontend.onnx_ops.nn import static_shape
from kiln.frontend.onnx_ops.shape import take_range

RULES = ("linear", "gated", "delta", "gated_delta")
MAX_TOKENS = 256


@converter("LinearAttention", since=27)
def _linear_attention(ctx, node):
    q, k, v = ctx.input(0), ctx.input(1), ctx.input(2)
    rule = ctx.attr("update_rule", "gated_delta")
    if rule not in RULES:
        ctx.fail(f"update_rule {rule!r} is not one of {', '.join(RULES)}")
    hq, hkv = int(ctx.attr("q_num_heads")), int(ctx.attr("kv_num_heads"))
    bq, t, qw = static_shape(ctx, q, "LinearAttention query")
    _, _, kw = static_shape(ctx, k, "LinearAttention key")
    _, _, vw = static_shape(ctx, v, "LinearAttention value")
    if hq < 1 or hkv < 1 or hq % hkv or qw % hq or kw % hkv or vw % hkv or qw // hq != kw // hkv:
        ctx.fail(f"heads {hq}/{hkv} do not fit query {qw}, key {kw}, value {vw} widths")
    if t > MAX_TOKENS:
        ctx.unsupported(f"LinearAttention over {t} tokens: Kiln unrolls the recurrence up to {MAX_TOKENS}")
    b, dk, dv, group = bq, qw // hq, vw // hkv, hq // hkv
    scale = float(ctx.attr("scale", 0.0)) or 1.0 / np.sqrt(dk)
    io_dtype = ctx.type(q).dtype
    # half-precision inputs: the recurrence runs in float32 (the state would otherwise round at
    # every op of every token), the outputs round once at the end, as ONNX's reference does
    wide = io_dtype.is_float and io_dtype.itemsize < 4
    dtype = np.float32 if wide else io_dtype.np

    def widen(x):
        return ctx.emit("cast", [x], {"to": "float32"})[0] if wide else x

    q, k, v = widen(q), widen(k), widen(v)
    gated, delta = rule in ("gated", "gated_delta"), rule in ("delta", "gated_delta")
    decay = widen(ctx.input(4)) if ctx.has_input(4) else None
    beta = widen(ctx.input(5)) if ctx.has_input(5) else None
    if gated and decay is None or delta and beta is None:
        ctx.fail(f"update_rule {rule!r} needs the {'decay' if gated and decay is None else 'beta'} input")

    def emit(op, ins, attrs=None):
        return ctx.emit(op, ins, attrs or {})[0]

    def token(x, i, shape):
        """Token i of a (B, T, width) input, reshaped to ``shape``."""
        return emit("reshape", [take_range(ctx, x, 1, i, i + 1)], {"shape": shape})

    if ctx.has_input(3):
        state = widen(ctx.input(3))
        if tuple(ctx.shape(state)) != (b, hkv, dk, dv):
            ctx.fail(f"past_state has shape {tuple(ctx.shape(state))}; expected {(b, hkv, dk, dv)}")
    else:
        state = ctx.add_const(np.zeros((b, hkv, dk, dv), dtype), "la_state")
    if decay is not None:
        dw = ctx.shape(decay)[-1]
        if dw not in (hkv, hkv * dk):
            ctx.fail(f"decay's last dim is {dw}; expected {hkv} (per head) or {hkv * dk} (per key dim)")
        decay_shape = (b, hkv, 1, 1) if dw == hkv else (b, hkv, dk, 1)
    if beta is not None:
        bw = ctx.shape(beta)[-1]
        if bw not in (1, hkv):
            ctx.fail(f"beta's last dim is {bw}; expected {hkv} or 1")
    scale_c = ctx.add_const(np.array(scale, dtype), "la_scale")
    outputs = []
    for i in range(t):
        kt = token(k, i, (b, hkv, dk, 1))
        vt = token(v, i, (b, hkv, 1, dv))
        if gated:
            state = emit("mul", [state, emit("exp", [token(decay, i, decay_shape)])])
        if delta:
            kt_row = emit("reshape", [kt], {"shape": (b, hkv, 1, dk)})
            recalled = emit("matmul", [kt_row, state])  # (S^T k)^T: (B, H, 1, dv)
            bt = token(beta, i, (b, ctx.shape(beta)[-1], 1, 1))
            update = emit("mul", [emit("mul", [kt, emit("sub", [vt, recalled])]), bt])
        else:
            update = emit("mul", [kt, vt])
        state = emit("add", [state, update])
        qt = token(q, i, (b, hkv, group, dk))
        ot = emit("mul", [emit("matmul", [qt, state]), scale_c])  # (B, H_kv, G, dv)
        outputs.append(emit("reshape", [ot], {"shape": (b, 1, hq * dv)}))
    out_names = ctx.outputs()
    y = outputs[0] if len(outputs) == 1 else emit("concat", outputs, {"axis": 1})
    final = ("cast", {"to": io_dtype.value}) if wide else ("identity", {})
    results = [ctx.emit(final[0], [y], final[1], out_names=out_names[:1])[0]]
    if len(out_names) > 1 and out_names[1]:
        results.append(ctx.emit(final[0], [state], final[1], out_names=out_names[1:2])[0])
    return results
