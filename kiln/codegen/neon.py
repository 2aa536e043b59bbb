"""NEON renderer: the C renderer, with vectorized loops written as ``arm_neon.h`` intrinsics.

A loop the schedule marks ``vectorized`` becomes a loop over whole vectors (``float32x4_t``,
or ``float16x8_t`` with ``+fp16``) followed by a scalar tail loop, so no lane ever reads or
writes past the loop's extent. Inside the vector loop every sub-expression is one of:

- *uniform*: it does not depend on the loop variable; printed as scalar C and broadcast
  with ``vdupq_n`` where a vector is needed (a weight in a GEMM, a bias, an index);
- *vector*: one value per lane, from a contiguous load (``vld1q``) of the innermost index,
  or an intrinsic from the op table applied to vectors (``a + b*c`` fuses into ``vfmaq``);
- *mask*: a lane-wise comparison (``vcgtq`` ...), used by ``vbslq`` selects.

A loop whose body cannot be expressed that way (float math calls, integer data, a gather, a
load guarded by a per-lane condition, which could read out of bounds) is printed as the
plain scalar loop, which gcc may still auto-vectorize. Renderers stay tables: new vector
types go in ``VECTOR_TYPES``, new ops in ``vec_binary``/``vec_unary``/``vec_compare``, and a
whole-loop lowering (int8 ``vdotq_s32`` for the low-bit kernels, say) is a function added
with :meth:`NeonRenderer.register_lowering`, tried before the generic vectorizer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from kiln.codegen.c import CRenderer
from kiln.codegen.c_support import C_PRELUDE
from kiln.ir.dtype import DType
from kiln.ir.expr import Bin, Cast, Const, Expr, Load, Select, Un, Var, children, free_vars, linear_terms, walk
from kiln.ir.loop import VECTORIZED, For, Store


@dataclass(frozen=True)
class VectorType:
    """One NEON register type: its element, lane count and intrinsic suffixes."""

    elem: DType
    lanes: int
    ctype: str       # float32x4_t
    suffix: str      # f32: vaddq_f32
    mask_ctype: str  # uint32x4_t, what comparisons return
    mask_suffix: str  # u32
    mask_ones: str   # an all-ones lane of the mask type


F32X4 = VectorType(DType.float32, 4, "float32x4_t", "f32", "uint32x4_t", "u32", "0xFFFFFFFFu")
F16X8 = VectorType(DType.float16, 8, "float16x8_t", "f16", "uint16x8_t", "u16", "0xFFFFu")

# A whole-loop lowering: (renderer, loop, depth) -> True when it printed the loop.
Lowering = Callable[["NeonRenderer", For, int], bool]


class NotVectorizable(Exception):
    """Internal: the vectorizer met something it has no NEON spelling for."""


@dataclass(frozen=True)
class _V:
    kind: str  # "uniform" (scalar C), "vector", "mask" (lane mask), "umask" (scalar condition)
    code: str


class NeonRenderer(CRenderer):
    steal_parallel_loops = False  # KILN_PARALLEL_FOR, OpenMP's static schedule
    # OpenMP is optional: without -fopenmp the macro is empty and no unknown pragma warns
    parallel_pragma = "KILN_PARALLEL_FOR"
    vec_binary = {"add": "vaddq", "sub": "vsubq", "mul": "vmulq", "div": "vdivq",
                  "max": "vmaxnmq", "min": "vminnmq"}  # maxNum: NaN-ignoring, as fmaxf
    vec_compare = {"lt": "vcltq", "le": "vcleq", "gt": "vcgtq", "ge": "vcgeq", "eq": "vceqq"}
    vec_unary = {"neg": "vnegq", "abs": "vabsq", "sqrt": "vsqrtq", "floor": "vrndmq", "ceil": "vrndpq",
                 "round": "vrndnq"}
    mask_binary = {"and": "vandq", "or": "vorrq"}
    # horizontal combine of a vector accumulator: (initial lanes, reduce-across intrinsic)
    vec_reduce = {"add": ("zero", "vaddvq"), "max": ("acc", "vmaxnmvq"), "min": ("acc", "vminnmvq")}

    lowerings: list[Lowering] = []
    # Element types whose a + b*c becomes one fused multiply-add. fp32: gcc contracts the same
    # expression on the host (-ffp-contract=fast), so host and NEON agree. fp16: not -- the
    # reference (numpy, the C renderer's per-op casts) rounds the product to half precision
    # before the add, and a fused vfmaq_f16 would round once (measured: 28 of 148 lanes of
    # mul-add-div-sqrt differed by an ulp); vmulq_f16 then vaddq_f16 match it bit for bit.
    contract_fma = frozenset({DType.float32})

    def __init__(self, fp16: bool = False, dotprod: bool = False):
        super().__init__()
        self.dotprod = dotprod  # ARMv8.2 DotProd: lowerings may use sdot/udot (kiln/codegen/neon_int8.py)
        self.vector_types = {DType.float32: F32X4}
        if fp16:
            self.vector_types[DType.float16] = F16X8
        self.lowerings = list(type(self).lowerings)
        self.stats = {"vector_loops": 0, "scalar_loops": 0}

    @classmethod
    def register_lowering(cls, fn: Lowering) -> Lowering:
        """Add a whole-loop lowering for every NEON renderer made afterwards (a decorator)."""
        cls.lowerings.append(fn)
        return fn

    # -- statements ----------------------------------------------------------------------
    def stmt(self, s, depth: int, in_parallel: bool = False):
        if isinstance(s, For) and s.kind == VECTORIZED:
            for lower in self.lowerings:
                if lower(self, s, depth):
                    return
            if self.vector_loop(s, depth):
                self.stats["vector_loops"] += 1
                return
            self.stats["scalar_loops"] += 1
            self.scalar_loop(s, depth, in_parallel)
            return
        super().stmt(s, depth, in_parallel)

    def vector_lanes(self, loop: For) -> int:
        """Lanes the vectorizer would use for ``loop`` (1: it stays scalar), printing nothing.
        ``self.buffers`` must know the buffers the loop touches (the static cost model asks)."""
        saved, stats = self.lines, dict(self.stats)
        self.lines = []
        try:
            ok = self.vector_loop(loop, 0)
        finally:
            self.lines, self.stats = saved, stats
        return self.vector_types[self.buffers[loop.body.buffer].dtype].lanes if ok else 1

    def scalar_loop(self, s: For, depth: int, in_parallel: bool, start: str | None = None):
        v = s.var.name
        init = f"int64_t {v} = 0" if start is None else ""
        self.emit(f"for ({init}; {v} < {self.dim(s.extent)}; ++{v}) {{", depth)
        self.stmt(s.body, depth + 1, in_parallel)
        self.emit("}", depth)

    def vector_loop(self, loop: For, depth: int) -> bool:
        """Print ``loop`` as whole vectors plus a scalar tail; False (nothing printed) when
        its body has no NEON form."""
        body = loop.body
        if not isinstance(body, Store):
            return False
        buf = self.buffers.get(body.buffer)
        vt = self.vector_types.get(buf.dtype) if buf is not None else None
        if vt is None or (isinstance(loop.extent, int) and loop.extent < vt.lanes):
            return False
        v = loop.var
        try:
            if self._lane_offset(body.indices, v) is None:
                return self._reduction_loop(loop, body, vt, depth)
            _check_no_cross_lane_reads(body)
            self._vec_var, self._vt, self._aliases = v, vt, {}
            self._unconditional = _unconditional_loads(body.value, v)
            value = self._as_vector(self.vexpr(body.value))
            target = f"{self._cast_ptr(vt, False)}&{body.buffer}{self.subscript(body.buffer, body.indices)}"
        except NotVectorizable:
            return False
        n, name, lanes = self.dim(loop.extent), v.name, vt.lanes
        whole = isinstance(loop.extent, int) and loop.extent % lanes == 0
        if whole:
            self.emit(f"for (int64_t {name} = 0; {name} < {n}; {name} += {lanes}) {{", depth)
            self.emit(f"vst1q_{vt.suffix}({target}, {value});", depth + 1)
            self.emit("}", depth)
            return True
        self.emit("{", depth)
        self.emit(f"int64_t {name} = 0;", depth + 1)
        self.emit(f"for (; {name} + {lanes} <= {n}; {name} += {lanes}) {{", depth + 1)
        self.emit(f"vst1q_{vt.suffix}({target}, {value});", depth + 2)
        self.emit("}", depth + 1)
        self.scalar_loop(loop, depth + 1, False, start=name)
        self.emit("}", depth)
        return True

    def _reduction_loop(self, loop: For, body: Store, vt: VectorType, depth: int) -> bool:
        """``acc = acc op f(x[v])`` with ``acc`` a scalar: one vector accumulator, combined
        across lanes after the loop, then the scalar tail."""
        value, v = body.value, loop.var
        acc = Load(body.buffer, body.indices, body.value.dtype)
        if not (isinstance(value, Bin) and value.a == acc and value.op in self.vec_reduce
                and vt.elem is DType.float32 and acc not in walk(value.b)
                and not any(v.name in free_vars(i) for i in body.indices)):
            return False
        start, across = self.vec_reduce[value.op]
        self._vec_var, self._vt, self._aliases = v, vt, {acc: "kiln_vacc"}
        self._unconditional = _unconditional_loads(value, v)
        step = self._as_vector(self.vexpr(value))
        scalar_acc = f"{body.buffer}{self.subscript(body.buffer, body.indices)}"
        init = f"vdupq_n_{vt.suffix}(0.0f)" if start == "zero" else f"vdupq_n_{vt.suffix}({scalar_acc})"
        combine = f"{scalar_acc} + {across}_{vt.suffix}(kiln_vacc)" if start == "zero" else \
            f"{across}_{vt.suffix}(kiln_vacc)"
        name = v.name
        self.emit("{", depth)
        self.emit(f"{vt.ctype} kiln_vacc = {init};", depth + 1)
        self.emit(f"int64_t {name} = 0;", depth + 1)
        self.emit(f"for (; {name} + {vt.lanes} <= {self.dim(loop.extent)}; {name} += {vt.lanes}) {{", depth + 1)
        self.emit(f"kiln_vacc = {step};", depth + 2)
        self.emit("}", depth + 1)
        self.emit(f"{scalar_acc} = {combine};", depth + 1)
        self.scalar_loop(loop, depth + 1, False, start=name)
        self.emit("}", depth)
        self.stats["vector_loops"] += 1
        return True

    # -- vector expressions --------------------------------------------------------------------
    def _lane_offset(self, indices, v: Var):
        """None when no index uses ``v``; True when only the innermost index does, with
        coefficient 1 (a contiguous vector); otherwise not vectorizable (a gather)."""
        uses = [v.name in free_vars(i) for i in indices]
        if not any(uses):
            return None
        if any(uses[:-1]):
            raise NotVectorizable("the loop variable indexes an outer dim")
        terms = linear_terms(indices[-1])
        if terms is None or terms.get(v, 0) != 1 or any(
                k != "" and k != v and v.name in free_vars(k) for k in terms):
            raise NotVectorizable("the loop variable is not a unit-stride index")
        return True

    @staticmethod
    def _cast_ptr(vt: VectorType, const: bool) -> str:
        """arm_neon.h takes ``__fp16*`` for half precision; Kiln's buffers are ``_Float16*``."""
        if vt.elem is not DType.float16:
            return ""
        return "(const float16_t*)" if const else "(float16_t*)"

    def _as_vector(self, x: _V) -> str:
        if x.kind == "vector":
            return x.code
        if x.kind == "uniform":
            return f"vdupq_n_{self._vt.suffix}({x.code})"
        raise NotVectorizable("a mask where a value is needed")

    def _as_mask(self, x: _V) -> str:
        vt = self._vt
        if x.kind == "mask":
            return x.code
        if x.kind == "umask":
            return f"vdupq_n_{vt.mask_suffix}(({x.code}) ? {vt.mask_ones} : 0)"
        raise NotVectorizable("a value where a condition is needed")

    def vexpr(self, e: Expr) -> _V:
        v, vt = self._vec_var, self._vt
        if e in self._aliases:
            return _V("vector", self._aliases[e])
        if v.name not in free_vars(e):
            return _V("umask" if e.dtype is DType.bool else "uniform", self.expr(e))
        if isinstance(e, Load):
            if e.dtype is not vt.elem or self._lane_offset(e.indices, v) is None:
                raise NotVectorizable("load")
            return _V("vector", f"vld1q_{vt.suffix}({self._cast_ptr(vt, True)}&{e.buffer}{self.subscript(e.buffer, e.indices)})")
        if isinstance(e, Cast):
            if e.dtype is e.a.dtype:
                return self.vexpr(e.a)
            if (e.dtype is DType.float32 and vt is F32X4 and isinstance(e.a, Load) and e.a.dtype is DType.float16
                    and self._lane_offset(e.a.indices, v)):
                # a widening load (fcvtl, base ARMv8): fp16 tensors with fp32 accumulation
                return _V("vector", f"vcvt_f32_f16(vld1_f16((const float16_t*)&{e.a.buffer}{self.subscript(e.a.buffer, e.a.indices)}))")
            raise NotVectorizable("conversion")
        if isinstance(e, Select):
            return self._select(e)
        if isinstance(e, Bin) and e.op in self.mask_binary and e.dtype is DType.bool:
            a, b = self._as_mask(self.vexpr(e.a)), self._as_mask(self.vexpr(e.b))
            return _V("mask", f"{self.mask_binary[e.op]}_{vt.mask_suffix}({a}, {b})")
        if isinstance(e, Bin) and e.op in self.vec_compare and e.a.dtype is vt.elem:
            a, b = self._as_vector(self.vexpr(e.a)), self._as_vector(self.vexpr(e.b))
            return _V("mask", f"{self.vec_compare[e.op]}_{vt.suffix}({a}, {b})")
        if isinstance(e, Bin) and e.op == "ne" and e.a.dtype is vt.elem:
            a, b = self._as_vector(self.vexpr(e.a)), self._as_vector(self.vexpr(e.b))
            return _V("mask", f"vmvnq_{vt.mask_suffix}(vceqq_{vt.suffix}({a}, {b}))")
        if isinstance(e, Un) and e.op == "isnan" and e.a.dtype is vt.elem:
            a = self._as_vector(self.vexpr(e.a))  # NaN is the one value unequal to itself
            return _V("mask", f"vmvnq_{vt.mask_suffix}(vceqq_{vt.suffix}({a}, {a}))")
        if isinstance(e, Un) and e.op == "not" and e.dtype is DType.bool:
            return _V("mask", f"vmvnq_{vt.mask_suffix}({self._as_mask(self.vexpr(e.a))})")
        if e.dtype is not vt.elem:
            raise NotVectorizable(f"{e.dtype} arithmetic")
        if isinstance(e, Bin) and e.op == "add" and vt.elem in self.contract_fma:
            for acc, prod in ((e.a, e.b), (e.b, e.a)):
                if isinstance(prod, Bin) and prod.op == "mul":  # contract into one fused multiply-add
                    c = self._as_vector(self.vexpr(acc))
                    x, y = self._as_vector(self.vexpr(prod.a)), self._as_vector(self.vexpr(prod.b))
                    return _V("vector", f"vfmaq_{vt.suffix}({c}, {x}, {y})")
        if isinstance(e, Bin) and e.op in self.vec_binary:
            a, b = self._as_vector(self.vexpr(e.a)), self._as_vector(self.vexpr(e.b))
            return _V("vector", f"{self.vec_binary[e.op]}_{vt.suffix}({a}, {b})")
        if isinstance(e, Bin) and e.op == "pow" and isinstance(e.b, Const) and e.b.value in (1.0, 2.0, 3.0):
            a = self._as_vector(self.vexpr(e.a))
            out = a
            for _ in range(int(e.b.value) - 1):
                out = f"vmulq_{vt.suffix}({out}, {a})"
            return _V("vector", out)
        if isinstance(e, Un) and e.op in self.vec_unary:
            return _V("vector", f"{self.vec_unary[e.op]}_{vt.suffix}({self._as_vector(self.vexpr(e.a))})")
        if isinstance(e, Un) and e.op == "reciprocal":
            one = f"vdupq_n_{vt.suffix}({self.literal(Const(1.0, vt.elem))})"
            return _V("vector", f"vdivq_{vt.suffix}({one}, {self._as_vector(self.vexpr(e.a))})")
        raise NotVectorizable(f"no NEON form for {type(e).__name__} {getattr(e, 'op', '')}")

    def _select(self, e: Select) -> _V:
        cond = self.vexpr(e.cond)
        if cond.kind == "umask":
            # one branch for all lanes: C evaluates only that branch (padding reads stay in bounds)
            a, b = self._as_vector(self.vexpr(e.a)), self._as_vector(self.vexpr(e.b))
            return _V("vector", f"(({cond.code}) ? {a} : {b})")
        # Per-lane condition: both branches are evaluated for every lane, so a branch may
        # only read what the scalar loop reads unconditionally.
        for branch in (e.a, e.b):
            for ld in walk(branch):
                if isinstance(ld, Load) and ld not in self._unconditional and ld not in self._aliases:
                    raise NotVectorizable("a load guarded by a per-lane condition")
        mask = self._as_mask(cond)
        a, b = self._as_vector(self.vexpr(e.a)), self._as_vector(self.vexpr(e.b))
        return _V("vector", f"vbslq_{self._vt.suffix}({mask}, {a}, {b})")


