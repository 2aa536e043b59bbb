"""The write-back of a VNNI register tile, printed with AVX-512 intrinsics.

After the tile (``kiln/codegen/x86.py``) the schedule leaves its epilogue as

    for r < R:                       (rows of the tile)
      for c < C (vectorized):        (C a multiple of 16; c contiguous in the output)
        out[.. r .., .. c ..] = EXPR(acc[r][c], per-channel constants, a residual, ...)

where EXPR is the requantization (``requant`` in ``kiln/ir/ops/qlinear.py``: an int32 add,
an int64 multiply, rounding shifts, a clamp) and whatever the fusion pass appended to it
(a residual ``qadd``: two more requantizations). gcc vectorizes it, but every int64 value
costs it two shuffles to widen, and it picks 256-bit vectors: measured with ``perf`` on
ResNet-18 int8, the epilogue was 42 % of the 7x7 stem's time and 15-25 % of a 3x3
convolution's.

This module prints the same loop 16 lanes at a time, columns outside and rows inside, so
what does not depend on the row (per-channel bias, multiplier and shift, constants) is
computed once per 16 columns. An int32 value is one ``__m512i``; an
int64 value is a pair: the even lanes and the odd lanes, 8 int64 each. Casting int32 to
int64 splits the lanes by shifts (no shuffle), ``vpmuldq`` multiplies pairs whose factors
are sign-extended int32 (which it knows from the casts), and narrowing takes the low 32
bits of both halves back with one blend. Two widenings are skipped: ``vpmuldq`` reads only
the low 32 bits of each 64-bit lane, so a product's even lanes take the int32 vector as it
is; and a clamped int64 value cast down to 8 bits and up again is the pair it came from.
Requantization by a shift of 33 or more (``qlinear.requant_high_word``) needs only each
product's high 32 bits: two ``vpmuldq`` and one masked ``vpshufd`` give them as one int32
vector, and the rounding shift after it is one ``vpsravd``. A clamp to the byte type's own
upper bound before the store is the saturating narrow (``vpmovusdb``/``vpmovsdb``). On
int8 ResNet-18 (Zen 4, 2 threads) the two saved 30-140 us of 4.7 ms (three A/B runs).
Where the tile's columns come in 32s, two 16-lane groups are computed side by side and
narrowed together by saturating packs (``store_pair``: 0.44 ns per 16 lanes against 0.55
for a max and ``vpmovusdb`` in a micro-benchmark on Zen 4), and a value clamped, narrowed
and re-centered on its zero point by a fused residual ``qadd`` is clamped once against
shifted bounds (``_recentered_clamp``).
Every operation has the C semantics of the scalar expression it replaces (wrapping
int32/int64 arithmetic, arithmetic shifts, truncating casts), so the result is the same integer lane by lane; the plain loop stays in ``#else``.

Supported: integer ``add``/``sub``/``mul``/``shr``/``min``/``max``, casts between int8,
uint8, int32 and int64, constants, loads that are contiguous along ``c`` (16 lanes from
one address) or do not depend on it (broadcast). Anything else, or an access the checks
below do not confirm, and the loop is printed as it was.
"""
from __future__ import annotations

from dataclasses import dataclass

from kiln.errors import VerificationError
from kiln.ir.dtype import DType
from kiln.ir.expr import Bin, Cast, Const, Load, free_vars, walk
from kiln.ir.loop import For, Store, VECTORIZED
from kiln.ir.loop_eval import evaluate

I8, U8, I32, I64 = DType.int8, DType.uint8, DType.int32, DType.int64
LANES = 16
NARROW = (I8, U8, I32)        # held as 16 int32 lanes (the value, sign- or zero-extended)
INT32_RANGE = (-(1 << 31), (1 << 31) - 1)


RANGES = {I8: (-128, 127), U8: (0, 255), I32: INT32_RANGE, I64: (-(1 << 63), (1 << 63) - 1)}


