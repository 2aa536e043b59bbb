"""What the default schedule rules ask of a loop nest, and how they hand one to threads:
the nest's loops, its work estimate, the reduction loops of a lowered reduction, and the
fusing of leading loops into one parallel loop."""
from __future__ import annotations

from kiln.ir.compute import Stage
from kiln.ir.loop import For, Seq, walk_stmts
from kiln.ir.schedule import Schedule

PARALLEL_MIN_WORK = 1 << 15   # below this many operations, threads cost more than they save
TARGET_PARALLEL_EXTENT = 16   # fuse outer loops until there are this many parallel chunks


def largest_divisor(n, limit: int) -> int:
    """The largest divisor of ``n`` up to ``limit`` (1 for a symbolic extent: no tiling)."""
    if not isinstance(n, int):
        return 1
    for d in range(min(n, limit), 0, -1):
        if n % d == 0:
            return d
    return 1


def nest_names(nest) -> list[tuple[str, int]]:
    out = []
    while isinstance(nest, For):
        out.append((nest.var.name, nest.extent))
        nest = nest.body
    return out


# A symbolic extent counts as this large when estimating work: dynamic dims are
# usually batch or sequence sizes, big enough to be worth threads.
SYMBOLIC_EXTENT_GUESS = 64


def static_extent(n) -> int:
    return n if isinstance(n, int) else SYMBOLIC_EXTENT_GUESS


def reduce_work(stage: Stage) -> int:
    """Steps per output element: the product of its reductions' extents and iterations' counts."""
    from kiln.ir.expr import Iterate, Reduce, walk

    w = 1
    for x in walk(stage.body):
        if isinstance(x, Reduce):
            for _, n in x.axes:
                w *= static_extent(n)
        elif isinstance(x, Iterate):
            w *= max(x.count, 1)
    return w


def shape_size(shape) -> int:
    n = 1
    for d in shape:
        n *= static_extent(d)
    return n


def reduction_loops(sch: Schedule, innermost_spatial: str) -> list[tuple[str, int]]:
    """The reduction loops under the scalar accumulator of a lowered reduction."""
    from kiln.ir.loop import Alloc

    alloc = next((s for s in walk_stmts(sch._loop(innermost_spatial)) if isinstance(s, Alloc)), None)
    if alloc is None or not isinstance(alloc.body, Seq) or len(alloc.body.stmts) < 3:
        return []
    nest = alloc.body.stmts[1]
    return nest_names(nest) if isinstance(nest, For) else []


def extents(sch: Schedule, names) -> list[int]:
    return [sch._loop(n).extent for n in names]


def parallel_outer(sch: Schedule, loops, work) -> None:
    """Fuse leading loops until there is enough parallelism, then mark the loop parallel."""
    if work >= PARALLEL_MIN_WORK:
        fuse_parallel(sch, loops, TARGET_PARALLEL_EXTENT)


def fuse_parallel(sch: Schedule, loops, target: int) -> None:
    """Fuse leading ``loops`` ((name, extent) pairs) until ``target`` chunks, mark it parallel."""
    if not loops:
        return
    name, extent = loops[0]
    extent = static_extent(extent)
    for nxt, n in loops[1:]:
        if extent >= target:
            break
        name = sch.fuse(name, nxt)
        extent *= static_extent(n)
    sch.parallel(name)
