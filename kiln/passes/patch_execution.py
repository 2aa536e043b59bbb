"""Patch-based execution of a model's first layers (MCUNetV2, Lin et al. 2021).

The first layers of a CNN hold its largest activations: layer by layer, a 96x96 input
needs the whole 48x48x16 output of the stem while the next layer writes its own. Run
the first k spatial ops (the *stage*) one output patch at a time instead: each patch of
the stage output is computed from its receptive field in the stage input (a halo
derived from kernel sizes, strides, dilations and pads), and written into its box of the
stage output. Peak memory is then the stage output plus one patch's intermediates, and
the rest of the graph runs layer by layer as before. The price is recomputation: the
halos of neighbouring patches overlap (``PatchReport.extra_macs``).

The rewrite is an ordinary graph rewrite: for each patch of an ``R x C`` grid

    slice(x, halo box) -> op_1(pads only where the box meets the image border) -> ...
        -> op_k -> insert_slice(patch, previous assembly; starts=patch box)

and the last ``insert_slice`` produces the stage output under its original name, so the
rest of the graph is untouched. ``insert_slice`` writes in place (``kiln.ir.ops.region``):
the memory planner places every patch directly in its box of one stage-output buffer.

A stage is a chain from a 4-D graph input: window ops (``conv``, ``qconv``, ``max_pool``,
``avg_pool``) whose other inputs are constants, and elementwise ops whose constant
operands do not vary over H and W (bias, activation, requantization). Each value in the
chain has one consumer and is not a graph output.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kiln.errors import KilnError
from kiln.ir import ops
from kiln.ir.graph import Graph, Node, TensorType, Value

WINDOW_OPS = ("conv", "qconv", "max_pool", "avg_pool")


class PatchError(KilnError):
    """The requested patch-based execution cannot be applied to this graph."""


@dataclass(frozen=True)
class Window:
    """One spatial axis of a window op: kernel extent, stride, dilation and pads."""
    k: int
    s: int
    d: int
    pb: int
    pe: int

    def input_range(self, lo: int, hi: int, n: int) -> tuple[int, int, int, int]:
        """Input rows ``[a, b)`` that output rows ``[lo, hi)`` read, clipped to ``[0, n)``,
        and the pads that stand for the clipped part (non-zero only at the image border)."""
        first = lo * self.s - self.pb
        last = (hi - 1) * self.s - self.pb + self.d * (self.k - 1) + 1
        a, b = max(first, 0), min(last, n)
        return a, b, a - first, last - b


@dataclass
class PatchReport:
    grid: tuple[int, int]
    stage: list[str]              # names of the stage's nodes (their outputs), in order
    macs: int                     # multiply-accumulates of the stage, layer by layer
    patched_macs: int             # the same ops run per patch, halos recomputed
    arena_without: int | None = None   # arena and lower bound of the unpatched graph
    lower_bound_without: int | None = None
    tried: list[tuple[str, int]] = field(default_factory=list)  # (candidate, arena) when chosen under a budget

    @property
    def extra_macs(self) -> float:
        """Recomputed work, as a fraction of the stage's MACs."""
        return self.patched_macs / self.macs - 1.0 if self.macs else 0.0

    def summary(self) -> str:
        r, c = self.grid
        text = (f"patch-based execution: {r}x{c} patches over the first {len(self.stage)} ops "
                f"(to {self.stage[-1]}), +{100 * self.extra_macs:.1f}% MACs in the stage from halos")
        if self.arena_without is not None:
            text += (f"; layer by layer: arena {self.arena_without} bytes, "
                     f"lower bound {self.lower_bound_without}")
        return text


# -- the stage -----------------------------------------------------------------------------------

def _window(node: Node, types) -> tuple[Window, Window] | None:
    """The H and W windows of a 2-D window op, or None for an elementwise op."""
    if node.op not in WINDOW_OPS:
        return None
    a = node.attrs
    if node.op == "conv":
        kernel = tuple(types[node.inputs[1]].shape[2:])
    elif node.op == "qconv":
        kernel = tuple(a["kernel"])
    else:
        kernel = tuple(a["kernel_shape"])
    strides = tuple(a.get("strides") or (1, 1))
    dil = tuple(a.get("dilations") or (1, 1))
    pads = tuple(a.get("pads") or (0, 0, 0, 0))
    return (Window(int(kernel[0]), int(strides[0]), int(dil[0]), int(pads[0]), int(pads[2])),
            Window(int(kernel[1]), int(strides[1]), int(dil[1]), int(pads[1]), int(pads[3])))