@dataclass(frozen=True, slots=True)
class Vec:
    """A 16-lane value: one int32 vector (``lo`` only), or int64 even/odd halves, and the
    interval its lanes lie in (so a product whose factors fit int32 is one ``vpmuldq``).
    An int64 value whose interval fits int32 may also be one int32 vector (``hi`` None):
    exact, one operation per step instead of two; ``_pair`` widens it where int64 is needed."""

    lo: str
    hi: str | None = None
    bounds: tuple[int, int] = RANGES[I64]
    # the int32 vector an int64 value was widened from: ``vpmuldq`` reads only the low 32 bits
    # of each 64-bit lane, so the even-lane product takes it as it is, without the widening
    raw: str | None = None
    # the int64 halves a narrow value was taken from without changing it (a clamped value
    # cast down): widening it again gives them back instead of widening the blend
    wide: tuple[str, str] | None = None

    @property
    def fits32(self) -> bool:
        return INT32_RANGE[0] <= self.bounds[0] and self.bounds[1] <= INT32_RANGE[1]


def _interval(op: str, a: tuple[int, int], b: tuple[int, int], dtype: DType) -> tuple[int, int]:
    """Bounds of ``a op b``; the type's whole range where the op could wrap."""
    if op in ("add", "sub", "mul"):
        if op == "add":
            lo, hi = a[0] + b[0], a[1] + b[1]
        elif op == "sub":
            lo, hi = a[0] - b[1], a[1] - b[0]
        else:
            corners = [x * y for x in a for y in b]
            lo, hi = min(corners), max(corners)
        full = RANGES[dtype]
        return (lo, hi) if full[0] <= lo and hi <= full[1] else full
    if op == "min":
        return min(a[0], b[0]), min(a[1], b[1])
    if op == "max":
        return max(a[0], b[0]), max(a[1], b[1])
    if op == "shr" and 0 <= b[0] <= b[1] <= 63:
        # x >> k rises with x; it falls with k for x >= 0 and rises (towards -1) for x < 0
        lo = a[0] >> (b[1] if a[0] >= 0 else b[0])
        hi = a[1] >> (b[0] if a[1] >= 0 else b[1])
        return lo, hi
    return RANGES[dtype]


def match_epilogue(loop: For, acc: str, buffers) -> bool:
    """Whether ``loop`` is a tile write-back this module prints (see the module docstring)."""
    inner = loop.body
    if not (isinstance(inner, For) and inner.kind == VECTORIZED and isinstance(inner.extent, int)
            and inner.extent % LANES == 0 and isinstance(inner.body, Store) and isinstance(loop.extent, int)):
        return False
    store = inner.body
    out = buffers.get(store.buffer)
    if out is None or out.dtype not in (I8, U8, I32) or out.scope == "local":
        return False
    loads = [e for e in walk(store.value) if isinstance(e, Load)]
    if not any(ld.buffer == acc and ld.indices == (loop.var, inner.var) for ld in loads):
        return False
    c = inner.var.name
    accesses = [(store.buffer, store.indices)] + [(ld.buffer, ld.indices) for ld in loads if ld.buffer != acc]
    if any(ld.buffer == acc and ld.indices != (loop.var, inner.var) for ld in loads):
        return False
    return all(contiguous_or_invariant(buf, idx, c, inner.extent, buffers, must_vary=(k == 0))
               for k, (buf, idx) in enumerate(accesses))


def _flat(buffer: str, indices, env, buffers) -> int:
    flat = 0
    for i, n in zip(indices, buffers[buffer].shape):
        flat = flat * int(n) + int(evaluate(i, env))
    return flat


def contiguous_or_invariant(buffer, indices, c: str, extent: int, buffers, must_vary: bool,
                            lanes: int = LANES) -> bool:
    """An index that does not mention ``c`` (a broadcast), or whose flat offset steps by one
    with ``c`` -- checked at each chunk of ``lanes`` with the other loop variables at 0 and 1."""
    names = set().union(*(free_vars(i) for i in indices)) if indices else set()
    if c not in names:
        return not must_vary
    buf = buffers.get(buffer)
    if buf is None or buf.scope == "local" or not all(isinstance(n, int) for n in buf.shape):
        return False
    try:
        for base in (0, 1):
            env0 = {name: base for name in names - {c}}
            for c0 in range(0, extent, lanes):
                first = _flat(buffer, indices, {**env0, c: c0}, buffers)
                if any(_flat(buffer, indices, {**env0, c: c0 + j}, buffers) != first + j for j in range(lanes)):
                    return False
    except (KeyError, VerificationError, TypeError):  # an index reading a tensor, a symbolic dim
        return False
    return True


