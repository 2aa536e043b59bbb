"""Integer dot-product tiles on Intel AMX (Sapphire Rapids and later): ``tdpbusd``.

An AMX tile register holds up to 16 rows of 64 bytes. ``tdpbusd C, A, B`` adds to the 16 x 16
int32 tile C the products of A (16 rows x 64 uint8: 16 rows of activations, 64 reduction
steps) and B (16 rows x 64 int8: 16 groups of 4 reduction steps, each 16 columns x 4
bytes) -- 16K multiply-adds per instruction, four times what ``vpdpbusd`` does per cycle.
B's layout is exactly a VNNI panel's (``kiln/passes/vnni_pack.py``): 16 columns x 4 steps
in 64 contiguous bytes, the next 4 steps 64 bytes on. So the integer kernels need no new
packing, only a register tile of whole 16 x 16 blocks (``kiln/passes/dot_schedule.py``
picks 32 x 32 when the reduction is one run of whole 64-byte steps):

    C[a][b] (a < rows/16, b < cols/16) loaded from the accumulator buffer
    for k in steps of 64:  A[a] = x[16a.., k..k+63]  B[b] = panel b at k   C[a][b] += A[a] B[b]
    C stored back to the accumulator buffer, which the write-back reads as before

With 2 x 2 C tiles, 2 A and 2 B tiles all eight tile registers are in use.

Using AMX needs two things at run time: Linux must grant the process the tile state
(``arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)``, once per process), and each
thread must load the tile configuration (``ldtilecfg``) before using the tiles. Another
library in the process may load its own on the same threads between two of Kiln's kernels
(PyTorch's oneDNN kernels run on the same libgomp workers), so each kernel with AMX tiles
starts an epoch and every thread loads the configuration again at its first block of it:
once per block cost 9 % of int8 GEMM 1024^3 (2 threads).
Where the grant is refused, or the compiler does not target AMX (``__AMX_INT8__`` unset), the
nest runs as plain C, which gcc vectorizes about as well as the VNNI tile (int8 GEMM 1024^3,
2 threads: 1.68 ms built with ``-mno-amx-int8``, 1.78 with the VNNI tile, 0.78 with AMX).

Like the VNNI printer, this one checks the byte layout on the index expressions themselves
(evaluated at the first, second and last step, enclosing loops at 0 and 1) before it
prints anything; integer sums in another order are the same integers, so the result equals
the scalar loop's bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass

from kiln.codegen.x86_dot import DotNest, bind, flat_offset, match_dot_nest, other_vars
from kiln.errors import VerificationError
from kiln.ir.loop import For

TILE_ROWS = 16     # rows of a tile register
TILE_BYTES = 64    # bytes per tile row: the reduction step of one tdpbusd
TILE_REGISTERS = 8
STEP = TILE_BYTES  # reduction elements (bytes) per step


@dataclass(frozen=True, slots=True)
class AmxTile:
    """A dot nest whose operands fit AMX tiles: ``row_tiles`` x ``col_tiles`` C tiles,
    activations ``x_stride`` bytes from one row to the next, weight panels
    ``w_stride`` bytes from one 4-step group to the next."""

    nest: DotNest
    row_tiles: int
    col_tiles: int
    x_stride: int
    w_stride: int


def match_amx_tile(loop: For, buffers) -> AmxTile | None:
    """The AMX form of ``loop`` (see the module docstring), its accesses verified; else None."""
    nest = match_dot_nest(loop, buffers, step=STEP, unrolled=False)
    if nest is None or nest.rows % TILE_ROWS or nest.cols % TILE_ROWS:
        return None
    ra, cb = nest.rows // TILE_ROWS, nest.cols // TILE_ROWS
    if ra * cb + ra + cb > TILE_REGISTERS:
        return None
    strides = _strides(loop, nest, buffers)
    return None if strides is None else AmxTile(nest, ra, cb, *strides)


def _strides(loop: For, nest: DotNest, buffers) -> tuple[int, int] | None:
    """(activation row stride, weight group stride) in bytes when every tile the nest loads
    is 16 rows of 64 contiguous bytes at one stride; None otherwise."""
    k = loop.var.name
    r, c = nest.r.name, nest.c.name
    others = other_vars(nest, k)
    steps = sorted({0, STEP, loop.extent - STEP})
    x_stride = w_stride = None
    try:
        for base in (0, 1):
            env0 = {name: base for name in others}
            for k0 in steps:
                for a in range(0, nest.rows, TILE_ROWS):
                    first = flat_offset(nest.x, {**env0, k: k0, r: a}, buffers)
                    stride = flat_offset(nest.x, {**env0, k: k0, r: a + 1}, buffers) - first
                    if x_stride not in (None, stride) or stride <= 0:
                        return None
                    x_stride = stride
                    for i in range(TILE_ROWS):
                        cols = range(TILE_BYTES) if i in (0, 1, TILE_ROWS - 1) else (0, 1, TILE_BYTES - 1)
                        if any(flat_offset(nest.x, {**env0, k: k0 + j, r: a + i}, buffers) != first + i * stride + j
                               for j in cols):
                            return None
                for b in range(0, nest.cols, TILE_ROWS):
                    first = flat_offset(nest.w, {**env0, k: k0, c: b}, buffers)
                    stride = flat_offset(nest.w, {**env0, k: k0 + 4, c: b}, buffers) - first
                    if w_stride not in (None, stride) or stride < TILE_BYTES:
                        return None
                    w_stride = stride
                    for g in range(TILE_ROWS):
                        lanes = range(TILE_BYTES) if g in (0, 1, TILE_ROWS - 1) else (0, TILE_BYTES - 1)
                        for lane in lanes:
                            at = {**env0, k: k0 + 4 * g + lane % 4, c: b + lane // 4}
                            if flat_offset(nest.w, at, buffers) != first + g * stride + lane:
                                return None
    except (KeyError, VerificationError):  # an index that reads a tensor: not this nest
        return None
    return x_stride, w_stride


def print_amx_tile(renderer, loop: For, tile: AmxTile, depth: int) -> None:
    """Print the AMX block for ``loop`` (the caller prints the fallback after it)."""
    nest, ra, cb = tile.nest, tile.row_tiles, tile.col_tiles
    k = loop.var.name
    c_tile = {(a, b): a * cb + b for a in range(ra) for b in range(cb)}
    a_tile = {a: ra * cb + a for a in range(ra)}
    b_tile = {b: ra * cb + ra + b for b in range(cb)}

    def ref(load, var, value: int) -> str:
        idx = tuple(bind(i, var.name, value) for i in load.indices)
        return f"&{load.buffer}{renderer.subscript(load.buffer, idx)}"

    emit = renderer.emit
    emit("kiln_amx_config();", depth + 1)
    for (a, b), t in c_tile.items():
        emit(f"_tile_loadd({t}, &{nest.acc}[{a * TILE_ROWS}][{b * TILE_ROWS}], {4 * nest.cols});", depth + 1)
    emit(f"for (int64_t {k} = 0; {k} < {loop.extent}; {k} += {STEP}) {{", depth + 1)
    for a, t in a_tile.items():
        emit(f"_tile_loadd({t}, {ref(nest.x, nest.r, a * TILE_ROWS)}, {tile.x_stride});", depth + 2)
    for b, t in b_tile.items():
        emit(f"_tile_loadd({t}, {ref(nest.w, nest.c, b * TILE_ROWS)}, {tile.w_stride});", depth + 2)
    for (a, b), t in c_tile.items():
        emit(f"_tile_dpbusd({t}, {a_tile[a]}, {b_tile[b]});", depth + 2)
    emit("}", depth + 1)
    for (a, b), t in c_tile.items():
        emit(f"_tile_stored({t}, &{nest.acc}[{a * TILE_ROWS}][{b * TILE_ROWS}], {4 * nest.cols});", depth + 1)


# Guard of the AMX blocks: the compiler targets AMX and the OS is Linux (the grant below).
AMX_GUARD = "#if defined(__AMX_INT8__) && defined(__AMX_TILE__) && defined(__linux__)"
# First line of a kernel with AMX tiles (its prologue): a new epoch, see kiln_amx_config
AMX_BEGIN = "  kiln_amx_begin();"

# kiln_amx_ready(): asks Linux once per process for the tile state (0x1023 is
# ARCH_REQ_XCOMP_PERM, 18 XFEATURE_XTILEDATA; the constants are not in every libc's headers).
# kiln_amx_config(): every tile 16 rows x 64 bytes (palette 1).
AMX_SUPPORT = AMX_GUARD + """
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
static int kiln_amx_ready(void) {
  static int state = 0;  /* 0: not asked yet, 1: granted, -1: refused */
  int s = __atomic_load_n(&state, __ATOMIC_RELAXED);
  if (s == 0) {
    s = syscall(SYS_arch_prctl, 0x1023, 18) == 0 ? 1 : -1;
    __atomic_store_n(&state, s, __ATOMIC_RELAXED);
  }
  return s > 0;
}
/* A kernel with AMX tiles starts a new epoch (kiln_amx_begin, on the calling thread before
 * its parallel loops); each thread loads the tile configuration at its first block of the
 * epoch. Between two kernels other code may have run on the same threads with its own. */
static unsigned kiln_amx_epoch;
static inline void kiln_amx_begin(void) { __atomic_add_fetch(&kiln_amx_epoch, 1, __ATOMIC_RELAXED); }
typedef struct { uint8_t palette, start_row, reserved[14]; uint16_t colsb[16]; uint8_t rows[16]; } kiln_tilecfg;
static const kiln_tilecfg kiln_amx_tiles __attribute__((aligned(64))) = {
  1, 0, {0}, {64, 64, 64, 64, 64, 64, 64, 64}, {16, 16, 16, 16, 16, 16, 16, 16}};
static inline void kiln_amx_config(void) {
  static __thread unsigned loaded = ~0u;
  const unsigned epoch = __atomic_load_n(&kiln_amx_epoch, __ATOMIC_RELAXED);
  if (loaded != epoch) {
    _tile_loadconfig(&kiln_amx_tiles);
    loaded = epoch;
  }
}
#endif
"""

__all__ = ["AMX_BEGIN", "AMX_GUARD", "AMX_SUPPORT", "AmxTile", "match_amx_tile", "print_amx_tile"]
