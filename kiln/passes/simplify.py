"""Small graph clean-ups: dead-code elimination, identity removal, output views.

Each is a function Graph -> Graph; the pass manager runs them by name.
"""
from __future__ import annotations

from kiln.ir import ops
from kiln.ir.graph import Graph, Node


def eliminate_dead_code(graph: Graph) -> Graph:
    """Drop nodes none of whose outputs is used, and constants nobody reads."""
    live = {v.name for v in graph.outputs}
    kept: list[Node] = []
    for node in reversed(graph.nodes):
        if any(o.name in live for o in node.outputs):
            kept.append(node)
            live.update(n for n in node.inputs if n)
    kept.reverse()
    return graph.replace(nodes=tuple(kept), constants={k: v for k, v in graph.constants.items() if k in live})


def _rewire(nodes, old: str, new: str):
    return [Node(n.op, tuple(new if i == old else i for i in n.inputs), n.outputs, n.attrs, n.name)
            for n in nodes]


def eliminate_identity(graph: Graph) -> Graph:
    """Identity nodes whose output is not a graph output are bypassed."""
    outputs = {v.name for v in graph.outputs}
    nodes = list(graph.nodes)
    i = 0
    while i < len(nodes):
        n = nodes[i]
        if n.op == "identity" and n.outputs[0].name not in outputs:
            del nodes[i]
            nodes = _rewire(nodes, n.outputs[0].name, n.inputs[0])
            continue
        i += 1
    return graph.replace(nodes=tuple(nodes))


def materialize_output_views(graph: Graph) -> Graph:
    """A view (reshape) that produces a graph output must write the caller's buffer: the
    value it views is computed there (``memory_plan.output_views``) or, where that value
    lives elsewhere (a graph input, a constant, another output's buffer), copied."""
    from kiln.passes.memory_plan import output_views

    outputs = {v.name for v in graph.outputs} - set(output_views(graph))
    nodes = []
    for n in graph.nodes:
        if ops.get(n.op).fusion == ops.FusionKind.VIEW and n.outputs[0].name in outputs:
            n = Node("reshape_copy", n.inputs, n.outputs, n.attrs, n.name)
        nodes.append(n)
    return graph.replace(nodes=tuple(nodes))


def _register_reshape_copy():
    base = ops.get("reshape")
    if "reshape_copy" not in ops.REGISTRY:
        ops.register("reshape_copy", ops.FusionKind.INJECTIVE, base.infer, base.compute)


_register_reshape_copy()