def _check_no_cross_lane_reads(body: Store) -> None:
    """A loop that reads the buffer it writes, other than at the element it writes, has a
    dependence between iterations: running its lanes at once would change the result."""
    for ld in walk(body.value):
        if isinstance(ld, Load) and ld.buffer == body.buffer and ld.indices != body.indices:
            raise NotVectorizable("reads the buffer it writes at another element")


def _unconditional_loads(e: Expr, v: Var) -> set[Load]:
    """Loads the scalar loop performs for every lane: those outside the branches of a
    select whose condition varies across lanes."""
    out: set[Load] = set()

    def go(x: Expr):
        if isinstance(x, Load):
            out.add(x)
        if isinstance(x, Select) and v.name in free_vars(x.cond):
            go(x.cond)  # a per-lane condition: its branches are not read for every lane
            return
        for c in children(x):
            go(c)

    go(e)
    return out


NEON_PRELUDE = """\
#if defined(__ARM_NEON)
#include <arm_neon.h>
#else
/* Not an Arm compiler: the scalar definitions of the same intrinsics (for host tests). */
#include "kiln_neon_fallback.h"
#endif
#ifdef _OPENMP
#define KILN_PARALLEL_FOR _Pragma("omp parallel for")
#else
#define KILN_PARALLEL_FOR
#endif
""" + C_PRELUDE


def fallback_header(fp16: bool = False) -> str:
    """``kiln_neon_fallback.h``: the intrinsics above as scalar C, for non-Arm compilers."""
    from kiln import __version__
    from kiln.codegen.templates import render

    types = [dict(vec="float32x4_t", elem="float", lanes=4, suffix="f32", mask="uint32x4_t",
                  mask_elem="uint32_t", mask_suffix="u32", ones="0xFFFFFFFFu", reductions=True)]
    if fp16:
        types.append(dict(vec="float16x8_t", elem="_Float16", lanes=8, suffix="f16", mask="uint16x8_t",
                          mask_elem="uint16_t", mask_suffix="u16", ones="0xFFFFu", reductions=False))
    return render("kiln_neon_fallback.h.j2", version=__version__, types=types)


__all__ = ["fallback_header", "NeonRenderer", "NEON_PRELUDE", "VectorType", "F32X4", "F16X8", "NotVectorizable"]
