"""GPU rule for reductions with few outputs and long rows: one workgroup per output.

The default GPU rule gives each output element one invocation that runs the reduction
serially. That suits many outputs with short reductions, but a layer norm's 128 row means
over 768 elements are 128 invocations -- two workgroups on a GPU of a hundred compute
units -- each reading its row alone. A nest of the form (``scalar_reduction`` in
:mod:`kiln.passes.gpu_schedule_cuda`, the same view the CUDA target's ``rows`` plan uses)::

    for <spatial loops>:
      acc = init
      for <reduction loops>: acc = op(acc, value)      # op: add, mul, max, min
      <epilogue stores reading acc>

becomes one workgroup of ``THREADS`` invocations per output element: invocation ``t`` folds
the elements ``t, t + THREADS, ...`` of the flattened reduction (consecutive invocations read
consecutive elements), writes its partial into workgroup memory, and a tree of
``log2(THREADS)`` halving steps, with a barrier before each, combines the partials;
invocation 0 then folds in ``init`` and runs the epilogue. Barriers sit in uniform control flow: the tree
is unrolled and the fold loop has a constant trip count (its out-of-range steps are guarded
inside the loop). The reduction is reassociated: float sums may differ from the serial order
in the last bits.

With subgroups (``webgpu:+subgroups``) the tree becomes two subgroup reductions around one
barrier (:func:`_subgroup_combine`).

It applies to nests whose reduction has at least ``MIN_REDUCTION`` elements when the nest has
fewer than ``MAX_OUTPUTS`` outputs (otherwise one invocation per output already fills the
GPU) or a reduction of at least ``LONG_REDUCTION`` elements; static extents only.
"""
from __future__ import annotations

from dataclasses import dataclass

from kiln.ir.dtype import DType
from kiln.ir.expr import Bin, Const, Expr, Load, Select, Var, idx, simplify, substitute
from kiln.ir.loop import (GPU_BLOCK, GPU_THREAD, SUBGROUP_LANE, SUBGROUP_SIZE, Alloc, Barrier, Buffer, For, Func,
                          If, Store, SubgroupReduce, seq, subst_stmt)
from kiln.passes.gpu_schedule_cuda import REDUCE_IDENTITY, extent_product, peel_loops, scalar_reduction

THREADS = 64
MIN_REDUCTION = 64
MAX_OUTPUTS = 8192
LONG_REDUCTION = 2048
MIN_SUBGROUP = 4  # WebGPU's smallest subgroup size (subgroupMinSize is at least 4)


def _identity(op: str, dtype: DType) -> Const:
    value = REDUCE_IDENTITY[op]
    if not dtype.is_float and value in (float("inf"), float("-inf")):
        value = (1 << 63) - 1 if value > 0 else -(1 << 63)  # the renderer saturates to its integer type
    return Const(value if dtype.is_float else int(value), dtype)


def _decompose(flat: Expr, loops) -> dict[str, Expr]:
    """Row-major indices of ``flat`` (below the product of the extents) over ``loops``
    ((var, extent) pairs): the outermost index needs no modulo."""
    out, rest = {}, flat
    for i, (var, extent) in enumerate(reversed(loops)):
        out[var.name] = rest if i == len(loops) - 1 else rest % extent
        rest = rest // extent
    return out


@dataclass(frozen=True)
class _Combine:
    kind: str            # "tree" | "subgroup"
    stmts: tuple         # run by every invocation after its fold, in uniform control flow
    total: Expr          # the combined partials, valid in invocation 0 after ``stmts``
    locals: tuple = ()   # registers ``stmts`` and ``total`` use


def _tree_combine(r, part: Buffer, tid: Var) -> _Combine:
    """Partials through workgroup memory: ``log2(THREADS)`` halving steps behind barriers."""
    stmts = [Store(part.name, (tid,), Load(r.acc, (), r.dtype)), Barrier()]
    half = THREADS // 2
    while half >= 1:
        mine, theirs = Load(part.name, (tid,), r.dtype), Load(part.name, (tid + half,), r.dtype)
        stmts.append(If(tid.lt(idx(half)), Store(part.name, (tid,), Bin(r.op, mine, theirs, r.dtype))))
        if half > 1:  # the last step's result is read by the invocation that wrote it
            stmts.append(Barrier())
        half //= 2
    return _Combine("tree", tuple(stmts), Load(part.name, (idx(0),), r.dtype))


