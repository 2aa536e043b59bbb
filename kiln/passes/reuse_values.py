"""Reuse through the destination: a value a reduction loop computes, and a later loop over the
same range computes again, is stored by the first loop into the second loop's destination
and read back there.

The case it is for is softmax, row by row (``kiln/ir/ops/norm.py``)::

    for k < n: acc = acc + exp(x[r, k] - m[r])          # the sum of the row
    s[r] = acc
    for k < n: y[r, k] = exp(x[r, k] - m[r]) / s[r]     # the same exp again

becomes::

    for k < n: y[r, k] = exp(x[r, k] - m[r]); acc = acc + y[r, k]
    s[r] = acc
    for k < n: y[r, k] = y[r, k] / s[r]

one exponential per element instead of two. The tensor IR keeps softmax a pure definition
(no stage writes what another wrote), so the reuse is a loop rewrite, on the CPU targets only
(``cleanup_loops``): a GPU schedule spreads a row's loops over invocations differently, and a
microcontroller's arena gains nothing from it either way.

It applies when, in one sequence of statements (allocation scopes seen through):
- the first loop's body is one accumulation ``acc = acc + f(...)`` into a local scalar, and
  ``f`` holds a transcendental operation (exp, log, tanh, ...): recomputing cheap arithmetic
  is faster than a store and a load;
- a later loop over the same extent stores into a kernel parameter, at an index where its
  loop variable is one whole index and appears nowhere else (each iteration its own element),
  and its value contains the same subexpression (loop variables renamed) in that parameter's
  dtype (so storing it rounds nothing);
- nothing between the two loops reads or writes the elements of that parameter the
  second loop stores (elements of other rows may be touched: rows run side by side, see
  ``Schedule.interleave_statements``, where the index difference is provably nonzero) or
  writes anything the subexpression reads, and the subexpression does not read that
  parameter.
"""
from __future__ import annotations

from dataclasses import replace

from kiln.ir.expr import Bin, Expr, Load, Un, Var, free_vars, linear_terms, map_children, substitute, walk
from kiln.ir.loop import Alloc, For, Func, If, Seq, Stmt, Store, seq, stmt_children, stmt_exprs, walk_stmts

TRANSCENDENTAL = {"exp", "exp_nonpos", "expm1", "log", "tanh", "erf", "sigmoid", "softplus", "sin", "cos", "tan", "atan",
                  "asin", "acos", "sinh", "cosh", "asinh", "acosh", "atanh"}


def reuse_through_destination(func: Func) -> Func:
    params = {b.name: b for b in func.params}
    return func.with_body(_rewrite(func.body, params))


def _rewrite(s: Stmt, params) -> Stmt:
    """Loop and branch bodies first, then the statements of ``s`` in execution order."""
    if isinstance(s, For):
        s = replace(s, body=_rewrite(s.body, params))
    elif isinstance(s, If):
        s = replace(s, then=_rewrite(s.then, params))
    elif isinstance(s, (Seq, Alloc)):
        s = _map_leaves(s, lambda x: _rewrite(x, params) if isinstance(x, (For, If)) else x)
    return _in_order(s, params)


def _leaves(s: Stmt) -> list[Stmt]:
    """The statements of a block in execution order, seen through sequences and scopes."""
    if isinstance(s, Seq):
        return [x for c in s.stmts for x in _leaves(c)]
    if isinstance(s, Alloc):
        return _leaves(s.body)
    return [s]


def _map_leaves(s: Stmt, f) -> Stmt:
    if isinstance(s, Seq):
        return seq(*(_map_leaves(c, f) for c in s.stmts))
    if isinstance(s, Alloc):
        return replace(s, body=_map_leaves(s.body, f))
    return f(s)


def _in_order(block: Stmt, params) -> Stmt:
    leaves = _leaves(block)
    for p, first in enumerate(leaves):
        acc = _accumulation(first)
        if acc is None:
            continue
        done = _reuse_after(first, acc, leaves[p + 1:], params)
        if done is not None:
            new_first, later, new_later = done
            swap = {id(first): new_first, id(later): new_later}
            return _in_order(_map_leaves(block, lambda x: swap.get(id(x), x)), params)
    return block


def _accumulation(s: Stmt) -> tuple[str, Expr] | None:
    """(acc, the accumulated term) of a loop whose body is ``acc = acc + term``."""
    if not (isinstance(s, For) and isinstance(s.extent, int) and isinstance(s.body, Store) and not s.body.indices):
        return None
    v = s.body.value
    if not (isinstance(v, Bin) and v.op == "add" and v.a == Load(s.body.buffer, (), v.a.dtype)):
        return None
    return s.body.buffer, v.b


def _costly(e: Expr) -> bool:
    return any(isinstance(x, Un) and x.op in TRANSCENDENTAL for x in walk(e))


def _size(e: Expr) -> int:
    return sum(1 for _ in walk(e))


