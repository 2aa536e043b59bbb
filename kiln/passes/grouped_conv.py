"""Grouped 1x1 convolutions as batched matmuls (CPU targets, before the layout pass).

A 1x1 convolution with ``G`` groups (ShuffleNet's pointwise layers, ResNeXt's and RegNet's
group projections) is ``G`` independent products of ``OC/G x C/G`` weights with
``C/G x H*W`` pixels. As a ``conv`` its register tile ran over output channels, where a
tile that crosses a group boundary reads a different input row per channel: no input value
is shared across the tile (ShuffleNet's 136-channel layers, 4 groups: 20-36 GFLOP/s, 0.15-
0.36x ONNX Runtime). Written as

    x [N, C, H, W] --reshape--> [N, G, C/G, H*W]
    y = matmul(W [G, OC/G, C/G], x') + b [G, OC/G, 1] --reshape--> [N, OC, H, W]

every tile stays inside one group: rows are a group's output channels, columns its pixels
(contiguous in NCHW), and the bias fuses as the matmul's epilogue. Both reshapes are
views. The multiply-adds are the convolution's, in the same order per output. Pixels that
are not a whole number of vectors (14 x 14, 7 x 7) are padded with zero columns first
(a copy of the input, 1/K of the products' work) and sliced off after: a 28-column tile
had gcc mix vector widths and keep the accumulators in memory.

Dense (1 group) and depthwise convolutions are left to the NCHWc layout pass.
"""
from __future__ import annotations

from kiln.ir.graph import Graph
from kiln.passes.rewrite import Any, Const, Match, Op, Rewriter, apply_rules


def _grouped_pointwise(node) -> bool:
    a = node.attrs
    group = int(a.get("group", 1))
    return (group > 1 and tuple(a.get("kernel_shape", (1, 1))) == (1, 1)
            and all(int(s) == 1 for s in a.get("strides", (1, 1)))
            and all(int(p) == 0 for p in a.get("pads", (0, 0, 0, 0))))


def _as_matmul(m: Match, rw: Rewriter, lanes: int):
    conv = m.nodes["conv"]
    x, w = rw.type(m.values["x"]), m.arrays["w"]
    group = int(conv.attrs["group"])
    if len(x.shape) != 4 or w.ndim != 4 or w.shape[2:] != (1, 1) or not all(isinstance(d, int) for d in x.shape):
        return None
    n, c, h, wd = x.shape
    oc, cg = w.shape[0], w.shape[1]
    if cg == 1 or c != cg * group or oc % group or x.dtype != conv.outputs[0].type.dtype:
        return None  # one input channel per group (depthwise-like): a K = 1 product
    pixels = h * wd
    padded = -(-pixels // lanes) * lanes if pixels > lanes else pixels
    xg = rw.emit("reshape", [m.values["x"]], {"shape": (n, group, cg, pixels)}, hint="groups")
    if padded != pixels:
        xg = rw.emit("pad", [xg], {"pads": (0, 0, 0, 0, 0, 0, 0, padded - pixels)}, hint="groups")
    y = rw.emit("matmul", [rw.const(w.reshape(group, oc // group, cg), "w_groups"), xg], hint="grouped")
    if "b" in m.arrays:
        y = rw.emit("add", [y, rw.const(m.arrays["b"].reshape(group, oc // group, 1), "b_groups")], hint="grouped")
    if padded != pixels:
        y = rw.emit("slice", [y], {"starts": (0, 0, 0, 0), "ends": (n, group, oc // group, pixels),
                                   "steps": (1, 1, 1, 1)}, hint="grouped")
    return rw.emit("reshape", [y], {"shape": (n, oc, h, wd)}, hint="grouped")


def grouped_convs_as_matmuls(graph: Graph, lanes: int) -> Graph:
    """``lanes``: the vector width in floats; the pixel axis (the matmul's columns) is padded
    with zeros to a multiple of it (196 -> 208 at 14 x 14, 49 -> 64 at 7 x 7), so the
    register tile is whole vectors, and the extra columns are sliced off after the bias."""
    def rule(m, rw):
        return _as_matmul(m, rw, lanes)
    return apply_rules(graph, [
        (Op("conv", Any("x"), Const("w"), Const("b"), name="conv", where=_grouped_pointwise), rule),
        (Op("conv", Any("x"), Const("w"), name="conv", where=_grouped_pointwise), rule),
    ])
