"""GPU rule for matmul and convolution nests: workgroup-memory tiling with register tiles.

A nest of the form (what ``lower`` produces for every ``tile``-hinted stage)::

    for <spatial loops>:                 # one per output dim; ``row`` and ``col`` from the hint
      acc = init
      for <reduction loops>: acc = acc + X * Y     # X free of ``col``, Y free of ``row``
      <epilogue stores reading acc>

becomes one workgroup per output tile (and per index of the other spatial dims), whose
invocations each own a register tile (:class:`TileConfig`: 32 x 32 outputs per workgroup for
most problems, 128 x 128 for large ones). The reduction loops are flattened into one index
``k``; per step of 8 along it the workgroup copies the ``X`` tile (rows x k) and the ``Y``
tile (k x cols) into workgroup memory -- evaluating X and Y there, so padding, strides and
fused prologues come along -- waits at a barrier, and accumulates from workgroup memory. Every global read and write is guarded by
the tensor's bounds; out-of-range tile slots hold zero. Barriers sit only in uniform control
flow (loops with constant bounds), as WGSL requires.

Vector loads: where an operand is a plain float32 tensor read that runs contiguously along the
tile's fast dimension (X along the flattened reduction, Y along the columns), and its
flat index is provably a multiple of 4 at every fourth step (the other strides and the offset
multiples of 4, the extent too), each invocation copies four neighbours with one
``VectorLoad`` -- a 16-byte ``vec4`` load in WGSL -- instead of four scalar loads.

Nests of any other form, integer reductions, or problems too small to fill a tile keep the
one-invocation-per-element rule (:func:`kiln.passes.gpu_schedule.bind_elementwise`).
"""
from __future__ import annotations

from dataclasses import dataclass

from kiln.ir.compute import Stage
from kiln.ir.dtype import INDEX, DType
from kiln.ir.expr import Bin, Const, Expr, Load, Var, affine_coeffs, free_vars, row_major, simplify, substitute
from kiln.ir.loop import (GPU_BLOCK, GPU_THREAD, Alloc, Barrier, Buffer, For, Func, If, Seq, Store, VectorLoad,
                          seq, subst_stmt)
from kiln.ir.schedule import _index_scalar

LANES = 4                                       # float32 words per vector load (16 bytes)
MIN_OUTPUTS, MIN_K = 512, 16                    # below these one invocation per element wins


@dataclass(frozen=True)
class TileConfig:
    """A workgroup's output tile (``rows x cols``), its step along the reduction (``k``) and
    its invocations (``threads_y x threads_x``, each owning a ``micro_rows x micro_cols``
    register tile)."""

    rows: int
    cols: int
    k: int
    threads_y: int
    threads_x: int

    @property
    def threads(self) -> int:
        return self.threads_x * self.threads_y

    @property
    def micro_rows(self) -> int:
        return self.rows // self.threads_y

    @property
    def micro_cols(self) -> int:
        return self.cols // self.threads_x


# 64 invocations of 4 x 4 outputs: many workgroups even for a transformer's 128-row matmuls
SMALL = TileConfig(32, 32, 8, 8, 8)
# 256 invocations of 8 x 8 outputs, the classic SGEMM shape: 64 multiply-adds per 16 reads of
# workgroup memory instead of 16 per 8, for problems with enough tiles to fill a GPU
LARGE = TileConfig(128, 128, 8, 16, 16)
LARGE_MIN_TILES = 128                           # whole LARGE tiles a problem needs to take them
# a benchmark comparing the two sets this; None lets :func:`choose_tile` decide
TILE_OVERRIDE: TileConfig | None = None


