"""Tensor IR: compute definitions (as in TVM's TE and Halide).

A ``Stage`` defines every element of one tensor as an expression of its index
variables; reductions appear inside the expression as ``Reduce`` nodes. An operator's
semantics is a list of stages; every target lowers the same stages.

    A = Tensor("A", (M, K)); B = Tensor("B", (K, N))
    C = compute("C", (M, N), lambda i, j: rsum(lambda k: A[i, k] * B[k, j], K))
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from kiln.ir.dtype import DType
from kiln.ir.expr import Expr, Load, Reduce, Var, as_expr, fresh, idx


@dataclass(frozen=True, slots=True)
class Tensor:
    """A handle to a named buffer; indexing it builds a Load."""

    name: str
    shape: tuple[int, ...]
    dtype: DType = DType.float32

    def __getitem__(self, index) -> Load:
        if not isinstance(index, tuple):
            index = (index,)
        if len(index) != len(self.shape):
            raise IndexError(f"{self.name} has rank {len(self.shape)}, indexed with {len(index)}")
        return Load(self.name, tuple(idx(i) for i in index), self.dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)


@dataclass(frozen=True, slots=True)
class Stage:
    """``name[axes] = body`` over the full ``shape``.

    ``tag`` tells the default scheduler what pattern this is (``"matmul"``, ``"conv"``,
    ``"pad"`` ...) and ``hints`` carries pattern facts (which axes to register-tile).
    ``inline`` says whether consumers inside a fused kernel may recompute it in place.
    """

    name: str
    shape: tuple[int, ...]
    dtype: DType
    axes: tuple[Var, ...]
    body: Expr
    tag: str = "injective"
    hints: Mapping[str, object] = field(default_factory=dict)
    inline: bool = True

    @property
    def tensor(self) -> Tensor:
        return Tensor(self.name, self.shape, self.dtype)

    def __getitem__(self, index) -> Load:
        return self.tensor[index]

    @property
    def has_reduce(self) -> bool:
        from kiln.ir.expr import walk

        return any(isinstance(x, Reduce) for x in walk(self.body))

    @property
    def has_iterate(self) -> bool:
        """Whether an element is refined in a sequential loop (an ``Iterate``: a tree walk)."""
        from kiln.ir.expr import Iterate, walk

        return any(isinstance(x, Iterate) for x in walk(self.body))

    def __str__(self) -> str:
        ax = ", ".join(a.name for a in self.axes)
        return f"{self.name}[{ax}] : {self.dtype}{list(self.shape)} = {self.body}"


def compute(name: str, shape: Sequence[int], fn: Callable[..., Expr], dtype: DType | None = None,
            tag: str = "injective", hints: Mapping[str, object] | None = None,
            inline: bool = True) -> Stage:
    axes = tuple(Var(fresh(f"{name}_i{k}_")) for k in range(len(shape)))
    body = as_expr(fn(*axes), dtype or DType.float32)
    dtype = dtype or body.dtype
    if body.dtype != dtype:
        from kiln.ir.expr import Cast

        body = Cast(body, dtype)
    return Stage(name, tuple(_extent(s) for s in shape), dtype, axes, body, tag, dict(hints or {}), inline)


def _extent(s):
    """An int, or an index Expr for a symbolic extent."""
    return s if isinstance(s, Expr) else int(s)


def _reduce(op: str, fn: Callable[..., Expr], extents) -> Reduce:
    if isinstance(extents, (int, Expr)):
        extents = (extents,)
    rvars = tuple(Var(fresh("r")) for _ in extents)
    body = fn(*rvars)
    return Reduce(op, body, tuple(zip(rvars, (_extent(e) for e in extents))))


def rsum(fn, extents) -> Reduce:
    return _reduce("sum", fn, extents)


def rmax(fn, extents) -> Reduce:
    return _reduce("max", fn, extents)


def rmin(fn, extents) -> Reduce:
    return _reduce("min", fn, extents)


def rprod(fn, extents) -> Reduce:
    return _reduce("prod", fn, extents)


def reduce_init(op: str, dtype: DType):
    """The identity of a reduction, as a Python value of ``dtype``."""
    import numpy as np

    if op == "sum":
        return 0.0 if dtype.is_float else 0
    if op == "prod":
        return 1.0 if dtype.is_float else 1
    if dtype.is_float:
        return float("-inf") if op == "max" else float("inf")
    info = np.iinfo(dtype.np) if dtype is not DType.bool else None
    if info is None:
        return op == "min"
    return int(info.min) if op == "max" else int(info.max)