class EpilogueWriter:
    """Translates one store's value into intrinsic statements (``lines``), or raises
    ``Unsupported``. ``ref(load)`` prints the address of a load's lane 0; ``scalar(e)``
    prints a c-invariant expression as C."""

    class Unsupported(Exception):
        pass

    def __init__(self, c: str, ref, scalar, row: str | None = None):
        self.c, self.ref, self.scalar, self.row = c, ref, scalar, row
        self.lines: list[str] = []      # per row of the tile
        self.hoisted: list[str] = []    # the same for every row (``row`` absent): per 16 lanes of c
        self._memo: dict = {}
        self._n = 0
        self._invariant: set[str] = set()

    def _tmp(self, code: str, invariant: bool = False) -> str:
        """A new vector ``code``; ``invariant``: it does not depend on the tile's row, so it
        is computed once per 16 lanes, before the loop over rows."""
        self._n += 1
        name = f"kiln_e{self._n}"
        invariant = invariant and self.row is not None  # no row loop named: nothing to hoist out of
        (self.hoisted if invariant else self.lines).append(f"const __m512i {name} = {code};")
        if invariant:
            self._invariant.add(name)
        return name

    def _fixed(self, *vecs: "Vec") -> bool:
        """Whether values made of ``vecs`` are row-invariant (every operand is)."""
        names = [n for v in vecs for n in (v.lo, v.hi, v.raw, *(v.wide or ())) if n is not None]
        return all(n in self._invariant for n in names)

    def _row_free(self, e) -> bool:
        return self.row not in set().union(*(free_vars(i) for i in e.indices))

    def value(self, e) -> Vec:
        if e not in self._memo:
            self._memo[e] = self._lower(e)
        return self._memo[e]

    def _lower(self, e) -> Vec:
        if isinstance(e, Const) and e.dtype in NARROW + (I64,):
            v = int(e.value)
            if e.dtype is I64:
                x = self._tmp(f"_mm512_set1_epi64(INT64_C({v}))", True)
                return Vec(x, x, (v, v))
            return Vec(self._tmp(f"_mm512_set1_epi32({v})", True), None, (v, v))
        if isinstance(e, Load) and e.dtype in NARROW:
            fixed = self._row_free(e)
            if self.c not in set().union(*(free_vars(i) for i in e.indices)):
                return Vec(self._tmp(f"_mm512_set1_epi32((int32_t)({self.scalar(e)}))", fixed), None,
                           RANGES[e.dtype])
            addr = self.ref(e)
            if e.dtype is I32:
                return Vec(self._tmp(f"_mm512_loadu_si512((const void*){addr})", fixed), None, RANGES[I32])
            widen = "_mm512_cvtepu8_epi32" if e.dtype is U8 else "_mm512_cvtepi8_epi32"
            return Vec(self._tmp(f"{widen}(_mm_loadu_si128((const __m128i*){addr}))", fixed), None,
                       RANGES[e.dtype])
        if isinstance(e, Cast):
            return self._cast(e)
        if isinstance(e, Bin) and e.dtype in (I32, I64):
            return self._binary(e)
        raise self.Unsupported(type(e).__name__)

    def _cast(self, e: Cast) -> Vec:
        src, dst = e.a.dtype, e.dtype
        if src not in NARROW + (I64,) or dst not in NARROW + (I64,):
            raise self.Unsupported(f"cast {src} -> {dst}")
        if dst is I32 and src is I64:
            high = self._high_word(e.a)
            if high is not None:
                return high
        a = self.value(e.a)
        fixed = self._fixed(a)
        if dst is I64:
            if src is I64:
                return a
            if a.wide is not None:
                return Vec(a.wide[0], a.wide[1], a.bounds, raw=a.lo)
            return Vec(a.lo, None, a.bounds)  # held narrow; widened by _pair when needed
        paired = src is I64 and a.hi is not None
        lo = self._narrow(a) if paired else a.lo  # the low 32 bits of each lane
        inside = RANGES[dst][0] <= a.bounds[0] and a.bounds[1] <= RANGES[dst][1]
        if inside:  # a clamped value: the cast keeps it as it is
            return Vec(lo, None, a.bounds, wide=(a.lo, a.hi) if paired else None)
        if dst is U8:
            return Vec(self._tmp(f"_mm512_and_si512({lo}, _mm512_set1_epi32(255))", fixed), None, RANGES[U8])
        if dst is I8:
            return Vec(self._tmp(f"_mm512_srai_epi32(_mm512_slli_epi32({lo}, 24), 24)", fixed), None, RANGES[I8])
        return Vec(lo, None, RANGES[I32])

    def _binary(self, e: Bin) -> Vec:
        if e.op == "shr" and e.dtype in (I32, I64):  # before the operands: it prints them its own way
            rounded = self._rounding_shift(e)
            if rounded is not None:
                return rounded
        if e.op == "sub" and e.dtype is I32:
            recentered = self._recentered_clamp(e)
            if recentered is not None:
                return recentered
        a, b = self.value(e.a), self.value(e.b)
        fixed = self._fixed(a, b)
        if e.dtype is I32:
            if a.hi is not None or b.hi is not None:
                raise self.Unsupported("int32 op on int64 operands")
            if e.op == "shr" and isinstance(e.b, Const) and 0 <= int(e.b.value) < 32:
                k = int(e.b.value)
                return Vec(self._tmp(f"_mm512_srai_epi32({a.lo}, {k})", fixed), None,
                           _interval("shr", a.bounds, (k, k), I64))
            fn = {"add": "add_epi32", "sub": "sub_epi32", "mul": "mullo_epi32", "min": "min_epi32",
                  "max": "max_epi32"}.get(e.op)
            if fn is None:
                raise self.Unsupported(e.op)
            return Vec(self._tmp(f"_mm512_{fn}({a.lo}, {b.lo})", fixed), None,
                       _interval(e.op, a.bounds, b.bounds, I32))
        if e.a.dtype is not I64 or e.b.dtype is not I64:
            raise self.Unsupported("int64 op on int32 operands")
        bounds = _interval(e.op, a.bounds, b.bounds, I64)
        narrow = {"add": "add_epi32", "sub": "sub_epi32", "min": "min_epi32", "max": "max_epi32"}.get(e.op)
        if narrow and a.fits32 and b.fits32 and INT32_RANGE[0] <= bounds[0] and bounds[1] <= INT32_RANGE[1]:
            # operands and result fit int32: the same integers in one int32 vector
            return Vec(self._tmp(f"_mm512_{narrow}({self._narrow(a)}, {self._narrow(b)})", fixed), None, bounds)
        a, b = self._pair(a), self._pair(b)
        if e.op == "shr" and isinstance(e.b, Const):
            k = int(e.b.value)
            if not 0 <= k < 64:
                raise self.Unsupported(f"shift by {k}")
            return Vec(self._tmp(f"_mm512_srai_epi64({a.lo}, {k})", fixed),
                       self._tmp(f"_mm512_srai_epi64({a.hi}, {k})", fixed), bounds)
        if e.op == "mul":
            if not (a.fits32 and b.fits32):
                raise self.Unsupported("int64 product of values wider than int32")
            # the low 32 bits of each 64-bit lane, sign-extended, multiplied: the even lanes of
            # a widened int32 vector are already there
            a, b = Vec(a.raw or a.lo, a.hi), Vec(b.raw or b.lo, b.hi)
            fn = "_mm512_mul_epi32"
        else:
            fn = {"add": "_mm512_add_epi64", "sub": "_mm512_sub_epi64", "shr": "_mm512_srav_epi64",
                  "min": "_mm512_min_epi64", "max": "_mm512_max_epi64"}.get(e.op)
        if fn is None:
            raise self.Unsupported(e.op)
        out = self._pair2(fn, a, b, fixed)
        return Vec(out.lo, out.hi, bounds)

    def _high_word(self, e) -> Vec | None:
        """``(a * b) >> 32`` of int32 factors (``qlinear.requant_high_word``) as one int32
        vector: ``vpmuldq`` multiplies the even lanes and (shifted down) the odd ones, and one
        masked ``vpshufd`` moves each even product's high half into its lane while the odd
        products' high halves are already in theirs. None for anything else."""
        if not (isinstance(e, Bin) and e.op == "shr" and isinstance(e.b, Const) and int(e.b.value) == 32
                and isinstance(e.a, Bin) and e.a.op == "mul" and e.a.dtype is I64):
            return None
        a, b = self.value(e.a.a), self.value(e.a.b)
        if not (a.fits32 and b.fits32):
            return None
        even = self._tmp(f"_mm512_mul_epi32({a.raw or a.lo}, {b.raw or b.lo})", self._fixed(a, b))
        odd = self._tmp(f"_mm512_mul_epi32({self._odd(a)}, {self._odd(b)})", self._fixed(a, b))
        high = self._tmp(f"_mm512_mask_shuffle_epi32({odd}, 0x5555, {even}, _MM_PERM_DDBB)",
                         self._fixed(a, b))
        product = _interval("mul", a.bounds, b.bounds, I64)
        return Vec(high, None, (product[0] >> 32, product[1] >> 32))

    def _odd(self, v: Vec) -> str:
        """The odd lanes of ``v`` moved into the low halves of 64-bit lanes, which is all
        ``vpmuldq`` reads: the odd half of a pair, or one 64-bit shift of an int32 vector."""
        if v.hi is not None:
            return v.hi
        key = ("odd", v.lo)
        if key not in self._memo:
            self._memo[key] = self._tmp(f"_mm512_srli_epi64({v.lo}, 32)", self._fixed(v))
        return self._memo[key]

    def _rounding_shift(self, e: Bin) -> Vec | None:
        """``((v >> (s - 1)) + 1) >> 1`` (requantization's rounding shift) as
        ``(v + 2^(s-1)) >> s``: the same integer for s >= 1 (both are floor((v / 2^(s-1) + 1) / 2)),
        fewer operations, with 2^(s-1) computed once per 16 columns when ``s`` is per
        channel. ``v + 2^(s-1)`` must not overflow. In int64: |v| <= 2^62 (a product of
        int32 values) and s <= 62, which every requantization shift has (``fixed_point``
        and ``qadd``'s shift stop at 62; the pattern is theirs). In int32 (the high word of
        such a product, ``qlinear.requant_high_word``): |v| <= 2^30 and s = shift - 32 <= 30."""
        inner = e.a
        if not (_is_one(e.b) and isinstance(inner, Bin) and inner.op == "add" and _is_one(inner.b)):
            return None
        first = inner.a
        if not (isinstance(first, Bin) and first.op == "shr" and isinstance(first.b, Bin)
                and first.b.op == "sub" and _is_one(first.b.b)):
            return None
        dt = e.dtype
        if first.a.dtype is not dt or first.b.dtype is not dt:
            return None
        v = self.value(first.a)
        limit = 62 if dt is I64 else 30
        if not (-(1 << limit) <= v.bounds[0] and v.bounds[1] <= (1 << limit)):
            return None
        bounds = (min(0, v.bounds[0] >> 1), max(0, (v.bounds[1] >> 1) + 1))
        if dt is I32:
            s, s1 = self.value(first.b.a), self.value(first.b)
            if s.hi is not None or s1.hi is not None:
                return None
            one = self.value(Const(1, I32))
            half = self._tmp(f"_mm512_sllv_epi32({one.lo}, {s1.lo})", self._fixed(s1))
            total = self._tmp(f"_mm512_add_epi32({v.lo}, {half})", self._fixed(v, s1))
            return Vec(self._tmp(f"_mm512_srav_epi32({total}, {s.lo})", self._fixed(v, s)),
                       None, bounds)
        v, s, s1 = self._pair(v), self._pair(self.value(first.b.a)), self._pair(self.value(first.b))
        half = self._pair2("_mm512_sllv_epi64", self.value(Const(1, I64)), s1, self._fixed(s1))
        total = self._pair2("_mm512_add_epi64", v, half, self._fixed(v, half))
        out = self._pair2("_mm512_srav_epi64", total, s, self._fixed(total, s))
        # floor((v + 2^(s-1)) / 2^s) lies between floor(v / 2) and v / 2 + 1 for every s >= 1
        return Vec(out.lo, out.hi, bounds)

    def _recentered_clamp(self, e: Bin) -> Vec | None:
        """``int32(u8(min(max(x + z, lo), hi))) - z`` -- a requantized value clamped and
        narrowed, then centered on its zero point again by the op fused after it (a residual
        ``qadd`` reading a convolution's output) -- as ``min(max(x, lo - z), hi - z)``: the
        same integer when ``x + z`` cannot overflow and [lo, hi] lies in the narrow type
        (whose two casts then change nothing). Two operations fewer per 16 lanes: int8
        ResNet-18 16-21 us faster (Zen 4, 2 threads, three interleaved A/B runs). None for
        anything else."""
        wide = e.a
        if not (isinstance(e.b, Const) and isinstance(wide, Cast) and isinstance(wide.a, Cast)
                and wide.a.dtype in (U8, I8) and wide.a.a.dtype is I32):
            return None
        z, clamp = int(e.b.value), wide.a.a
        if not (isinstance(clamp, Bin) and clamp.op == "min" and isinstance(clamp.b, Const)
                and isinstance(clamp.a, Bin) and clamp.a.op == "max" and isinstance(clamp.a.b, Const)):
            return None
        lo, hi, shifted = int(clamp.a.b.value), int(clamp.b.value), clamp.a.a
        if not (isinstance(shifted, Bin) and shifted.op == "add" and isinstance(shifted.b, Const)
                and int(shifted.b.value) == z and RANGES[wide.a.dtype][0] <= lo <= hi <= RANGES[wide.a.dtype][1]):
            return None
        x = self.value(shifted.a)
        if x.hi is not None or not (INT32_RANGE[0] <= x.bounds[0] + z and x.bounds[1] + z <= INT32_RANGE[1]):
            return None
        low, high = self.value(Const(lo - z, I32)), self.value(Const(hi - z, I32))
        fixed = self._fixed(x)
        above = self._tmp(f"_mm512_max_epi32({x.lo}, {low.lo})", fixed)
        return Vec(self._tmp(f"_mm512_min_epi32({above}, {high.lo})", fixed), None, (lo - z, hi - z))

    def _pair2(self, fn: str, a: Vec, b: Vec, fixed: bool = False) -> Vec:
        lo = self._tmp(f"{fn}({a.lo}, {b.lo})", fixed)
        hi = lo if (a.lo == a.hi and b.lo == b.hi) else self._tmp(f"{fn}({a.hi}, {b.hi})", fixed)
        return Vec(lo, hi)

    def store(self, dtype: DType, addr: str, value) -> None:
        """``value`` (an expression) stored at ``addr`` as ``dtype``."""
        saturated = self._saturating(dtype, value)
        if saturated is not None:
            self.lines.append(f"_mm_storeu_si128((__m128i*){addr}, {saturated});")
            return
        lo = self._narrow(self.value(value))
        if dtype is I32:
            self.lines.append(f"_mm512_storeu_si512((void*){addr}, {lo});")
        else:  # the low byte of each lane: what C's cast to (u)int8 keeps
            self.lines.append(f"_mm_storeu_si128((__m128i*){addr}, _mm512_cvtepi32_epi8({lo}));")

    def store_pair(self, dtype: DType, addr: str, first, second) -> bool:
        """Two 16-lane groups of byte outputs, 32 contiguous bytes at ``addr``, narrowed
        together: ``vpackssdw`` (int32 -> int16, saturating), ``vpackuswb``/``vpacksswb``
        (-> bytes, saturating), one ``vpermd`` to undo the packs' per-128-bit-lane
        interleaving, one 32-byte store. Exact where each value is clamped to the byte type's
        range (a saturating narrow is that clamp): 3 operations per two groups, against a
        ``max`` and a ``vpmovusdb`` per group. False, with nothing printed, where a value is
        not such a clamp."""
        if dtype not in (U8, I8):
            return False
        start = (len(self.lines), len(self.hoisted), dict(self._memo), self._n, set(self._invariant))
        try:
            halves = [self._clamped_to(dtype, e) for e in (first, second)]
        except self.Unsupported:
            halves = [None]
        if None in halves:
            self.lines[start[0]:], self.hoisted[start[1]:] = [], []
            self._memo, self._n, self._invariant = start[2], start[3], start[4]
            return False
        words = self._tmp(f"_mm512_packs_epi32({halves[0]}, {halves[1]})")
        packed = self._tmp(f"_mm512_pack{'us' if dtype is U8 else 's'}_epi16({words}, {words})")
        order = self._tmp("_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 0, 4, 8, 12, 1, 5, 9, 13)", True)
        self.lines.append(f"_mm256_storeu_si256((__m256i*){addr}, "
                          f"_mm512_castsi512_si256(_mm512_permutexvar_epi32({order}, {packed})));")
        return True

    def _clamped_to(self, dtype: DType, e) -> str | None:
        """The int32 vector whose saturating narrow to ``dtype`` is ``e``: ``x`` for
        ``dtype(min(max(x, lo), hi))`` with [lo, hi] the type's range (the clamp is the
        saturation), the clamp's operand for a narrower one, the value itself when its
        interval already lies in the range; None otherwise."""
        tlo, thi = RANGES[dtype]
        if not (isinstance(e, Cast) and e.dtype is dtype and e.a.dtype is I32):
            return None
        inner = e.a
        if (isinstance(inner, Bin) and inner.op == "min" and isinstance(inner.b, Const)
                and int(inner.b.value) == thi):
            low = inner.a
            if isinstance(low, Bin) and low.op == "max" and isinstance(low.b, Const) and int(low.b.value) == tlo:
                x = self.value(low.a)
            else:
                x = self.value(low)
                if x.bounds[0] < tlo:
                    return None
            return x.lo if x.hi is None else None
        x = self.value(inner)
        return x.lo if x.hi is None and tlo <= x.bounds[0] and x.bounds[1] <= thi else None

    def _saturating(self, dtype: DType, e) -> str | None:
        """A clamp whose upper bound is the byte type's own, cast to it -- ``(u8)min(x, 255)``
        with x >= 0, ``(i8)min(x, 127)`` with x >= -128 -- as the saturating narrow of x
        (``vpmovusdb`` / ``vpmovsdb``: one instruction instead of a min and a narrow)."""
        if not (isinstance(e, Cast) and e.dtype in (U8, I8) and e.a.dtype is I32 and isinstance(e.a, Bin)
                and e.a.op == "min" and isinstance(e.a.b, Const) and int(e.a.b.value) == RANGES[e.dtype][1]
                and dtype is e.dtype):
            return None
        x = self.value(e.a.a)
        if x.hi is not None or x.bounds[0] < RANGES[dtype][0]:
            return None
        return f"_mm512_cvt{'us' if dtype is U8 else 's'}epi32_epi8({x.lo})"

    def _narrow(self, v: Vec) -> str:
        """The low 32 bits of each lane as one int32 vector (the value itself when it fits)."""
        if v.hi is None:
            return v.lo
        if v.lo == v.hi and v.bounds[0] == v.bounds[1] and v.fits32:  # an int64 constant
            return self.value(Const(v.bounds[0], I32)).lo
        key = ("narrow", v.lo, v.hi)
        if key not in self._memo:
            self._memo[key] = self._tmp(f"_mm512_mask_blend_epi32(0xAAAA, {v.lo}, _mm512_slli_epi64({v.hi}, 32))",
                                        self._fixed(v))
        return self._memo[key]

    def _pair(self, v: Vec) -> Vec:
        """An int64 value as even/odd int64 halves (widening one held in int32 lanes): even
        lanes are the low half of each 64-bit pair sign-extended, odd the high half (a
        widening only a product reads is left unused: the compiler drops it)."""
        if v.hi is not None:
            return v
        key = ("pair", v.lo)
        if key not in self._memo:
            fixed = self._fixed(v)
            self._memo[key] = Vec(self._tmp(f"_mm512_srai_epi64(_mm512_slli_epi64({v.lo}, 32), 32)", fixed),
                                  self._tmp(f"_mm512_srai_epi64({v.lo}, 32)", fixed), v.bounds, raw=v.lo)
        return self._memo[key]


def _is_one(e) -> bool:
    return isinstance(e, Const) and int(e.value) == 1


__all__ = ["EpilogueWriter", "contiguous_or_invariant", "match_epilogue"]
