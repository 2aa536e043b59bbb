"""PyTorch (core ATen) converters, keyed by overload name and split by family.

A converter is registered with ``@aten("convolution.default")`` (several names may share
one function) and called as ``fn(ctx, args)``: ``ctx`` is the ``TorchContext`` of
``kiln.frontend.torch`` and ``args`` maps every argument name of the op's schema to its
value (defaults filled in), so converters read ``args["stride"]`` rather than positions.
A converter returns the kiln value name of the op's result, or a list for ops with
several results; ``None`` in that list marks a result Kiln does not compute (the indices
of ``max_pool2d_with_indices``), which is an error only if the graph reads it.

Converters exist only for ops that can reach them: what ``run_decompositions()`` leaves
(core ATen), plus the ``preserve=True`` ops, which the frontend keeps out of decomposition
because one kiln op beats their decomposition (bicubic upsampling decomposes into ~150
gathers and arithmetic nodes, tril into a mask constant and a where).

Helpers shared by the families (scalar lists, dims, dtype mapping) live here too.
"""
from __future__ import annotations

from typing import Callable, Sequence

from kiln.ir.dtype import DType

ATEN: dict[str, Callable] = {}
PRESERVE: set[str] = set()  # overloads kept out of torch's decompositions


def aten(*names: str, preserve: bool = False):
    """Register a converter for the aten overloads ``names`` (e.g. ``"add.Tensor"``)."""
    def deco(fn):
        for name in names:
            ATEN[name] = fn
        if preserve:
            PRESERVE.update(names)
        return fn
    return deco


def lookup(key: str) -> Callable | None:
    return ATEN.get(key)


# -- helpers shared by the families -----------------------------------------------------------

def torch_dtype(dtype) -> DType:
    """The kiln dtype of a ``torch.dtype`` (``torch.float32`` -> ``DType.float32``)."""
    return DType.of(str(dtype).removeprefix("torch."))


def int_list(v, n: int) -> tuple[int, ...]:
    """An ``int[n]`` schema argument as ``n`` ints: aten allows one int for all positions."""
    if isinstance(v, int):
        return (v,) * n
    v = tuple(int(x) for x in v)
    return v * n if len(v) == 1 and n > 1 else v


def dims(v, rank: int) -> tuple[int, ...]:
    """``dim`` arguments as sorted non-negative axes; ``None`` or ``[]`` mean every axis."""
    from kiln.ir.ops import normalize_axis

    if rank == 0:  # torch accepts dim 0 or -1 on a scalar; there is nothing to reduce
        return ()
    if v is None or (not isinstance(v, int) and len(v) == 0):
        return tuple(range(rank))
    v = [v] if isinstance(v, int) else list(v)
    return tuple(sorted({normalize_axis(int(d), rank, "dim") for d in v}))


def prod(values: Sequence[int]) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


from kiln.frontend.torch_ops import elementwise, nn, reduce, shape  # noqa: E402,F401  (registers the families)
