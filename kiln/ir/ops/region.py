"""Region writes: ``insert_slice``, the op that assembles a tensor from patches, and
``concat_in_place``, a concat whose parts their producers write into its storage.

``insert_slice(src[, dest]; starts, shape)`` is ``dest`` with the box
``starts .. starts + src.shape`` replaced by ``src`` (without ``dest`` the rest is
undefined, for later inserts to fill). Patch-based execution
(``kiln.passes.patch_execution``) builds a stage's output with one ``insert_slice`` per
patch, each reading the previous one as ``dest``.

Its kernel writes the box and nothing else: the output shares ``dest``'s storage (the
memory planner aliases them, ``IN_PLACE`` below), so a chain of inserts fills one buffer
in place instead of keeping every patch alive, and costs one copy of the box per patch.
The op is opaque to fusion: a fused consumer would read the tensor before its last patch.

``concat_in_place`` computes what ``concat`` does (the interpreter runs it so), but gets no
kernel: the memory planner places each input at its slot inside the output's storage, so
the inputs' producers have written the output when the last of them is done
(``kiln.passes.concat_in_place`` decides which concats may, ``assembled_parts`` where).
"""
from __future__ import annotations

from kiln.errors import ShapeError
from kiln.ir.compute import compute
from kiln.ir.graph import TensorType
from kiln.ir.ops import FusionKind, register
from kiln.ir.ops.nn import static_shape
from kiln.ir.ops.shape import concat_compute, concat_infer

# op -> position of the input whose storage the output reuses (read by the memory planner)
IN_PLACE = {"insert_slice": 1}


def in_place_dests(nodes) -> set[str]:
    """The values that in-place ops among ``nodes`` write into (their ``dest`` inputs)."""
    return {n.inputs[IN_PLACE[n.op]] for n in nodes if n.op in IN_PLACE and len(n.inputs) > IN_PLACE[n.op]}


def _insert_infer(ins, attrs):
    src = static_shape(ins[0], "insert_slice source")
    shape = tuple(int(d) for d in attrs["shape"])
    starts = tuple(int(s) for s in attrs["starts"])
    if len(starts) != len(shape) or len(src) != len(shape):
        raise ShapeError(f"insert_slice of a rank-{len(src)} source into shape {shape} needs "
                         f"{len(shape)} starts; got {starts}")
    if any(s < 0 or s + n > d for s, n, d in zip(starts, src, shape)):
        raise ShapeError(f"insert_slice: source {src} at {starts} does not fit inside {shape}")
    if len(ins) > 1:
        dest = static_shape(ins[1], "insert_slice destination")
        if dest != shape or ins[1].dtype != ins[0].dtype:
            raise ShapeError(f"insert_slice destination is {ins[1].dtype}{list(dest)}; expected "
                             f"{ins[0].dtype}{list(shape)} (the shape attribute and the source dtype)")
    return [TensorType(shape, ins[0].dtype)]


def _insert_compute(ins, outs, attrs):
    """One stage over the source's box only: a region write into the output at ``starts``.
    The elements outside the box are never written: they are ``dest``'s, whose storage the
    output shares (the memory planner refuses an ``insert_slice`` whose ``dest`` it cannot
    reuse). Without ``dest`` they are undefined until later inserts fill them; the numpy
    interpreter reads them as zeros."""
    src, o = ins[0], outs[0]
    starts = tuple(int(s) for s in attrs["starts"])
    hints = {"store_offset": starts, "store_shape": tuple(o.shape),
             "store_base": ins[1].name if len(ins) > 1 else None}
    return [compute(o.name, src.shape, lambda *i: src[i], o.dtype, tag="insert_slice", hints=hints)]


register("insert_slice", FusionKind.OPAQUE, _insert_infer, _insert_compute)

register("concat_in_place", FusionKind.ASSEMBLY, concat_infer, concat_compute)
