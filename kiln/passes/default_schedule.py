"""Default schedules: the rules that make untuned kernels sensible.

One rule per stage pattern, applied to each top-level loop nest of a kernel:
- ``matmul``/``conv`` (a reduction with a ``tile`` hint): register tile of
  rows x columns, the reduction loops moved outside the tile (the tile lives in
  registers), the column loop vectorized, the row loop unrolled, outer loops fused
  and run in parallel;
- other reductions: outer spatial loops fused and run in parallel; over a middle axis,
  a tile of output columns accumulated side by side (``reduce_columns``); row reductions
  feeding an elementwise output over the same rows (softmax, layer norm) computed inside
  its row loop, a few short rows side by side (``_row_wise``);
- injective stages: all but the last loop fused and run in parallel, the last loop
  (contiguous in memory) vectorized; an iterating stage (a tree walk) a few elements'
  steps interleaved (``interleave``); a layout transpose tiled so that both contiguous
  axes are innermost (``transpose_schedule``).
Every step goes through ``Schedule`` primitives, so the result is a replayable trace.
"""
from __future__ import annotations

from dataclasses import dataclass

from kiln.ir.compute import Stage
from kiln.ir.loop import For, Seq, walk_stmts
from kiln.ir.schedule import Schedule, ScheduleError
from kiln.ir.expr import linear_terms
from kiln.passes.dot_schedule import amx_rows, copy_in_runs, dot_axes, stage_channels_last, tile_dot_reduction
from kiln.passes.hoist_loads import cleanup_loops
from kiln.passes.transpose_schedule import schedule_transpose

PARALLEL_MIN_WORK = 1 << 15   # below this many operations, threads cost more than they save
TARGET_PARALLEL_EXTENT = 16   # fuse outer loops until there are this many parallel chunks


