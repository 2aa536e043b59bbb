"""Winograd pass: 3x3 stride-1 convolutions in NCHWc as transform, batched GEMM, transform.

Runs after ``layout`` (so convolutions are ``conv_nchwc`` with packed weights, and the
GEMM's B is packed in column panels as ``pack_matmul`` would). An eligible convolution

    y = conv_nchwc(x, w, bias)
becomes
    v = winograd_input(x)                    (alpha^2, N, TH, TW, C/bi, bi)
    t = matmul_packed(reshape(v), U)         (alpha^2, N*TH*TW, K), U = G w G^T, packed at compile time
    y = winograd_output(reshape(t), bias)    the same value, in the same NCHWc block

(``kiln/ir/ops/winograd.py`` has the algebra). The epilogue the convolution took (ReLU,
residual add) fuses into the output transform the same way.

Which convolutions: the choice is by shape, from measurements on the host (AVX-512,
ResNet-18's layers; docs/benchmarks.md). The transformed weights are (m+2)^2 / 9 times the
direct ones (4x for F(4x4)) and every run streams them once, so a layer with few output
tiles and many channels is memory-bound and stays direct (``MIN_TILES``). F(4x4) where
the output's sides are multiples of 4, else F(2x2) where they are even, else F(2x2) over
a grid one row or column larger than the output, cropped by a ``slice``.
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
# weight is used once per tile, so tiles / 4 is the GEMMs' multiply-adds per weight byte.
# ResNet-18's 7x7x512 convs as F(2x2) (16 tiles, 16.8 MB of transformed weights each) ran
# faster alone (0.56 -> 0.42 ms, 2 threads) but slowed the whole network by 1.5 ms: there
# the weights come from DRAM. 28x28 (49 tiles of F(4x4)) and 14x14 (49 of F(2x2)) gain.
MIN_TILES = 32


def unpack_dense(packed: np.ndarray) -> np.ndarray:
    """(OC/b, C/bi, KH, KW, bi, b) -> (OC, C, KH, KW), the inverse of ``layout.pack_dense``."""
    ocb, icb, kh, kw, bi, b = packed.shape
    return packed.transpose(0, 5, 1, 4, 2, 3).reshape(ocb * b, icb * bi, kh, kw)


def output_tile(node: Node, types, constants, panel: int) -> tuple[int, tuple[int, int]] | None:
    """``(m, (tile rows, tile columns))`` for ``node``, or None when it stays a direct convolution.

    Whole tiles first (F(4x4), then F(2x2)); else F(2x2) over a grid that overhangs the
    output by one row or column (ResNet's 7x7 stage: 4 x 4 tiles for 49 outputs), which
    ``winograd_output`` computes in full and a ``slice`` crops."""
    if node.op != "conv_nchwc" or node.attrs.get("depthwise") or node.inputs[1] not in constants:
        return None
    w = constants[node.inputs[1]]
    if w.ndim != 6 or w.shape[2:4] != (3, 3) or w.dtype != np.float32:
        return None
    strides, _, _, dil = window_attrs(node.attrs, 2, "conv_nchwc")
    if strides != (1, 1) or dil != (1, 1):
        return None
    n, _, oh, ow, _ = types[node.outputs[0].name].shape
    if not isinstance(n, int) or (w.shape[0] * w.shape[5]) % panel:
        return None
    for m, whole in ((4, True), (2, True), (2, False)):
        if whole and (oh % m or ow % m):
            continue
        grid = (-(-oh // m), -(-ow // m))
        if n * grid[0] * grid[1] >= MIN_TILES:
            return m, grid
    return None


def winograd_convs(graph: Graph, panel: int) -> Graph:
    types = graph.value_types()
    constants = dict(graph.constants)
    nodes: list[Node] = []
    for node in graph.nodes:
        plan = output_tile(node, types, constants, panel)
        if plan is None:
            nodes.append(node)
            continue
        nodes += _rewrite(node, *plan, types, constants, panel)
    used = {i for n in nodes for i in n.inputs}
    return graph.replace(nodes=tuple(nodes), constants={k: v for k, v in constants.items() if k in used})


def _rewrite(node: Node, m: int, tiles: tuple[int, int], types, constants, panel: int) -> list[Node]:
    x, out = node.inputs[0], node.outputs[0]
    n, kb, oh, ow, block = out.type.shape
    _, (pt, pl), (pb, pr), _ = window_attrs(node.attrs, 2, "conv_nchwc")
    # an overhanging grid reads zeros past the bottom and right edges
    pb, pr = pb + tiles[0] * m - oh, pr + tiles[1] * m - ow
    w = unpack_dense(constants[node.inputs[1]])
    u = f"{node.inputs[1]}__winograd{m}"
    constants[u] = pack_panels(transform_weights(w, m), panel)
    types[u] = TensorType(constants[u].shape, types[node.inputs[1]].dtype)

    def add(name: str, op: str, inputs, attrs) -> Node:
        t: TensorType = ops.infer_types(op, [types[i] for i in inputs], attrs)[0]
        types[name] = t
        return Node(op, tuple(inputs), (Value(name, t),), attrs)

    transform_in = add(f"{out.name}__wgin", "winograd_input", [x], {"m": m, "tiles": tiles, "pads": (pt, pl, pb, pr)})
    v = transform_in.outputs[0]
    a2, _, _, _, cb, bi = v.type.shape
    operand = add(f"{v.name}__rows", "reshape", [v.name], {"shape": (a2, n * tiles[0] * tiles[1], cb * bi)})
    gemm = add(f"{out.name}__wgmm", "matmul_packed", [operand.outputs[0].name, u], {"panel": panel})
    product = add(f"{out.name}__wgmm__tiles", "reshape", [gemm.outputs[0].name],
                  {"shape": (a2, n) + tiles + (kb, block)})
    inputs = [product.outputs[0].name] + [i for i in node.inputs[2:3] if i]
    attrs = {"m": m, "tiles": tiles, "block": block}
    if tiles[0] * m == oh and tiles[1] * m == ow:
        return [transform_in, operand, gemm, product,
                Node("winograd_output", tuple(inputs), node.outputs, attrs, node.name)]
    full = add(f"{out.name}__wgout", "winograd_output", inputs, attrs)
    crop = Node("slice", (full.outputs[0].name,), node.outputs,
                {"starts": (0,) * 5, "ends": (n, kb, oh, ow, block), "steps": (1,) * 5}, node.name)
    return [transform_in, operand, gemm, product, full, crop]
