"""Default schedule of integer dot-product kernels (``qconv``/``qmatmul``, stage tag ``qdot``).

Each output of these kernels is one u8 x s8 dot product over a reduction that is contiguous
in both operands (see ``kiln/ir/ops/qlinear.py``). gcc turns such a loop into ``vpdpbusd``
(VNNI) or ``vpmaddubsw``/``vpmaddwd`` (AVX2) with a vector accumulator, as long as the
reduction stays the innermost loop; the fp32 GEMM rule (reduction outside a tile of
vectorized columns) would destroy that pattern.

One dot product per output leaves the vector unit starved: every ``vpdpbusd`` needs two
fresh loads. This rule computes a tile of ``rows x cols`` outputs together instead -- rows
that share the weights (GEMM rows, output pixels), columns that share the activations
(output channels) -- with the reduction loop outside the tile and the tile unrolled:

    acc[R][C] = 0
    for k:                    <- gcc vectorizes this loop: R*C vector accumulators
      for r < R (unrolled): for c < C (unrolled): acc[r][c] += x[r, k] * w[c, k]
    for r, c: out = requant(acc[r][c])

so each loaded vector feeds C (or R) multiply-adds. Measured on GEMM 1024^3 with
AVX-512 VNNI, 2 threads: 4.5 ms one dot per output, 2.2 ms with an 8 x 4 tile (AVX2
only, 16 registers: 9.2 -> 4.1 ms with 8 x 2). The tile size is a target fact
(``Capabilities.dot_tile``, or ``dot_tile_unpaired`` where its rows do not divide the
rows: Cortex-M4/M7 take 2 x 2 tiles of pixels and channels, else 1 x 4, which the C99
renderer prints as calls of kiln_dsp.h's helpers); a target without one keeps one dot
product per output.
"""
from __future__ import annotations

from kiln.errors import ScheduleError
from kiln.ir.compute import Stage
from kiln.ir.expr import Load, Reduce, Var, walk
from kiln.ir.loop import Store, walk_stmts
from kiln.ir.schedule import Schedule
from kiln.passes.loop_nests import PARALLEL_MIN_WORK, largest_divisor, reduction_loops

# A reduction whose innermost run is shorter than this (depthwise convolutions: kh x kw)
# gains nothing from vector dot products; the plain schedule is kept.
MIN_DOT_LENGTH = 16

# A window whose rows are shorter than this many bytes (one Helium step) may be gathered
# into one run per pixel (``gather_window``): where the dot-product steps that saves
# (``dot_steps``: Helium's 16-, 8- and 4-lane steps or the DSP's words, then one per byte),
# over all tiles of channels, outnumber the words copied (``gathers_window``). Rows of 4
# (the DS-CNN's 10x4 stem over one channel: ten four-lane steps, three over the gathered 40
# bytes, 16 tiles): M55 304,718 -> 172,086 instructions. Rows of 9 (VWW's 3x3 RGB stem: 3 x
# (8 + 1) steps against 16 + 8 + 3 x 1, one saved in each of 2 tiles, 9 words copied) went
# 598,170 -> 623,676.
SHORT_WINDOW_ROW = 16


def dot_axes(stage: Stage, min_length: int = MIN_DOT_LENGTH, gather: bool = False) -> tuple[int, int] | None:
    """(rows axis, columns axis) of a dot-product stage -- its ``dot`` hint: the output
    axes sharing weights and sharing activations. None for other stages and for reductions
    whose innermost run is shorter than ``min_length`` (``Capabilities.min_dot_length``) --
    with ``gather`` (its window gathered into one run), the whole window."""
    axes = stage.hints.get("dot")
    red = next((x for x in walk(stage.body) if isinstance(x, Reduce)), None)
    if axes is None or red is None:
        return None
    n = red.axes[-1][1]
    if gather:
        n = window_rows(stage)
        n = n[0] * n[1] if n else 0
    return tuple(axes) if isinstance(n, int) and n >= min_length else None


def window_rows(stage: Stage) -> tuple[int, int] | None:
    """(rows, bytes per row) of a convolution's window whose rows are short (under
    ``SHORT_WINDOW_ROW``): a reduction of two constant axes; None otherwise (and for a
    depthwise convolution, whose channels multiply side by side)."""
    red = next((x for x in walk(stage.body) if isinstance(x, Reduce)), None)
    if red is None or len(red.axes) != 2 or "channel_macs" in stage.hints:
        return None
    rows, run = (n for _, n in red.axes)
    if not (isinstance(rows, int) and isinstance(run, int)) or rows == 1 or run >= SHORT_WINDOW_ROW:
        return None
    return rows, run


def dot_steps(n: int, widths: tuple[int, ...]) -> int:
    """Steps of a kiln_dsp.h dot product over ``n`` bytes taking steps of ``widths`` bytes
    (widest first), then one per byte left."""
    steps = 0
    for w in widths:
        steps += n // w
        n %= w
    return steps + n


