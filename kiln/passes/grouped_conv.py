"""Grouped convolutions on CPU targets, before the layout pass: 1x1 ones as batched
matmuls, ones with larger windows and a few wide groups as one dense conv per group.

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

Dense (1 group) and depthwise convolutions are left to the NCHWc layout pass, as are
grouped windows with many or narrow groups (ResNeXt's 32 groups of 4 channels).
"""
from __future__ import annotations

from kiln.ir import ops
from kiln.ir.graph import Graph
from kiln.passes.rewrite import Any, Const, Match, Op, Rewriter, apply_rules


def _grouped(node) -> bool:
    return int(node.attrs.get("group", 1)) > 1


def pointwise(conv, w) -> bool:
    """A 1x1 window, stride 1, no padding: each output pixel reads its own input pixel."""
    a = conv.attrs
    return (w.ndim == 4 and w.shape[2:] == (1, 1) and all(int(s) == 1 for s in a.get("strides", (1, 1)))
            and all(int(p) == 0 for p in a.get("pads", (0, 0, 0, 0))))


def _as_matmul(m: Match, rw: Rewriter, lanes: int, made: set[str]):
    conv = m.nodes["conv"]
    x, w = rw.type(m.values["x"]), m.arrays["w"]
    group = int(conv.attrs.get("group", 1))
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
    made.add(y)
    if "b" in m.arrays:
        y = rw.emit("add", [y, rw.const(m.arrays["b"].reshape(group, oc // group, 1), "b_groups")], hint="grouped")
    if padded != pixels:
        y = rw.emit("slice", [y], {"starts": (0, 0, 0, 0), "ends": (n, group, oc // group, pixels),
                                   "steps": (1, 1, 1, 1)}, hint="grouped")
    return rw.emit("reshape", [y], {"shape": (n, oc, h, wd)}, hint="grouped")


# Groups a convolution with larger windows is split into; more (ResNeXt's 32) stay one conv.
MAX_SPLIT_GROUPS = 8
MIN_GROUP_CHANNELS = 8  # per group, in and out: a channel block of at least 8 lanes


def _split_groups(m: Match, rw: Rewriter):
    """A grouped KxK convolution with a few wide groups (AlexNet's 5x5 and 3x3 layers, 2
    groups of 48-192 channels) as one dense convolution per group on its channel slice,
    concatenated: each runs in NCHWc with the dense rule (the layout pass keeps channel
    slices and the concat blocked), instead of a plain conv whose channel tile crossed the
    group boundary (AlexNet's 5x5 layer: 64 GFLOP/s)."""
    conv = m.nodes["conv"]
    x, w = rw.type(m.values["x"]), m.arrays["w"]
    group = int(conv.attrs["group"])
    if len(x.shape) != 4 or w.ndim != 4 or not isinstance(x.shape[1], int) or group > MAX_SPLIT_GROUPS:
        return None
    oc, cg = w.shape[0], w.shape[1]
    ocg = oc // group
    if x.shape[1] != cg * group or oc % group or min(cg, ocg) < MIN_GROUP_CHANNELS or cg % 4 or ocg % 4:
        return None
    n, _, h, wd = x.shape
    bias = m.arrays.get("b")
    attrs = {k: v for k, v in conv.attrs.items() if k != "group"}
    parts = []
    for g in range(group):
        xs = rw.emit("slice", [m.values["x"]], {"starts": (0, g * cg, 0, 0), "ends": (n, (g + 1) * cg, h, wd),
                                                "steps": (1, 1, 1, 1)}, hint="group_in")
        inputs = [xs, rw.const(w[g * ocg:(g + 1) * ocg], "w_group")]
        if bias is not None:
            inputs.append(rw.const(bias[g * ocg:(g + 1) * ocg], "b_group"))
        parts.append(rw.emit("conv", inputs, attrs, hint="group_conv"))
    return rw.emit("concat", parts, {"axis": 1}, hint="groups")


def _activation_first(m: Match, rw: Rewriter):
    """``act(view(y))`` -> ``view(act(y))`` for a one-input elementwise ``act`` after the
    reshape (or the padding's slice) that ends a grouped 1x1 convolution: the activation
    then joins the matmul's epilogue instead of running as a kernel of its own
    (ShuffleNet: -4 % in an interleaved A/B). Elementwise ops commute with any re-indexing."""
    act, view = m.root, m.nodes["view"]
    if len(act.inputs) != 1 or ops.get(act.op).fusion != ops.FusionKind.ELEMENTWISE:
        return None
    if act.outputs[0].type.dtype != rw.type(m.values["y"]).dtype:
        return None
    inner = rw.emit(act.op, [m.values["y"]], act.attrs, hint=act.op)
    return rw.emit(view.op, [inner], view.attrs, hint=view.op)


# one-input elementwise ops commonly right after a convolution
_ACTIVATIONS = ("relu", "leaky_relu", "clip", "sigmoid", "tanh", "hard_swish", "hard_sigmoid", "silu", "gelu", "elu")


def rewrite_grouped_convs(graph: Graph, lanes: int, dense: frozenset[str] = frozenset()) -> Graph:
    """``lanes``: the vector width in floats; a 1x1 convolution's pixel axis (the matmul's
    columns) is padded with zeros to a multiple of it (196 -> 208 at 14 x 14, 49 -> 64 at
    7 x 7), so the register tile is whole vectors, and the extra columns are sliced off
    after the bias. ``dense``: outputs of 1-group 1x1 convolutions to run as matmuls too
    (``passes/isolated_convs.py``: lone layers between NCHW tensors)."""
    grouped: set[str] = set()  # the matmuls the 1x1 rewrite made

    def chosen(node) -> bool:
        return _grouped(node) or node.outputs[0].name in dense

    def rule(m, rw):
        if pointwise(m.nodes["conv"], m.arrays["w"]):
            return _as_matmul(m, rw, lanes, grouped)
        return _split_groups(m, rw) if _grouped(m.nodes["conv"]) else None
    graph = apply_rules(graph, [
        (Op("conv", Any("x"), Const("w"), Const("b"), name="conv", where=chosen), rule),
        (Op("conv", Any("x"), Const("w"), name="conv", where=chosen), rule),
    ])
    if not grouped:
        return graph
    # only views of what the rewrite made: elsewhere an activation before a slice would
    # compute the elements the slice drops
    producers = graph.producers()

    def ends_a_grouped_conv(node) -> bool:
        while node is not None and node.op in ("reshape", "slice", "add"):
            node = producers.get(node.inputs[0])
        return node is not None and node.outputs[0].name in grouped

    outputs = {v.name for v in graph.outputs}  # a graph output keeps its activation last (no copy)

    def not_an_output(node) -> bool:
        return node.outputs[0].name not in outputs

    for view in ("reshape", "slice"):  # two runs: a replaced node lives until a run's end
        pattern = Op(view, Any("y"), name="view", where=ends_a_grouped_conv)
        graph = apply_rules(graph, [(Op(op, pattern, where=not_an_output), _activation_first) for op in _ACTIVATIONS])
    return graph
