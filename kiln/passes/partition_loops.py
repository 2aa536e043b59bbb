"""Loop pass: split loops at the edges of the padding they test for (loop partitioning).

A padded copy or a pooling window tests, element by element, whether its input index is
inside the input: ``select(w >= 3 && w < 227, x[.., w - 3], 128)``. Only a few iterations
near each edge can fail the test, but as long as it is in the loop gcc neither vectorizes
the copy well nor drops the test: ResNet-18's int8 stem spent 46 us quantizing and padding
its 224x224 image that way, 22 us split as below (2 threads, Zen 4).

Two rewrites, both exact (each copy of the body runs where its simplifications hold):

- **partition** a loop over ``v`` that is not parallel into up to three loops: the middle one
  covers the iterations where every bounds test affine in ``v`` holds whatever values the
  loops inside take, and has those tests replaced by ``true``; the head and the tail keep
  the tests, or have them ``false`` where they fail throughout;
- **unswitch** the body of a parallel loop (which stays one loop: splitting it would add
  parallel regions): ``if (P) body_with_tests_true; else body``, with ``P`` the condition
  on the loop's variable (and outer ones) under which the tests hold for every inner value.

A test is one term of a select's ``&&``-chain that compares an affine expression of loop
variables with a constant; the rest of a condition is left as it is.
"""
from __future__ import annotations

from kiln.ir.dtype import INDEX
from kiln.ir.expr import Bin, Const, Expr, Select, Un, Var, affine_coeffs, children, map_children, simplify
from kiln.ir.loop import (GPU_LOOP_KINDS, PARALLEL, Alloc, For, Func, If, Seq, Stmt, map_exprs, seq,
                          stmt_exprs, subst_stmt, walk_stmts)

MIN_MIDDLE = 4      # a middle loop shorter than this is not worth three copies of the body
_CMP = ("lt", "le", "gt", "ge")
_INF = float("inf")


def partition_loops(func: Func) -> Func:
    if not _tests(func.body):  # most kernels test no bounds: one walk, nothing rebuilt
        return func
    return func.with_body(_visit(func.body, {}))


def _visit(s: Stmt, bound: dict[str, int]) -> Stmt:
    """Top-down: a loop is split before the loops inside it, so that a head or tail whose
    tests are all decided (rows of padding) is not split again."""
    if isinstance(s, For):
        if s.kind in GPU_LOOP_KINDS or not isinstance(s.extent, int):
            return s
        if s.kind == PARALLEL:
            body = _unswitch(s.body, s.var.name, bound)
            return For(s.var, s.extent, _visit(body, {**bound, s.var.name: s.extent}), s.kind)
        return seq(*(For(p.var, p.extent, _visit(p.body, {**bound, p.var.name: p.extent}), p.kind)
                     for p in _partition(s)))
    if isinstance(s, Seq):
        return seq(*(_visit(x, bound) for x in s.stmts))
    if isinstance(s, Alloc):
        return Alloc(s.buffer, _visit(s.body, bound))
    if isinstance(s, If):
        return If(s.cond, _visit(s.then, bound))
    return s


# -- bounds tests ---------------------------------------------------------------------

def _terms(cond: Expr) -> list[Expr]:
    if isinstance(cond, Bin) and cond.op == "and":
        return _terms(cond.a) + _terms(cond.b)
    return [cond]


def _as_ge(term: Expr) -> dict[str, int] | None:
    """A comparison of integers as the affine form ``f`` with ``term <=> f >= 0``."""
    if not (isinstance(term, Bin) and term.op in _CMP) or term.a.dtype.is_float or term.b.dtype.is_float:
        return None
    diff = affine_coeffs(term.a - term.b)
    if diff is None:
        return None
    if term.op in ("lt", "le"):
        diff = {k: -c for k, c in diff.items()}
    if term.op in ("gt", "lt"):  # strict: f > 0 <=> f - 1 >= 0
        diff[""] -= 1
    return diff


def _tests(body: Stmt) -> list[Expr]:
    """The distinct terms of the select conditions in ``body`` that are bounds tests through
    and through. A condition that also tests data (ScatterElements: ``i < 4 && idx[..] == i0``)
    is left whole: split on its bounds, gcc 12.2 at -O3 miscompiled the remaining loop (wrong
    sums, with and without AVX-512), and such loops are not where the padding is."""
    seen: dict[Expr, None] = {}
    visited: set[int] = set()  # expressions are DAGs (Winograd's share subtrees): each node once
    for st in walk_stmts(body):
        stack = list(stmt_exprs(st))
        while stack:
            x = stack.pop()
            if id(x) in visited:
                continue
            visited.add(id(x))
            if isinstance(x, Select):
                terms = _terms(x.cond)
                if all(_as_ge(t) is not None for t in terms):
                    for t in terms:
                        seen.setdefault(t, None)
            stack.extend(children(x))
    return list(seen)


def _inner_range(form: dict[str, int], inner: dict[str, int]) -> tuple[int, int]:
    """min and max of the terms of ``form`` over the loops inside (0 <= u < extent)."""
    lo = hi = 0
    for name, c in form.items():
        if name in inner:
            top = c * (inner[name] - 1)
            lo, hi = lo + min(0, top), hi + max(0, top)
    return lo, hi