def _reuse_after(first: For, acc: tuple[str, Expr], after: list[Stmt], params):
    """(``first`` storing the shared value, the later loop, that loop reading it back), or
    None when no statement of ``after`` qualifies."""
    acc_name, term = acc
    if any(isinstance(x, Load) and x.buffer == acc_name for x in walk(term)):
        return None
    reads = {x.buffer for x in walk(term) if isinstance(x, Load)}
    written: set[str] = set()
    between: list[tuple[str, tuple[Expr, ...], dict[str, int]]] = []  # accesses in between
    for s in after:
        hit = _match_later(s, first, term, params)
        dest = hit[0].buffer if hit is not None else None
        # the first loop now writes the destination early: nothing it reads may be that
        # buffer, nothing in between may touch the elements it writes (a row's neighbours
        # run side by side may touch theirs), nor write what the value reads
        if (hit is not None and dest not in reads and not written & reads
                and all(_apart(hit[0].indices, {s.var.name: s.extent}, ix, ranges)
                        for buf, ix, ranges in between if buf == dest)):
            store, rewritten, shared = hit
            index = tuple(substitute(i, {s.var.name: first.var}) for i in store.indices)
            dtype = first.body.value.dtype
            keep = Store(store.buffer, index, shared)
            update = Store(acc_name, (), Bin("add", Load(acc_name, (), dtype),
                                             _replace(term, shared, Load(store.buffer, index, shared.dtype)), dtype))
            return replace(first, body=seq(keep, update)), s, rewritten
        written.update(x.buffer for x in walk_stmts(s) if isinstance(x, Store))
        between += _accesses(s, {})
    return None


def _accesses(s: Stmt, ranges: dict[str, int]) -> list[tuple[str, tuple[Expr, ...], dict[str, int]]]:
    """(buffer, indices, extents of the loops around the access inside ``s``) of every load
    and store in ``s``."""
    if isinstance(s, For):
        return _accesses(s.body, {**ranges, s.var.name: s.extent})
    out = [(e.buffer, e.indices, ranges) for part in stmt_exprs(s) for e in walk(part) if isinstance(e, Load)]
    if isinstance(s, Store):
        out.append((s.buffer, s.indices, ranges))
    for child in stmt_children(s):
        out += _accesses(child, ranges)
    return out


def _apart(a: tuple[Expr, ...], a_loops: dict[str, int], b: tuple[Expr, ...], b_loops: dict[str, int]) -> bool:
    """True when index ``a`` (its loop variables in ``a_loops``) and index ``b`` never name
    the same element: in some dimension their difference is a constant plus loop variables
    of known extents, and is never zero. Variables bound outside both (the row loop) must
    cancel out; anything else not proved apart is taken to overlap."""
    if len(a) != len(b):
        return False
    ranges = {f"{v}'": n for v, n in b_loops.items()}
    ranges.update(a_loops)
    apart_b = {v: Var(f"{v}'") for v in b_loops}
    for x, y in zip(a, b):
        terms = linear_terms(Bin("sub", x, substitute(y, apart_b), x.dtype))
        if terms is None:
            continue
        lo = hi = terms.get("", 0)
        for atom, coef in terms.items():
            if atom == "" or coef == 0:
                continue
            n = ranges.get(atom.name) if isinstance(atom, Var) else None
            if not isinstance(n, int):
                break
            lo, hi = lo + min(0, coef * (n - 1)), hi + max(0, coef * (n - 1))
        else:
            if lo > 0 or hi < 0:
                return True
    return False


def _match_later(s: Stmt, first: For, term: Expr, params):
    """(its store, the loop rewritten to read the shared value back, the shared value in
    ``first``'s loop variable) when ``s`` is a loop that recomputes a costly part of ``term``."""
    if not (isinstance(s, For) and s.extent == first.extent and s.kind == first.kind and isinstance(s.body, Store)):
        return None
    store = s.body
    dest = params.get(store.buffer)
    v2 = s.var
    if dest is None or dest.scope != "global":
        return None
    if sum(i == v2 for i in store.indices) != 1 or sum(v2.name in free_vars(i) for i in store.indices) != 1:
        return None  # each iteration its own element
    renamed = substitute(term, {first.var.name: v2})
    later_parts = set(walk(store.value))
    best = None
    for x in walk(renamed):
        if (x in later_parts and _costly(x) and x.dtype is dest.dtype
                and store.buffer not in {y.buffer for y in walk(x) if isinstance(y, Load)}
                and (best is None or _size(x) > _size(best))):
            best = x
    if best is None:
        return None
    back = Load(store.buffer, store.indices, best.dtype)
    rewritten = replace(s, body=Store(store.buffer, store.indices, _replace(store.value, best, back)))
    return store, rewritten, substitute(best, {v2.name: first.var})


def _replace(e: Expr, old: Expr, new: Expr) -> Expr:
    if e == old:
        return new
    return map_children(e, lambda c: _replace(c, old, new))


__all__ = ["reuse_through_destination"]
