"""Algebraic clean-ups and BatchNorm folding, as one declarative rule table.

Each rule is ``(pattern, function)`` for the driver in ``passes/rewrite.py``:
- identities: ``x*1``, ``1*x``, ``x+0``, ``0+x``, ``x-0``, ``x/1`` become ``x`` (only when
  broadcasting would not change the shape or dtype of ``x``);
- transposes: two in a row become one, or none when they cancel;
- per-channel scale and shift after a convolution (BatchNorm in inference, or the Mul/Add
  pair that older exporters write) fold into the convolution's weights and bias;
- a per-column scale after a matmul with constant weights folds into those weights;
- GELU written out op by op becomes the ``gelu`` op (``kiln/passes/activations.py``).
"""
from __future__ import annotations

import numpy as np

from kiln.ir.graph import Graph
from kiln.passes import activations
from kiln.passes.rewrite import Any, Const, Match, Op, Rewriter, Rule, apply_rules, is_value


def _keeps_shape(m: Match, rw: Rewriter) -> bool:
    out = m.root.outputs[0].type
    x = rw.type(m.values["x"])
    return tuple(out.shape) == tuple(x.shape) and out.dtype == x.dtype


def _identity(m: Match, rw: Rewriter):
    return m.values["x"] if _keeps_shape(m, rw) else None


def _transposes(m: Match, rw: Rewriter):
    inner = tuple(m.nodes["inner"].attrs["perm"])
    outer = tuple(m.root.attrs["perm"])
    perm = tuple(inner[p] for p in outer)
    if perm == tuple(range(len(perm))):
        return m.values["x"]
    return rw.emit("transpose", [m.values["x"]], {"perm": perm})


# -- folding per-channel affine ops into a convolution ---------------------------------------

def _channel_vector(arr: np.ndarray, out_rank: int, channels: int) -> np.ndarray | None:
    """``arr`` as a length-``channels`` vector if it broadcasts along axis 1 only."""
    a = np.asarray(arr)
    if a.ndim > out_rank:
        return None
    a = a.reshape((1,) * (out_rank - a.ndim) + a.shape)
    if any(n != 1 for k, n in enumerate(a.shape) if k != 1) or a.shape[1] not in (1, channels):
        return None
    return np.broadcast_to(a.reshape(-1), (channels,)).astype(np.float64)


def _conv_parts(m: Match, rw: Rewriter):
    conv = m.nodes["conv"]
    w = rw.constants.get(conv.inputs[1])
    if w is None or w.dtype.kind != "f":
        return None
    bias_name = conv.inputs[2] if len(conv.inputs) > 2 and conv.inputs[2] else None
    bias = rw.constants.get(bias_name) if bias_name else np.zeros(w.shape[0], w.dtype)
    if bias is None:
        return None
    return conv, w, bias


def _new_conv(rw: Rewriter, conv, w: np.ndarray, b: np.ndarray) -> str:
    dtype = rw.constants[conv.inputs[1]].dtype  # fold in float64, store in the model's dtype
    wn = rw.const(w.astype(dtype), "w_folded")
    bn = rw.const(b.astype(dtype), "b_folded")
    return rw.emit("conv", [conv.inputs[0], wn, bn], conv.attrs, hint="conv")


def _fold_scale_shift(m: Match, rw: Rewriter, scale, shift):
    parts = _conv_parts(m, rw)
    if parts is None:
        return None
    conv, w, bias = parts
    rank, oc = len(conv.outputs[0].type.shape), w.shape[0]
    s = _channel_vector(scale, rank, oc) if scale is not None else np.ones(oc)
    t = _channel_vector(shift, rank, oc) if shift is not None else np.zeros(oc)
    if s is None or t is None or m.root.outputs[0].type != conv.outputs[0].type:
        return None
    w2 = w.astype(np.float64) * s.reshape((oc,) + (1,) * (w.ndim - 1))
    return _new_conv(rw, conv, w2, bias.astype(np.float64) * s + t)


def _fold_batch_norm(m, rw):
    return _fold_scale_shift(m, rw, m.arrays["scale"], m.arrays["shift"])


def _fold_mul(m, rw):
    return _fold_scale_shift(m, rw, m.arrays["c"], None)


