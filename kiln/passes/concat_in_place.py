"""Concats assembled in place: each part is written straight into its slot of the result.

A concat is a copy: every part is written by its producer, then read once more and written
again into the result. When each part's slot in the result is one contiguous run of bytes
(every dim before the concat axis is 1: channels of a batch-1 NCHW or NCHWc tensor), the
memory planner can place each part at its slot's offset inside the result's storage; the
producers then write the result themselves and the concat has nothing left to do.

    c = concat(a, b; axis=1)   ->   c = concat_in_place(a, b; axis=1)   (no kernel)
    storage: a at c + 0, b at c + bytes(a)

DenseNet's blocks concatenate the block's running result with each new layer's features
(c2 = concat(c1, f2), c3 = concat(c2, f3), ...): every c_k is a part of the next, so the
whole chain lands in the storage of the block's last concat and no layer copies what the
layers before it produced. Inception's and SqueezeNet's branches write their channels of
the module's output directly.

A part qualifies when it is a value of its own that a kernel writes whole (not a graph
input, output or constant, not an in-place write of other storage, stored without a
border) and is a part of no other assembled concat; a concat qualifies when all its parts
do, its shapes are static and it is not a graph output. Others stay copies. A part may
also be a view (a reshape) of such a value: the value itself is placed at the slot, with
the same bytes. A recurrent layer stacks its steps' hidden states so: 50 reshaped
[1, 128] states in one [50, 1, 1, 128] output, which a kernel selecting among 50 inputs
per row copied (22 us per layer, as long as 10 of its steps).
The planner (``kiln.passes.memory_plan``) reads the placements from the graph with
``assembled_parts``.
"""
from __future__ import annotations

import math

from kiln.ir.graph import Graph, Node
from kiln.ir.ops.region import IN_PLACE, in_place_dests
from kiln.passes.memory_plan import view_roots
from kiln.passes.padded_storage import storage_borders

ASSEMBLED = "concat_in_place"


def assemble_concats(graph: Graph) -> Graph:
    """Every qualifying ``concat`` becomes a ``concat_in_place`` (see the module docstring)."""
    producers, types, roots = graph.producers(), graph.value_types(), view_roots(graph)
    # values whose storage is not theirs to give: graph inputs, outputs and constants, values
    # stored with a border, destinations that an in-place op writes into -- and the values
    # whose storage any of those views
    excluded = ({v.name for v in graph.inputs} | {v.name for v in graph.outputs} | set(graph.constants)
                | set(storage_borders(graph)) | in_place_dests(graph.nodes))
    excluded |= {roots.get(e, e) for e in excluded}
    claimed: set[str] = set()  # values already placed inside an assembled concat
    nodes, changed = [], False
    for node in graph.nodes:
        if node.op == "concat" and _qualifies(node, types, producers, roots, excluded, claimed):
            claimed.update(roots.get(p, p) for p in node.inputs)
            node = Node(ASSEMBLED, node.inputs, node.outputs, node.attrs, node.name)
            changed = True
        nodes.append(node)
    return graph.replace(nodes=tuple(nodes)) if changed else graph


def _qualifies(node: Node, types, producers, roots, excluded: set[str], claimed: set[str]) -> bool:
    out = node.outputs[0]
    shape = out.type.shape
    if out.name in excluded or not all(isinstance(d, int) for d in shape) or math.prod(shape) == 0:
        return False
    axis = node.attrs["axis"]
    if any(d != 1 for d in shape[:axis]):
        return False  # a part's slot would be strided, not one run of bytes
    stored = [roots.get(p, p) for p in node.inputs]  # a view part: the value it views
    if len(set(stored)) != len(stored):
        return False  # concat(x, x) or of two views of x: one value cannot live in two slots
    for p, v in zip(node.inputs, stored):
        producer = producers.get(v)
        if p in excluded or v in excluded or v in claimed or producer is None or math.prod(types[p].shape) == 0:
            return False
        if producer.op in IN_PLACE:
            return False  # its bytes are another value's storage
    return True


def assembled_parts(graph: Graph) -> dict[str, tuple[str, int]]:
    """value -> (the assembled concat it is written into, its byte offset there): each part,
    or the value a part views."""
    types, roots = graph.value_types(), view_roots(graph)
    placed: dict[str, tuple[str, int]] = {}
    for node in graph.nodes:
        if node.op != ASSEMBLED:
            continue
        offset = 0
        for p in node.inputs:
            placed[roots.get(p, p)] = (node.outputs[0].name, offset)
            offset += math.prod(types[p].shape) * types[p].dtype.itemsize
    return placed
