"""Loop pass: simplify index arithmetic with the ranges of loop variables.

A loop ``for k in 0..N`` tells us ``0 <= k < N``; with that, ``(12*r + k) // 12`` is ``r``
and ``(12*r + k) % 12`` is ``k`` when ``N <= 12``. Reading a tensor through a reshape
produces exactly such divisions (``flat // 64``, ``flat % 64``); after the schedule splits
the loop by 64 this pass removes them from the innermost loop.
"""
from __future__ import annotations

from kiln.ir.expr import Bin, Const, Expr, Var, linear_terms, map_children, memoized, simplify
from kiln.ir.loop import Alloc, For, Func, If, Seq, Stmt, Store


def _rebuild(terms: dict, dtype) -> Expr:
    out: Expr | None = None
    for atom, coef in terms.items():
        if atom == "" or coef == 0:
            continue
        t = atom if coef == 1 else Bin("mul", atom, Const(coef, dtype), dtype)
        out = t if out is None else Bin("add", out, t, dtype)
    const = terms.get("", 0)
    if out is None:
        return Const(const, dtype)
    return out if const == 0 else Bin("add", out, Const(const, dtype), dtype)


def _split_div(e: Bin, ranges: dict[str, int]):
    """(quotient, remainder) terms of ``e.a`` by the constant ``e.b`` when provably exact."""
    if not (isinstance(e.b, Const) and not e.b.dtype.is_float) or int(e.b.value) <= 0:
        return None
    c = int(e.b.value)
    terms = linear_terms(e.a)
    if terms is None:
        return None
    quot, rem, rem_max = {}, {}, 0
    for atom, coef in terms.items():
        if atom == "":
            continue
        if coef % c == 0:
            quot[atom] = coef // c
        elif isinstance(atom, Var) and atom.name in ranges and coef > 0:
            rem[atom] = coef
            rem_max += coef * (ranges[atom.name] - 1)
        else:
            return None
    const = terms.get("", 0)
    if const < 0:
        return None
    quot[""], rem[""] = const // c, const % c
    if rem_max + rem[""] >= c:
        return None
    return quot, rem


def simplify_expr(e: Expr, ranges: dict[str, int], memos: tuple[dict, dict] | None = None) -> Expr:
    """``memos``: reuse results for subexpressions met before under the same ``ranges``."""
    memo, simplify_memo = memos or ({}, {})

    def step(x: Expr) -> Expr:
        x = map_children(x, go)
        if isinstance(x, Bin) and x.op in ("floordiv", "mod") and not x.dtype.is_float:
            parts = _split_div(x, ranges)
            if parts is not None:
                return simplify(_rebuild(parts[0] if x.op == "floordiv" else parts[1], x.dtype))
        return x

    go = memoized(step, memo)
    return simplify(go(e), simplify_memo)


def simplify_loop_indices(func: Func) -> Func:
    def visit(s: Stmt, ranges: dict[str, int], memos) -> Stmt:
        if isinstance(s, For):
            inner = dict(ranges)
            if isinstance(s.extent, int):
                inner[s.var.name] = s.extent
            return For(s.var, s.extent, visit(s.body, inner, ({}, {})), s.kind)
        if isinstance(s, Seq):
            return Seq(tuple(visit(x, ranges, memos) for x in s.stmts))
        if isinstance(s, Alloc):
            return Alloc(s.buffer, visit(s.body, ranges, memos))
        if isinstance(s, If):
            return If(simplify_expr(s.cond, ranges, memos), visit(s.then, ranges, memos))
        if isinstance(s, Store):
            return Store(s.buffer, tuple(simplify_expr(i, ranges, memos) for i in s.indices),
                         simplify_expr(s.value, ranges, memos))
        return s

    return func.with_body(visit(func.body, {}, ({}, {})))
