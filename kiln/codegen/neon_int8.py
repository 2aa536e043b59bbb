"""NEON lowering of int8 dot-product reductions: ``sdot``/``udot`` with ``+dotprod``, widening
multiplies (``smull`` + ``sadalp``) without.

The integer kernels (``qconv``, ``qmatmul``: kiln/ir/ops/qlinear.py) reduce into an int32
scalar with a loop the default schedule marks *vectorized*:

    acc = acc + int32(a[..., k]) * int32(w[..., k])        a, w: int8 or uint8, unit stride in k

This module recognizes exactly that statement in the loop IR and prints it as whole
16-lane steps into an ``int32x4_t`` accumulator, an 8-lane step when 8 or more remain, one
across-lanes add (``vaddvq``) into ``acc``, then the scalar tail: no lane reads past the
loop's extent, and integer addition is exact, so the result equals the scalar loop's.

How 8 lanes multiply and accumulate depends on the operand types and on ``+dotprod``
(``DOT_FORMS``):

- int8 x int8, ``+dotprod``: ``vdotq_s32`` (``sdot``: four products per int32 lane);
- uint8 x uint8, ``+dotprod``: ``vdotq_u32`` (``udot``);
- int8 x int8 without it: ``vmull_s8`` (16-bit products: |-128 * -128| fits) and
  ``vpadalq_s16`` (pairwise add into int32), likewise ``vmull_u8``/``vpadalq_u16``;
- uint8 x int8 (the x86 operand pair): widened to int16 (``vmovl``) and ``vmlal_s16`` --
  the mixed-sign ``usdot`` needs I8MM, which ``arm64`` does not assume. The arm64 target
  avoids this case altogether by staging activations as int8
  (kiln/passes/signed_activations.py).

Registered with :meth:`NeonRenderer.register_lowering` when this module is imported (the
arm64 target imports it); a loop it does not recognize falls through to the generic
vectorizer and then to the scalar loop.
"""
from __future__ import annotations

from dataclasses import dataclass

from kiln.codegen.neon import NeonRenderer, NotVectorizable
from kiln.ir.dtype import DType
from kiln.ir.expr import Bin, Cast, Load, free_vars
from kiln.ir.loop import For, Store

I8, U8, I32 = DType.int8, DType.uint8, DType.int32
LANES = 16  # one 128-bit register of int8


@dataclass(frozen=True)
class DotForm:
    """How one kind of int8 dot product accumulates in NEON.

    ``step16``/``step8`` are expressions of the accumulator ``{acc}`` and operand pointers
    ``{a}``/``{b}`` (``step16`` None: two ``step8`` at ``p`` and ``p + 8``)."""

    acc_ctype: str
    zero: str
    across: str          # the accumulator's lanes added into one scalar
    step8: str
    step16: str | None = None
    instruction: str = ""  # what objdump shows in the loop (documentation and tests)
    ops_per_16: int = 1    # NEON arithmetic instructions per 16 products (the static cost counts them)


_S8_ZERO8 = "vdup_n_s8(0)"
_U8_ZERO8 = "vdup_n_u8(0)"

DOT_FORMS: dict[tuple[DType, DType, bool], DotForm] = {
    (I8, I8, True): DotForm(
        "int32x4_t", "vdupq_n_s32(0)", "vaddvq_s32({acc})",
        step8=f"vdotq_s32({{acc}}, vcombine_s8(vld1_s8({{a}}), {_S8_ZERO8}), vcombine_s8(vld1_s8({{b}}), {_S8_ZERO8}))",
        step16="vdotq_s32({acc}, vld1q_s8({a}), vld1q_s8({b}))", instruction="sdot", ops_per_16=1),
    (U8, U8, True): DotForm(
        "uint32x4_t", "vdupq_n_u32(0)", "(int32_t)vaddvq_u32({acc})",
        step8=f"vdotq_u32({{acc}}, vcombine_u8(vld1_u8({{a}}), {_U8_ZERO8}), vcombine_u8(vld1_u8({{b}}), {_U8_ZERO8}))",
        step16="vdotq_u32({acc}, vld1q_u8({a}), vld1q_u8({b}))", instruction="udot", ops_per_16=1),
    (I8, I8, False): DotForm(
        "int32x4_t", "vdupq_n_s32(0)", "vaddvq_s32({acc})",
        step8="vpadalq_s16({acc}, vmull_s8(vld1_s8({a}), vld1_s8({b})))", instruction="smull", ops_per_16=4),
    (U8, U8, False): DotForm(
        "uint32x4_t", "vdupq_n_u32(0)", "(int32_t)vaddvq_u32({acc})",
        step8="vpadalq_u16({acc}, vmull_u8(vld1_u8({a}), vld1_u8({b})))", instruction="umull", ops_per_16=4),
}
# uint8 x int8: int16 lanes (0..255 and -128..127 both fit), multiplied into int32
_MIXED = DotForm(
    "int32x4_t", "vdupq_n_s32(0)", "vaddvq_s32({acc})",
    step8="vmlal_high_s16(vmlal_s16({acc}, vget_low_s16(kiln_wa), vget_low_s16(kiln_wb)), kiln_wa, kiln_wb)",
    instruction="smlal", ops_per_16=8)
