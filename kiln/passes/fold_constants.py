"""Constant folding: evaluate nodes whose inputs are all constants.

The frontend calls ``try_fold`` as it emits each node, so shape subgraphs
(Shape -> Gather -> Concat -> Reshape) become constants before any later converter
needs their values; the ``fold_constants`` graph pass does the same after rewrites.
Evaluation uses the op's own compute definition through the numpy interpreter, so
folding can never disagree with the generated kernels about what an op means.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from kiln.ir import ops
from kiln.ir.compute import Tensor
from kiln.ir.dtype import DType
from kiln.ir.graph import Graph, Node
from kiln.ir.interp import run_stages

# Folding evaluates with broadcast index grids; bound the work so a giant constant
# subgraph (a 100M-element weight transform) does not exhaust memory at compile time.
MAX_FOLD_ELEMENTS = 1 << 24


def try_fold(node: Node, constants: Mapping[str, np.ndarray]) -> list[np.ndarray] | None:
    """Output arrays of ``node`` if every input is a constant and folding is cheap, else None."""
    if any(n and n not in constants for n in node.inputs):
        return None
    opdef = ops.get(node.op)
    if opdef.fusion == ops.FusionKind.OPAQUE and node.op not in FOLDABLE_OPAQUE:
        return None
    ins = [constants[n] for n in node.inputs if n]
    if sum(o.type.size for o in node.outputs) > MAX_FOLD_ELEMENTS:
        return None
    if opdef.fusion == ops.FusionKind.VIEW:
        return [np.ascontiguousarray(ins[0]).reshape(node.outputs[0].type.shape)]
    in_t = [Tensor(f"in{i}", tuple(a.shape), DType.of(a.dtype)) for i, a in enumerate(ins)]
    out_t = [Tensor(f"out{i}", tuple(o.type.shape), o.type.dtype) for i, o in enumerate(node.outputs)]
    stages = opdef.compute(in_t, out_t, node.attrs)
    work = max((_stage_work(s) for s in stages), default=0)
    if work > MAX_FOLD_ELEMENTS:
        return None
    bufs = run_stages(stages, {t.name: a for t, a in zip(in_t, ins)})
    return [bufs[t.name] for t in out_t]


FOLDABLE_OPAQUE: set[str] = set()


def _stage_work(stage) -> int:
    from kiln.ir.expr import Reduce, walk

    n = int(np.prod(stage.shape, dtype=np.int64)) if stage.shape else 1
    r = 1
    for x in walk(stage.body):
        if isinstance(x, Reduce):
            r *= int(np.prod([e for _, e in x.axes], dtype=np.int64))
    return n * r


def dequantizes_packed_weights(node: Node, constants: Mapping[str, np.ndarray]) -> bool:
    """A DequantizeLinear of a constant 8-bit tensor (a QDQ model's weights): a target that
    stores such weights packed (WebGPU's ``weights.bin``) keeps it, so the int8 weights, not
    four-times-larger floats, are what ships; the kernel dequantizes as it reads."""
    x = constants.get(node.inputs[0]) if node.inputs else None
    return node.op == "dequantize_linear" and x is not None and x.dtype in (np.int8, np.uint8)


def fold_constants(graph: Graph, keep=None) -> Graph:
    """Replace every node whose inputs are constants by its (constant) outputs -- except those
    ``keep(node, constants)`` says to leave (see ``dequantizes_packed_weights``)."""
    constants = dict(graph.constants)
    nodes = []
    outputs = {v.name for v in graph.outputs}
    for node in graph.nodes:
        kept = any(o.name in outputs for o in node.outputs) or (keep is not None and keep(node, constants))
        folded = None if kept else try_fold(node, constants)
        if folded is None:
            nodes.append(node)
        else:
            for v, arr in zip(node.outputs, folded):
                constants[v.name] = arr
    used = {n for node in nodes for n in node.inputs}
    return graph.replace(nodes=tuple(nodes), constants={k: v for k, v in constants.items() if k in used})