def _fold_add(m, rw):
    return _fold_scale_shift(m, rw, None, m.arrays["c"])


def _fold_matmul_scale(m: Match, rw: Rewriter):
    """``matmul(x, W) * c`` with ``c`` per output column (or scalar) -> ``matmul(x, W * c)``."""
    mm = m.nodes["mm"]
    w = rw.constants.get(mm.inputs[1])
    c = np.asarray(m.arrays["c"])
    if w is None or w.ndim != 2 or w.dtype.kind != "f" or m.root.outputs[0].type != mm.outputs[0].type:
        return None
    if c.size != 1 and (c.shape[-1] != w.shape[1] or c.size != w.shape[1]):
        return None
    wn = rw.const((w.astype(np.float64) * c.reshape(-1)).astype(w.dtype), "w_scaled")
    return rw.emit("matmul", [mm.inputs[0], wn], mm.attrs)


ONE, ZERO = is_value(1.0), is_value(0.0)
CONV = Op("conv", name="conv")
MATMUL = Op("matmul", name="mm")

RULES: list[Rule] = [
    (Op("mul", Any("x"), Const("one", ONE)), _identity),
    (Op("mul", Const("one", ONE), Any("x")), _identity),
    (Op("add", Any("x"), Const("zero", ZERO)), _identity),
    (Op("add", Const("zero", ZERO), Any("x")), _identity),
    (Op("sub", Any("x"), Const("zero", ZERO)), _identity),
    (Op("div", Any("x"), Const("one", ONE)), _identity),
    (Op("transpose", Op("transpose", Any("x"), name="inner")), _transposes),
    (Op("batch_norm", CONV, Const("scale"), Const("shift")), _fold_batch_norm),
    (Op("mul", CONV, Const("c")), _fold_mul),
    (Op("add", CONV, Const("c")), _fold_add),
    (Op("mul", MATMUL, Const("c")), _fold_matmul_scale),
    *activations.RULES,
]


def simplify_algebra(graph: Graph) -> Graph:
    return apply_rules(graph, RULES)


def equal_constants(constants: dict[str, np.ndarray]) -> dict[str, str]:
    """Each constant that repeats an earlier one (same dtype, shape and bytes) -> that one's
    name. Folding makes such copies: a GRU's recurrent weights were sliced once per time
    step, so a 50-step, 2-layer GRU shipped 50 copies of each (19.5 MB of weights instead
    of 0.66) and streamed a different copy from L3 at every step."""
    import hashlib

    by_layout: dict[tuple, list[str]] = {}
    for name, arr in constants.items():
        by_layout.setdefault((arr.dtype.str, arr.shape), []).append(name)
    same: dict[str, str] = {}
    for names in by_layout.values():
        if len(names) < 2:
            continue  # (hash only where a copy is possible)
        first: dict[bytes, str] = {}
        for name in names:
            digest = hashlib.blake2b(np.ascontiguousarray(constants[name]).tobytes(), digest_size=20).digest()
            if digest in first:
                same[name] = first[digest]
            else:
                first[digest] = name
    return same


def eliminate_common_subexpressions(graph: Graph) -> Graph:
    """Equal constants become one (``equal_constants``); nodes with the same op, inputs and
    attributes compute the same value: keep the first."""
    from kiln.ir.graph import Node

    seen: dict[tuple, str] = {}
    rename: dict[str, str] = equal_constants(graph.constants)
    outputs = {v.name for v in graph.outputs}
    nodes = []
    for n in graph.nodes:
        inputs = tuple(rename.get(i, i) for i in n.inputs)
        n = Node(n.op, inputs, n.outputs, n.attrs, n.name)
        key = (n.op, inputs, repr(sorted(n.attrs.items())), tuple(o.type for o in n.outputs))
        if key in seen and len(n.outputs) == 1 and n.outputs[0].name not in outputs:
            rename[n.outputs[0].name] = seen[key]
            continue
        if len(n.outputs) == 1:
            seen.setdefault(key, n.outputs[0].name)
        nodes.append(n)
    used = {i for n in nodes for i in n.inputs} | outputs
    return graph.replace(nodes=tuple(nodes), constants={k: v for k, v in graph.constants.items() if k in used})