for _dot in (True, False):
    DOT_FORMS[(U8, I8, _dot)] = DOT_FORMS[(I8, U8, _dot)] = _MIXED


def dot_form(a: DType, b: DType, dotprod: bool) -> DotForm | None:
    return DOT_FORMS.get((a, b, dotprod))


def _operand(e) -> Load | None:
    """``int32(load)`` of an 8-bit tensor, or None."""
    if isinstance(e, Cast) and e.dtype is I32 and isinstance(e.a, Load) and e.a.dtype in (I8, U8):
        return e.a
    return None


def match_int8_dot(loop: For):
    """(accumulator load, a, b) when ``loop`` is ``acc = acc + int32(a[.. v]) * int32(b[.. v])``
    with a scalar ``acc`` (indices free of ``v``); else None."""
    body, v = loop.body, loop.var
    if not isinstance(body, Store) or any(v.name in free_vars(i) for i in body.indices):
        return None
    value = body.value
    if not (isinstance(value, Bin) and value.op == "add" and value.dtype is I32):
        return None
    acc = Load(body.buffer, body.indices, I32)
    for first, prod in ((value.a, value.b), (value.b, value.a)):
        if first == acc and isinstance(prod, Bin) and prod.op == "mul":
            a, b = _operand(prod.a), _operand(prod.b)
            if a is not None and b is not None:
                return acc, a, b
    return None


def lowered_form(r: NeonRenderer, loop: For) -> DotForm | None:
    """The form :func:`lower_int8_dot` prints ``loop`` with, or None when it declines
    (the static cost model asks this too)."""
    m = match_int8_dot(loop)
    if m is None:
        return None
    _, a, b = m
    form = dot_form(a.dtype, b.dtype, getattr(r, "dotprod", False))
    if form is None or (isinstance(loop.extent, int) and loop.extent < 8):
        return None
    try:
        if not (r._lane_offset(a.indices, loop.var) and r._lane_offset(b.indices, loop.var)):
            return None  # an operand that does not move with k: not a dot product
    except NotVectorizable:
        return None  # a gather
    return form


def lower_int8_dot(r: NeonRenderer, loop: For, depth: int) -> bool:
    """The registered lowering (see the module docstring); False leaves ``loop`` to the others."""
    form = lowered_form(r, loop)
    if form is None:
        return False
    acc, a, b = match_int8_dot(loop)
    static = isinstance(loop.extent, int)
    name, n = loop.var.name, r.dim(loop.extent)
    pa = f"&{a.buffer}{r.subscript(a.buffer, a.indices)}"
    pb = f"&{b.buffer}{r.subscript(b.buffer, b.indices)}"
    scalar_acc = f"{acc.buffer}{r.subscript(acc.buffer, acc.indices)}"
    r.emit("{", depth)
    r.emit(f"{form.acc_ctype} kiln_idot = {form.zero};", depth + 1)
    r.emit(f"int64_t {name} = 0;", depth + 1)
    if not static or loop.extent >= LANES:
        r.emit(f"for (; {name} + {LANES} <= {n}; {name} += {LANES}) {{", depth + 1)
        if form.step16:
            r.emit(f"kiln_idot = {form.step16.format(acc='kiln_idot', a=pa, b=pb)};", depth + 2)
        else:
            _step8(r, form, a, b, pa, pb, depth + 2)
            _step8(r, form, a, b, f"{pa} + 8", f"{pb} + 8", depth + 2)
        r.emit("}", depth + 1)
    if not static or loop.extent % LANES >= 8:
        r.emit(f"if ({name} + 8 <= {n}) {{", depth + 1)
        _step8(r, form, a, b, pa, pb, depth + 2)
        r.emit(f"{name} += 8;", depth + 2)
        r.emit("}", depth + 1)
    r.emit(f"{scalar_acc} = {scalar_acc} + {form.across.format(acc='kiln_idot')};", depth + 1)
    if not static or loop.extent % 8:
        r.scalar_loop(loop, depth + 1, False, start=name)
    r.emit("}", depth)
    r.stats["int8_dot_loops"] = r.stats.get("int8_dot_loops", 0) + 1
    return True


def _step8(r: NeonRenderer, form: DotForm, a: Load, b: Load, pa: str, pb: str, depth: int) -> None:
    if form is _MIXED:  # both operands widened to int16 lanes first
        wa = _widen16(a.dtype, pa)
        wb = _widen16(b.dtype, pb)
        r.emit(f"{{ int16x8_t kiln_wa = {wa}, kiln_wb = {wb};", depth)
        r.emit(f"  kiln_idot = {form.step8.format(acc='kiln_idot', a=pa, b=pb)}; }}", depth)
        return
    r.emit(f"kiln_idot = {form.step8.format(acc='kiln_idot', a=pa, b=pb)};", depth)


def _widen16(dt: DType, p: str) -> str:
    if dt is U8:
        return f"vreinterpretq_s16_u16(vmovl_u8(vld1_u8({p})))"
    return f"vmovl_s8(vld1_s8({p}))"


NeonRenderer.register_lowering(lower_int8_dot)

__all__ = ["DOT_FORMS", "DotForm", "dot_form", "lower_int8_dot", "lowered_form", "match_int8_dot"]
