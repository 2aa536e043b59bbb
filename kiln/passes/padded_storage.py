"""Padded storage: a convolution's producer writes the padded layout the convolution reads.

A VNNI ``qconv`` with padding copies its NHWC input into a padded staging buffer (``__xu``,
``kiln/ir/ops/qlinear.py``) before its tile loop: for ResNet-18 that is 15 copies of the
activations per run, 55-75 us of 4.5 ms on 2 cores. The copy exists only to put a border of
zero points around the image. This pass lets the value keep that border in its storage
instead:

- the convolution gets ``pads_in_storage=1``: it still *means* a padded convolution of its
  input (its attributes, shape rule and the numpy interpreter are unchanged), but its kernel
  reads the input's storage, border included, as an unpadded convolution -- in place;
- the value is stored as (N, H + pads, W + pads, C): its producer's kernel writes the
  interior at the border's offset (``store_offset``, as ``insert_slice`` does) and fills the
  border with the zero point (``border_fill``, serial loops of a few kilobytes);
- every other reader (the residual ``qadd`` of the next block, a 1x1 downsample
  convolution) reads the interior: its loads are shifted by the border (``shift_loads``).

The graph keeps logical shapes; ``storage_borders`` derives each padded value's border from
the convolutions that read it, so the attribute on the convolution is the only record of
the decision. The kernel builder (``kiln/codegen/kernels.py``) and the memory planner size
such a value by ``storage_types``.

Eligible: a channels-last ``qconv`` (dilation 1, no activation offset; a VNNI one of group 1
with window rows that are whole 4-byte groups; on Cortex-M, whose convolutions are all
channels last, any group: ``kiln/passes/integer_layout.py`` ``channels_last_convs``) whose input is the single output of a ``qconv``,
``qadd`` or ``max_pool`` node, is no graph input, output or constant, and is read by no
view (a reshape would alias the padded storage as if it were dense). Several convolutions
may read one value in place when they want the same border and fill; the first one decides.
"""
from __future__ import annotations

from dataclasses import dataclass

from kiln.errors import VerificationError
from kiln.ir import ops
from kiln.ir.compute import Stage
from kiln.ir.dtype import DType
from kiln.ir.expr import Const, Load, Var, fresh, replace_loads
from kiln.ir.graph import Graph, Node, TensorType
from kiln.ir.loop import For, Stmt, Store, seq
from kiln.ir.ops.nn import offset, window_attrs
from kiln.ir.ops.qlinear import staged_offset, vnni_window_row
from kiln.ir.ops.region import IN_PLACE

# Producers whose kernel ends in one plain stage writing the value, which can store at an offset.
PRODUCERS = ("qconv", "qadd", "max_pool")
PADS_IN_STORAGE = "pads_in_storage"


@dataclass(frozen=True)
class Border:
    """Elements of storage before (``lo``) and after (``hi``) the value on each dim, holding ``fill``."""

    lo: tuple[int, ...]
    hi: tuple[int, ...]
    fill: int

    def storage_shape(self, shape) -> tuple[int, ...]:
        return tuple(int(n) + a + b for n, a, b in zip(shape, self.lo, self.hi))

    def zero_box(self, shape) -> tuple[tuple[int, int] | None, ...] | None:
        """Where in storage the value of ``shape`` sits, when the border around it holds 0
        (``Buffer.zero_outside``: per dim [start, stop), None on a dim without border);
        None when the fill is not 0."""
        if self.fill != 0:
            return None
        return tuple((a, a + int(n)) if (a or b) else None for n, a, b in zip(shape, self.lo, self.hi))


def conv_border(node: Node) -> Border:
    """The border a channels-last ``qconv`` wants around its (N, H, W, C) input: its pads on
    H and W, filled with the input's zero point."""
    _, pb, pe, _ = window_attrs(node.attrs, 2, "qconv")
    return Border((0, pb[0], pb[1], 0), (0, pe[0], pe[1], 0), int(node.attrs.get("x_zp", 0)))


def _reads_border_in_place(node: Node, types) -> bool:
    """A convolution that could read a bordered input as an unpadded convolution: the
    staged tensor would be the input itself, plus the border."""
    a = node.attrs
    if node.op != "qconv" or not a.get("channels_last") or a.get("nchw_input"):
        return False
    x, w = types[node.inputs[0]], types[node.inputs[1]]
    if len(x.shape) != 4 or not x.is_static or len(node.outputs) != 1:
        return False
    _, pb, pe, dil = window_attrs(a, 2, "qconv")
    off = staged_offset(a)
    # without an activation offset to stage (none, or one applied as each value is read) the
    # staged tensor has the input's own dtype (``STAGED``)
    if (int(a.get("group", 1)) != 1 and a.get("vnni")) or set(dil) != {1} or off or not any(pb + pe):
        return False
    kh, kw = a["kernel"]
    return vnni_window_row(w, a, kh, kw * int(x.shape[3])) == kw * int(x.shape[3])


