"""Default schedules: the rules that make untuned kernels sensible.

One rule per stage pattern, applied to each top-level loop nest of a kernel:
- ``matmul``/``conv`` (a reduction with a ``tile`` hint): register tile of
  rows x columns, the reduction loops moved outside the tile (the tile lives in
  registers), the column loop vectorized, the row loop unrolled, outer loops fused
  and run in parallel;
- row reductions feeding an elementwise output over the same rows (softmax, layer norm):
  computed inside its row loop, a few short rows side by side (``_row_wise``);
- integer dot products: ``dot_schedule``; other reductions: ``reduction_schedule``;
- injective stages: ``injective_schedule`` (a layout transpose: ``transpose_schedule``).
Every step goes through ``Schedule`` primitives, so the result is a replayable trace. The
target facts the rules read are ``capabilities.Capabilities``; the loop-nest helpers they
share are in ``loop_nests``.
"""
from __future__ import annotations

import math

from kiln.ir.compute import Stage
from kiln.ir.expr import linear_terms
from kiln.ir.loop import For, Seq, walk_stmts
from kiln.ir.schedule import Schedule, ScheduleError
from kiln.passes.capabilities import DEFAULT_CAPABILITIES, Capabilities
from kiln.passes.dot_schedule import (CHANNEL_MACS, amx_rows, copy_in_runs, dot_axes, gather_window, gathers_window,
                                     stage_channels_last, tile_dot_reduction)
from kiln.passes.hoist_loads import cleanup_loops
from kiln.passes.injective_schedule import plain_injective, schedule_injective
from kiln.passes.loop_nests import (PARALLEL_MIN_WORK, TARGET_PARALLEL_EXTENT, extents, fuse_parallel,
                                    largest_divisor, nest_names, parallel_outer, reduce_work, reduction_loops,
                                    shape_size, static_extent)
from kiln.passes.reduction_schedule import schedule_reduction, vectorize_scalar_reductions


def schedule_kernel(sch: Schedule, stages: list[Stage],
                    caps: Capabilities = DEFAULT_CAPABILITIES) -> Schedule:
    """Apply the default rule to each top-level nest; nests correspond to ``stages``."""
    body = sch.func.body
    nests = list(body.stmts) if isinstance(body, Seq) else [body]
    plans = [(nest_names(n), st) for n, st in zip(nests, stages)]
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
        work = shape_size(st.shape) * reduce_work(st)
        gather = _gathers(st, spatial, caps)
        if st.has_reduce and caps.dot_tile and dot_axes(st, caps.min_dot_length, gather):
            vnni = st.hints.get("vnni", 0) if caps.vnni else 0
            rows_ax, cols_ax = dot_axes(st, caps.min_dot_length, gather)
            amx = amx_rows(st, spatial[rows_ax][1], spatial[cols_ax][1]) if vnni and caps.amx else 0
            tile = caps.dot_tile
            if caps.dot_tile_unpaired and (gather or not _divides(tile[0], spatial[rows_ax][1])):
                tile = caps.dot_tile_unpaired   # (a gathered window is one pixel's)
            outer = tile_dot_reduction(sch, spatial, (rows_ax, cols_ax), tile, vnni, reduce_work(st), amx)
            if gather:
                gather_window(sch, outer, rows_ax)
            if caps.threads > 1:  # one core: fused loops would only cost index divisions
                parallel_outer(sch, outer, work)
        elif st.has_reduce and caps.dot_tile and "channel_macs" in st.hints:
            # a taps-major depthwise convolution: four channels side by side, taps outside,
            # a few output pixels together so that each tap's weights serve all of them
            helium = caps.vector_bytes >= 4 * CHANNEL_MACS
            rows = DEPTHWISE_PIXELS_VECTOR if helium else DEPTHWISE_PIXELS
            outer = tile_dot_reduction(sch, spatial, st.hints["dot"], (rows, CHANNEL_MACS))
            taps = [name for name, _ in reduction_loops(sch, outer[-1][0])]
            few = math.prod(static_extent(e) for e in extents(sch, taps)) <= UNROLLED_TAPS * CHANNEL_MACS
            if few and helium:
                # straight-line taps when the tile is one pixel, one vector register (Helium;
                # a width with no divisor up to DEPTHWISE_PIXELS_VECTOR): gcc keeps it from the
                # first tap to the write-back (DS-CNN on the M55, one pixel: 2.95M -> 2.70M
                # instructions). With four scalar accumulators (M4) it spilled: 7.47M -> 7.53M;
                # with several pixels the taps stay loops (unrolled: DS-CNN 1.57M -> 1.64M)
                for name in taps:
                    sch.unroll(name)
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
    vectorize_scalar_reductions(sch)
    sch.func = cleanup_loops(sch.func)
    return sch


def _gathers(st, spatial, caps: Capabilities) -> bool:
    """Whether a dot-product stage gathers each pixel's window into one run (a one-pixel
    tile of the target's dot_tile columns, ``dot_schedule.gathers_window``). Should the
    copy turn out impossible (a window that is no box), the one-pixel tile stays: the same
    integers, one dot product per window row."""
    axes = st.hints.get("dot")
    if not caps.dot_steps or not caps.dot_tile or axes is None:
        return False
    one_pixel = caps.dot_tile if caps.dot_tile[0] == 1 else caps.dot_tile_unpaired
    return one_pixel is not None and gathers_window(st, spatial[axes[1]][1], caps.dot_steps, one_pixel[1])


def _divides(d: int, n) -> bool:
    return isinstance(n, int) and n % d == 0


# a depthwise convolution's taps unrolled up to this many (3x3: 9), one accumulator tile live
UNROLLED_TAPS = 16
# Output pixels of a depthwise convolution computed together (the largest divisor of the
# row's width up to this many): each tap's four weights are loaded and widened once for all
# of them. Helium, an int32x4 accumulator per pixel (8 Q registers: 5 pixels, the weights
# and an input): VWW on the M55 4.99M -> 4.17M instructions, DS-CNN (rows of 5) 1.77M ->
# 1.57M; 6 pixels spilled (4.52M). M4/M7, four scalar accumulators per pixel: 2 pixels
# 20.35M -> 19.66M on VWW, 3 and 4 spilled (19.83M, 20.01M). int8 activations, 2026-11-25.
DEPTHWISE_PIXELS_VECTOR = 5
DEPTHWISE_PIXELS = 2


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
    if static_extent(last_n) >= 4 and not isinstance(sch._loop(last).body, For):
        sch.vectorize(last)
    name = rows[0][0]
    for nxt, _ in rows[1:]:
        name = sch.fuse(name, nxt)
    side_by_side = _rows_side_by_side(sch._loop(name).extent, last_n, caps)
    if side_by_side > 1:
        name, each = sch.split(name, side_by_side)
        sch.interleave_statements(each)
    if shape_size(out.shape) * (len(reductions) + 1) >= PARALLEL_MIN_WORK:
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


def split_reductions_at_index_divisors(sch: Schedule, first_spatial: str) -> None:
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
    split_reductions_at_index_divisors(sch, spatial[0][0])
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
        fuse_parallel(sch, list(zip(outer, extents(sch, outer))), d["parallel"])


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
        plain_injective(sch, spatial, shape_size(st.shape))
        return False
    inner = [x for x in walk_stmts(sch._loop(loop).body) if isinstance(x, For)]
    moved = [x for x in inner if x.var.name.endswith("_" + loop)]
    if moved and static_extent(moved[-1].extent) >= 4 and not isinstance(moved[-1].body, For):
        sch.vectorize(moved[-1].var.name)
    return True

