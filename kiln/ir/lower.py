"""Tensor IR -> loop IR.

``inline_stages`` substitutes producers into consumers (compute_inline at the tensor
level); ``lower_stage`` turns one stage into a loop nest. A Reduce inside a stage body
becomes a local accumulator:

    for i, j:                      # spatial axes
      alloc acc: float32[] (local)
      acc = init
      for k: acc = acc + body      # reduction axes
      out[i, j] = epilogue(acc)    # the expression around the Reduce

and an Iterate a local state refined in a loop of its own:

      alloc state: int32[] (local)
      state = init
      for s < count: state = step(state)
"""
from __future__ import annotations

from typing import Sequence

from kiln.ir.compute import Stage, reduce_init
from kiln.ir.expr import (Bin, Const, Expr, Iterate, Load, Reduce, Var, fresh, map_children, replace_loads,
                          simplify, substitute, walk)
from kiln.ir.loop import Alloc, Buffer, For, Store, Stmt, seq

_COMBINE = {"sum": "add", "prod": "mul", "max": "max", "min": "min"}


def _replace_node(e: Expr, target: Expr, new: Expr) -> Expr:
    """Replace every occurrence of ``target`` (structurally equal: one reduction read twice,
    as in ``x < 0 ? 0 : x``, is computed once)."""
    def go(x):
        if x == target:
            return new
        return map_children(x, go)
    return go(e)


def _first_loop(e: Expr, kinds=(Reduce, Iterate)) -> Reduce | Iterate | None:
    """The outermost Reduce or Iterate (parents first: a Reduce inside an Iterate's step
    depends on the state, so it is lowered inside the step's loop, not hoisted out)."""
    for x in walk(e):
        if isinstance(x, kinds):
            return x
    return None


def lower_store(buffer: str, indices: Sequence[Expr], value: Expr) -> Stmt:
    """``buffer[indices] = value`` with every Reduce hoisted into an accumulator loop and
    every Iterate into a state refined in a loop."""
    red = _first_loop(value)
    if red is None:
        return Store(buffer, tuple(indices), simplify(value))
    if isinstance(red, Iterate):
        return _lower_iterate(buffer, indices, value, red)
    acc = Buffer(fresh("acc"), (), red.dtype, "local")
    acc_load = Load(acc.name, (), red.dtype)
    init = Store(acc.name, (), Const(reduce_init(red.op, red.dtype), red.dtype))
    update: Stmt = lower_store(acc.name, (), Bin(_COMBINE[red.op], acc_load, red.body, red.dtype))
    for var, extent in reversed(red.axes):
        update = For(var, extent, update)
    rest = lower_store(buffer, indices, _replace_node(value, red, acc_load))
    return Alloc(acc, seq(init, update, rest))


def _lower_iterate(buffer: str, indices: Sequence[Expr], value: Expr, it: Iterate) -> Stmt:
    state = Buffer(fresh("state"), (), it.dtype, "local")
    now = {it.state.name: Load(state.name, (), it.dtype)}
    init = lower_store(state.name, (), it.init)
    refine = lower_store(state.name, (), substitute(it.step, now))
    rest = lower_store(buffer, indices, _replace_node(value, it, now[it.state.name]))
    return Alloc(state, seq(init, For(Var(fresh("step")), it.count, refine), rest))


def lower_stage(stage: Stage) -> Stmt:
    """A loop nest over ``stage.shape``; a region write (hint ``store_offset``, from
    ``insert_slice``) stores into the box of a larger tensor at that offset."""
    at = stage.hints.get("store_offset")
    indices = stage.axes if not at else tuple(a if c == 0 else a + c for a, c in zip(stage.axes, at))
    body = lower_store(stage.name, indices, stage.body)
    for var, extent in reversed(list(zip(stage.axes, stage.shape))):
        body = For(var, extent, body)
    return body


def _has_reduce(e: Expr) -> bool:
    return _first_loop(e, Reduce) is not None


def _load_is_identity(load: Load, axes: Sequence[Var], shape: Sequence = ()) -> bool:
    """The load reads element ``axes`` (a 0 on an extent-1 dim counts: broadcasting writes it)."""
    if len(load.indices) != len(axes):
        return False
    for k, (i, a) in enumerate(zip(load.indices, axes)):
        if isinstance(i, Var) and i.name == a.name:
            continue
        if isinstance(i, Const) and i.value == 0 and k < len(shape) and shape[k] == 1:
            continue
        return False
    return True


def inline_stages(stages: Sequence[Stage], keep: set[str]) -> list[Stage]:
    """Inline every stage not in ``keep`` into its consumers where that is free of cost.

    - stages without reductions (``inline=True``) are substituted at each load;
    - a stage with a reduction is substituted only into a single elementwise consumer
      that reads it at its own index (epilogue fusion: bias, activation, residual add).
    Stages that cannot be inlined stay, in order, and need storage of their own.
    """
    stages = list(stages)
    changed = True
    while changed:
        changed = False
        for s in stages:
            if s.name in keep or not s.inline:
                continue
            users = [(j, u) for j, u in enumerate(stages)
                     if any(isinstance(x, Load) and x.buffer == s.name for x in walk(u.body))]
            if not users:
                continue
            if _has_reduce(s.body):
                if len(users) != 1:
                    continue
                j, u = users[0]
                uses = [x for x in walk(u.body) if isinstance(x, Load) and x.buffer == s.name]
                if (_has_reduce(u.body) or u.shape != s.shape
                        or not all(_load_is_identity(x, u.axes, u.shape) for x in uses)):
                    continue
            for j, u in users:
                stages[j] = _inline_into(u, s)
            stages.remove(s)
            changed = True
            break
    return stages


def _inline_into(consumer: Stage, producer: Stage) -> Stage:
    from dataclasses import replace

    renamed = _rename_reduce_vars(producer.body)  # one copy: equal loads become equal reductions

    def sub(load: Load):
        if load.buffer != producer.name:
            return None
        return substitute(renamed, {a.name: i for a, i in zip(producer.axes, load.indices)})

    body = replace_loads(consumer.body, sub)
    # The consumer inherits the producer's pattern when it absorbs a reduction (epilogue),
    # or a stage whose loops must be arranged its own way (a Winograd output transform).
    own_loops = producer.tag == "winograd" and consumer.shape == producer.shape
    if (_has_reduce(producer.body) or own_loops) and not _has_reduce(consumer.body):
        return replace(consumer, body=body, tag=producer.tag, hints=producer.hints)
    return replace(consumer, body=body)


def _rename_reduce_vars(e: Expr) -> Expr:
    """Fresh names for reduction variables, so two inlined copies never share a loop name."""
    mapping = {}
    for x in walk(e):
        if isinstance(x, Reduce):
            for v, _ in x.axes:
                mapping.setdefault(v.name, Var(fresh("r")))
    if not mapping:
        return e

    def go(x):
        if isinstance(x, Reduce):
            return Reduce(x.op, go(x.body), tuple((mapping[v.name], n) for v, n in x.axes))
        if isinstance(x, Var) and x.name in mapping:
            return mapping[x.name]
        return map_children(x, go)

    return go(e)