def _subgroup_combine(r, part: Buffer, tid: Var) -> _Combine:
    """Partials through subgroup operations, with one barrier: each subgroup combines its
    invocations' partials (``SubgroupReduce``) and its lane 0 leaves the result in its own
    slot of workgroup memory (the other slots hold the identity); after the barrier every
    subgroup folds the ``THREADS`` slots, ``THREADS / subgroup size`` per lane, and combines
    again. Nothing assumes which invocations share a subgroup (WGSL does not say), only that
    its size is a power of two of at least ``MIN_SUBGROUP`` (WebGPU's minimum)."""
    lane, size = Var(SUBGROUP_LANE), Var(SUBGROUP_SIZE)
    identity = _identity(r.op, r.dtype)
    sub = Load(r.acc + "_sg", (), r.dtype)
    slot = Var("slot")
    at = slot * size + lane
    stmts = (
        SubgroupReduce(sub.buffer, r.op, Load(r.acc, (), r.dtype)),
        Store(part.name, (tid,), Select(Bin("eq", lane, idx(0), DType.bool), sub, identity)),
        Barrier(),
        Store(r.acc, (), identity),
        For(slot, THREADS // MIN_SUBGROUP, If(at.lt(idx(THREADS)), Store(
            r.acc, (), Bin(r.op, Load(r.acc, (), r.dtype), Load(part.name, (at,), r.dtype), r.dtype)))),
        SubgroupReduce(sub.buffer, r.op, Load(r.acc, (), r.dtype)),
    )
    return _Combine("subgroup", stmts, sub, (Buffer(sub.buffer, (), r.dtype, "local"),))


def reduce_rows(func: Func, rank: int, subgroups: bool = False):
    """The cooperative dispatch of ``func`` (one reduction nest), or None when the rule does not apply.
    ``subgroups``: combine the partials with subgroup operations (:func:`_subgroup_combine`)."""
    from kiln.passes.gpu_schedule import Dispatch

    spatial, inner = peel_loops(func.body, rank)
    if len(spatial) != rank:
        return None
    r = scalar_reduction(inner)
    if r is None or any(not isinstance(e, int) for _, e in spatial + r.loops):
        return None
    outputs, k_total = extent_product(spatial), extent_product(r.loops)
    if k_total < MIN_REDUCTION or (outputs >= MAX_OUTPUTS and k_total < LONG_REDUCTION):
        return None

    blk, tid, step = Var("blk"), Var("tid"), Var("kstep")
    where = _decompose(blk, spatial) if spatial else {}
    part = Buffer(f"{r.acc}_part", (THREADS,), r.dtype, "shared")
    acc = Load(r.acc, (), r.dtype)
    k = step * THREADS + tid
    value = simplify(substitute(r.value, {**where, **_decompose(k, r.loops)}))
    fold = For(step, -(-k_total // THREADS),
               If(k.lt(idx(k_total)), Store(r.acc, (), Bin(r.op, acc, value, r.dtype))))
    combine = (_subgroup_combine(r, part, tid) if subgroups and r.dtype is not DType.bool
               else _tree_combine(r, part, tid))
    finish = If(Bin("eq", tid, idx(0), DType.bool), seq(
        Store(r.acc, (), Bin(r.op, simplify(substitute(r.init, where)), combine.total, r.dtype)),
        subst_stmt(r.epilogue, where)))
    body = seq(Store(r.acc, (), _identity(r.op, r.dtype)), fold, *combine.stmts, finish)
    for buf in (part, Buffer(r.acc, (), r.dtype, "local"), *combine.locals):
        body = Alloc(buf, body)
    body = For(blk, outputs, For(tid, THREADS, body, GPU_THREAD), GPU_BLOCK)
    trace = [{"prim": "gpu_reduce_rows", "args": {"outputs": outputs, "reduction": k_total, "threads": THREADS,
                                                  "combine": combine.kind}}]
    return Dispatch(func.name, func.with_body(body), outputs, THREADS, trace,
                    shared_bytes=THREADS * 4)


__all__ = ["reduce_rows", "THREADS", "MIN_REDUCTION", "MAX_OUTPUTS", "LONG_REDUCTION"]
