"""Schedule primitives on the loop IR, recorded as a replayable trace.

Every primitive names loops by their variable name and returns the new names it
creates, so a trace (a list of ``{"prim": ..., "args": ...}``) serializes to JSON and
replays on a freshly lowered kernel: a tuning record is such a trace.

Primitives: split, reorder, fuse, parallel, vectorize, unroll, expand, compute_inline,
compute_at, cache_read, cache_write, decompose_reduction, bind (GPU axes).
"""
from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from kiln.errors import ScheduleError
from kiln.ir.expr import (Bin, Const, Expr, Load, Select, Var, affine_coeffs, ceil_div, map_children, replace_loads,
                          simplify, simplify_in_ranges, substitute, walk)
from kiln.ir.loop import (PARALLEL, SERIAL, UNROLLED, VECTORIZED, Alloc, Buffer, For, Func, If, Seq,
                          Stmt, Store, find_loop, map_exprs, map_stmt, seq, stmt_exprs,
                          subst_stmt, walk_stmts)


MAX_EXPAND = 64  # ``expand`` copies a loop body this many times at most


class Schedule:
    """A kernel under transformation plus the trace of primitives applied to it."""

    def __init__(self, func: Func):
        self.func = func
        self.trace: list[dict[str, Any]] = []

    # -- bookkeeping -------------------------------------------------------------------
    def _record(self, prim: str, **args):
        self.trace.append({"prim": prim, "args": args})

    def _loop(self, name: str) -> For:
        loop = find_loop(self.func.body, name)
        if loop is None:
            raise ScheduleError(f"no loop named {name!r} in kernel {self.func.name}")
        return loop

    def _replace_loop(self, name: str, new: Stmt) -> None:
        self.func = self.func.with_body(
            map_stmt(self.func.body, lambda s: new if isinstance(s, For) and s.var.name == name else None))

    def loops(self) -> list[str]:
        return [s.var.name for s in walk_stmts(self.func.body) if isinstance(s, For)]

    # -- loop primitives -----------------------------------------------------------------
    def split(self, loop: str, factor: int, tail: str = "guard") -> tuple[str, str]:
        """``for v in N`` -> ``for v_o in ceil(N/f): for v_i in f``.

        When f does not divide N the last ``v_o`` runs past N. ``tail="guard"`` wraps the
        body in ``if (v < N)``; ``tail="clamp"`` runs it at ``v = min(v_o * f + v_i, N - 1)``
        instead: the extra iterations repeat the last one, with no test in the body (a
        register tile's rows stay unconditional; the repeats store the same values again).
        Clamping needs a body that can run twice for one ``v`` (``clamp_safe``)."""
        node = self._loop(loop)
        if factor < 1:
            raise ScheduleError(f"split factor must be >= 1, got {factor}")
        if tail not in ("guard", "clamp"):
            raise ScheduleError(f"split tail must be 'guard' or 'clamp', got {tail!r}")
        outer, inner = Var(f"{loop}_o"), Var(f"{loop}_i")
        value = outer * factor + inner
        extent = node.extent
        uneven = extent % factor if isinstance(extent, int) else factor != 1
        if tail == "clamp" and uneven:
            problem = clamp_problem(node)
            if problem:
                raise ScheduleError(f"cannot clamp the tail of loop {loop!r}: {problem}")
            last = Const(extent - 1, value.dtype) if isinstance(extent, int) else simplify(extent - 1)
            body = subst_stmt(node.body, {loop: Bin("min", value, last, value.dtype)})
        else:
            body = subst_stmt(node.body, {loop: value})
            if uneven:
                limit = Const(extent, value.dtype) if isinstance(extent, int) else extent
                body = If(simplify(value.lt(limit)), body)
        outer_extent = ceil_div(extent, factor) if isinstance(extent, int) else simplify((extent + (factor - 1)) // factor)
        new = For(outer, outer_extent, For(inner, factor, body, node.kind), SERIAL)
        self._replace_loop(loop, new)
        if tail == "clamp":
            self._record("split", loop=loop, factor=factor, tail=tail)
        else:
            self._record("split", loop=loop, factor=factor)
        return outer.name, inner.name

    def clamp_safe(self, loop: str) -> bool:
        """Whether ``split(loop, f, tail="clamp")`` may run an iteration of ``loop`` twice."""
        return not clamp_problem(self._loop(loop))

    def fuse(self, outer: str, inner: str) -> str:
        """Two directly nested loops become one of their combined extent."""
        o = self._loop(outer)
        if not isinstance(o.body, For) or o.body.var.name != inner:
            raise ScheduleError(f"fuse needs {inner!r} directly inside {outer!r}")
        i = o.body
        fused = Var(f"{outer}_{inner}_f")
        body = subst_stmt(i.body, {outer: fused // i.extent, inner: fused % i.extent})
        extent = o.extent * i.extent if isinstance(o.extent, int) and isinstance(i.extent, int) \
            else simplify(_as_index(o.extent) * i.extent)
        self._replace_loop(outer, For(fused, extent, body, o.kind))
        self._record("fuse", outer=outer, inner=inner)
        return fused.name

    def reorder(self, *order: str) -> None:
        """Permute loops that lie on one perfectly nested chain into the given order."""
        chain = self._perfect_chain(order)
        names = [c.var.name for c in chain]
        slots = [k for k, n in enumerate(names) if n in order]
        new_chain = list(chain)
        for slot, name in zip(slots, order):
            new_chain[slot] = chain[names.index(name)]
        body = chain[-1].body
        for loop in reversed(new_chain):
            body = For(loop.var, loop.extent, body, loop.kind)
        self._replace_loop(names[0], body)
        self._record("reorder", order=list(order))

    def _perfect_chain(self, order) -> list[For]:
        heads = [s for s in walk_stmts(self.func.body) if isinstance(s, For) and s.var.name in order]
        if len(heads) != len(order):
            missing = set(order) - {h.var.name for h in heads}
            raise ScheduleError(f"reorder: loops {sorted(missing)} not found")
        chain: list[For] = []
        cur: Stmt = heads[0]
        seen = 0
        while isinstance(cur, For):
            chain.append(cur)
            seen += cur.var.name in order
            if seen == len(order):
                return chain
            cur = cur.body
        raise ScheduleError(f"reorder: loops {list(order)} are not perfectly nested")

    def _set_kind(self, loop: str, kind: str) -> None:
        node = self._loop(loop)
        self._replace_loop(loop, replace(node, kind=kind))

    def parallel(self, loop: str) -> None:
        self._set_kind(loop, PARALLEL)
        self._record("parallel", loop=loop)

    def vectorize(self, loop: str) -> None:
        self._set_kind(loop, VECTORIZED)
        self._record("vectorize", loop=loop)

    def unroll(self, loop: str) -> None:
        self._set_kind(loop, UNROLLED)
        self._record("unroll", loop=loop)

    def expand(self, loop: str) -> None:
        """Unroll ``loop`` in the IR itself: one copy of its body per iteration with the
        variable replaced by its value, so selects on it resolve per copy (the cases of a
        Winograd transform become straight-line code). Expand nested loops inner first."""
        node = self._loop(loop)
        if not isinstance(node.extent, int) or not 1 <= node.extent <= MAX_EXPAND:
            raise ScheduleError(f"expand: loop {loop!r} has extent {node.extent}; expected a constant "
                                f"from 1 to {MAX_EXPAND}")
        copies = [map_exprs(node.body, lambda e, k=k: _specialize(e, loop, Const(k, node.var.dtype)))
                  for k in range(node.extent)]
        self._replace_loop(loop, seq(*copies))
        self._record("expand", loop=loop)

    def interleave_statements(self, loop: str) -> None:
        """Run the iterations of ``loop`` side by side, one top-level statement at a time:
        ``for r in F: {s1; s2}`` becomes ``s1[r=0] .. s1[r=F-1]; s2[r=0] .. s2[r=F-1]``, with
        the buffers and loops inside the body renamed per copy (``acc0`` -> ``acc0_r1``).

        For iterations that are independent (the rows of a row-wise kernel) and whose steps
        are short dependent chains: a softmax row of 128 floats waits on its max, then on its
        sum; F rows' copies of one step in a row keep the out-of-order core busy meanwhile."""
        node = self._loop(loop)
        if not isinstance(node.extent, int) or not 1 <= node.extent <= MAX_EXPAND:
            raise ScheduleError(f"interleave_statements: loop {loop!r} has extent {node.extent}; expected a constant "
                                f"from 1 to {MAX_EXPAND}")
        inner = [s for s in walk_stmts(node.body) if isinstance(s, (Alloc, For))]
        names = {s.buffer.name if isinstance(s, Alloc) else s.var.name for s in inner}

        def copy(s: Stmt, r: int) -> Stmt:
            value = Const(r, node.var.dtype)
            return _renamed(map_exprs(s, lambda e: _specialize(e, loop, value)), {n: f"{n}_r{r}" for n in names})

        def spread(s: Stmt) -> Stmt:
            if isinstance(s, Alloc):  # one allocation per copy, around the spread body
                body = spread(s.body)
                for r in reversed(range(node.extent)):
                    body = Alloc(replace(s.buffer, name=f"{s.buffer.name}_r{r}"), body)
                return body
            if isinstance(s, Seq):
                return seq(*(spread(x) for x in s.stmts))
            return seq(*(copy(s, r) for r in range(node.extent)))

        self._replace_loop(loop, spread(node.body))
        self._record("interleave_statements", loop=loop)

    def bind(self, loop: str, axis: str) -> None:
        """Run ``loop`` on a GPU axis (``gpu.block`` or ``gpu.thread``) instead of serially."""
        from kiln.ir.loop import GPU_LOOP_KINDS

        if axis not in GPU_LOOP_KINDS:
            raise ScheduleError(f"bind: unknown GPU axis {axis!r}; expected one of {', '.join(GPU_LOOP_KINDS)}")
        self._set_kind(loop, axis)
        self._record("bind", loop=loop, axis=axis)

    # -- producer/consumer primitives --------------------------------------------------------
    def _producer_nest(self, buffer: str) -> tuple[int, Stmt]:
        body = self.func.body
        items = body.stmts if isinstance(body, Seq) else (body,)
        hits = [(k, s) for k, s in enumerate(items)
                if any(isinstance(x, Store) and x.buffer == buffer for x in walk_stmts(s))]
        if len(hits) != 1:
            raise ScheduleError(f"buffer {buffer!r} must be written by exactly one top-level nest")
        return hits[0]

    def compute_inline(self, buffer: str) -> None:
        """Recompute ``buffer`` at each of its loads; its nest must be a pure map of loop vars."""
        k, nest = self._producer_nest(buffer)
        loops = []
        cur = nest
        while isinstance(cur, For):
            loops.append(cur.var)
            cur = cur.body
        if not (isinstance(cur, Store) and len(cur.indices) == len(loops) and all(
                isinstance(i, Var) and i.name == v.name for i, v in zip(cur.indices, loops))):
            raise ScheduleError(f"compute_inline: {buffer!r} is not a simple elementwise nest")
        value = cur.value
        if any(isinstance(x, Load) and x.buffer == buffer for x in walk(value)):
            raise ScheduleError(f"compute_inline: {buffer!r} reads itself")

        def sub(load: Load):
            if load.buffer != buffer:
                return None
            return substitute(value, {v.name: i for v, i in zip(loops, load.indices)})

        items = list(self.func.body.stmts if isinstance(self.func.body, Seq) else (self.func.body,))
        del items[k]
        body = map_exprs(seq(*items), lambda e: simplify(replace_loads(e, sub)))
        self.func = self.func.with_body(body)
        self._record("compute_inline", buffer=buffer)

    def compute_at(self, buffer: str, loop: str) -> None:
        """Move the nest producing ``buffer`` inside ``loop``, computing only the region read there."""
        k, nest = self._producer_nest(buffer)
        target = self._loop(loop)
        reads = [x for s in walk_stmts(target.body) for x in _stmt_loads(s) if x.buffer == buffer]
        if not reads:
            raise ScheduleError(f"compute_at: {buffer!r} is not read inside loop {loop!r}")
        inner = {s.var.name: s.extent for s in walk_stmts(target.body) if isinstance(s, For)}
        loops, inner_body = _nest_loops(nest)
        store = _result_store(inner_body, buffer)
        if store is None or len(loops) != len(store.indices) or any(
                not (isinstance(i, Var) and i.name == v.var.name) for i, v in zip(store.indices, loops)):
            raise ScheduleError(f"compute_at: {buffer!r} nest must store at its own loop variables")
        mapping, new_loops = {}, []
        for dim, lp in enumerate(loops):
            lo, ext = _region(reads, dim, inner, lp.extent)
            if ext == 1 and self._within(lo, lp.extent):
                mapping[lp.var.name] = simplify(lo)  # one index, always in range: no loop, no guard
                continue
            v = Var(f"{lp.var.name}_{loop}")
            mapping[lp.var.name] = simplify(lo + v)
            new_loops.append((v, ext, lp.extent, mapping[lp.var.name]))
        body = subst_stmt(_innermost_body(nest), mapping)
        for v, ext, full, pos in reversed(new_loops):
            body = If(simplify(pos.ge(0).land(pos.lt(full))), body) if ext < full else body
            body = For(v, ext, body)
        items = list(self.func.body.stmts if isinstance(self.func.body, Seq) else (self.func.body,))
        del items[k]
        self.func = self.func.with_body(seq(*items))
        target = self._loop(loop)
        self._replace_loop(loop, replace(target, body=seq(body, target.body)))
        self._record("compute_at", buffer=buffer, loop=loop)

    def _within(self, index: Expr, extent) -> bool:
        """True when ``index`` is a loop variable (or a constant) known to lie in [0, extent)."""
        if isinstance(index, Const):
            return isinstance(extent, int) and 0 <= int(index.value) < extent
        if not isinstance(index, Var):
            return False
        loop = next((s for s in walk_stmts(self.func.body) if isinstance(s, For) and s.var.name == index.name), None)
        if loop is None:
            return False
        return loop.extent == extent or (isinstance(loop.extent, int) and isinstance(extent, int)
                                         and loop.extent <= extent)

    def cache_write(self, buffer: str, loop: str) -> str:
        """Inside ``loop``, write ``buffer`` into a local tile, then copy the tile out."""
        target = self._loop(loop)
        inner = {s.var.name: s.extent for s in walk_stmts(target.body) if isinstance(s, For)}
        stores = [s for s in walk_stmts(target.body) if isinstance(s, Store) and s.buffer == buffer]
        if not stores:
            raise ScheduleError(f"cache_write: {buffer!r} is not written inside loop {loop!r}")
        accesses = [Load(buffer, s.indices, s.value.dtype) for s in stores]
        accesses += [x for s in walk_stmts(target.body) for x in _stmt_loads(s) if x.buffer == buffer]
        ndim = len(stores[0].indices)
        los, exts = [], []
        for d in range(ndim):
            lo, ext = _region(accesses, d, inner, None)
            los.append(lo)
            exts.append(ext)
        local = Buffer(f"{buffer}_local", tuple(exts), stores[0].value.dtype, "local")

        def rel(ix):
            return tuple(simplify(i - lo) for i, lo in zip(ix, los))

        def redirect(s: Stmt):
            if isinstance(s, Store) and s.buffer == buffer:
                return Store(local.name, rel(s.indices), _redirect_expr(s.value, buffer, local.name, rel))
            if isinstance(s, Store):
                return Store(s.buffer, s.indices, _redirect_expr(s.value, buffer, local.name, rel))
            return None

        body = map_stmt(target.body, redirect)
        copy = _tile_copy(local, buffer, los, f"{buffer}_wb", into_tile=False)
        self._replace_loop(loop, replace(target, body=Alloc(local, seq(body, copy))))
        self._record("cache_write", buffer=buffer, loop=loop)
        return local.name

    def cache_read(self, buffer: str, loop: str) -> str:
        """Inside ``loop``, first copy the region of ``buffer`` read there into a local tile,
        then read the tile instead (the region's extents must be constant: the indices
        affine in the loops inside ``loop``)."""
        target = self._loop(loop)
        inner = {s.var.name: s.extent for s in walk_stmts(target.body) if isinstance(s, For)}
        reads = [x for s in walk_stmts(target.body) for x in _stmt_loads(s) if x.buffer == buffer]
        if not reads:
            raise ScheduleError(f"cache_read: {buffer!r} is not read inside loop {loop!r}")
        ndim = len(reads[0].indices)
        los, exts = zip(*(_region(reads, d, inner, None) for d in range(ndim)))
        local = Buffer(f"{buffer}_tile", tuple(exts), reads[0].dtype, "local")

        def rel(ix):
            return tuple(simplify(i - lo) for i, lo in zip(ix, los))

        body = map_exprs(target.body, lambda e: _redirect_expr(e, buffer, local.name, rel))
        copy = _tile_copy(local, buffer, los, f"{buffer}_rd", into_tile=True)
        self._replace_loop(loop, replace(target, body=Alloc(local, seq(copy, body))))
        self._record("cache_read", buffer=buffer, loop=loop)
        return local.name

    def decompose_reduction(self, loop: str) -> None:
        """Give each iteration of the spatial loops from ``loop`` inward its own accumulator.

        ``for i: for j: {acc = init; for k: acc = f(acc, ..); out = g(acc)}`` becomes
        ``acc[i][j]; for i, j: acc = init; for k: for i, j: acc[i][j] = f(..); for i, j: out = g(acc)``
        -- the reduction loops move outside the tile so the tile stays in registers.
        """
        loops, inner = _nest_loops(self._loop(loop))
        if not isinstance(inner, Alloc) or inner.buffer.shape != ():
            raise ScheduleError(f"decompose_reduction: no scalar accumulator directly inside {loop!r}")
        parts = inner.body.stmts if isinstance(inner.body, Seq) else (inner.body,)
        if len(parts) < 3 or not isinstance(parts[0], Store) or not isinstance(parts[1], For):
            raise ScheduleError("decompose_reduction: expected init, reduction loop, epilogue")
        acc = inner.buffer
        tile = Buffer(acc.name, tuple(lp.extent for lp in loops), acc.dtype, "local")

        def with_tile(stmt: Stmt, suffix: str) -> Stmt:
            names = {lp.var.name: Var(lp.var.name + suffix) for lp in loops}
            idx = tuple(names[lp.var.name] for lp in loops)
            s = subst_stmt(stmt, dict(names)) if suffix else stmt
            s = _index_scalar(s, acc.name, idx)
            for lp in reversed(loops):
                s = For(names[lp.var.name], lp.extent, s, lp.kind)
            return s

        red_loops, update = _nest_loops(parts[1])
        main = with_tile(update, "")
        for rl in reversed(red_loops):
            main = For(rl.var, rl.extent, main, rl.kind)
        new = Alloc(tile, seq(with_tile(parts[0], "_init"), main, with_tile(seq(*parts[2:]), "_wb")))
        self._replace_loop(loop, new)
        self._record("decompose_reduction", loop=loop)

    # -- serialization -------------------------------------------------------------------
    def trace_json(self) -> str:
        return json.dumps(self.trace)

    @staticmethod
    def replay(func: Func, trace: list[dict[str, Any]] | str) -> "Schedule":
        if isinstance(trace, str):
            trace = json.loads(trace)
        sch = Schedule(func)
        for step in trace:
            prim = getattr(sch, step["prim"], None)
            if prim is None or step["prim"].startswith("_"):
                raise ScheduleError(f"unknown schedule primitive {step['prim']!r} in trace")
            args = step["args"]
            if step["prim"] == "reorder":
                prim(*args["order"])
            else:
                prim(**args)
        return sch


# -- helpers ------------------------------------------------------------------------------

def clamp_problem(loop: For) -> str | None:
    """Why an iteration of ``loop`` could not run a second time with the same result, or
    None: a buffer that the body both stores to and loads from (an accumulation into its
    output) would be updated twice. Buffers allocated inside the body are its own scratch,
    written afresh on every run."""
    local = {s.buffer.name for s in walk_stmts(loop.body) if isinstance(s, Alloc)}
    stored = {s.buffer for s in walk_stmts(loop.body) if isinstance(s, Store)} - local
    read = {ld.buffer for s in walk_stmts(loop.body) for e in stmt_exprs(s) for ld in walk(e) if isinstance(ld, Load)}
    both = sorted(stored & read)
    return f"its body reads {', '.join(both)}, which it also writes" if both else None


def _specialize(e: Expr, var: str, value: Const) -> Expr:
    """``e`` with ``var`` = ``value``, top down: a select whose condition becomes constant is
    replaced by the branch taken before that branch is visited, so a chain of n cases costs
    the case taken, not all n. Shared subexpressions are rewritten once."""
    memo: dict[int, Expr] = {}

    def go(x: Expr) -> Expr:
        key = id(x)
        if key in memo:
            return memo[key]
        if isinstance(x, Var):
            out = value if x.name == var else x
        elif isinstance(x, Select):
            cond = simplify_in_ranges(go(x.cond), {})  # (4*y_o + 2) % 4 == 2: true
            if isinstance(cond, Const):
                out = go(x.a if cond.value else x.b)
            else:
                out = Select(cond, go(x.a), go(x.b))
        else:
            out = map_children(x, go)
        memo[key] = out
        return out

    return simplify(go(e))


def _renamed(s: Stmt, names: dict[str, str]) -> Stmt:
    """``s`` with the buffers and loop variables in ``names`` renamed (stores, loads,
    allocations, loops and the variables' uses)."""
    loads = lambda ld: replace(ld, buffer=names[ld.buffer]) if ld.buffer in names else None  # noqa: E731
    uses = {n: Var(m) for n, m in names.items()}

    def go(x: Stmt):
        if isinstance(x, For) and x.var.name in names:
            return For(Var(names[x.var.name], x.var.dtype), x.extent, map_stmt(x.body, go), x.kind)
        if isinstance(x, Alloc) and x.buffer.name in names:
            return Alloc(replace(x.buffer, name=names[x.buffer.name]), map_stmt(x.body, go))
        if isinstance(x, Store):
            return Store(names.get(x.buffer, x.buffer), tuple(_rename_expr(i, loads, uses) for i in x.indices),
                         _rename_expr(x.value, loads, uses))
        if isinstance(x, If):
            return If(_rename_expr(x.cond, loads, uses), map_stmt(x.then, go))
        if not isinstance(x, (For, Alloc, Seq)):
            raise ScheduleError(f"interleave_statements: cannot rename inside a {type(x).__name__}")
        return None

    return map_stmt(s, go)


def _rename_expr(e: Expr, loads, uses: dict[str, Expr]) -> Expr:
    return substitute(replace_loads(e, loads), uses)


def _as_index(e) -> Expr:
    from kiln.ir.expr import idx

    return idx(e)


def _nest_loops(s: Stmt) -> tuple[list[For], Stmt]:
    loops = []
    while isinstance(s, For):
        loops.append(s)
        s = s.body
    return loops, s


def _result_store(s: Stmt, buffer: str) -> Store | None:
    """The store of ``buffer`` that ends a nest's body: the body itself, or the last store of
    a reduction's scoped accumulator (``alloc acc: init; for k: acc += ...; buffer[i] = acc``)."""
    if isinstance(s, Store):
        return s if s.buffer == buffer else None
    if isinstance(s, Alloc):
        return _result_store(s.body, buffer)
    if isinstance(s, Seq) and s.stmts:
        return _result_store(s.stmts[-1], buffer)
    return None


def _innermost_body(s: Stmt) -> Stmt:
    return _nest_loops(s)[1]


def _stmt_loads(s: Stmt):
    exprs = []
    if isinstance(s, Store):
        exprs = list(s.indices) + [s.value]
    elif isinstance(s, If):
        exprs = [s.cond]
    for e in exprs:
        yield from (x for x in walk(e) if isinstance(x, Load))


def _region(accesses, dim: int, inner: dict[str, int], full: int | None):
    """Lowest index (an expression of outer loops) and constant extent of dimension ``dim``
    over all accesses, as the inner loop variables range over their extents."""
    lo_terms, exts = [], []
    for a in accesses:
        coeffs = affine_coeffs(simplify(a.indices[dim]))
        if coeffs is None:
            raise ScheduleError(f"region of {a.buffer} dim {dim}: index {a.indices[dim]} is not affine")
        span = 0
        base: Expr = Const(coeffs.get("", 0), a.indices[dim].dtype)
        for v, c in coeffs.items():
            if v == "":
                continue
            if v in inner:
                if c < 0:
                    raise ScheduleError("region analysis needs non-negative coefficients of inner loops")
                span += c * (inner[v] - 1)
            else:
                base = base + Var(v) * c
        lo_terms.append(simplify(base))
        exts.append(span + 1)
    if any(t != lo_terms[0] for t in lo_terms):
        if full is None:
            raise ScheduleError("accesses start at different offsets; cannot size one tile")
        return Const(0, lo_terms[0].dtype), full
    return lo_terms[0], max(exts)


def _tile_copy(local: Buffer, buffer: str, los, prefix: str, into_tile: bool) -> Stmt:
    """The loop nest copying ``buffer``'s region starting at ``los`` into the tile ``local``
    (``into_tile``: cache_read) or the tile back out (cache_write)."""
    vs = [Var(f"{prefix}{d}") for d in range(len(local.shape))]
    tile_ix, buf_ix = tuple(vs), tuple(simplify(lo + v) for lo, v in zip(los, vs))
    copy: Stmt = (Store(local.name, tile_ix, Load(buffer, buf_ix, local.dtype)) if into_tile
                  else Store(buffer, buf_ix, Load(local.name, tile_ix, local.dtype)))
    for v, e in reversed(list(zip(vs, local.shape))):
        copy = For(v, e, copy)
    return copy


def _redirect_expr(e: Expr, buffer: str, local: str, rel) -> Expr:
    return replace_loads(e, lambda ld: Load(local, rel(ld.indices), ld.dtype) if ld.buffer == buffer else None)


def _index_scalar(s: Stmt, name: str, idx: tuple[Expr, ...]) -> Stmt:
    """Rewrite scalar accesses ``name[]`` into ``name[idx]``."""
    def fix(e: Expr) -> Expr:
        return replace_loads(e, lambda ld: Load(name, idx, ld.dtype) if ld.buffer == name and not ld.indices else None)

    def go(x: Stmt):
        if isinstance(x, Store):
            ix = idx if x.buffer == name and not x.indices else tuple(fix(i) for i in x.indices)
            return Store(x.buffer, ix, fix(x.value))
        if isinstance(x, If):
            return If(fix(x.cond), map_stmt(x.then, go))
        return None

    return map_stmt(s, go)


__all__ = ["Schedule", "PARALLEL", "VECTORIZED", "UNROLLED", "SERIAL"]
