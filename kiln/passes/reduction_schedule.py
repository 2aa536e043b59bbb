"""Default schedules of reductions without a register tile: over a middle axis a tile of
output columns accumulated side by side (``reduce_columns``), a window read as one contiguous
run (``fuse_contiguous_reduction``), else the outer loops in parallel; and scalar
accumulations vectorized (``vectorize_scalar_reductions``)."""
from __future__ import annotations

from kiln.ir.loop import For, walk_stmts
from kiln.ir.schedule import Schedule
from kiln.passes.loop_nests import largest_divisor, parallel_outer, reduction_loops


def schedule_reduction(sch: Schedule, spatial, work) -> None:
    """The rule for a reduction without a register tile: ``reduce_columns`` where it
    applies, else the outer loops fused and run in parallel (and the innermost reduction
    loops fused where they read one contiguous run: ``fuse_contiguous_reduction``)."""
    if not reduce_columns(sch, spatial, work):
        fuse_contiguous_reduction(sch, spatial[-1][0])
        parallel_outer(sch, spatial, work)


def fuse_contiguous_reduction(sch: Schedule, innermost_spatial: str) -> bool:
    """The last two reduction loops as one when every load reads them as the last two
    axes of a row-major buffer (``x[.., h, w]`` with ``w`` over the whole last axis): a
    global average pool's 56 x 56 window is then one vectorized sum of 3136 contiguous
    values instead of 56 sums of 56 that each end in a partial vector and a horizontal
    add ([8, 64, 56, 56]: 189 -> 49 us, ONNX Runtime 131-146). False: not such a nest."""
    from kiln.ir.expr import Load, Var, linear_terms, walk
    from kiln.ir.loop import Store

    red = reduction_loops(sch, innermost_spatial)
    if len(red) < 2:
        return False
    (outer, _), (inner, extent) = red[-2], red[-1]
    shapes = {b.name: b.shape for b in sch.func.params}
    body = sch._loop(inner).body
    if not isinstance(body, Store) or not isinstance(extent, int):
        return False
    for ld in (x for x in walk(body.value) if isinstance(x, Load)):
        used = [k for k, ix in enumerate(ld.indices) if {outer, inner} & {v.name for v in walk(ix) if isinstance(v, Var)}]
        if not used:
            continue
        rank = len(ld.indices)
        row = linear_terms(ld.indices[-2]) if rank >= 2 else None
        if (used != [rank - 2, rank - 1] or ld.indices[-1] != Var(inner, ld.indices[-1].dtype)
                or shapes.get(ld.buffer, (None,))[-1] != extent or not row
                or {k.name: c for k, c in row.items() if isinstance(k, Var)}.get(outer) != 1):
            return False
    sch.fuse(outer, inner)
    return True


COLUMN_TILE = 64  # output columns accumulated together: four AVX-512 vectors of floats
# fewer columns than a 256-bit vector of floats: the strided scalar sums stay (3 columns
# of [256, 100, 3] summed over the 100: 14-20 us that way, 22 us with the columns tile)
MIN_COLUMN_TILE = 8


def reduce_columns(sch: Schedule, spatial, work) -> bool:
    """A reduction over an axis that is not the input's innermost (ReduceMean over the
    tokens of [batch, tokens, hidden], over the channels of NCHW): the reduction loop moves outside a tile of output columns, which accumulate side by side,
    their loads contiguous:

        outer loops (parallel) | col_o | reduction loops | col_i (vectorized), acc[col_i]

    instead of one scalar sum per column that strides through memory (mean pooling of
    [8, 128, 768] over the tokens: 388 us, ONNX Runtime 36 us). Applies when the reduction
    reads some input with its innermost index the output's last column (stride 1) and
    none with its innermost index moving along the reduction, and a tile of at least
    ``MIN_COLUMN_TILE`` columns divides the last axis. False: not such a stage."""
    from kiln.ir.expr import Load, Var, linear_terms, walk
    from kiln.ir.loop import Alloc, Store

    name, extent = spatial[-1]
    red = {n for n, _ in reduction_loops(sch, name)}
    if not red or not isinstance(extent, int) or extent < 2:
        return False
    alloc = next(s for s in walk_stmts(sch._loop(name)) if isinstance(s, Alloc))
    update = [s for s in walk_stmts(alloc.body.stmts[1]) if isinstance(s, Store)]
    columns = False
    for ld in (x for st in update for x in walk(st.value) if isinstance(x, Load) and x.indices):
        terms = {k.name: c for k, c in (linear_terms(ld.indices[-1]) or {}).items() if isinstance(k, Var)}
        if any(terms.get(r) == 1 for r in red):
            return False  # the reduction already reads contiguously
        columns |= terms.get(name) == 1 and not any(r in terms for r in red)
    if not columns:
        return False
    tile = largest_divisor(extent, COLUMN_TILE)
    if tile < MIN_COLUMN_TILE:
        return False
    outer, inner = sch.split(name, tile) if tile < extent else (None, name)
    sch.decompose_reduction(inner)
    sch.vectorize(inner)
    parallel_outer(sch, list(spatial[:-1]) + ([(outer, extent // tile)] if outer else []), work)
    return True


def vectorize_scalar_reductions(sch: Schedule) -> None:
    """Vectorize innermost reduction loops that accumulate into a scalar (softmax's max and
    sum, layer norm's moments); the renderer turns them into SIMD reductions."""
    from kiln.ir.expr import Bin, Load
    from kiln.ir.loop import Store, walk_stmts

    for loop in [x for x in walk_stmts(sch.func.body) if isinstance(x, For)]:
        body = loop.body
        # ``acc = acc op x`` with an associative op: not any store reading itself (a tree
        # walk's ``row = next[row, ..]`` is a chain whose steps must run in order)
        if (loop.kind == "serial" and isinstance(body, Store) and not body.indices
                and isinstance(body.value, Bin) and body.value.op in ("add", "mul", "max", "min")
                and any(isinstance(x, Load) and x.buffer == body.buffer and not x.indices
                        for x in (body.value.a, body.value.b))):
            sch.vectorize(loop.var.name)
