"""Operator fusion: partition the graph's nodes into groups, one kernel each.

Rules (fusion kinds from ``kiln.ir.ops.FusionKind``):
- a VIEW node (reshape) gets no kernel; its output aliases its input's storage; nor does an
  ASSEMBLY node (concat_in_place), whose inputs' producers write its storage,
- an elementwise/broadcast node joins the group of a producer when that producer's
  value is used by this node only, is not a graph output, and the group has no other
  value used outside it -- so every group is a tree with one result, and it can run
  at the position of its last node without reordering anybody else;
- it may join a heavy group (out_fusable: matmul, conv; reduction: softmax, norms) only
  as an epilogue of the same shape, which the kernel builder inlines into the reduction;
- a heavy op may absorb a data-movement producer (a transpose before a matmul, the
  NCHWc conversion before a conv, a gather before a reduce_sum) as a prologue that its
  loads read through, and an integer convolution the QuantizeLinear whose output it
  copies into its padded stage.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from kiln.ir import ops
from kiln.ir.graph import Graph, Node
from kiln.ir.ops.qlinear import stages_input

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
    """Groups in execution order; VIEW and ASSEMBLY nodes are left out (they alias storage)."""
    consumers, producers = graph.consumers(), graph.producers()
    outputs = {v.name for v in graph.outputs}
    position = {id(n): k for k, n in enumerate(graph.nodes)}
    group_of: dict[str, Group] = {}
    order: list[Group] = []
    for node in graph.nodes:
        kind = ops.get(node.op).fusion
        if kind in (ops.FusionKind.VIEW, ops.FusionKind.ASSEMBLY):
            continue
        joined = _groups_to_join(node, kind, group_of, consumers, outputs) if enabled else []
        target = Group(anchor_kind=kind)
        if joined:
            heavy = [g for g in joined if g.anchor_kind in HEAVY]
            target.anchor_kind = heavy[0].anchor_kind if heavy else joined[0].anchor_kind
            target.nodes = sorted((n for g in joined for n in g.nodes), key=lambda n: position[id(n)])
        elif enabled and (kind == ops.FusionKind.OUT_FUSABLE or node.op in GATHER_REDUCTIONS):
            joined = _prologues(node, group_of, consumers, producers, outputs, set(graph.constants))
            target.nodes = sorted((n for g in joined for n in g.nodes), key=lambda n: position[id(n)])
            target.nodes += [producers[i] for i in node.inputs if _is_view_between(i, producers, joined)]
        for g in joined:
            order.remove(g)
        target.nodes.append(node)
        order.append(target)
        for n in target.nodes:
            for o in n.outputs:
                group_of[o.name] = target
    return order


HEAVY = (ops.FusionKind.OUT_FUSABLE, ops.FusionKind.REDUCTION)
# reductions that read a gather's output through it: a forest's leaf weights summed over
# its trees without writing the [samples, trees, targets] weights out first
GATHER_REDUCTIONS = ("reduce_sum", "reduce_max", "reduce_min")


def _is_view_between(name, producers, prologues) -> bool:
    p = producers.get(name)
    return (p is not None and ops.get(p.op).fusion == ops.FusionKind.VIEW
            and any(p.inputs[0] in g.values for g in prologues))


def _prologues(node, group_of, consumers, producers, outputs, constants=frozenset()) -> list[Group]:
    """Single-node data-movement groups that ``node`` (a matmul or conv) can read through.

    Their stage is only an index remapping, so inlining it into the heavy op's loads costs
    no arithmetic and saves a kernel and a round trip through memory -- provided the
    vectorized loop still reads contiguously (a matmul's B operand must keep its last dim).
    A matmul's A operand may also be read through a reshape of a transpose (attention's
    heads merged back: transpose then view), at the price of index arithmetic on scalar loads.
    The dequantize of constant 8-bit weights, which only a target that keeps such weights
    packed leaves unfolded (WebGPU), is read through as well: a subtract and a multiply per
    weight load instead of a kernel that writes every float weight into the arena each run.
    """
    found = []
    for pos, name in enumerate(node.inputs):
        if name in outputs or len(consumers.get(name, [])) != 1:
            continue
        view = producers.get(name)
        through_view = view is not None and ops.get(view.op).fusion == ops.FusionKind.VIEW
        if through_view:
            name = view.inputs[0]
            if pos != 0 or name in outputs or len(consumers.get(name, [])) != 1:
                continue
        g = group_of.get(name)
        if g is None or len(g.nodes) != 1 or g in found:
            continue
        p = g.nodes[0]
        if (p.op == "to_nchwc" and node.op == "conv_nchwc" and pos == 0 and not through_view
                and not node.attrs.get("depthwise")):
            # (a depthwise conv reads each tap in place, bounds-tested: through the
            # conversion every tap would gather its channel block across NCHW planes)
            found.append(g)
        elif p.op == "dequantize_linear" and p.inputs[0] in constants and node.op in ("conv", "matmul", "gemm"):
            found.append(g)
        elif p.op == "quantize_linear" and node.op == "qconv" and pos == 0 and stages_input(node.attrs):
            # the convolution copies its input into a padded stage anyway: quantizing the
            # float input there costs no pass over memory (ResNet's stem read the image twice)
            found.append(g)
        elif p.op == "gather" and node.op in GATHER_REDUCTIONS and pos == 0 and not through_view:
            found.append(g)
        elif p.op == "transpose" and node.op in ("matmul", "matmul_packed"):
            perm = tuple(p.attrs["perm"])
            if pos == 0 or (node.op == "matmul" and perm[-1] == len(perm) - 1):
                found.append(g)
    return found


def _groups_to_join(node, kind, group_of, consumers, outputs) -> list[Group]:
    """The producer groups an elementwise node joins: all of them when their union has no
    value used elsewhere (a diamond such as GELU's x * f(x) after a matmul), else one."""
    if kind not in FUSABLE_INTO or len(node.outputs) != 1:
        return []
    candidates = []
    for name in node.inputs:
        g = group_of.get(name)
        if g is not None and g not in candidates:
            candidates.append(g)
    closure = _producer_closure(candidates, node, group_of, consumers, outputs)
    if len(closure) > 1 and _can_merge(closure, node, consumers, outputs):
        return closure
    if len(candidates) > 1 and _can_merge(candidates, node, consumers, outputs):
        return candidates
    for g in candidates:
        if _can_merge([g], node, consumers, outputs):
            return [g]
    return []


def _producer_closure(groups, node, group_of, consumers, outputs) -> list[Group]:
    """``groups`` plus the groups they read from whose values are used only inside the
    union (GELU's ``x`` feeds three branches that meet only at the last multiply)."""
    union = list(groups)
    changed = True
    while changed:
        changed = False
        members = {id(n) for g in union for n in g.nodes} | {id(node)}
        for g in list(union):
            for n in g.nodes:
                if ops.get(n.op).fusion not in FUSABLE_INTO:
                    continue  # never pull producers into a heavy op's loads
                for name in n.inputs:
                    x = group_of.get(name)
                    if x is None or x in union:
                        continue
                    if all(v not in outputs and all(id(c) in members or c in x.nodes for c in consumers.get(v, []))
                           for v in x.values):
                        union.append(x)
                        changed = True
    return union


def _can_merge(groups: list[Group], node: Node, consumers, outputs) -> bool:
    members = {id(n) for g in groups for n in g.nodes} | {id(node)}
    for g in groups:
        for v in g.values:
            if v in outputs or any(id(c) not in members for c in consumers.get(v, [])):
                return False  # a value would escape the kernel: it must stay materialized
    heavy = [g for g in groups if g.anchor_kind in HEAVY]
    if len(heavy) > 1:
        return False
    if heavy:
        shape = tuple(heavy[0].result.outputs[0].type.shape)
        if tuple(node.outputs[0].type.shape) != shape:
            return False
        return all(ops.get(n.op).fusion in FUSABLE_INTO and tuple(n.outputs[0].type.shape) == shape
                   for g in groups if g is not heavy[0] for n in g.nodes)
    return all(g.anchor_kind in FUSABLE_INTO or g.anchor_kind == ops.FusionKind.INJECTIVE for g in groups)
