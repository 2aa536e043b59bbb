"""Loop pass: simplify index arithmetic with the ranges of loop variables.

A loop ``for k in 0..N`` tells us ``0 <= k < N``; with that, ``(12*r + k) // 12`` is ``r``
and ``(12*r + k) % 12`` is ``k`` when ``N <= 12``. Reading a tensor through a reshape
produces exactly such divisions (``flat // 64``, ``flat % 64``); after the schedule splits
the loop by 64 this pass removes them from the innermost loop.
"""
from __future__ import annotations

from kiln.ir.expr import simplify_in_ranges
from kiln.ir.loop import Alloc, For, Func, If, Seq, Stmt, Store


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
            return If(simplify_in_ranges(s.cond, ranges, memos), visit(s.then, ranges, memos))
        if isinstance(s, Store):
            return Store(s.buffer, tuple(simplify_in_ranges(i, ranges, memos) for i in s.indices),
                         simplify_in_ranges(s.value, ranges, memos))
        return s

    return func.with_body(visit(func.body, {}, ({}, {})))