def _spatially_uniform(shape, rank: int) -> bool:
    """A constant operand that broadcasts without varying over the last two (H, W) axes."""
    full = (1,) * (rank - len(shape)) + tuple(shape)
    return len(shape) <= rank and full[-1] == 1 and full[-2] == 1


def _stage_op(node: Node, cur: str, graph: Graph, types) -> bool:
    if not node.inputs or node.inputs[0] != cur or len(node.outputs) != 1:
        return False
    rest = [n for n in node.inputs[1:] if n]
    if any(n not in graph.constants for n in rest):
        return False
    out = node.outputs[0].type
    if len(out.shape) != 4 or not out.is_static:
        return False
    if node.op in WINDOW_OPS:
        a = node.attrs
        if a.get("ceil_mode") or len(types[cur].shape) != 4:
            return False
        if node.op == "conv" and len(types[node.inputs[1]].shape) != 4:
            return False
        return True
    kind = ops.get(node.op).fusion
    if kind not in (ops.FusionKind.ELEMENTWISE, ops.FusionKind.BROADCAST):
        return False
    if tuple(out.shape) != tuple(types[cur].shape):
        return False
    return all(_spatially_uniform(types[n].shape, 4) for n in rest)


def stage_chain(graph: Graph) -> list[Node]:
    """The longest chain of patchable nodes from the graph's first 4-D input."""
    types = graph.value_types()
    consumers = graph.consumers()
    outputs = {v.name for v in graph.outputs}
    starts = [v for v in graph.inputs if len(v.shape) == 4 and v.type.is_static]
    if not starts:
        return []
    cur, chain = starts[0].name, []
    while True:
        users = consumers.get(cur, [])
        if len(users) != 1 or not _stage_op(users[0], cur, graph, types):
            break
        chain.append(users[0])
        cur = users[0].outputs[0].name
        if cur in outputs:
            chain.pop()
            break
    return chain


def stage_ends(chain: list[Node]) -> list[int]:
    """Stage lengths worth trying: after a window op and the elementwise ops that follow it
    (cutting between a conv and its activation would only split one kernel in two)."""
    ends = []
    for k, node in enumerate(chain):
        nxt = chain[k + 1] if k + 1 < len(chain) else None
        if any(n.op in WINDOW_OPS for n in chain[:k + 1]) and (nxt is None or nxt.op in WINDOW_OPS):
            ends.append(k + 1)
    return ends


# -- the rewrite ----------------------------------------------------------------------------------

def _splits(n: int, parts: int) -> list[tuple[int, int]]:
    cuts = [round(i * n / parts) for i in range(parts + 1)]
    return [(a, b) for a, b in zip(cuts, cuts[1:])]


def _macs(node: Node, out_shape, types) -> int:
    """Multiply-accumulates (window taps) of a window op writing ``out_shape``; 0 otherwise."""
    w = _window(node, types)
    if w is None:
        return 0
    n = int(np.prod(out_shape))
    if node.op == "conv":
        return n * int(np.prod(types[node.inputs[1]].shape[1:]))
    if node.op == "qconv":
        return n * int(np.prod(types[node.inputs[1]].shape[1:]))
    return n * w[0].k * w[1].k


