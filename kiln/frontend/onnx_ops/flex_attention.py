"""Converter for FlexAttention (ai.onnx.preview, opset 1): attention with modifier subgraphs.

    Scores = (Q @ K^T) * scale;  Scores = score_mod(Scores);  P = Softmax(Scores);
    P = prob_mod(P);  Y = P @ V

Query head h reads key/value head h // (H_q / H_kv): the query heads are grouped as
[B, H_kv, G, L, E] so one broadcast ``matmul`` serves every group. A modifier (``score_mod``,
``prob_mod``: a graph of one rank-4 tensor in and out, a causal mask or a soft cap, say) is
inlined: its nodes are converted in place, its own values renamed apart, its input bound to
the scores or probabilities; outer values it reads stay as they are. A modifier with
subgraphs of its own, or with ops Kiln cannot convert, leaves the op unsupported.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from kiln.frontend.onnx_ops import converter, lookup
from kiln.frontend.onnx_ops.nn import static_shape


def _inline(ctx, graph: onnx.GraphProto, value: str, prefix: str) -> str:
    """Convert the one-in, one-out modifier ``graph`` applied to ``value``; its output's name."""
    if len(graph.input) != 1 or len(graph.output) != 1:
        ctx.fail(f"a modifier subgraph takes one tensor and returns one; this one has {len(graph.input)} "
                 f"inputs and {len(graph.output)} outputs")
    own = {graph.input[0].name} | {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
    rename = {name: f"{prefix}{name}" for name in own}
    ctx.names[rename[graph.input[0].name]] = value
    for t in graph.initializer:
        ctx.names[rename[t.name]] = ctx.add_const(numpy_helper.to_array(t), "flex_const")
    outer, opset = ctx.node, ctx.opset
    try:
        for node in graph.node:
            if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
                ctx.unsupported("a FlexAttention modifier with subgraphs of its own")
            if lookup(node.op_type, node.domain, opset) is None:
                ctx.unsupported(f"a FlexAttention modifier uses {node.op_type}, which Kiln does not convert")
            local = onnx.NodeProto()
            local.CopyFrom(node)
            del local.input[:], local.output[:]
            local.input.extend(rename.get(i, i) for i in node.input)
            local.output.extend(rename.get(o, o) for o in node.output)
            ctx.convert(local, opset)
    finally:
        ctx.node, ctx.opset = outer, opset
    return ctx.names[rename[graph.output[0].name]]


@converter("FlexAttention", since=1, domain="ai.onnx.preview")
def _flex_attention(ctx, node):
    q, k, v = ctx.input(0), ctx.input(1), ctx.input(2)
    b, hq, lq, e = static_shape(ctx, q, "FlexAttention Q")
    bk, hkv, lk, ek = static_shape(ctx, k, "FlexAttention K")
    _, hv, lv, ev = static_shape(ctx, v, "FlexAttention V")
    if (bk, ek) != (b, e) or (hv, lv) != (hkv, lk) or hq % hkv:
        ctx.fail(f"Q {(b, hq, lq, e)}, K {(bk, hkv, lk, ek)} and V {(b, hv, lv, ev)} do not fit (the query "
                 "heads must be a multiple of the key/value heads)")
    scale = ctx.attr("scale")
    scale = float(scale) if scale is not None else 1.0 / np.sqrt(e)
    dtype = ctx.type(q).dtype.np
    g = hq // hkv
    name = node.name or "flex"

    def emit(op, ins, attrs=None):
        return ctx.emit(op, ins, attrs or {})[0]

    qg = emit("reshape", [q], {"shape": (b, hkv, g, lq, e)})
    kt = emit("reshape", [emit("transpose", [k], {"perm": (0, 1, 3, 2)})], {"shape": (b, hkv, 1, e, lk)})
    scores = emit("mul", [emit("matmul", [qg, kt]), ctx.add_const(np.array(scale, dtype), "flex_scale")])
    scores = emit("reshape", [scores], {"shape": (b, hq, lq, lk)})
    mods = {a.name: a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH}
    if "score_mod" in mods:
        scores = _inline(ctx, mods["score_mod"], scores, f"{name}__score_mod__")
    probs = emit("softmax", [scores], {"axis": 3})
    if "prob_mod" in mods:
        probs = _inline(ctx, mods["prob_mod"], probs, f"{name}__prob_mod__")
    pg = emit("reshape", [probs], {"shape": (b, hkv, g, lq, lk)})
    vg = emit("reshape", [v], {"shape": (b, hkv, 1, lk, ev)})
    y = emit("matmul", [pg, vg])
    return ctx.emit("reshape", [y], {"shape": (b, hq, lq, ev)}, out_names=ctx.outputs())
