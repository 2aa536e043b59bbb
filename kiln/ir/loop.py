"""Loop IR: loop nests over buffers, the level schedules transform and renderers print.

A kernel is a ``Func`` over parameter buffers. Statements are immutable:
``For`` (with a kind: serial, parallel, vectorized, unrolled, or later a GPU axis),
``Seq``, ``Store``, ``Alloc`` (a scoped buffer: local registers or kernel scratch) and
``If``; on GPU targets also ``Barrier``, ``SubgroupReduce`` and ``VectorLoad``. Indices
are multi-dimensional; the renderer flattens them row-major.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Iterator

from kiln.ir.dtype import DType
from kiln.ir.expr import Expr, Var, map_children, simplify, substitute

SERIAL, PARALLEL, VECTORIZED, UNROLLED = "serial", "parallel", "vectorized", "unrolled"
LOOP_KINDS = (SERIAL, PARALLEL, VECTORIZED, UNROLLED)
# GPU axes (kiln/passes/gpu_schedule.py): a loop bound to the workgroup index or to the
# invocation index inside a workgroup runs once per workgroup / invocation, not serially.
GPU_BLOCK, GPU_THREAD = "gpu.block", "gpu.thread"
GPU_LOOP_KINDS = (GPU_BLOCK, GPU_THREAD)


@dataclass(frozen=True, slots=True)
class Buffer:
    name: str
    shape: tuple[int, ...]
    dtype: DType
    scope: str = "global"  # global (a kernel parameter) | local (registers / stack) | shared (GPU workgroup)
    # A parameter whose storage holds 0 outside a box: per dim the box's [start, stop), or
    # None where it spans the dim (a convolution's input stored with its zero padding,
    # kiln/passes/padded_storage.py). Passes and renderers may skip reading those zeros
    # (kiln/passes/skip_border_taps.py); nothing else depends on it.
    zero_outside: tuple[tuple[int, int] | None, ...] | None = None


class Stmt:
    __slots__ = ()


@dataclass(frozen=True, slots=True)
class For(Stmt):
    var: Var
    extent: int
    body: Stmt
    kind: str = SERIAL


@dataclass(frozen=True, slots=True)
class Seq(Stmt):
    stmts: tuple[Stmt, ...]


@dataclass(frozen=True, slots=True)
class Store(Stmt):
    buffer: str
    indices: tuple[Expr, ...]
    value: Expr


@dataclass(frozen=True, slots=True)
class Alloc(Stmt):
    buffer: Buffer
    body: Stmt


@dataclass(frozen=True, slots=True)
class If(Stmt):
    cond: Expr
    then: Stmt


@dataclass(frozen=True, slots=True)
class Barrier(Stmt):
    """Every invocation of a GPU workgroup waits here until all have arrived, and their
    writes to ``shared`` (workgroup) buffers are visible. Only inside a ``gpu.thread`` loop."""


@dataclass(frozen=True, slots=True)
class SubgroupReduce(Stmt):
    """``dst`` (a local scalar) = ``op`` (add, mul, max, min) of ``value`` over the invocations
    of this invocation's GPU subgroup; every invocation of the subgroup gets the result. Only
    in uniform control flow inside a ``gpu.thread`` loop, on targets with subgroups (WGSL's
    ``subgroupAdd`` family, ``webgpu:+subgroups``). Which invocations form a subgroup is up to
    the device: code around it reads :data:`SUBGROUP_LANE` and :data:`SUBGROUP_SIZE` rather
    than assuming consecutive invocation ids."""

    dst: str
    op: str
    value: Expr


@dataclass(frozen=True, slots=True)
class VectorLoad(Stmt):
    """Four neighbouring float32 elements of the global buffer ``src``, from flat (row-major)
    element index ``flat`` on, into the slots ``dst_indices`` (four index tuples) of the local
    or shared buffer ``dst``. ``flat`` is a multiple of 4 and the buffer starts 16-byte
    aligned, so a target with vector loads reads them at once (WGSL ``vec4<u32>``); others
    print four scalar loads. Made by :mod:`kiln.passes.gpu_tiling` where it has proved both."""

    src: str
    flat: Expr
    dst: str
    dst_indices: tuple[tuple[Expr, ...], ...]


# the invocation's index inside its subgroup and the subgroup's size (``i32`` variables the
# WGSL renderer binds to the ``subgroup_invocation_id`` / ``subgroup_size`` built-ins)
SUBGROUP_LANE, SUBGROUP_SIZE = "sg_lane", "sg_size"


@dataclass(frozen=True, slots=True)
class Func:
    name: str
    params: tuple[Buffer, ...]
    body: Stmt

    def with_body(self, body: Stmt) -> "Func":
        return replace(self, body=body)


def seq(*stmts: Stmt) -> Stmt:
    flat: list[Stmt] = []
    for s in stmts:
        if isinstance(s, Seq):
            flat.extend(s.stmts)
        elif s is not None:
            flat.append(s)
    return flat[0] if len(flat) == 1 else Seq(tuple(flat))


# -- traversal --------------------------------------------------------------------------

def stmt_children(s: Stmt) -> tuple[Stmt, ...]:
    if isinstance(s, (For, Alloc)):
        return (s.body,)
    if isinstance(s, If):
        return (s.then,)
    if isinstance(s, Seq):
        return s.stmts
    return ()


def stmt_exprs(s: Stmt) -> tuple[Expr, ...]:
    """The expressions a statement holds itself (not those of the statements inside it)."""
    if isinstance(s, Store):
        return (*s.indices, s.value)
    if isinstance(s, If):
        return (s.cond,)
    if isinstance(s, SubgroupReduce):
        return (s.value,)
    if isinstance(s, VectorLoad):
        return (s.flat, *(i for ix in s.dst_indices for i in ix))
    return ()


def walk_stmts(s: Stmt) -> Iterator[Stmt]:
    stack = [s]
    while stack:
        x = stack.pop()
        yield x
        stack.extend(reversed(stmt_children(x)))


def map_stmt(s: Stmt, f: Callable[[Stmt], Stmt | None]) -> Stmt:
    """Top-down rewrite: ``f`` returns a replacement (not revisited) or None to recurse."""
    r = f(s)
    if r is not None:
        return r
    if isinstance(s, For):
        return replace(s, body=map_stmt(s.body, f))
    if isinstance(s, Alloc):
        return replace(s, body=map_stmt(s.body, f))
    if isinstance(s, If):
        return replace(s, then=map_stmt(s.then, f))
    if isinstance(s, Seq):
        return seq(*(map_stmt(x, f) for x in s.stmts))
    return s


def map_exprs(s: Stmt, f: Callable[[Expr], Expr]) -> Stmt:
    """Apply ``f`` to every top-level expression in the statement tree."""
    def go(x: Stmt):
        if isinstance(x, Store):
            return Store(x.buffer, tuple(f(i) for i in x.indices), f(x.value))
        if isinstance(x, If):
            return If(f(x.cond), map_stmt(x.then, go))
        if isinstance(x, SubgroupReduce):
            return SubgroupReduce(x.dst, x.op, f(x.value))
        if isinstance(x, VectorLoad):
            return VectorLoad(x.src, f(x.flat), x.dst, tuple(tuple(f(i) for i in ix) for ix in x.dst_indices))
        return None
    return map_stmt(s, go)


def subst_stmt(s: Stmt, mapping: dict[str, Expr]) -> Stmt:
    # one memo per statement: subexpressions shared between stores are rewritten once
    subst_memo, simplify_memo = {}, {}
    return map_exprs(s, lambda e: simplify(substitute(e, mapping, subst_memo), simplify_memo))


def find_loop(s: Stmt, name: str) -> For | None:
    for x in walk_stmts(s):
        if isinstance(x, For) and x.var.name == name:
            return x
    return None


def loop_names(s: Stmt) -> list[str]:
    return [x.var.name for x in walk_stmts(s) if isinstance(x, For)]


# -- text form --------------------------------------------------------------------------

def format_stmt(s: Stmt, indent: int = 0) -> str:
    pad = "  " * indent
    if isinstance(s, For):
        kind = "" if s.kind == SERIAL else f" [{s.kind}]"
        return f"{pad}for {s.var.name} in 0..{s.extent}{kind}:\n" + format_stmt(s.body, indent + 1)
    if isinstance(s, Seq):
        return "\n".join(format_stmt(x, indent) for x in s.stmts)
    if isinstance(s, Store):
        return f"{pad}{s.buffer}[{', '.join(map(str, s.indices))}] = {s.value}"
    if isinstance(s, Alloc):
        b = s.buffer
        return f"{pad}alloc {b.name}: {b.dtype}{list(b.shape)} ({b.scope})\n" + format_stmt(s.body, indent)
    if isinstance(s, If):
        return f"{pad}if {s.cond}:\n" + format_stmt(s.then, indent + 1)
    if isinstance(s, Barrier):
        return f"{pad}barrier"
    if isinstance(s, SubgroupReduce):
        return f"{pad}{s.dst} = subgroup_{s.op}({s.value})"
    if isinstance(s, VectorLoad):
        dst = ", ".join(f"{s.dst}[{', '.join(map(str, ix))}]" for ix in s.dst_indices)
        return f"{pad}{dst} = vec4 {s.src}[flat {s.flat} ..+4]"
    return f"{pad}<{type(s).__name__}>"


def format_func(f: Func) -> str:
    params = ", ".join(f"{b.name}: {b.dtype}{list(b.shape)}" for b in f.params)
    return f"func {f.name}({params}):\n" + format_stmt(f.body, 1)


__all__ = [
    "Buffer", "Stmt", "For", "Seq", "Store", "Alloc", "If", "Barrier", "SubgroupReduce", "VectorLoad", "SUBGROUP_LANE",
    "SUBGROUP_SIZE", "Func", "seq", "walk_stmts", "stmt_exprs", "map_stmt",
    "map_exprs", "subst_stmt", "find_loop", "loop_names", "format_stmt", "format_func",
    "SERIAL", "PARALLEL", "VECTORIZED", "UNROLLED", "LOOP_KINDS", "map_children",
    "GPU_BLOCK", "GPU_THREAD", "GPU_LOOP_KINDS",
]


def canonicalize(func: Func) -> Func:
    """Rename loop variables (``i0, i1, ...``) and local buffers (``acc0 ...``) by position,
    so that the same kernel lowered twice is structurally equal and traces replay."""
    from kiln.ir.expr import Load, replace_loads

    names: dict[str, Var] = {}
    bufs: dict[str, str] = {}
    for s in walk_stmts(func.body):
        if isinstance(s, For) and s.var.name not in names:
            names[s.var.name] = Var(f"i{len(names)}", s.var.dtype)
        if isinstance(s, Alloc) and s.buffer.scope == "local":
            bufs.setdefault(s.buffer.name, f"acc{len(bufs)}")

    def fix_expr(e: Expr) -> Expr:
        e = substitute(e, names)
        return replace_loads(e, lambda ld: Load(bufs[ld.buffer], ld.indices, ld.dtype) if ld.buffer in bufs else None)

    def go(s: Stmt):
        if isinstance(s, For):
            return For(names[s.var.name], s.extent, map_stmt(s.body, go), s.kind)
        if isinstance(s, Alloc) and s.buffer.name in bufs:
            return Alloc(replace(s.buffer, name=bufs[s.buffer.name]), map_stmt(s.body, go))
        if isinstance(s, Store):
            return Store(bufs.get(s.buffer, s.buffer), tuple(fix_expr(i) for i in s.indices), fix_expr(s.value))
        if isinstance(s, If):
            return If(fix_expr(s.cond), map_stmt(s.then, go))
        return None

    return func.with_body(map_stmt(func.body, go))