def choose_tile(rows: int, cols: int, others: int) -> TileConfig:
    """LARGE when the problem has at least :data:`LARGE_MIN_TILES` whole large tiles (e.g. a
    2048 x 2048 output), else SMALL."""
    if TILE_OVERRIDE is not None:
        return TILE_OVERRIDE
    return LARGE if (rows // LARGE.rows) * (cols // LARGE.cols) * others >= LARGE_MIN_TILES else SMALL


def _c(v: int) -> Const:
    return Const(v, INDEX)


def _and(a: Expr, b: Expr) -> Expr:
    return Bin("and", a, b, DType.bool)


def _match(func: Func, stage: Stage):
    """(spatial loops, acc buffer, init value, reduction loops, X, Y, epilogue) or None."""
    rank = len(stage.shape)
    loops, cur = [], func.body
    while isinstance(cur, For) and len(loops) < rank:
        loops.append(cur)
        cur = cur.body
    if len(loops) != rank or rank < 2 or not isinstance(cur, Alloc) or cur.buffer.shape != ():
        return None
    acc = cur.buffer
    parts = cur.body.stmts if isinstance(cur.body, Seq) else ()
    if acc.dtype is not DType.float32 or len(parts) < 3:
        return None
    init, red = parts[0], parts[1]
    if not (isinstance(init, Store) and init.buffer == acc.name and not init.indices and isinstance(red, For)):
        return None
    red_loops, update = [], red
    while isinstance(update, For):
        red_loops.append(update)
        update = update.body
    if not (isinstance(update, Store) and update.buffer == acc.name and not update.indices):
        return None
    v = update.value
    if not (isinstance(v, Bin) and v.op == "add" and v.a == Load(acc.name, (), acc.dtype)
            and isinstance(v.b, Bin) and v.b.op == "mul"):
        return None
    if any(not isinstance(lp.extent, int) for lp in loops + red_loops):
        return None
    return loops, acc, init.value, red_loops, v.b.a, v.b.b, seq(*parts[2:])


def _vector_operand(operand: Expr, along: dict[str, int], extent: int,
                    params: dict[str, Buffer]) -> dict[str, int] | None:
    """The affine coefficients of ``operand``'s flat index when four neighbours of the
    flattened loops ``along`` (loop -> its row-major stride among them) are one aligned 16-byte
    vector: a float32 load of a kernel parameter whose flat index has exactly the coefficients
    ``along`` for those loops and multiples of 4 for everything else, ``extent`` (the
    flattened loops' size) a multiple of 4 so a bounds test holds for all four or none."""
    if not isinstance(operand, Load) or operand.dtype is not DType.float32 or extent % LANES:
        return None
    buf = params.get(operand.buffer)
    if buf is None or buf.scope != "global" or buf.dtype is not DType.float32:
        return None
    coeffs = affine_coeffs(simplify(row_major(operand.indices, buf.shape)))
    if coeffs is None or any(coeffs.get(v) != c for v, c in along.items()):
        return None
    return coeffs if all(c % LANES == 0 for v, c in coeffs.items() if v not in along) else None


def _affine(coeffs: dict[str, int], values: dict[str, Expr], skip=()) -> Expr:
    """``const + sum(coeff * value)`` over ``coeffs`` (from :func:`affine_coeffs`), leaving out ``skip``."""
    e: Expr = _c(coeffs.get("", 0))
    for v, c in coeffs.items():
        if v and v not in skip:
            e = e + _c(c) * values.get(v, Var(v))
    return simplify(e)


def tile_gemm(func: Func, stage: Stage):
    """The tiled dispatch for ``func`` (one matmul/conv nest), or None when the rule does not apply."""
    from kiln.passes.gpu_schedule import Dispatch

    m = _match(func, stage)
    if m is None:
        return None
    loops, acc, init, red_loops, x, y, epilogue = m
    row_ax, col_ax = stage.hints["tile"]
    row, col = loops[row_ax], loops[col_ax]
    if row.var.name in free_vars(y) and col.var.name in free_vars(x):
        x, y = y, x
    if col.var.name in free_vars(x) or row.var.name in free_vars(y):
        return None
    if any(isinstance(e, Load) and e.buffer == acc.name for e in _loads(x) + _loads(y)):
        return None
    rows, cols = row.extent, col.extent
    k_total = 1
    for lp in red_loops:
        k_total *= lp.extent
    if rows * cols < MIN_OUTPUTS or k_total < MIN_K:
        return None

    others = [lp for i, lp in enumerate(loops) if i not in (row_ax, col_ax)]
    n_other = 1
    for lp in others:
        n_other *= lp.extent
    cfg = choose_tile(rows, cols, n_other)
    tile_rows, tile_cols, tile_k = cfg.rows, cfg.cols, cfg.k
    micro_rows, micro_cols = cfg.micro_rows, cfg.micro_cols
    n_row, n_col = -(-rows // tile_rows), -(-cols // tile_cols)
    blocks = n_other * n_row * n_col

    b, t, k0 = Var("blk"), Var("tid"), Var("k0")
    col0 = (b % n_col) * tile_cols
    row0 = ((b // n_col) % n_row) * tile_rows
    rest: Expr = b // (n_col * n_row)
    outer: dict[str, Expr] = {}
    for lp in reversed(others):  # row-major over the other spatial dims
        outer[lp.var.name] = rest % lp.extent
        rest = rest // lp.extent

    def red_index(k: Expr) -> dict[str, Expr]:
        out, r = {}, k
        for lp in reversed(red_loops):
            out[lp.var.name] = r % lp.extent
            r = r // lp.extent
        return out

    params = {p.name: p for p in func.params}
    k_strides, stride = {}, 1
    for lp in reversed(red_loops):
        if lp.extent > 1:  # a loop of one (a 1x1 kernel's window) is always 0: no term
            k_strides[lp.var.name] = stride
        stride *= lp.extent
    units = {lp.var.name: _c(0) for lp in loops + red_loops if lp.extent == 1}
    vector_x = _vector_operand(simplify(substitute(x, units)), k_strides, k_total, params)  # along flattened k
    vector_y = _vector_operand(simplify(substitute(y, units)), {col.var.name: 1}, cols, params)

    sx = Buffer("tile_x", (tile_rows, tile_k), DType.float32, "shared")
    sy = Buffer("tile_y", (tile_k, tile_cols), DType.float32, "shared")
    threads = cfg.threads

    def fill(buf: Buffer, operand: Expr, per_thread: int, along_rows: bool) -> list:
        """Each invocation copies ``per_thread`` slots of ``buf``, consecutive threads on
        consecutive ``k`` (X) or columns (Y) so global reads are contiguous where the tensor is."""
        out = []
        for step in range(per_thread):
            e = t + step * threads
            if along_rows:   # X tile: [row][k]
                i, kk = e // tile_k, e % tile_k
                pos, lim, idx = row0 + i, rows, (i, kk)
                var = row.var.name
            else:            # Y tile: [k][col]
                kk, j = e // tile_cols, e % tile_cols
                pos, lim, idx = col0 + j, cols, (kk, j)
                var = col.var.name
            k = k0 * tile_k + kk
            idx = tuple(simplify(x) for x in idx)
            mapping = {**outer, **red_index(k), var: pos}
            value = simplify(substitute(operand, mapping))
            out.append(Store(buf.name, idx, Const(0.0, DType.float32)))
            out.append(If(simplify(_and(pos.lt(_c(lim)), k.lt(_c(k_total)))), Store(buf.name, idx, value)))
        return out

    def fill_vectors(buf: Buffer, operand: Load, coeffs: dict[str, int], along_rows: bool) -> list:
        """``fill`` four slots at a time: invocation ``e`` copies the four neighbours along
        ``k`` (X) or the columns (Y) from one 16-byte load at the flat index ``coeffs`` give."""
        out = []
        rows_, cols_ = buf.shape
        per_row = cols_ // LANES
        for step in range(rows_ * per_row // threads):
            e = t + step * threads
            r, c = e // per_row, (e % per_row) * LANES
            if along_rows:   # X tile: [row][k], vectors along k; the reduction loops' terms sum to k
                pos, lim, k = row0 + r, rows, k0 * tile_k + c
                flat = simplify(_affine(coeffs, {**outer, row.var.name: pos}, skip=k_strides) + k)
            else:            # Y tile: [k][col], vectors along the columns
                pos, lim, k = col0 + c, cols, k0 * tile_k + r
                flat = _affine(coeffs, {**outer, **red_index(k), col.var.name: pos})
            slots = tuple((simplify(r), simplify(c + lane)) for lane in range(LANES))
            out += [Store(buf.name, ix, Const(0.0, DType.float32)) for ix in slots]
            out.append(If(simplify(_and(pos.lt(_c(lim)), k.lt(_c(k_total)))),
                          VectorLoad(operand.buffer, flat, buf.name, slots)))
        return out

    # invocation (ty, tx) owns rows ty + i * threads_y and columns tx + j * threads_x of the tile,
    # not a contiguous block: neighbouring invocations then read neighbouring words of
    # workgroup memory (no bank conflicts) and write neighbouring words of the output
    ty, tx = t // cfg.threads_x, t % cfg.threads_x
    i_v, j_v, kk_v = Var("mi"), Var("mj"), Var("kk")
    acc_tile = Buffer(acc.name, (micro_rows, micro_cols), acc.dtype, "local")
    ij = (i_v, j_v)

    def over_tile(stmt, suffix=""):
        iv, jv = Var("mi" + suffix), Var("mj" + suffix)
        stmt = subst_stmt(stmt, {"mi": iv, "mj": jv}) if suffix else stmt
        return For(iv, micro_rows, For(jv, micro_cols, stmt))

    init_tile = over_tile(Store(acc.name, ij, init), "_init")
    tile_row, tile_col = ty + i_v * cfg.threads_y, tx + j_v * cfg.threads_x
    mac = Store(acc.name, ij, Load(acc.name, ij, acc.dtype) + Load(sx.name, (tile_row, kk_v), sx.dtype)
                * Load(sy.name, (kk_v, tile_col), sy.dtype))
    k_steps = -(-k_total // tile_k)
    main = For(k0, k_steps, seq(
        *(fill_vectors(sx, x, vector_x, True) if vector_x is not None
          else fill(sx, x, tile_rows * tile_k // threads, True)),
        *(fill_vectors(sy, y, vector_y, False) if vector_y is not None
          else fill(sy, y, tile_cols * tile_k // threads, False)),
        Barrier(),
        For(kk_v, tile_k, over_tile(mac)),
        Barrier()))
    out_row, out_col = row0 + tile_row, col0 + tile_col
    wb = _index_scalar(epilogue, acc.name, ij)
    wb = subst_stmt(wb, {**outer, row.var.name: out_row, col.var.name: out_col})
    write = over_tile(If(simplify(_and(out_row.lt(_c(rows)), out_col.lt(_c(cols)))), wb), "_wb")
    body = Alloc(sx, Alloc(sy, Alloc(acc_tile, seq(init_tile, main, write))))
    body = For(b, blocks, For(t, threads, body, GPU_THREAD), GPU_BLOCK)
    vectors = [o for o, v in (("x", vector_x), ("y", vector_y)) if v is not None]
    trace = [{"prim": "gpu_tile_gemm", "args": {"row": row.var.name, "col": col.var.name, "vector_loads": vectors,
                                                "tile": [tile_rows, tile_cols, tile_k], "threads": threads}}]
    return Dispatch(func.name, func.with_body(body), blocks, threads, trace,
                    shared_bytes=4 * (tile_rows + tile_cols) * tile_k)


def _loads(e: Expr) -> list[Load]:
    from kiln.ir.expr import walk

    return [x for x in walk(e) if isinstance(x, Load)]


__all__ = ["tile_gemm", "choose_tile", "TileConfig", "SMALL", "LARGE"]
