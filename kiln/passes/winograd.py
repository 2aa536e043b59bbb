"""Winograd pass: 3x3 stride-1 convolutions in NCHWc as transform, batched GEMM, transform.

Runs after ``layout`` (so convolutions are ``conv_nchwc`` with packed weights, and the
GEMM's B is packed in column panels as ``pack_matmul`` would). An eligible convolution

    y = conv_nchwc(x, w, bias)
becomes
    v = winograd_input(x)                    (alpha^2, tiles, C)
    t = matmul_packed(v, U)                  (alpha^2, tiles, K), U = G w G^T, packed at compile time
    y = winograd_output(t, bias)             the same value, in the same NCHWc block

(``kiln/ir/ops/winograd.py`` has the algebra). The epilogue the convolution took (ReLU,
residual add) fuses into the output transform the same way.

Which convolutions: the choice is by shape, from measurements on the host (AVX-512, one
core, ResNet-18's layers; docs/benchmarks.md). The transformed weights are (m+2)^2 / 9
times the direct ones (4x for F(4x4)) and every run streams them once, so a layer with
few output tiles and many channels (ResNet-18's 7x7x512 stage: 4 tiles, 38 MB of
transformed weights) is memory-bound and stays direct. F(4x4) where the output's sides are
multiples of 4, F(2x2) where they are even, direct otherwise (no partial tiles).
"""
from __future__ import annotations

import numpy as np

from kiln.ir import ops
from kiln.ir.graph import Graph, Node, TensorType, Value
from kiln.ir.ops import winograd as _winograd_ops  # noqa: F401  (registers the transform ops)
from kiln.ir.ops.nn import window_attrs
from kiln.ir.ops.winograd import alpha, transform_weights
from kiln.passes.pack_matmul import pack_panels

# A convolution goes Winograd only with at least this many output tiles: each transformed
# weight is used once per tile, so tiles / 4 is the GEMMs' multiply-adds per weight byte,
# and too few tiles also starve the GEMMs' register tiles (their rows).
MIN_TILES = 16


def unpack_dense(packed: np.ndarray) -> np.ndarray:
    """(OC/b, C/bi, KH, KW, bi, b) -> (OC, C, KH, KW), the inverse of ``layout.pack_dense``."""
    ocb, icb, kh, kw, bi, b = packed.shape
    return packed.transpose(0, 5, 1, 4, 2, 3).reshape(ocb * b, icb * bi, kh, kw)


def output_tile(node: Node, types, constants, panel: int) -> int | None:
    """The Winograd tile m for ``node``, or None when it stays a direct convolution."""
    if node.op != "conv_nchwc" or node.attrs.get("depthwise") or node.inputs[1] not in constants:
        return None
    w = constants[node.inputs[1]]
    if w.ndim != 6 or w.shape[2:4] != (3, 3) or w.dtype != np.float32:
        return None
    strides, _, _, dil = window_attrs(node.attrs, 2, "conv_nchwc")
    if strides != (1, 1) or dil != (1, 1):
        return None
    n, _, oh, ow, _ = types[node.outputs[0].name].shape
    k = w.shape[0] * w.shape[5]
    if not isinstance(n, int) or k % panel:
        return None
    for m in (4, 2):
        if oh % m or ow % m:
            continue
        if n * (oh // m) * (ow // m) >= MIN_TILES:
            return m
    return None


def winograd_convs(graph: Graph, panel: int) -> Graph:
    types = graph.value_types()
    constants = dict(graph.constants)
    nodes: list[Node] = []
    for node in graph.nodes:
        m = output_tile(node, types, constants, panel)
        if m is None:
            nodes.append(node)
            continue
        nodes += _rewrite(node, m, types, constants, panel)
    used = {i for n in nodes for i in n.inputs}
    return graph.replace(nodes=tuple(nodes), constants={k: v for k, v in constants.items() if k in used})


def _rewrite(node: Node, m: int, types, constants, panel: int) -> list[Node]:
    x, out = node.inputs[0], node.outputs[0]
    n, _, oh, ow, block = out.type.shape
    _, pads_begin, pads_end, _ = window_attrs(node.attrs, 2, "conv_nchwc")
    tiles = (oh // m, ow // m)
    w = unpack_dense(constants[node.inputs[1]])
    u = f"{node.inputs[1]}__winograd{m}"
    constants[u] = pack_panels(transform_weights(w, m), panel)

    def value(name: str, op: str, inputs, attrs) -> tuple[Value, Node]:
        t: TensorType = ops.infer_types(op, [types[i] for i in inputs], attrs)[0]
        types[name] = t
        v = Value(name, t)
        return v, Node(op, tuple(inputs), (v,), attrs)

    types[u] = TensorType(constants[u].shape, types[node.inputs[1]].dtype)
    v, transform_in = value(f"{out.name}__wgin", "winograd_input", [x],
                            {"m": m, "tiles": tiles, "pads": tuple(pads_begin) + tuple(pads_end)})
    t, gemm = value(f"{out.name}__wgmm", "matmul_packed", [v.name, u], {"panel": panel})
    inputs = (t.name,) + tuple(i for i in node.inputs[2:3] if i)
    transform_out = Node("winograd_output", inputs, node.outputs, {"m": m, "tiles": tiles, "block": block},
                         node.name)
    return [transform_in, gemm, transform_out]
