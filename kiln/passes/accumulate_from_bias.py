"""Loop pass: an integer reduction's accumulators start at the bias its write-back adds.

A quantized convolution or matmul, as the schedule leaves it (``qlinear.requant``)::

    acc[r, c] = 0                                       acc[r, c] = bias[c]
    for k: acc[r, c] = acc[r, c] + x[..] * w[..]   ->   for k: acc[r, c] = acc[r, c] + x[..] * w[..]
    out[.., r, c] = f(acc[r, c] + bias[c])              out[.., r, c] = f(acc[r, c])

The write-back runs once per output element and is the part of an int8 kernel that does
not overlap the dot products (on a 7x7 stem with 147-byte windows it is a tenth of the
kernel); the initialization runs once per register tile, before the reduction, and costs
the same whether it stores zeros or the bias. Integer addition wraps and is associative,
so every output is the same integer. Float reductions are left alone (their sums would
round differently).

The rewrite applies only where it is plainly the same computation:

- the initialization is a loop nest storing integer 0 into every element of a local
  buffer (its loops are the buffer's dimensions, in order);
- every later statement that touches the buffer either only accumulates into it
  (``acc[i] = acc[i] + e``, ``e`` not reading it) or is the one write-back, which reads it
  only as ``acc[u] + B`` with ``u`` its own loop variables, over the buffer's whole shape,
  outside any ``if`` or ``select``;
- every ``B`` is the same expression of those variables (and of variables bound outside
  the write-back), reading only buffers that no statement of the kernel writes.

It runs with the other loop cleanups (``hoist_loads.cleanup_loops``), after the schedule,
so tuning traces are unchanged.
"""
from __future__ import annotations

from kiln.ir.dtype import DType
from kiln.ir.expr import Bin, Const, Expr, Load, Select, Var, free_vars, loads, map_children, substitute
from kiln.ir.loop import Alloc, Buffer, For, Func, If, Seq, Stmt, Store, map_exprs, map_stmt, stmt_exprs, walk_stmts

# wrapping integer types, where (b + s1) + s2 == (s1 + s2) + b always
ACCUMULATORS = (DType.int32, DType.int64)


def accumulate_from_bias(func: Func) -> Func:
    """``func`` with every matching accumulator initialized to its bias (module docstring)."""
    local = {s.buffer.name: s.buffer for s in walk_stmts(func.body) if isinstance(s, Alloc)}
    written = {s.buffer for s in walk_stmts(func.body) if isinstance(s, Store)}

    def fold(s: Stmt) -> Stmt | None:
        if not isinstance(s, Seq):
            return None  # map_stmt goes on inside it
        stmts = [map_stmt(x, fold) for x in s.stmts]  # inner sequences first
        for i in range(len(stmts)):
            folded = _fold_at(stmts, i, local, written)
            if folded is not None:
                stmts = folded
        return Seq(tuple(stmts))

    return func.with_body(map_stmt(func.body, fold))


def _zero_init(s: Stmt, local: dict[str, Buffer]) -> tuple[Buffer, list[Var]] | None:
    """The buffer and loop variables of ``for ..: acc[v0, v1, ..] = 0`` over all of ``acc``."""
    loops = []
    while isinstance(s, For):
        loops.append(s)
        s = s.body
    if not (isinstance(s, Store) and isinstance(s.value, Const) and s.value.value == 0):
        return None
    buf = local.get(s.buffer)
    if buf is None or buf.dtype not in ACCUMULATORS or s.value.dtype != buf.dtype:
        return None
    vars_ = [f.var for f in loops]
    if s.indices != tuple(vars_) or tuple(f.extent for f in loops) != tuple(buf.shape):
        return None
    return buf, vars_


def _acc_loads(s: Stmt, acc: str) -> list[Load]:
    return [e for x in walk_stmts(s) for top in stmt_exprs(x) for e in _reads(top, acc)]


def _reads(e: Expr, acc: str) -> list[Load]:
    return [x for x in loads(e) if x.buffer == acc]


def _only_accumulates(s: Stmt, acc: str) -> bool:
    """Every store to ``acc`` in ``s`` is ``acc[i] = acc[i] + e`` and nothing else reads it."""
    allowed = 0
    for x in walk_stmts(s):
        if isinstance(x, Store) and x.buffer == acc:
            v = x.value
            own = Load(acc, x.indices, v.dtype)
            if not (isinstance(v, Bin) and v.op == "add" and v.a == own and not _reads(v.b, acc)):
                return False
            allowed += 1
    return len(_acc_loads(s, acc)) == allowed


def _write_back_terms(s: Stmt, acc: Buffer) -> tuple[Stmt, Expr, list[Var]] | None:
    """``s`` with each ``acc[u] + B`` replaced by ``acc[u]``, the common ``B`` (in terms of
    the write-back's variables ``u``), and ``u``; None when ``s`` is not such a write-back."""
    if any(isinstance(x, If) or (isinstance(x, Store) and x.buffer == acc.name) for x in walk_stmts(s)):
        return None
    loops = {x.var.name: x for x in walk_stmts(s) if isinstance(x, For)}
    found: list[tuple[tuple, Expr]] = []

    def strip(e: Expr) -> Expr:
        if isinstance(e, Select):
            return e  # a conditional read: left as it is (and counted as not matched below)
        if isinstance(e, Bin) and e.op == "add":
            for a, b in ((e.a, e.b), (e.b, e.a)):
                if isinstance(a, Load) and a.buffer == acc.name:
                    found.append((a.indices, b))
                    return a
        return map_children(e, strip)

    new = map_exprs(s, strip)
    if not found or len(found) != len(_acc_loads(s, acc.name)):
        return None
    index, bias = found[0]
    if not all(isinstance(i, Var) and i.name in loops for i in index) or len({i.name for i in index}) != len(index):
        return None
    if tuple(loops[i.name].extent for i in index) != tuple(acc.shape):
        return None
    if any(ix != index or b != bias for ix, b in found[1:]):
        return None
    inner = set(loops) - {i.name for i in index}
    if free_vars(bias) & inner or _reads(bias, acc.name):
        return None
    return new, bias, list(index)


def _fold_at(stmts: list[Stmt], i: int, local: dict[str, Buffer], written: set[str]) -> list[Stmt] | None:
    init = _zero_init(stmts[i], local)
    if init is None:
        return None
    acc, init_vars = init
    users = [j for j in range(i + 1, len(stmts)) if _acc_loads(stmts[j], acc.name)
             or any(isinstance(x, Store) and x.buffer == acc.name for x in walk_stmts(stmts[j]))]
    if not users:
        return None
    last = users[-1]
    if not all(_only_accumulates(stmts[j], acc.name) for j in users[:-1]):
        return None
    back = _write_back_terms(stmts[last], acc)
    if back is None:
        return None
    new_back, bias, back_vars = back
    if any(ld.buffer in written for ld in loads(bias)):
        return None
    start = substitute(bias, {u.name: v for u, v in zip(back_vars, init_vars)})
    if start.dtype != acc.dtype:
        return None
    out = list(stmts)
    out[i] = map_stmt(stmts[i], lambda x: Store(x.buffer, x.indices, start) if isinstance(x, Store) else None)
    out[last] = new_back
    return out


__all__ = ["accumulate_from_bias"]
