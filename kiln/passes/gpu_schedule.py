"""GPU schedules: bind each kernel's loop nests to workgroups and invocations.

A fused kernel lowers to one loop nest per stage (the padded input of a convolution, the row
maxima of a softmax, the output). On a GPU the stages need a device-wide barrier between
them, so each nest becomes its own *dispatch*: an entry point launched with its own grid.

Rule (the default for every nest): the nest's spatial loops -- one per output dimension --
are fused into one flat index, split by the workgroup size, and the two halves bound to the
workgroup index (``gpu.block``) and the invocation index (``gpu.thread``). Each invocation
computes one output element; its reduction loops run serially in registers. ``split`` adds
the bounds guard when the workgroup size does not divide the element count, so no
invocation reads or writes past a tensor.

Matmul and convolution nests (stages with a ``tile`` hint) take a second rule,
:func:`kiln.passes.gpu_tiling.tile_gemm`, when their shapes allow it: an invocation then
computes a small register tile and the workgroup stages operand tiles in workgroup memory.
Other reductions with few outputs and long rows (softmax, layer norm, global pooling)
take :func:`kiln.passes.gpu_rows.reduce_rows`: one workgroup per output, the row split
across its invocations and combined through workgroup memory.

Everything goes through :class:`~kiln.ir.schedule.Schedule` primitives, so a GPU schedule
is a replayable trace like a CPU one.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from kiln.errors import ScheduleError
from kiln.ir.compute import Stage
from kiln.ir.dtype import INDEX
from kiln.ir.expr import Const, Var, eval_const, substitute
from kiln.ir.loop import GPU_BLOCK, GPU_THREAD, For, Func, Seq, Stmt
from kiln.ir.schedule import Schedule
from kiln.passes.simplify_loops import simplify_loop_indices

WORKGROUP_SIZE = 64  # invocations per workgroup: two warps / wavefronts, and lavapipe's sweet spot
MAX_WORKGROUPS_X = 65535  # WebGPU's maxComputeWorkgroupsPerDimension default


@dataclass
class Dispatch:
    """One entry point: ``func`` with its GPU loops bound, launched on ``workgroups`` groups."""

    name: str
    func: Func
    workgroups: int                 # total workgroups (laid out as x, y by grid())
    workgroup_size: int             # invocations per workgroup
    trace: list = field(default_factory=list)
    shared_bytes: int = 0           # workgroup memory the entry point declares

    def grid(self) -> tuple[int, int, int]:
        """(x, y, 1) workgroup counts: y only when x would pass the per-dimension limit; a nest
        with no elements (an empty slice) dispatches no workgroup."""
        if self.workgroups == 0:
            return (0, 1, 1)
        x = min(self.workgroups, MAX_WORKGROUPS_X)
        y = -(-self.workgroups // x)
        return (x, y, 1)


def _nests(func: Func) -> list[Stmt]:
    return list(func.body.stmts) if isinstance(func.body, Seq) else [func.body]


def _spatial(nest: Stmt, rank: int) -> list[For]:
    loops = []
    cur = nest
    while isinstance(cur, For) and len(loops) < rank:
        loops.append(cur)
        cur = cur.body
    return loops


def schedule_dispatches(func: Func, stages: list[Stage], *, tiling: bool = True,
                        workgroup_size: int = WORKGROUP_SIZE, bounds=None, subgroups: bool = False) -> list[Dispatch]:
    """The dispatches of one kernel (its unscheduled loop IR and its stages), in order.
    ``subgroups``: the row rule combines partials with subgroup operations.

    ``bounds`` (symbol -> (lo, hi)) sizes the grid of a nest with dynamic extents: it is
    launched for the upper bounds and its workgroups past the actual extent return at once."""
    nests = _nests(func)
    if len(nests) != len(stages):
        raise ScheduleError(f"{func.name}: {len(nests)} loop nests for {len(stages)} stages")
    out = []
    for k, (nest, stage) in enumerate(zip(nests, stages)):
        name = f"{func.name}_{k}" if len(nests) > 1 else func.name
        sub = Func(name, func.params, nest)
        dispatch = None
        if tiling and stage.has_reduce and "tile" in stage.hints:
            from kiln.passes.gpu_tiling import tile_gemm

            dispatch = tile_gemm(sub, stage)
        if tiling and dispatch is None and stage.has_reduce:
            from kiln.passes.gpu_rows import reduce_rows

            dispatch = reduce_rows(sub, len(stage.shape), subgroups)
        out.append(dispatch or bind_elementwise(sub, len(stage.shape), workgroup_size, bounds))
    return out


def upper_extent(extent, bounds) -> int:
    """An extent at the upper bounds of its dim symbols."""
    if isinstance(extent, int):
        return extent
    hi = {k: Const(v[1], INDEX) for k, v in (bounds or {}).items()}
    value = eval_const(substitute(extent, hi))
    if value is None:
        raise ScheduleError(f"extent {extent} has symbols without bounds ({sorted(hi)} are bounded)")
    return int(value)


def bind_elementwise(func: Func, rank: int, workgroup_size: int = WORKGROUP_SIZE, bounds=None) -> Dispatch:
    """One invocation per output element: fuse the spatial loops, split, bind."""
    loops = _spatial(func.body, rank)
    if len(loops) != rank:
        raise ScheduleError(f"{func.name}: expected {rank} spatial loops, found {len(loops)}")
    if not loops:  # a scalar result: one invocation
        func = func.with_body(For(Var("s0"), 1, func.body))
        loops = [func.body]
    sch = Schedule(func)
    fused = loops[0].var.name
    for lp in loops[1:]:
        fused = sch.fuse(fused, lp.var.name)
    total = 1
    for lp in loops:
        total *= upper_extent(lp.extent, bounds)
    size = max(1, min(workgroup_size, total))  # an empty tensor: one-wide workgroups, none launched
    outer, inner = sch.split(fused, size)
    sch.bind(outer, GPU_BLOCK)
    sch.bind(inner, GPU_THREAD)
    return Dispatch(func.name, simplify_loop_indices(sch.func), -(-total // size), size, sch.trace)


__all__ = ["Dispatch", "WORKGROUP_SIZE", "MAX_WORKGROUPS_X", "bind_elementwise", "schedule_dispatches"]
