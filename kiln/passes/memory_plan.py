"""Memory planning: where every tensor lives while the model runs.

Graph inputs and outputs live in the caller's buffers, constants in one weights
blob, and everything else (intermediate values and kernel scratch) in one arena whose
size is known at compile time. Symbolic dims count at their upper bounds, so one plan serves every shape within the
declared bounds. Arena offsets come from liveness intervals, placed
greedily by size (largest first, lowest offset that does not overlap a tensor live at
the same time), as TFLite Micro's planner does. Reshapes alias their input (a graph output
that is a reshape lends its buffer to the value it views, ``output_views``); the parts of an
assembled concat (``concat_in_place``) live at their slots inside its storage.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kiln.ir import ops
from kiln.ir.graph import Graph

ALIGN = 64


def _align(n: int, align: int = ALIGN) -> int:
    return (n + align - 1) // align * align


@dataclass(frozen=True)
class Storage:
    kind: str    # "input" | "output" | "weights" | "arena"
    index: int   # input/output position, or byte offset into weights/arena


@dataclass
class MemoryPlan:
    storage: dict[str, Storage]
    arena_size: int
    lower_bound: int          # the largest total of tensors live at one time
    weights: bytes = b""
    intervals: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # name -> (start, end, bytes)
    patching: object = None   # a PatchReport when the first layers run patch by patch

    def summary(self) -> str:
        ratio = self.arena_size / self.lower_bound if self.lower_bound else 1.0
        text = (f"arena {self.arena_size} bytes (lower bound {self.lower_bound}, "
                f"{ratio:.2f}x); weights {len(self.weights)} bytes")
        return text + (f"; {self.patching.summary()}" if self.patching is not None else "")


def view_roots(graph: Graph) -> dict[str, str]:
    """value -> the value whose storage it shares (itself unless produced by a view)."""
    root: dict[str, str] = {}
    for node in graph.nodes:
        if ops.get(node.op).fusion == ops.FusionKind.VIEW:
            src = node.inputs[0]
            root[node.outputs[0].name] = root.get(src, src)
    return root


def in_place_roots(graph: Graph) -> dict[str, str]:
    """``view_roots`` plus the outputs of in-place ops (``insert_slice`` writes only its box
    of ``dest``'s storage), which must share their ``dest``: a ``dest`` that is read by
    anyone else, or lives outside the arena, cannot be overwritten and is refused."""
    from kiln.errors import VerificationError
    from kiln.ir.ops.region import IN_PLACE

    root: dict[str, str] = {}
    consumers = graph.consumers()
    outside = {v.name for v in graph.inputs} | {v.name for v in graph.outputs} | set(graph.constants)
    for node in graph.nodes:  # in order, so a view of an in-place result finds the first buffer
        if ops.get(node.op).fusion == ops.FusionKind.VIEW:
            src = node.inputs[0]
            root[node.outputs[0].name] = root.get(src, src)
        pos = IN_PLACE.get(node.op)
        if pos is None or len(node.inputs) <= pos:
            continue
        dest = node.inputs[pos]
        src = root.get(dest, dest)
        if len(consumers.get(dest, [])) != 1 or src in outside or node.outputs[0].name in outside:
            raise VerificationError(f"{node.op} {node.outputs[0].name!r} writes in place into {dest!r}, which is "
                                    "read elsewhere or is a graph input, output or constant; expected a value "
                                    "used by this node only")
        root[node.outputs[0].name] = src
    return root


def output_views(graph: Graph) -> dict[str, str]:
    """Graph outputs that stay views: output -> the value it views, which is then written
    straight into the caller's buffer (a 1x1 convolution run as a matmul, reshaped back to
    NCHW at the end, instead of a copy of its whole result). Only a value that a kernel
    computes into the arena qualifies -- not a graph input, constant or other output -- and
    only for the first output that views it."""
    roots = in_place_roots(graph)
    producers = graph.producers()
    outside = {v.name for v in graph.inputs} | {v.name for v in graph.outputs} | set(graph.constants)
    kept: dict[str, str] = {}
    for v in graph.outputs:
        node = producers.get(v.name)
        if node is None or ops.get(node.op).fusion != ops.FusionKind.VIEW or v.name in kept:
            continue
        r = roots.get(v.name, v.name)
        if r in outside or r in kept.values() or producers.get(r) is None:
            continue
        kept[v.name] = r
    return kept


def plan_memory(graph: Graph, kernels, align: int = ALIGN) -> MemoryPlan:
    """``align``: byte alignment of every tensor (64 on hosts: a cache line; 16 on MCUs)."""
    from kiln.passes.concat_in_place import assembled_parts
    from kiln.passes.padded_storage import storage_types

    roots = in_place_roots(graph)
    placed = assembled_parts(graph)  # part -> (assembled concat, byte offset)

    def home(name: str) -> tuple[str, int]:
        """The tensor whose storage holds ``name``, and the byte offset of ``name`` in it."""
        r, offset = roots.get(name, name), 0
        while r in placed:  # a part, maybe of a concat that is itself a part (DenseNet's chains)
            r, extra = placed[r]
            r, offset = roots.get(r, r), offset + extra
        return r, offset

    types = storage_types(graph)  # a value stored with a border takes its storage's bytes
    storage: dict[str, Storage] = {}
    for i, v in enumerate(graph.inputs):
        storage[v.name] = Storage("input", i)
    for i, v in enumerate(graph.outputs):
        storage[v.name] = Storage("output", i)
    position = {v.name: i for i, v in reversed(list(enumerate(graph.outputs)))}
    for out, viewed in output_views(graph).items():
        storage[viewed] = Storage("output", position[out])

    blob = bytearray()
    for name, arr in graph.constants.items():
        off = _align(len(blob), align)
        blob.extend(b"\0" * (off - len(blob)))
        blob.extend(np.ascontiguousarray(arr).tobytes())
        storage[name] = Storage("weights", off)

    # Liveness of arena tensors, in kernel steps.
    intervals: dict[str, list[int]] = {}
    sizes: dict[str, int] = {}
    for step, k in enumerate(kernels):
        for name in k.outputs:
            r, _ = home(name)
            if r not in storage:
                intervals.setdefault(r, [step, step])[1] = step  # an in-place write extends its buffer's life
                sizes[r] = types[r].max_nbytes(graph.dim_bounds)
        for name, t in k.temps:
            intervals[name] = [step, step]
            sizes[name] = t.max_nbytes(graph.dim_bounds)
        for name in k.inputs:
            r, _ = home(name)
            if r in intervals:
                intervals[r][1] = max(intervals[r][1], step)

    offsets, arena_size = _best_packing(intervals, sizes, align)
    for name, off in offsets.items():
        storage[name] = Storage("arena", off)
    for name in placed:
        r, off = home(name)
        if r in offsets:
            storage[name] = Storage("arena", offsets[r] + off)
    for alias, r in roots.items():
        if r in storage and alias not in storage:
            storage[alias] = storage[r]
    lower = max((sum(sizes[n] for n, (a, b) in intervals.items() if a <= t <= b)
                 for t in range(len(kernels))), default=0)
    return MemoryPlan(storage, arena_size, lower, bytes(blob),
                      {n: (a, b, sizes[n]) for n, (a, b) in intervals.items()})


# Placement orders tried by _best_packing; each is a sort key over (name, size, start, end).
# Largest first is TFLite Micro's order and usually optimal when tensors are alike (DS-CNN);
# on a network whose tensors shrink layer by layer (MobileNet) a large early tensor placed
# first can strand a gap that a time-ordered or area-ordered placement avoids.
PACKING_ORDERS = {
    "size": lambda n, size, a, b: (-size, a, n),
    "area": lambda n, size, a, b: (-size * (b - a + 1), -size, n),
    "start": lambda n, size, a, b: (a, -size, n),
    "lifetime": lambda n, size, a, b: (-(b - a), -size, a, n),
}


def _best_packing(intervals, sizes, align: int = ALIGN):
    """The smallest arena over the placement orders (offline planning: a few greedy passes
    over a few hundred tensors cost nothing next to compiling the kernels)."""
    best = None
    for key in PACKING_ORDERS.values():
        order = sorted(intervals, key=lambda n: key(n, sizes[n], *intervals[n]))
        offsets, arena = _greedy_by_size(intervals, sizes, align, order)
        if best is None or arena < best[1]:
            best = (offsets, arena)
    return best


def _greedy_by_size(intervals, sizes, align: int = ALIGN, order=None):
    """Lowest free offset for each tensor in ``order`` (largest first unless given)."""
    placed: list[tuple[int, int, int, int]] = []  # (offset, size, start, end)
    offsets = {}
    if order is None:
        order = sorted(intervals, key=lambda n: (-sizes[n], intervals[n][0], n))
    for name in order:
        start, end = intervals[name]
        size = _align(max(sizes[name], 1), align)
        conflicts = sorted((o, s) for o, s, a, b in placed if not (b < start or end < a))
        off = 0
        for o, s in conflicts:
            if off + size <= o:
                break
            off = max(off, o + s)
        offsets[name] = off
        placed.append((off, size, start, end))
    arena = max((o + s for o, s, _, _ in placed), default=0)
    return offsets, arena
