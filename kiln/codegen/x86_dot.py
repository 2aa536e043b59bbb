"""The integer dot-product nest that the x86 printers replace with intrinsics.

The default schedule of ``qconv``/``qmatmul`` (``kiln/passes/dot_schedule.py``) leaves

    for k < K:
      for r < R (unrolled):  for c < C (unrolled):
        acc[r][c] = acc[r][c] + int32(x[.. r .., k]) * int32(w[.. c .., k])

with ``x`` uint8 (activations) and ``w`` int8 (weights in VNNI panels). Two printers take
it: the AVX-512 VNNI register tile (``kiln/codegen/x86.py``) and the AMX tile
(``kiln/codegen/x86_amx.py``). Each checks the byte layout it needs with ``flat_offset``,
evaluating the index expressions themselves, so a nest it cannot prove is printed as C.
"""
from __future__ import annotations

from dataclasses import dataclass

from kiln.ir.dtype import DType
from kiln.ir.expr import Bin, Cast, Const, Load, Var, free_vars, simplify, substitute
from kiln.ir.loop import For, Store, UNROLLED
from kiln.ir.loop_eval import evaluate

I8, U8, I32 = DType.int8, DType.uint8, DType.int32
LANES = 16  # int32 lanes of a zmm register, and columns of one VNNI panel


@dataclass(frozen=True, slots=True)
class DotNest:
    """The accumulator buffer, the two operand loads, the row and column variables and the
    tile's extent (rows x cols)."""

    acc: str
    x: Load
    w: Load
    r: Var
    c: Var
    rows: int
    cols: int

    @property
    def panels(self) -> int:
        """The columns in VNNI panels of 16."""
        return self.cols // LANES


def _operand(e) -> Load | None:
    if isinstance(e, Cast) and e.dtype is I32 and isinstance(e.a, Load) and e.a.dtype in (I8, U8):
        return e.a
    return None


def match_dot_nest(loop: For, buffers, step: int, unrolled: bool = True) -> DotNest | None:
    """``loop`` as the nest of the module docstring, K a multiple of ``step`` and the
    columns of whole panels; None otherwise. Only the structure is checked here.
    ``unrolled``: the row and column loops must be unrolled (a register tile); else they
    may be loops of any kind."""
    if not (isinstance(loop.extent, int) and loop.extent >= step and loop.extent % step == 0):
        return None
    outer = loop.body
    if not (isinstance(outer, For) and (outer.kind == UNROLLED or not unrolled) and isinstance(outer.body, For)):
        return None
    inner = outer.body
    body = inner.body
    if (inner.kind != UNROLLED and unrolled) or not isinstance(body, Store) or not all(
            isinstance(n, int) for n in (outer.extent, inner.extent)):
        return None
    r, c = outer.var, inner.var
    rows, cols = outer.extent, inner.extent
    if cols % LANES:
        return None
    acc_buf = buffers.get(body.buffer)
    if (acc_buf is None or acc_buf.scope != "local" or acc_buf.dtype is not I32
            or body.indices != (r, c) or tuple(acc_buf.shape) != (rows, cols)):
        return None
    value = body.value
    acc = Load(body.buffer, body.indices, I32)
    if not (isinstance(value, Bin) and value.op == "add" and value.a == acc and isinstance(value.b, Bin)
            and value.b.op == "mul"):
        return None
    pair = [_operand(value.b.a), _operand(value.b.b)]
    if None in pair:
        return None
    by_type = {ld.dtype: ld for ld in pair}
    x, w = by_type.get(U8), by_type.get(I8)
    if x is None or w is None:
        return None
    xv = set().union(*(free_vars(i) for i in x.indices))
    wv = set().union(*(free_vars(i) for i in w.indices))
    if c.name in xv or r.name in wv:
        return None
    return DotNest(body.buffer, x, w, r, c, rows, cols)


def bind(e, name: str, value: int):
    """``e`` with the variable ``name`` set to ``value``, simplified."""
    return simplify(substitute(e, {name: Const(value, DType.int64)}))


def flat_offset(load: Load, env: dict, buffers) -> int:
    """The element offset ``load`` reads in its buffer with the variables at ``env``."""
    shape = buffers[load.buffer].shape
    flat = 0
    for i, n in zip(load.indices, shape):
        flat = flat * n + int(evaluate(i, env))
    return flat


def other_vars(nest: DotNest, k: str) -> set[str]:
    """The enclosing loops' variables the operand indices use (not k, row or column)."""
    return set().union(*(free_vars(i) for i in nest.x.indices + nest.w.indices)) - {k, nest.r.name, nest.c.name}


__all__ = ["DotNest", "LANES", "bind", "flat_offset", "match_dot_nest", "other_vars"]