def patch_graph(graph: Graph, stage_len: int, grid: tuple[int, int]) -> tuple[Graph, PatchReport]:
    """Run the first ``stage_len`` nodes of ``stage_chain(graph)`` patch by patch on an
    ``R x C`` grid of the stage output; returns the new graph and what it costs."""
    chain = stage_chain(graph)
    rows, cols = grid
    if rows < 1 or cols < 1:
        raise PatchError(f"patch grid {rows}x{cols} must have at least one row and one column")
    if not chain or not any(n.op in WINDOW_OPS for n in chain):
        raise PatchError(f"graph {graph.name!r} has no stage to patch: expected a 4-D input feeding a chain "
                         f"of {', '.join(WINDOW_OPS)} and elementwise ops")
    if not 1 <= stage_len <= len(chain):
        raise PatchError(f"stage of {stage_len} ops: graph {graph.name!r} has a patchable chain of "
                         f"{len(chain)} ops ({', '.join(n.op for n in chain)})")
    stage = chain[:stage_len]
    types = graph.value_types()
    x = stage[0].inputs[0]
    out = stage[-1].outputs[0]
    oh, ow = int(out.shape[2]), int(out.shape[3])
    if rows > oh or cols > ow:
        raise PatchError(f"patch grid {rows}x{cols} is finer than the stage output {oh}x{ow} "
                         f"({out.name}); expected at most {oh}x{ow}")

    new_nodes: list[Node] = []
    assembly = None
    macs = sum(_macs(n, n.outputs[0].shape, types) for n in stage)
    patched_macs = 0
    boxes = [(r, c) for r in _splits(oh, rows) for c in _splits(ow, cols)]
    for p, ((r0, r1), (c0, c1)) in enumerate(boxes):
        # Walk back from the output box: each node's input box and its border pads.
        plan = []
        box = (r0, r1, c0, c1)
        for node in reversed(stage):
            win = _window(node, types)
            if win is None:
                plan.append((node, box, None))
                continue
            n_in = types[node.inputs[0]].shape
            a, b, pt, pb_ = win[0].input_range(box[0], box[1], int(n_in[2]))
            c, d, pl, pr = win[1].input_range(box[2], box[3], int(n_in[3]))
            plan.append((node, box, (pt, pl, pb_, pr)))
            box = (a, b, c, d)
        plan.reverse()
        n_, ch = types[x].shape[:2]
        cur = x
        if box != (0, int(types[x].shape[2]), 0, int(types[x].shape[3])):
            cur = f"{x}__patch{p}"
            sl = Node("slice", (x,), (), {"starts": (0, 0, box[0], box[2]),
                                          "ends": (int(n_), int(ch), box[1], box[3]), "steps": (1, 1, 1, 1)},
                      name=cur)
            new_nodes.append(_typed(sl, [types[x]], cur))
            types[cur] = new_nodes[-1].outputs[0].type
        for node, obox, pads in plan:
            name = f"{node.outputs[0].name}__patch{p}"
            attrs = dict(node.attrs)
            if pads is not None:
                attrs["pads"] = pads
            ins = [types[cur]] + [types[n] for n in node.inputs[1:] if n]
            new = _typed(Node(node.op, (cur,) + tuple(node.inputs[1:]), (), attrs, name=name), ins, name)
            want = (obox[1] - obox[0], obox[3] - obox[2])
            got = tuple(new.outputs[0].shape[2:])
            if got != want:  # the halo arithmetic and the op's shape rule must agree
                raise PatchError(f"patch {p} of {node.op} {node.outputs[0].name!r} has spatial size {got}; "
                                 f"expected {want}")
            patched_macs += _macs(node, new.outputs[0].shape, types)
            new_nodes.append(new)
            types[name] = new.outputs[0].type
            cur = name
        last = p == len(boxes) - 1
        name = out.name if last else f"{out.name}__assembly{p}"
        ins = (cur,) + ((assembly,) if assembly else ())
        attrs = {"starts": (0, 0, r0, c0), "shape": tuple(int(d) for d in out.shape)}
        new_nodes.append(_typed(Node("insert_slice", ins, (), attrs, name=name),
                                [types[n] for n in ins], name))
        types[name] = new_nodes[-1].outputs[0].type
        assembly = name

    stage_ids = {id(n) for n in stage}
    first = graph.nodes.index(stage[0])
    rest = [n for n in graph.nodes if id(n) not in stage_ids]
    nodes = rest[:first] + new_nodes + rest[first:]
    report = PatchReport(grid, [n.outputs[0].name for n in stage], macs, patched_macs)
    return graph.replace(nodes=tuple(nodes)).verify(), report


def _typed(node: Node, in_types: list[TensorType], out_name: str) -> Node:
    (t,) = ops.infer_types(node.op, in_types, node.attrs)
    return Node(node.op, node.inputs, (Value(out_name, t),), node.attrs, node.name)


def parse_grid(text: str) -> tuple[int, int]:
    """``4x4`` or ``3X2`` -> (rows, cols)."""
    import re

    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(text))
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise PatchError(f"cannot read the patch grid {text!r}; expected ROWSxCOLS such as 2x2 or 4x4")
    return int(m.group(1)), int(m.group(2))
