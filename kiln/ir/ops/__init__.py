"""The operator registry of the graph IR.

Each op is registered once with
- its **shape rule**: input types and attributes -> output types,
- its **compute definition**: input/output tensor handles and attributes -> stages,
- its **fusion kind** (see ``FusionKind``), which the fusion pass reads.

Families live in sibling modules (``elementwise``, ``nn``, ``reduce``, ``shape``);
importing this package registers all of them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from kiln.errors import ShapeError, VerificationError
from kiln.ir.compute import Stage, Tensor
from kiln.ir.graph import TensorType


class FusionKind:
    ELEMENTWISE = "elementwise"  # out[i] = f(in[i]) with identical shapes
    BROADCAST = "broadcast"      # elementwise after numpy broadcasting
    INJECTIVE = "injective"      # each output element reads a few input elements (transpose, pad ...)
    REDUCTION = "reduction"      # reduces axes (reduce_sum, softmax, layer norm)
    OUT_FUSABLE = "out_fusable"  # heavy op that takes elementwise epilogues (matmul, conv)
    VIEW = "view"                # same bytes, new shape (reshape): no kernel at all
    ASSEMBLY = "assembly"        # its inputs' producers write it in place (concat_in_place): no kernel
    OPAQUE = "opaque"            # never fused


InferFn = Callable[[Sequence[TensorType], Mapping[str, object]], list[TensorType]]
ComputeFn = Callable[[Sequence[Tensor], Sequence[Tensor], Mapping[str, object]], list[Stage]]


@dataclass(frozen=True)
class OpDef:
    name: str
    fusion: str
    infer: InferFn
    compute: ComputeFn
    num_outputs: int = 1


REGISTRY: dict[str, OpDef] = {}


def register(name: str, fusion: str, infer: InferFn, compute: ComputeFn, num_outputs: int = 1) -> OpDef:
    if name in REGISTRY:
        raise VerificationError(f"op {name!r} registered twice")
    REGISTRY[name] = OpDef(name, fusion, infer, compute, num_outputs)
    return REGISTRY[name]


def get(name: str) -> OpDef:
    try:
        return REGISTRY[name]
    except KeyError:
        raise VerificationError(f"graph op {name!r} is not registered") from None


def infer_types(op: str, inputs: Sequence[TensorType], attrs: Mapping[str, object]) -> list[TensorType]:
    return get(op).infer(inputs, attrs)


# -- helpers shared by the families ----------------------------------------------------

def broadcast_shapes(*shapes: Sequence) -> tuple:
    """Numpy broadcasting of static shapes; raises ShapeError when incompatible."""
    nd = max((len(s) for s in shapes), default=0)
    out = []
    for k in range(nd):
        dims = {s[len(s) - nd + k] for s in shapes if len(s) - nd + k >= 0} - {1}
        if len(dims) > 1:
            raise ShapeError(f"shapes {', '.join(str(tuple(s)) for s in shapes)} do not broadcast")
        out.append(dims.pop() if dims else 1)
    return tuple(out)


def broadcast_index(t: Tensor, out_axes: Sequence) -> tuple:
    """Indices into ``t`` for an output element at ``out_axes`` under broadcasting."""
    nd = len(out_axes)
    ix = []
    for k, n in enumerate(t.shape):
        ax = out_axes[nd - len(t.shape) + k]
        ix.append(0 if n == 1 else ax)
    return tuple(ix)


def normalize_axis(axis: int, rank: int, what: str = "axis") -> int:
    if not -rank <= axis < max(rank, 1):
        raise ShapeError(f"{what} {axis} is out of range for rank {rank}; expected -{rank}..{rank - 1}")
    return axis % rank if rank else 0


def transpose_hint(axis: int, run, rank: int) -> dict:
    """Stage hints of a copy whose input is contiguous along output ``axis`` for ``run``
    consecutive values (kiln/passes/transpose_schedule.py tiles it); none when that axis is
    the output's last (a plain copy) or ``run`` is symbolic."""
    return {"transpose": (axis, run)} if axis != rank - 1 and isinstance(run, int) else {}


from kiln.ir.ops import (  # noqa: E402,F401  (registers the families)
    activation, attention, elementwise, indexing, integer_acc, linalg, nn, norm, normalize, packed, pool, qlinear,
    qpool, qsoftmax, quant, reduce, resize, sample, scatter, shape, sort, trees, weight_only, weight_only_cols)
from kiln.ir.ops import region  # noqa: E402,F401  (insert_slice, concat_in_place: region writes)
