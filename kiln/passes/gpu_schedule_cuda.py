"""CUDA schedules: how each kernel's loop nests map onto GPU grids, blocks and threads.

The CPU schedule (tiles in registers, OpenMP) does not fit a GPU, so the CUDA target
plans from each kernel's *unscheduled* loop IR (``Kernel.unscheduled``): one top-level
nest per compute stage, its first ``rank`` loops spatial, then either a store or a
scalar accumulator with its reduction loops. Each kernel becomes one or more launches:

``gemm``   a nest with a ``tile`` hint whose accumulator sums ``A(row, k) * B(k, col)``:
           block tiles of the output staged through shared memory with barriers; with
           float16/bfloat16 factors the inner product is *tensorized* onto tensor cores
           (WMMA 16x16x16, fp32 accumulation). The operands are whatever expressions the
           nest loads, so convolutions become implicit GEMMs with no im2col buffer.
``rows``   nests that share leading spatial loops (softmax: max, sum, normalize; layer
           norm: mean, rstd, scale) fused into one launch, one block per row: reductions
           over a row are split across the block's threads and combined by warp shuffles
           and a shared-memory step; map loops are spread over the threads; barriers
           between the nests make the row's temporaries visible to the whole block.
``flat``   anything else: the spatial loops flattened onto a grid-stride loop, one
           thread per output element, its inner loops serial.

A nest the ``rows`` plan cannot hold safely (a later nest reading an earlier one's
output at another row, as a convolution reads its padded input) gets a launch of its
own: the launches of one stream run in order, which is the grid-wide barrier.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from kiln.ir.dtype import DType
from kiln.ir.expr import Bin, Cast, Const, Expr, Load, Var, free_vars, walk
from kiln.ir.loop import Alloc, For, Func, Seq, Stmt, Store, walk_stmts

FLAT_BLOCK = 256
ROWS_MIN_REDUCTION = 32      # below this a row's reduction is cheaper serial in one thread
REDUCE_IDENTITY = {"add": 0.0, "mul": 1.0, "max": float("-inf"), "min": float("inf")}


@dataclass(frozen=True)
class GemmTile:
    """The tile sizes of one ``gemm`` launch: the knobs a GPU tuner searches over."""

    bm: int = 64
    bn: int = 64
    bk: int = 16
    tensorize: bool = False   # WMMA on tensor cores (fp16/bf16 factors, fp32 accumulation)

    @property
    def threads(self) -> int:
        return 128 if self.tensorize else (self.bm // 4) * (self.bn // 4)


@dataclass(frozen=True)
class Reduction:
    """A scalar accumulator ``acc = op(acc, value)`` over a chain of reduction loops."""

    acc: str
    dtype: DType
    op: str
    init: Expr
    loops: tuple[tuple[Var, object], ...]
    value: Expr
    epilogue: Stmt              # the stores after the reduction, reading ``acc``


@dataclass(frozen=True)
class Nest:
    """One top-level nest: spatial loops (var, extent), then its body."""

    spatial: tuple[tuple[Var, object], ...]
    body: Stmt
    reduction: Reduction | None = None
    hints: dict = field(default_factory=dict)


@dataclass(frozen=True)
class GemmPlan:
    row: int                     # index into the nest's spatial loops
    col: int
    a: Expr                      # the factor that does not depend on the column
    b: Expr                      # the factor that does not depend on the row
    tile: GemmTile


@dataclass(frozen=True)
class Launch:
    name: str
    kind: str                    # flat | rows | gemm
    nests: tuple[Nest, ...]
    prefix: int = 0              # rows: the number of leading spatial loops bound to blocks
    block: int = FLAT_BLOCK
    gemm: GemmPlan | None = None


def peel_loops(stmt: Stmt, count: int):
    loops = []
    while len(loops) < count and isinstance(stmt, For):
        loops.append((stmt.var, stmt.extent))
        stmt = stmt.body
    return tuple(loops), stmt


def scalar_reduction(body: Stmt) -> Reduction | None:
    """``alloc acc; acc = init; for r...: acc = op(acc, x); <stores>`` or None."""
    if not (isinstance(body, Alloc) and body.buffer.scope == "local" and not body.buffer.shape
            and isinstance(body.body, Seq) and len(body.body.stmts) >= 3):
        return None
    acc = body.buffer.name
    init, loop, *rest = body.body.stmts
    if not (isinstance(init, Store) and init.buffer == acc and isinstance(loop, For)):
        return None
    chain = []
    inner: Stmt = loop
    while isinstance(inner, For):
        chain.append((inner.var, inner.extent))
        inner = inner.body
    if not (isinstance(inner, Store) and inner.buffer == acc and isinstance(inner.value, Bin)
            and inner.value.op in REDUCE_IDENTITY and isinstance(inner.value.a, Load)
            and inner.value.a.buffer == acc):
        return None
    if any(isinstance(x, Load) and x.buffer == acc for x in walk(inner.value.b)):
        return None
    if any(isinstance(s, Store) and s.buffer == acc for r in rest for s in walk_stmts(r)):
        return None
    epilogue = rest[0] if len(rest) == 1 else Seq(tuple(rest))
    return Reduction(acc, body.buffer.dtype, inner.value.op, init.value, tuple(chain), inner.value.b, epilogue)


def split_nests(func: Func, stages) -> list[Nest]:
    body = func.body
    stmts = list(body.stmts) if isinstance(body, Seq) else [body]
    nests = []
    for stmt, stage in zip(stmts, stages):
        spatial, inner = peel_loops(stmt, len(stage.shape))
        nests.append(Nest(spatial, inner, scalar_reduction(inner), dict(stage.hints)))
    return nests


def _is_identity(r: Reduction) -> bool:
    return isinstance(r.init, Const) and float(r.init.value) == REDUCE_IDENTITY[r.op]


def extent_product(items) -> object:
    n = 1
    for _, e in items:
        n = n * e
    return n


def _strip_cast(e: Expr) -> Expr:
    return e.a if isinstance(e, Cast) else e


def gemm_plan(nest: Nest, tile: GemmTile | None = None) -> GemmPlan | None:
    """The GEMM view of a nest, or None when its accumulator is not a sum of products."""
    r = nest.reduction
    if r is None or "tile" not in nest.hints or r.op != "add" or not _is_identity(r):
        return None
    if r.dtype not in (DType.float32, DType.float16):
        return None
    value = _strip_cast(r.value)
    if not (isinstance(value, Bin) and value.op == "mul"):
        return None
    row, col = nest.hints["tile"]
    if max(row, col) >= len(nest.spatial) or row == col:
        return None
    rv, cv = nest.spatial[row][0].name, nest.spatial[col][0].name
    x, y = value.a, value.b
    fx, fy = free_vars(x), free_vars(y)
    if cv not in fx and rv not in fy:
        a, b = x, y
    elif cv not in fy and rv not in fx:
        a, b = y, x
    else:
        return None
    half = {DType.float16, DType.bfloat16}
    tensor_core = _strip_cast(a).dtype in half and _strip_cast(a).dtype == _strip_cast(b).dtype
    if tile is None:
        tile = GemmTile(64, 64, 32, True) if tensor_core else GemmTile()
    if tile.tensorize and not tensor_core:
        return None
    return GemmPlan(row, col, a, b, tile)


def _prefix_ok(nests: list[Nest], p: int, written: set[str]) -> bool:
    """True when every nest touches the buffers earlier nests write only at its own row."""
    if p == 0:
        return False
    for k, nest in enumerate(nests):
        if len(nest.spatial) < p:
            return False
        row = [v.name for v, _ in nest.spatial[:p]]
        if any(e != nests[0].spatial[j][1] for j, (_, e) in enumerate(nest.spatial[:p])):
            return False
        for s in walk_stmts(nest.body):
            exprs = []
            if isinstance(s, Store):
                if s.buffer in written and not _at_row(s.indices, row):
                    return False
                exprs = [s.value, *s.indices]
            for e in exprs:
                for x in walk(e):
                    if isinstance(x, Load) and x.buffer in written and not _at_row(x.indices, row):
                        return False
    return True


def _at_row(indices, row) -> bool:
    return len(indices) >= len(row) and all(isinstance(i, Var) and i.name == v for i, v in zip(indices, row))


def _rows_block(nests: list[Nest], p: int) -> int:
    work = 1
    for n in nests:
        rest = extent_product(n.spatial[p:])
        if n.reduction is not None:
            rest = rest * extent_product(n.reduction.loops)
        work = max(work, rest if isinstance(rest, int) else 1024)
    block = 32
    while block < min(work, 256):
        block *= 2
    return block


def plan_kernel(name: str, func: Func, stages, tiles: dict | None = None) -> list[Launch]:
    """The launches of one kernel, in the order they must run. ``tiles`` maps a nest's
    index to a GemmTile (a tuned choice) for its ``gemm`` launch."""
    nests = split_nests(func, stages)
    tiles = tiles or {}
    outputs = {p.name for p in func.params}
    if len(nests) > 1:
        written = set()
        for n in nests:
            written |= {s.buffer for s in walk_stmts(n.body) if isinstance(s, Store)}
        written &= outputs
        common = min(len(n.spatial) for n in nests)
        for p in range(common, 0, -1):
            if _prefix_ok(nests, p, written) and not any(gemm_plan(n) for n in nests):
                return [Launch(f"{name}_rows", "rows", tuple(nests), p, _rows_block(nests, p))]
    launches = []
    for i, nest in enumerate(nests):
        lname = f"{name}_{i}" if len(nests) > 1 else name
        plan = gemm_plan(nest, tiles.get(i))
        if plan is not None:
            launches.append(Launch(lname, "gemm", (nest,), gemm=plan, block=plan.tile.threads))
            continue
        r = nest.reduction
        red = extent_product(r.loops) if r is not None else 1
        if r is not None and (not isinstance(red, int) or red >= ROWS_MIN_REDUCTION) and _is_identity(r):
            launches.append(Launch(lname + "_rows" if len(nests) == 1 else lname, "rows", (nest,),
                                   len(nest.spatial), _rows_block([nest], len(nest.spatial))))
            continue
        launches.append(Launch(lname, "flat", (nest,)))
    return launches


__all__ = ["GemmTile", "GemmPlan", "Launch", "Nest", "Reduction", "gemm_plan", "plan_kernel", "split_nests"]