@dataclass(frozen=True)
class Capabilities:
    """The target facts the default rules need (targets/*.py provide them)."""

    vector_bytes: int = 32
    vector_registers: int = 16
    threads: int = 2
    nchwc: bool = True  # convolutions in blocked NCHW{lanes}c layout (CPUs with SIMD)
    pack_matmul: bool = True  # matmul B in column panels of the register tile's width (CPUs)
    # (rows, columns) of outputs computed together by an integer dot-product kernel; None:
    # one dot product per output (see kiln/passes/dot_schedule.py)
    dot_tile: tuple[int, int] | None = None
    # u8 x s8 dot products of 4 bytes per int32 lane (x86 AVX-512 VNNI ``vpdpbusd``): integer
    # kernels take their weights in VNNI panels (kiln/passes/vnni_pack.py)
    vnni: bool = False
    # Intel AMX int8 tiles (``tdpbusd``): dot-product kernels whose reduction is one run of
    # whole 64-byte steps use 32 x 32 tiles of them (kiln/codegen/x86_amx.py)
    amx: bool = False
    # 3x3 stride-1 float convolutions as Winograd transforms around batched GEMMs
    # (kiln/passes/winograd.py)
    winograd: bool = False
    # concats whose parts their producers write into the result's storage, where each part's
    # slot is one run of bytes (kiln/passes/concat_in_place.py; targets planned by plan_memory)
    concat_in_place: bool = False
    # rows a row-wise kernel (softmax, layer norm) runs side by side, statement by
    # statement (``Schedule.interleave_statements``): out-of-order CPUs overlap one row's
    # reduction chains with the next rows' (0 or 1: one row at a time)
    interleave_rows: int = 0
    # packed matmuls whose N allows it take column panels three vectors wide (8 x 48 tiles
    # of floats on AVX-512: 24 of the 32 registers accumulate; see ``panel_widths``)
    wide_panels: bool = False
    # a lone depthwise or 1x1 convolution between NCHW tensors runs in NCHW instead of
    # converting into NCHWc and straight back (kiln/passes/isolated_convs.py; measured on
    # x86 only: on NEON gcc left the bounds-tested depthwise tile scalar)
    plain_isolated_convs: bool = False

    def tile(self, itemsize: int = 4) -> tuple[int, int]:
        """Register tile (rows, columns) of a GEMM-like reduction.

        Two vectors of columns per row; rows until accumulators fill three quarters of the
        vector registers, at most 8 (AVX2: 6 x 16, the classic 12-accumulator kernel;
        AVX-512: 8 x 32). Measured on GEMM 1024^3 with AVX-512: 8 x 32 ran at 213 GFLOP/s
        against 59 for 4 x 16 (numpy/OpenBLAS: 229 in the same run).
        """
        lanes = self.lanes(itemsize)
        rows = max(min(8, (3 * self.vector_registers // 4) // 2), 1)
        return rows, 2 * lanes

    def lanes(self, itemsize: int = 4) -> int:
        return max(self.vector_bytes // itemsize, 1)

    def panel_widths(self, itemsize: int = 4) -> tuple[int, ...]:
        """Column panel widths for packed matmul B, widest first: a matmul takes the first
        that divides its N (``passes/pack_matmul.py``). Three vectors where the target has
        them on: BERT's FFN GEMM [128, 768] x [768, 3072] ran 6.5 % faster with 8 x 48 tiles
        than with 8 x 32 (Sapphire Rapids, 2 threads); 4 x 64 was 10 % slower than 8 x 32."""
        two = self.tile(itemsize)[1]
        return (3 * self.lanes(itemsize), two) if self.wide_panels else (two,)


DEFAULT_CAPABILITIES = Capabilities()


def largest_divisor(n, limit: int) -> int:
    """The largest divisor of ``n`` up to ``limit`` (1 for a symbolic extent: no tiling)."""
    if not isinstance(n, int):
        return 1
    for d in range(min(n, limit), 0, -1):
        if n % d == 0:
            return d
    return 1


def _nest_names(nest) -> list[tuple[str, int]]:
    out = []
    while isinstance(nest, For):
        out.append((nest.var.name, nest.extent))
        nest = nest.body
    return out


# A symbolic extent counts as this large when estimating work: dynamic dims are
# usually batch or sequence sizes, big enough to be worth threads.
SYMBOLIC_EXTENT_GUESS = 64


def _static(n) -> int:
    return n if isinstance(n, int) else SYMBOLIC_EXTENT_GUESS


def _reduce_work(stage: Stage) -> int:
    """Steps per output element: the product of its reductions' extents and iterations' counts."""
    from kiln.ir.expr import Iterate, Reduce, walk

    w = 1
    for x in walk(stage.body):
        if isinstance(x, Reduce):
            for _, n in x.axes:
                w *= _static(n)
        elif isinstance(x, Iterate):
            w *= max(x.count, 1)
    return w


def _size(shape) -> int:
    n = 1
    for d in shape:
        n *= _static(d)
    return n


def schedule_kernel(sch: Schedule, stages: list[Stage],
                    caps: Capabilities = DEFAULT_CAPABILITIES) -> Schedule:
    """Apply the default rule to each top-level nest; nests correspond to ``stages``."""
    body = sch.func.body
    nests = list(body.stmts) if isinstance(body, Seq) else [body]
    plans = [(_nest_names(n), st) for n, st in zip(nests, stages)]
    if _row_wise(sch, plans, caps):
        plans = []
    # A conv's padded input (its own stage) is computed row by row inside the conv's loops
    # instead of in a pass of its own: written and read back while still in L1.
    pads = {nxt.name: (loops, st) for (loops, st), (_, nxt) in zip(plans, plans[1:])
            if pad_computed_inside(st, nxt)}
    moved = {st.name for _, st in pads.values()}
    for loops, st in plans:
        if st.name in moved:
            continue
        rank = len(st.shape)
        spatial = loops[:rank]
        if not spatial:
            continue
        work = _size(st.shape) * _reduce_work(st)
        if st.has_reduce and caps.dot_tile and dot_axes(st):
            vnni = st.hints.get("vnni", 0) if caps.vnni else 0
            rows_ax, cols_ax = dot_axes(st)
            amx = amx_rows(st, spatial[rows_ax][1], spatial[cols_ax][1]) if vnni and caps.amx else 0
            _parallel_outer(sch, tile_dot_reduction(sch, spatial, (rows_ax, cols_ax), caps.dot_tile, vnni,
                                                    _reduce_work(st), amx), work)
        elif st.has_reduce and "tile" in st.hints:
            tile_reduction(sch, spatial, st.hints, work, tile_sizes(st, caps), pad=pads.get(st.name))
        elif st.has_reduce:
            schedule_reduction(sch, spatial, work)
        elif "runs" in st.hints:
            copy_in_runs(sch, spatial, st.hints["runs"], work)
        elif "channels_last" in st.hints and caps.dot_tile:
            stage_channels_last(sch, spatial, st.hints["channels_last"], work)
        else:
            schedule_injective(sch, spatial, st, work, caps)
    _vectorize_scalar_reductions(sch)
    sch.func = cleanup_loops(sch.func)
    return sch


def _row_wise(sch: Schedule, plans, caps: Capabilities) -> bool:
    """Softmax, layer norm and their kin: row reductions (max, sum, mean, variance) feeding
    an elementwise output over the same rows. Each row's reductions move into the output's
    row loop (``compute_at``): one parallel loop over rows, each row read while in cache,
    instead of one pass over the whole tensor per stage."""
    if len(plans) < 2:
        return False
    *reductions, (out_loops, out) = plans
    rank = len(out.shape)
    if out.has_reduce or rank < 2 or len(out_loops) < rank:
        return False
    row_shapes = (tuple(out.shape[:-1]) + (1,), tuple(out.shape[:-1]))  # kept dims or not
    if not all(st.has_reduce and tuple(st.shape) in row_shapes for _, st in reductions):
        return False
    rows, (last, last_n) = out_loops[: rank - 1], out_loops[rank - 1]
    saved = sch.func, list(sch.trace)
    try:
        for _, st in reversed(reductions):  # each lands first in the row loop: reversed keeps their order
            sch.compute_at(st.name, rows[-1][0])
    except ScheduleError:  # a read the region analysis cannot bound: one pass per stage instead
        sch.func, sch.trace = saved
        return False
    if _static(last_n) >= 4 and not isinstance(sch._loop(last).body, For):
        sch.vectorize(last)
    name = rows[0][0]
    for nxt, _ in rows[1:]:
        name = sch.fuse(name, nxt)
    side_by_side = _rows_side_by_side(sch._loop(name).extent, last_n, caps)
    if side_by_side > 1:
        name, each = sch.split(name, side_by_side)
        sch.interleave_statements(each)
    if _size(out.shape) * (len(reductions) + 1) >= PARALLEL_MIN_WORK:
        sch.parallel(name)
    return True


# Rows this long or shorter run side by side (``Capabilities.interleave_rows``): a row of a
# few vectors is mostly waiting on its reductions' dependent chains.
INTERLEAVE_MAX_ROW = 1024


def _rows_side_by_side(rows, row_length, caps: Capabilities) -> int:
    """How many rows of a row-wise kernel run side by side: ``caps.interleave_rows``, or
    fewer where that does not divide the row count; 1 for long rows or a symbolic row
    count or length (a split of a symbolic count guards each copy: no steps side by side)."""
    if (not isinstance(row_length, int) or row_length > INTERLEAVE_MAX_ROW
            or not isinstance(rows, int) or not rows):
        return 1
    k = caps.interleave_rows
    while k > 1 and rows % k:
        k //= 2
    return max(k, 1)


def _split_reductions_at_index_divisors(sch: Schedule, first_spatial: str) -> None:
    """Split a reduction loop ``k`` by ``c`` when loads index with ``k // c`` or ``k % c``
    (a tensor read through a reshape): ``simplify_loop_indices`` then removes the division
    from the innermost loop."""
    from kiln.ir.expr import walk
    from kiln.ir.loop import Alloc, Store, walk_stmts

    alloc = next((s for s in walk_stmts(sch._loop(first_spatial)) if isinstance(s, Alloc)), None)
    if alloc is None or not isinstance(alloc.body, Seq) or len(alloc.body.stmts) < 2:
        return
    red = alloc.body.stmts[1]
    loops = [s for s in walk_stmts(red) if isinstance(s, For)]
    stores = [s for s in walk_stmts(red) if isinstance(s, Store)]
    for loop in loops:
        if not isinstance(loop.extent, int):
            continue
        for st in stores:
            divisors = {int(x.b.value) for e in (st.value, *st.indices) for x in walk(e)
                        if getattr(x, "op", None) in ("floordiv", "mod") and getattr(x.b, "value", None)
                        and loop.var in (linear_terms(x.a) or {})}  # k itself divided, not k // 64 again
            c = next((d for d in sorted(divisors) if 1 < d < loop.extent and loop.extent % d == 0), None)
            if c:
                sch.split(loop.var.name, c)
                return


def tile_sizes(st: Stage, caps: Capabilities) -> tuple[int, int, int]:
    """The register tile (rows, columns) the default rule aims for on this stage, and the
    vector lanes its columns come in."""
    rows, cols = caps.tile(st.dtype.itemsize)
    rows = min(rows, st.hints.get("tile_rows", rows))  # a stage with wide temporaries
    cols = st.hints.get("tile_cols", cols)              # a layout blocked by columns
    return rows, cols, caps.lanes(st.dtype.itemsize)


def _lanes(sizes) -> int:
    """Vector lanes of a register tile's ``sizes``: (rows, columns, lanes) from
    ``tile_sizes``; a (rows, columns) pair is two vectors wide (``Capabilities.tile``)."""
    return sizes[2] if len(sizes) > 2 else max(sizes[1] // 2, 1)


def default_tiling(spatial, hints: dict, work, sizes: tuple[int, ...]) -> dict:
    """The decisions of the default tiling rule for a register tile of ``sizes``: the
    constants that the tuner's design space (autotune/space.py) opens up as knobs."""
    row_ax, col_ax = hints["tile"]
    row_n, col_n = spatial[row_ax][1], spatial[col_ax][1]
    col_tile = column_tile(col_n, sizes)
    col_blocks, block_ax = 1, hints.get("col_block_axis")
    if block_ax is not None and col_tile == col_n and isinstance(col_n, int):
        col_blocks = largest_divisor(spatial[block_ax][1], max(sizes[1] // col_n, 1))
    row_tile = largest_divisor(row_n, sizes[0])
    if 2 * row_tile <= sizes[0] and isinstance(row_n, int):
        row_tile, col_blocks = _rows_past_the_tile(row_n, col_tile, col_blocks, sizes)
    return {"row_tile": row_tile, "col_tile": col_tile, "row_block": 1, "col_block": 1,
            "k_split": 1, "unroll_k": False, "unroll_rows": True, "vectorize": True,
            "parallel": TARGET_PARALLEL_EXTENT if work >= PARALLEL_MIN_WORK else 0,
            "panel_outer": bool(hints.get("panel_outer")), "col_blocks": col_blocks}


def column_tile(col_n, sizes: tuple[int, ...]) -> int:
    """The largest divisor of the columns up to the tile's, preferring whole vectors: 784
    columns (28 x 28 pixels) in tiles of 28 had gcc 12 mix zmm, ymm and xmm lanes and keep
    the accumulators on the stack (44 GFLOP/s); tiles of 16 are one zmm per row."""
    tile = largest_divisor(col_n, sizes[1])
    lanes = _lanes(sizes)
    if isinstance(col_n, int) and col_n > lanes and tile % lanes:
        whole = [t for t in range(lanes, sizes[1] + 1, lanes) if col_n % t == 0]
        tile = whole[-1] if whole else tile
    return tile


# The most rows a register tile takes when the row extent has no divisor near the tile's
# rows (the tuner's row_tile domain, kiln/autotune/space.py, goes as far).
MAX_ROW_TILE = 16


def _rows_past_the_tile(row_n: int, col_tile: int, col_blocks: int, sizes: tuple[int, ...]) -> tuple[int, int]:
    """(row tile, column blocks) for a row extent whose largest divisor up to the tile's
    rows is at most half of them: 13 (SqueezeNet's, AlexNet's 13 x 13 maps) or 197 (ViT's
    tokens) gave a 1-row tile, one multiply-add per two loads. The candidates:
    - a divisor past the tile's rows, while the accumulators fit the tile's area (rows x
      columns), with fewer column blocks if that lets the rows grow;
    - a tile of about the tile's rows that does not divide the extent: its last run
      repeats the last row (``split(tail="clamp")``), wasting those rows' work.
    The pair that does the most multiply-adds per value loaded, counting the waste, wins."""
    lanes = _lanes(sizes)

    def score(rows: int, blocks: int) -> float:
        cols = col_tile * blocks
        per_load = rows * cols / lanes / (rows + max(cols // lanes, 1))
        return per_load * row_n / (-(-row_n // rows) * rows)

    candidates = [(largest_divisor(row_n, sizes[0]), col_blocks)]
    for blocks in sorted({col_blocks, 1}, reverse=True):
        candidates.append((largest_divisor(row_n, min(MAX_ROW_TILE, sizes[0] * sizes[1] // (col_tile * blocks))),
                           blocks))
    if row_n > sizes[0]:
        most = max(sizes[0], min(MAX_ROW_TILE, sizes[0] * sizes[1] // (col_tile * col_blocks)))
        candidates += [(rows, col_blocks) for rows in range(-(-sizes[0] // 2), min(most, row_n - 1) + 1)]
    return max(candidates, key=lambda c: score(*c))  # the first of equals: a divisor


def tile_reduction(sch: Schedule, spatial, hints: dict, work, sizes: tuple[int, ...], pad=None) -> None:
    """Register tile of ``sizes`` (rows, columns) over the axes ``hints["tile"]`` names:
    ``apply_tiling`` with the default decisions."""
    apply_tiling(sch, spatial, hints, default_tiling(spatial, hints, work, sizes), pad)


def reduction_loops(sch: Schedule, innermost_spatial: str) -> list[tuple[str, int]]:
    """The reduction loops under the scalar accumulator of a lowered reduction."""
    from kiln.ir.loop import Alloc

    alloc = next((s for s in walk_stmts(sch._loop(innermost_spatial)) if isinstance(s, Alloc)), None)
    if alloc is None or not isinstance(alloc.body, Seq) or len(alloc.body.stmts) < 3:
        return []
    nest = alloc.body.stmts[1]
    return _nest_names(nest) if isinstance(nest, For) else []


def apply_tiling(sch: Schedule, spatial, hints: dict, d: dict, pad=None) -> None:
    """Multi-level tiling of a GEMM-like nest, as ``d`` (a dict of the design space's knobs) says:

        spatial loops ... row_o, col_o | row blocks, col blocks | k.. | row_i, col_i
                          (parallel)     (``row_block``/``col_block``) (reduction) (register tile)

    The reduction loops move outside the register tile (the tile lives in registers); the
    innermost one is split by ``k_split`` (its inner part unrolled with ``unroll_k``). The
    tile's rows are unrolled (``unroll_rows``), its columns vectorized (``vectorize``).

    Hints:
    - ``panel_outer``: the column-tile loop runs outside the row-tile loop (a packed B
      panel stays in cache while the row tiles stream past it);
    - ``col_block_axis``: the axis that counts blocks of the column axis (a blocked conv's
      output-channel blocks). When one block is narrower than the tile's columns, the tile
      takes ``col_blocks`` blocks: each input value loaded then feeds more accumulators;
    - ``pad_at``: the axis in whose loop the padded input ``pad`` (its (loops, stage), from
      the kernel's stage before) is computed, only the rows that iteration reads.
    Outer loops are fused until ``parallel`` chunks run in parallel (0: serial).
    """
    _split_reductions_at_index_divisors(sch, spatial[0][0])
    if d["k_split"] > 1:
        red = reduction_loops(sch, spatial[-1][0])
        _, k_inner = sch.split(red[-1][0], d["k_split"])
        if d["unroll_k"]:
            sch.unroll(k_inner)
    row_ax, col_ax = hints["tile"]
    row, col = spatial[row_ax][0], spatial[col_ax][0]
    # a row tile that does not divide the rows repeats the last row in its last run rather
    # than testing each row, where the nest allows it (it stores what it does not read)
    ro, ri = sch.split(row, d["row_tile"], tail="clamp" if sch.clamp_safe(row) else "guard")
    co, ci = sch.split(col, d["col_tile"])
    blocks, block_ax = None, hints.get("col_block_axis")
    if d["col_blocks"] > 1:
        bo, blocks = sch.split(spatial[block_ax][0], d["col_blocks"])
    first, second = (co, ro) if d["panel_outer"] else (ro, co)
    outer = [first if n == row else second if n == col else bo if blocks and k == block_ax else n
             for k, (n, _) in enumerate(spatial)]
    block = []
    if d["row_block"] > 1:
        ro2, rb = sch.split(ro, d["row_block"])
        outer[outer.index(ro)] = ro2
        block.append(rb)
    if d["col_block"] > 1:
        co2, cb = sch.split(co, d["col_block"])
        outer[outer.index(co)] = co2
        block.append(cb)
    tile = [ri, blocks, ci] if blocks else [ri, ci]
    sch.reorder(*outer, *block, *tile)
    sch.decompose_reduction(ri)
    # The tile's zeroing and write-back loops are unrolled with it: gcc then keeps the
    # accumulator array in registers from the first store to the last. Left as loops, it
    # zeroed the array in memory with 32-byte stores, loaded it back in 64-byte registers
    # (a failed store forward each) and spilled it again for the write-back: an 8 x 32
    # NCHWc 1x1 conv tile (K = 64) on one Sapphire Rapids core 167 -> 184 GFLOP/s.
    if d["unroll_rows"]:
        for name in (ri, ri + "_init", ri + "_wb"):
            sch.unroll(name)
    if blocks:
        for name in (blocks, blocks + "_init", blocks + "_wb"):
            sch.unroll(name)
    if d["vectorize"]:
        for name in (ci, ci + "_init", ci + "_wb"):
            sch.vectorize(name)
    if pad is not None:
        at = spatial[hints["pad_at"]][0]
        if _pad_inside(sch, pad, at) and at in outer:
            outer = outer[: outer.index(at) + 1]  # loops inside `at` no longer nest perfectly
    if d["parallel"]:
        _fuse_parallel(sch, list(zip(outer, _extents(sch, outer))), d["parallel"])


def pad_computed_inside(prev: Stage, st: Stage) -> bool:
    """True when ``prev`` is ``st``'s padded input and ``st`` computes it in its own loops."""
    return prev.tag == "pad" and "pad_at" in st.hints


def _pad_inside(sch: Schedule, pad, loop: str) -> bool:
    """compute_at the pad stage into ``loop`` and vectorize its innermost loop there; if
    the region cannot be bounded, schedule it as a pass of its own and return False."""
    loops, st = pad
    try:
        sch.compute_at(st.name, loop)
    except ScheduleError:
        spatial = loops[: len(st.shape)]
        _injective(sch, spatial, _size(st.shape))
        return False
    inner = [x for x in walk_stmts(sch._loop(loop).body) if isinstance(x, For)]
    moved = [x for x in inner if x.var.name.endswith("_" + loop)]
    if moved and _static(moved[-1].extent) >= 4 and not isinstance(moved[-1].body, For):
        sch.vectorize(moved[-1].var.name)
    return True


def _extents(sch: Schedule, names) -> list[int]:
    return [sch._loop(n).extent for n in names]


def _parallel_outer(sch: Schedule, loops, work) -> None:
    """Fuse leading loops until there is enough parallelism, then mark the loop parallel."""
    if work >= PARALLEL_MIN_WORK:
        _fuse_parallel(sch, loops, TARGET_PARALLEL_EXTENT)


def _fuse_parallel(sch: Schedule, loops, target: int) -> None:
    """Fuse leading ``loops`` ((name, extent) pairs) until ``target`` chunks, mark it parallel."""
    if not loops:
        return
    name, extent = loops[0]
    extent = _static(extent)
    for nxt, n in loops[1:]:
        if extent >= target:
            break
        name = sch.fuse(name, nxt)
        extent *= _static(n)
    sch.parallel(name)


def schedule_reduction(sch: Schedule, spatial, work) -> None:
    """The rule for a reduction without a register tile: ``reduce_columns`` where it
    applies, else the outer loops fused and run in parallel (and the innermost reduction
    loops fused where they read one contiguous run: ``fuse_contiguous_reduction``)."""
    if not reduce_columns(sch, spatial, work):
        fuse_contiguous_reduction(sch, spatial[-1][0])
        _parallel_outer(sch, spatial, work)


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
    _parallel_outer(sch, list(spatial[:-1]) + ([(outer, extent // tile)] if outer else []), work)
    return True


def _vectorize_scalar_reductions(sch: Schedule) -> None:
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


def schedule_injective(sch: Schedule, spatial, st: Stage, work, caps: Capabilities = DEFAULT_CAPABILITIES) -> None:
    """The rule for a stage without a reduction: a Winograd transform's own, ``interleave``
    for one that iterates (a tree walk), a layout transpose's tile (``transpose_schedule``),
    or ``_injective``."""
    if st.has_iterate:
        interleave(sch, spatial, work, caps)
    elif "winograd" in st.hints:
        expand_cases(sch, spatial, st.hints["winograd"], work)
    elif "transpose" in st.hints and schedule_transpose(
            sch, spatial, st.hints["transpose"], st.dtype.itemsize, caps.vector_bytes, parallel=work >= PARALLEL_MIN_WORK):
        pass
    else:
        _injective(sch, spatial, work)


MAX_INTERLEAVE = 8  # walks advanced together: 8 measured 2.4x faster than 1, 1.6x than 4


def interleave(sch: Schedule, spatial, work, caps: Capabilities) -> None:
    """An iterating stage (a tree walk: each step a chain of dependent loads) advances a few
    elements' iterations together, one step of each in turn, so their loads overlap instead
    of each waiting for the last:

        outer loops (parallel) | lane_o | step | lane_i (unrolled; the states in registers)

    The lanes are the axis with most of them (up to ``MAX_INTERLEAVE``, and to half the
    registers), moved innermost -- for a tree walk the samples, so each tree's nodes stay in
    L1 while all samples walk it; with one sample, the trees. The iteration loop moves
    outside the lanes as a reduction loop moves outside a register tile
    (``decompose_reduction``). No vector lanes: their gathers measured slower here."""
    width = max(1, min(MAX_INTERLEAVE, caps.vector_registers // 2))
    lanes = max(range(len(spatial)), key=lambda k: (largest_divisor(spatial[k][1], width), -k))
    name, extent = spatial[lanes]
    rest = [loop for k, loop in enumerate(spatial) if k != lanes]
    if len(spatial) > 1:
        sch.reorder(*[n for n, _ in rest], name)
    u = largest_divisor(extent, width)
    if u > 1:
        outer, inner = sch.split(name, u) if u < _static(extent) else (None, name)
        sch.decompose_reduction(inner)
        sch.unroll(inner)
        rest = rest + ([(outer, _static(extent) // u)] if outer else [])
    else:
        rest = rest + [(name, extent)]
    _parallel_outer(sch, rest, work)


def expand_cases(sch: Schedule, spatial, hint: dict, work) -> None:
    """A stage whose body is a select over cases of some axes (kiln/ir/ops/winograd.py):

        outer loops (parallel) | vector axis (vectorized) | case axes (expanded)

    ``hint``: ``expand`` the case axes -- whole, or split by ``expand_block`` and only the
    inner parts expanded; ``vector`` the axis to vectorize. Each case then is straight-line
    code inside one vectorized loop, so the values the cases share are loaded and combined
    once per vector."""
    names = [n for n, _ in spatial]
    outer, inner = list(names), []
    for ax in hint["expand"]:
        if hint.get("expand_block"):
            o, i = sch.split(names[ax], hint["expand_block"])
            outer[ax] = o
        else:
            i = names[ax]
            outer.remove(i)
        inner.append(i)
    vec = names[hint["vector"]]
    outer.remove(vec)
    sch.reorder(*outer, vec, *inner)
    sch.vectorize(vec)
    if work >= PARALLEL_MIN_WORK:  # before expanding: fusing rewrites one body, not one per case
        _fuse_parallel(sch, list(zip(outer, _extents(sch, outer))), TARGET_PARALLEL_EXTENT)
    for i in reversed(inner):
        sch.expand(i)


def _injective(sch: Schedule, spatial, work) -> None:
    last, last_n = spatial[-1]
    last_n = _static(last_n)
    loop = sch._loop(last)
    if not isinstance(loop.body, For) and last_n >= 4:
        sch.vectorize(last)
    outer = spatial[:-1]
    if outer:
        name, extent = outer[0]
        for nxt, _ in outer[1:]:
            name = sch.fuse(name, nxt)
        if work >= PARALLEL_MIN_WORK:
            sch.parallel(name)
    elif work >= PARALLEL_MIN_WORK and last_n >= 4096 and isinstance(spatial[-1][1], int):
        o, i = sch.split(last, 1024)
        sch.parallel(o)