def gathers_window(stage: Stage, channels, widths: tuple[int, ...], tile_columns: int) -> bool:
    """Whether gathering each pixel's window into one run saves more dot-product steps, over
    the pixel's tiles of ``tile_columns`` channels, than the words it copies."""
    window = window_rows(stage)
    if not widths or window is None or not isinstance(channels, int):
        return False
    rows, run = window
    saved = rows * dot_steps(run, widths) - dot_steps(rows * run, widths)
    return -(-channels // tile_columns) * saved > rows * -(-run // 4)


# Channels of a taps-major depthwise convolution computed side by side: one 4-byte word of a
# channels-last pixel (kiln_lane_mac4 in kiln/codegen/templates/mcu/kiln_dsp.h)
CHANNEL_MACS = 4


def amx_rows(stage: Stage, row_n, col_n) -> int:
    """Rows of an AMX tile (``kiln/codegen/x86_amx.py``) for a dot-product stage with VNNI
    weights: 32 (two 16-row tiles) or 16 when the rows divide, the columns are whole panels
    and the reduction is one run of whole 64-byte steps (a matmul's K, a 1x1 convolution's
    channels); 0 when AMX does not apply. A windowed convolution's reduction is several runs
    (window rows) and stays on the VNNI tile."""
    red = next((x for x in walk(stage.body) if isinstance(x, Reduce)), None)
    if red is None or len(red.axes) != 1:
        return 0
    k = red.axes[0][1]
    if not (isinstance(k, int) and k % AMX_STEP == 0 and isinstance(row_n, int) and isinstance(col_n, int)
            and col_n % 16 == 0):
        return 0
    return next((rows for rows in (32, 16) if row_n % rows == 0), 0)


def tile_dot_reduction(sch: Schedule, spatial, axes: tuple[int, int], tile: tuple[int, int],
                       vnni: int = 0, reduction: int = 0, amx: int = 0) -> list:
    """Split rows/columns by ``tile``, reduction outside the unrolled tile. Returns the
    loops left outside the tile (name, extent), outermost first, for the parallel rule.

    ``reduction``: the reduction's length (K), which sizes the weights (K x columns bytes).
    ``vnni``: the weights are in VNNI panels of that many columns (kiln/passes/vnni_pack.py);
    the tile is ``VNNI_ROWS`` x two panels (one when the columns are an odd number of
    panels), which the host renderer prints as broadcast-activation ``vpdpbusd`` steps with
    the accumulators in registers. Its write-back (the requantizing epilogue) is vectorized
    over the tile's 32 columns: gcc 12 vectorizes an int64 epilogue narrowing to bytes only
    with at least 32 iterations (8 rows were too few), and reads the accumulators in rows.
    ``amx``: the rows of an AMX tile (``amx_rows``); its columns are two panels (one when
    they are odd), its row and column loops stay serial loops (the AMX printer replaces
    the whole nest; plain C is kept for a process that Linux refuses the tiles)."""

    (row, row_n), (col, col_n) = spatial[axes[0]], spatial[axes[1]]
    if vnni:
        tile = (amx or VNNI_ROWS, 2 * vnni if col_n % (2 * vnni) == 0 else vnni)
    ro, ri = sch.split(row, largest_divisor(row_n, tile[0]))
    co, ci = sch.split(col, largest_divisor(col_n, tile[1]))
    # VNNI: the column-tile loop outermost, so one weight panel (32 x K bytes) stays in cache
    # while every row tile streams past it, not all the weights past each row tile: GEMM
    # 1024^3 3.8 -> 2.3 ms on one core; a channels-last convolution's columns come after its
    # output rows, and ResNet-18's last stage (2.4 MB of weights, 7 output rows) read all of
    # them from memory once per row with the column loop inside the row loop
    # -- unless all the weights stay in cache anyway: then the rows go outermost, so each
    # thread computes whole rows, reads the rows the previous layer's same thread wrote, and
    # copies (pads) rows it reads itself instead of its partner's. ResNet-18 int8's stem and
    # first stages (weights 10-147 KB): 37-46 us less per run (of 4.7 ms) on a quiet host,
    # 156-527 us on a busy one, interleaved runs on 2 threads (Zen 4)
    outer = [ro if name == row else co if name == col else name for name, _ in spatial]
    if vnni and reduction * col_n > (AMX_WEIGHTS_IN_CACHE if amx else WEIGHTS_IN_CACHE):
        outer.remove(co)
        outer.insert(0, co)
    order = outer + [ri, ci]
    sch.reorder(*order)
    sch.decompose_reduction(ri)
    # AMX: the reduction's ci not vectorized (hoist_loads would move x's load out of the
    # nest) nor unrolled: the plain-C fallback, serial, is vectorized by gcc (int8 GEMM
    # 1024^3: 1.68 ms; 47 ms with ci unrolled)
    if amx:
        for name in (ci + "_init", ci + "_wb"):
            sch.vectorize(name)
        return [(n, sch._loop(n).extent) for n in order[:-2]]
    for name in (ri, ci, ri + "_init", ci + "_init"):
        sch.unroll(name)
    if vnni:
        sch.vectorize(ci + "_wb")
    else:
        sch.unroll(ri + "_wb")
        sch.unroll(ci + "_wb")
    return [(n, sch._loop(n).extent) for n in order[:-2]]


# Reduction bytes one AMX tdpbusd step takes (a tile row)
AMX_STEP = 64
# AMX keeps the rows outermost up to this many bytes of weights (Sapphire Rapids: 2 MB of L2
# per core): a 32-row block of activations stays in L1 while the weight panels stream past
# it. int8 GEMM 1024^3 (1 MB of weights), 2 threads: 1.06 -> 0.80 ms against columns outermost.
AMX_WEIGHTS_IN_CACHE = 2 << 20

# Weights up to this many bytes (half an L2 of 1 MB) stay in cache while every row tile reads
# all of them, so the VNNI loop order need not keep one panel in cache at a time
WEIGHTS_IN_CACHE = 512 << 10

# Rows of a VNNI tile: 8 rows x 2 panels = 16 zmm accumulators, 2 weight registers and a
# broadcast. Measured on GEMM 1024^3, 2 threads (AVX-512 VNNI, Zen 5): 8 x 32 ran at 2.05
# int8 TOPS, 4 x 64 at 0.54 (ONNX Runtime's int8 GEMM: 1.15).
VNNI_ROWS = 8


def copy_in_runs(sch: Schedule, spatial, run: int, work: int) -> None:
    """A staging copy whose last axis is made of contiguous runs of ``run`` elements (a
    padded channels-last input, an im2col stage: the ``runs`` hint): split it so the inner
    loop copies one run with plain indices (vectorized, a memcpy) and the loop over runs
    stays a loop of its own inside the rows, which are fused and run in parallel. Fused
    with the rows, the run loop's index became a division and a remainder for every run:
    the padded copy of a 56x56x64 input took 6.9 us on one core that way, 1.9 us nested."""

    last, n = spatial[-1]
    if not isinstance(n, int) or n % run:
        return
    outer, inner = sch.split(last, run)
    sch.vectorize(inner)
    if len(spatial) == 1:
        name = outer
    else:
        name = spatial[0][0]
        for nxt, _ in spatial[1:-1]:
            name = sch.fuse(name, nxt)
    if work >= PARALLEL_MIN_WORK:
        sch.parallel(name)


FEW_CHANNELS = 4  # staged with the channels innermost, see stage_channels_last


def stage_channels_last(sch: Schedule, spatial, channels: int, work: int) -> None:
    """The NCHW -> padded NHWC staging of an integer convolution (``channels_last`` hint:
    its last axis is W*C). In storage order the loop reads the NCHW input with a stride of
    H*W bytes per element, a cache line per byte; split W*C into (W, C) and loop over
    channels outside pixels, so each inner loop reads one contiguous input row and writes
    with a stride of C into a staging row that stays in L1. An image's few channels (RGB)
    stay inside, unrolled: gcc then vectorizes the pixels, reading C rows at once and
    interleaving them in registers (the stem's quantizing copy alone: 16 us instead of 34)."""

    last, n = spatial[-1]
    if not isinstance(n, int) or n % channels or len(spatial) < 2:
        return
    w, c = sch.split(last, channels)
    if channels <= FEW_CHANNELS:
        sch.unroll(c)
    else:
        sch.reorder(*[name for name, _ in spatial[:-1]], c, w)
    name = spatial[0][0]
    for nxt, _ in spatial[1:-1]:
        name = sch.fuse(name, nxt)
    if work >= PARALLEL_MIN_WORK:
        sch.parallel(name)


def gather_window(sch: Schedule, outer, rows_ax: int) -> None:
    """A convolution whose window is several short rows (a stem: KW*C bytes per row, the
    DS-CNN's 10x4 over one channel: ten runs of 4) takes one dot product per window row,
    each too short for a vector step. Copy each output pixel's window into a local tile
    inside the pixel loop (``cache_read``) and fuse the window's row and column loops: the
    tile is one contiguous run, read by one dot product. (``gathers_window`` decides.)"""
    red = reduction_loops(sch, outer[-1][0])[:-2]   # (the tile's rows and columns last)
    src = _window_source(sch, outer[-1][0], red[-1][0]) if len(red) == 2 else None
    if src is None:
        return
    try:
        sch.cache_read(src, outer[rows_ax][0])
    except ScheduleError:   # a window whose region is no box of constant size
        return
    sch.fuse(red[0][0], red[1][0])


def _window_source(sch: Schedule, col_loop: str, column: str) -> str | None:
    """The buffer of the activations in a dot-product nest: the load indexed by the window's
    column loop ``column`` and not by the output-channel loop ``col_loop`` (nor its tile
    loop) -- the weights are indexed by both."""
    channels = {col_loop, col_loop.removesuffix("_o") + "_i"}
    found = set()
    for s in walk_stmts(sch._loop(col_loop)):
        loads = [x for x in walk(s.value) if isinstance(x, Load)] if isinstance(s, Store) else []
        for ld in loads:
            used = {v.name for i in ld.indices for v in walk(i) if isinstance(v, Var)}
            if column in used and not used & channels:
                found.add(ld.buffer)
    return found.pop() if len(found) == 1 else None