def _inner_loops(body: Stmt) -> dict[str, int]:
    return {x.var.name: x.extent for x in walk_stmts(body) if isinstance(x, For) and isinstance(x.extent, int)}


def _replace_tests(body: Stmt, values: dict[Expr, bool]) -> Stmt:
    """``body`` with the given terms of select conditions replaced by constants."""
    if not values:
        return body

    def fix(e: Expr) -> Expr:
        e = map_children(e, fix)
        if not isinstance(e, Select):
            return e
        terms = _terms(e.cond)
        if not any(t in values for t in terms):
            return e
        if any(values.get(t) is False for t in terms):
            return e.b
        rest = [t for t in terms if t not in values]
        if not rest:
            return e.a
        return Select(_conj(rest), e.a, e.b)

    memo: dict = {}
    return map_exprs(body, lambda e: simplify(fix(e), memo))


# -- partition ------------------------------------------------------------------------

def _ranges(form: dict[str, int], v: str, inner: dict[str, int]):
    """Where the test ``form >= 0`` holds, and where it fails, for every value of the loops
    inside: ((true from, to), (false from, to)) in ``v``; None when ``form`` is not a test
    on ``v`` and inner loops only."""
    if form is None or form.get(v, 0) == 0 or any(k not in inner for k in form if k not in ("", v)):
        return None
    c, k = form[v], form[""]
    mn, mx = _inner_range(form, inner)
    # true for all inner values: c*v + k + mn >= 0; false for all: c*v + k + mx < 0
    if c > 0:
        return (-((k + mn) // c), _INF), (-_INF, -((k + mx) // c))
    return (-_INF, (k + mn) // -c + 1), ((k + mx) // -c + 1, _INF)


def _resolvable(test: Expr, body: Stmt) -> bool:
    """Whether splitting some loop inside ``body`` would leave a middle free of ``test``."""
    form = _as_ge(test)
    for u in walk_stmts(body):
        if isinstance(u, For) and isinstance(u.extent, int) and u.kind not in GPU_LOOP_KINDS:
            r = _ranges(form, u.var.name, _inner_loops(u.body))
            if r is not None and min(r[0][1], u.extent) - max(r[0][0], 0) >= MIN_MIDDLE:
                return True
    return False


def _partition(loop: For) -> list[For]:
    """The loop's pieces: itself alone when there is nothing worth splitting -- a middle
    shorter than MIN_MIDDLE, or one that would still test every element (a depthwise
    convolution's rows: its columns' tests stay, and three copies of the body gain nothing)."""
    v, n = loop.var.name, loop.extent
    inner = _inner_loops(loop.body)
    lo, hi = 0, n                   # where every test on v holds for all inner values
    ranges, others = [], []         # (test, true from/to, false from/to) in v; the rest
    for t in _tests(loop.body):
        r = _ranges(_as_ge(t), v, inner)
        if r is None:
            others.append(t)
            continue
        ranges.append((t, *r))
        lo, hi = max(lo, r[0][0]), min(hi, r[0][1])
    if not ranges or hi - lo < MIN_MIDDLE or (lo <= 0 and hi >= n):
        return [loop]
    if not all(_resolvable(t, loop.body) for t in others):
        return [loop]
    out = []
    for a, b in [(a, b) for a, b in ((0, lo), (lo, hi), (hi, n)) if b > a]:
        values = {}
        for t, (t0, t1), (f0, f1) in ranges:
            if t0 <= a and b <= t1:
                values[t] = True
            elif f0 <= a and b <= f1:
                values[t] = False
        name = f"{v}_{'lo' if a == 0 and b < n else 'hi' if b == n else 'in'}"
        var = Var(name, loop.var.dtype)
        body = _replace_tests(loop.body, values)
        body = subst_stmt(body, {v: var if a == 0 else Bin("add", var, Const(a, var.dtype), var.dtype)})
        out.append(For(var, b - a, body, loop.kind))
    return out


# -- unswitch -------------------------------------------------------------------------

def _unswitch(body: Stmt, v: str, outer: dict[str, int]) -> Stmt:
    """``if (P) body with the tests on v true; if (!P) body`` -- when there are such tests, the
    body has loops to gain from it, and the tests it leaves can be split away inside."""
    if not any(isinstance(x, For) for x in walk_stmts(body)):
        return body
    inner = _inner_loops(body)
    preds, values = [], {}
    for t in _tests(body):
        form = _as_ge(t)
        if form is None or form.get(v, 0) == 0 or any(k not in inner and k not in outer for k in form if k not in ("", v)):
            continue
        mn, _ = _inner_range(form, inner)
        # the test holds for every inner value when its outer part plus the inner minimum is >= 0
        pred = Const(form[""] + mn, INDEX)
        for name, c in form.items():
            if name and name not in inner:
                pred = pred + Const(c, INDEX) * Var(name, INDEX)
        preds.append(simplify(pred).ge(0))
        values[t] = True
    if not preds or not all(_resolvable(t, body) for t in _tests(body) if t not in values):
        return body
    cond = _conj(preds)
    return seq(If(cond, _replace_tests(body, values)), If(Un("not", cond, cond.dtype), body))


def _conj(terms: list[Expr]) -> Expr:
    out = terms[0]
    for t in terms[1:]:
        out = out.land(t)
    return out
