"""Lone convolutions between NCHW tensors run in NCHW on CPUs that block the others.

The layout pass (``passes/layout.py``) runs convolutions in NCHW{b}c, converting into the
blocked layout where a region of convolutions starts and back where it ends. For a model
of many layers that is two conversions in all; for a single layer between NCHW tensors --
a kernel plugged into another runtime, one layer benchmarked alone -- the two conversions
cost as much as the convolution or more: a depthwise 3x3 on 112 x 112 x 32 spent 51 us
converting in, 49 us convolving and 51 us converting back (Sapphire Rapids, 2 threads).
``isolated_convs`` finds those layers; this pass runs them without blocking:

- a depthwise convolution (stride 1) whose rows are whole vectors and span enough column
  tiles that the ones between the borders run without bounds tests (loop partitioning
  needs a middle of ``MIN_MIDDLE`` tiles) becomes ``depthwise_conv``: a register tile of
  output rows x columns of one channel plane, padding through bounds tests. 112 x 112 x 32:
  130 -> 82 us. Rows of 56 or 14 ran 3-14x slower than blocked (tiles of 28 or 14 columns,
  every one crossing a border);
- a dense 1x1 convolution (stride 1, no padding) whose pixels are whole register tiles
  (two vectors) becomes a matmul of the weights (OC x C) with the pixels (C x H*W),
  contiguous rows in NCHW, as grouped 1x1 convolutions are (``passes/grouped_conv.py``):
  the product lands in NCHW. 56 x 56, 64 -> 256: 470 -> 350 us. At 14 x 14 (196 pixels,
  padded to 208) it ran 27 % slower than blocked, whose conversion back moves only 256 x 196.

Other convolutions keep the blocked layout: a dense KxK window gains more from it than
its conversions cost. The multiply-adds are the convolution's, in the same order. (Times:
interleaved A/B, ``benchmarks/ab_exports.py``, Sapphire Rapids, 2 threads.)
"""
from __future__ import annotations

from kiln.ir.graph import Graph, Node
from kiln.passes.default_schedule import column_tile
from kiln.passes.grouped_conv import pointwise, rewrite_grouped_convs
from kiln.passes.layout import isolated_convs
from kiln.passes.partition_loops import MIN_MIDDLE


def _unit_stride(node: Node) -> bool:
    return all(int(s) == 1 for s in node.attrs.get("strides", (1, 1)))


def _plain_depthwise(node: Node, types, constants, lanes: int, tile: tuple[int, int]) -> bool:
    w, width = constants[node.inputs[1]], types[node.outputs[0].name].shape[-1]
    if int(node.attrs.get("group", 1)) != w.shape[0] or w.shape[1] != 1 or not _unit_stride(node):
        return False
    return isinstance(width, int) and width % lanes == 0 and width // column_tile(width, tile) >= MIN_MIDDLE + 2


def _plain_pointwise(node: Node, types, constants, lanes: int) -> bool:
    _, _, h, width = types[node.outputs[0].name].shape
    return (int(node.attrs.get("group", 1)) == 1 and pointwise(node, constants[node.inputs[1]])
            and isinstance(h, int) and isinstance(width, int) and h * width % (2 * lanes) == 0)


def plain_isolated_convs(graph: Graph, block: int, lanes: int, tile: tuple[int, int]) -> Graph:
    """``block``: the layout pass's channel block; ``lanes``: the vector width in floats;
    ``tile``: the register tile (rows, columns) of float kernels (``Capabilities.tile``)."""
    isolated = isolated_convs(graph, block)
    if not isolated:
        return graph
    convs = [n for n in graph.nodes if n.op == "conv" and n.outputs[0].name in isolated]
    types, constants = graph.value_types(), graph.constants
    depthwise = {n.outputs[0].name for n in convs if _plain_depthwise(n, types, constants, lanes, tile)}
    if depthwise:
        graph = graph.replace(nodes=tuple(
            Node("depthwise_conv", n.inputs, n.outputs, n.attrs, n.name) if n.outputs[0].name in depthwise else n
            for n in graph.nodes))
    as_matmuls = frozenset(n.outputs[0].name for n in convs if _plain_pointwise(n, types, constants, lanes))
    return rewrite_grouped_convs(graph, lanes, dense=as_matmuls) if as_matmuls else graph
