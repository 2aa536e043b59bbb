"""Operator fusion: partition the graph's nodes into groups, one kernel each.

Rules (fusion kinds from ``kiln.ir.ops.FusionKind``):
- a VIEW node (reshape) gets no kernel; its output aliases its input's storage,
- an elementwise/broadcast node joins the group of a producer when that producer's
  value is used by this node only, is not a graph output, and the group has no other
  value used outside it -- so every group is a tree with one result, and it can run
  at the position of its last node without reordering anybody else;
- it may join a heavy group (out_fusable: matmul, conv; reduction: softmax, norms) only
  as an epilogue of the same shape, which the kernel builder inlines into the reduction.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from kiln.ir import ops
from kiln.ir.graph import Graph, Node

FUSABLE_INTO = {ops.FusionKind.ELEMENTWISE, ops.FusionKind.BROADCAST}


@dataclass
class Group:
    nodes: list[Node] = field(default_factory=list)
    anchor_kind: str = ops.FusionKind.ELEMENTWISE

    @property
    def result(self) -> Node:
        return self.nodes[-1]

    @property
    def values(self) -> set[str]:
        return {o.name for n in self.nodes for o in n.outputs}


def fuse(graph: Graph, enabled: bool = True) -> list[Group]:
    """Groups in execution order; VIEW nodes are left out (they alias storage)."""
    consumers = graph.consumers()
    outputs = {v.name for v in graph.outputs}
    group_of: dict[str, Group] = {}
    order: list[Group] = []
    for node in graph.nodes:
        kind = ops.get(node.op).fusion
        if kind == ops.FusionKind.VIEW:
            continue
        target = _joinable_group(node, kind, group_of, consumers, outputs) if enabled else None
        if target is None:
            target = Group(anchor_kind=kind)
        else:
            order.remove(target)
        target.nodes.append(node)
        order.append(target)
        for o in node.outputs:
            group_of[o.name] = target
    return order


def _joinable_group(node, kind, group_of, consumers, outputs):
    if kind not in FUSABLE_INTO:
        return None
    for name in node.inputs:
        g = group_of.get(name)
        if g is None or len(node.outputs) != 1:
            continue
        if name in outputs or len(consumers.get(name, [])) != 1:
            continue
        # Every other value of the group must stay inside it.
        escapes = [v for v in g.values - {name}
                   if v in outputs or any(c not in g.nodes for c in consumers.get(v, []))]
        if escapes:
            continue
        if g.anchor_kind in (ops.FusionKind.OUT_FUSABLE, ops.FusionKind.REDUCTION):
            if tuple(node.outputs[0].type.shape) != tuple(g.result.outputs[0].type.shape):
                continue
        elif g.anchor_kind not in FUSABLE_INTO and g.anchor_kind != ops.FusionKind.INJECTIVE:
            continue
        return g
    return None