def _storable(name: str, producers, consumers, outside) -> bool:
    p = producers.get(name)
    if name in outside or p is None or p.op not in PRODUCERS or len(p.outputs) != 1:
        return False
    return all(ops.get(c.op).fusion != ops.FusionKind.VIEW and c.op not in IN_PLACE
               for c in consumers.get(name, []))


def store_padded(graph: Graph) -> Graph:
    """Mark every eligible convolution ``pads_in_storage`` (see the module docstring)."""
    types, producers, consumers = graph.value_types(), graph.producers(), graph.consumers()
    outside = {v.name for v in graph.inputs} | {v.name for v in graph.outputs} | set(graph.constants)
    chosen: dict[str, Border] = {}
    nodes = []
    for node in graph.nodes:
        if _reads_border_in_place(node, types):
            x, want = node.inputs[0], conv_border(node)
            if chosen.get(x, want) == want and _storable(x, producers, consumers, outside):
                chosen[x] = want
                node = Node(node.op, node.inputs, node.outputs, {**node.attrs, PADS_IN_STORAGE: 1}, node.name)
        nodes.append(node)
    return graph.replace(nodes=tuple(nodes)) if chosen else graph


def storage_borders(graph: Graph) -> dict[str, Border]:
    """value -> the border its storage keeps, from the convolutions marked ``pads_in_storage``."""
    borders: dict[str, Border] = {}
    for node in graph.nodes:
        if node.attrs.get(PADS_IN_STORAGE):
            x, want = node.inputs[0], conv_border(node)
            if borders.setdefault(x, want) != want:
                raise VerificationError(f"{x!r} is read in place by convolutions that want different borders "
                                        f"({borders[x]} and {want}); expected one border per value")
    return borders


def storage_types(graph: Graph) -> dict[str, TensorType]:
    """``graph.value_types()`` with each bordered value at the shape of its storage."""
    types = graph.value_types()
    for name, b in storage_borders(graph).items():
        types[name] = TensorType(b.storage_shape(types[name].shape), types[name].dtype)
    return types


def shift_loads(stage: Stage, shifts: dict[str, tuple[int, ...]]) -> Stage:
    """``stage`` reading each buffer in ``shifts`` at its interior: index + border on each dim."""
    if not shifts:
        return stage
    from dataclasses import replace

    def sub(ld: Load):
        lo = shifts.get(ld.buffer)
        if lo is None:
            return None
        return Load(ld.buffer, tuple(offset(i, s) for i, s in zip(ld.indices, lo)), ld.dtype)
    return replace(stage, body=replace_loads(stage.body, sub))


def store_at_border(stage: Stage, border: Border) -> Stage:
    """The stage writing a bordered value, storing into its interior."""
    from dataclasses import replace

    return replace(stage, hints={**stage.hints, "store_offset": border.lo,
                                 "store_shape": border.storage_shape(stage.shape)})


def border_fill(buffer: str, shape, border: Border, dtype: DType) -> Stmt:
    """Serial loops storing ``border.fill`` into every element of a bordered buffer outside
    the value's box: on each dim ``d``, the slabs before and after the box, over the box on
    the dims before ``d`` and the whole storage on the dims after it (disjoint slabs)."""
    full = border.storage_shape(shape)
    slabs = []
    for d in range(len(full)):
        inner = [(border.lo[k], int(shape[k])) for k in range(d)]
        outer = [(0, full[k]) for k in range(d + 1, len(full))]
        if border.lo[d]:
            slabs.append(inner + [(0, border.lo[d])] + outer)
        if border.hi[d]:
            slabs.append(inner + [(border.lo[d] + int(shape[d]), border.hi[d])] + outer)
    stmts = []
    for ranges in slabs:
        axes = [Var(fresh("b")) for _ in ranges]
        body: Stmt = Store(buffer, tuple(offset(a, start) for a, (start, _) in zip(axes, ranges)),
                           Const(border.fill, dtype))
        for a, (_, extent) in reversed(list(zip(axes, ranges))):
            body = For(a, extent, body)
        stmts.append(body)
    return seq(*stmts)
