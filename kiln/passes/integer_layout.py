"""Integer activations channels last (NHWC) between the convolutions of a VNNI host.

A ``qconv`` whose weights are in VNNI panels (``kiln/passes/vnni_pack.py``) reads its input
from a padded channels-last staging buffer and computes a register tile of 8 output pixels x
32 output channels. With NCHW activations both ends of that kernel cost more than they should:

- the staging copy transposes: it reads the input H*W bytes apart, one byte per channel;
- the requantizing epilogue stores each tile row's 32 channel bytes H*W bytes apart, one
  ``vpextrb`` per byte (a quarter of a ResNet-18 3x3 convolution's time, by ``perf``).

This pass keeps the activations between such convolutions in NHWC instead (attribute
``channels_last`` on ``qconv``, see ``kiln/ir/ops/qlinear.py``): the staging copy becomes a
copy of whole pixels and the epilogue writes 32 contiguous bytes per row. Elementwise ops
between them (the residual ``qadd``) run on NHWC operands as they are. Anything else that
reads such a value (an integer 2-D max pool and the global average pool read it as NHWC;
the pool's (N, C, 1, 1) output is the same in both layouts) -- a graph output, any other op
-- gets it back through one ``transpose`` under its original name. A convolution whose
input is NCHW (the image) reads it so and writes NHWC (``nchw_input``): its staging copy
transposes anyway. So a ResNet pays no transpose at all.

Left as they are: grouped or dilated convolutions (no VNNI panels) and ``qconv_i32`` (its
int32 output feeds float ops).
"""
from __future__ import annotations

import numpy as np

from kiln.ir import ops
from kiln.ir.graph import Graph, Node, Value
from kiln.ir.ops.qlinear import input_channels_last, nchw_shape
from kiln.passes.padded_storage import store_padded

TO_NCHW = (0, 3, 1, 2)


def _eligible_conv(node: Node, types, every_conv: bool = False) -> bool:
    x = types[node.inputs[0]]
    return (node.op == "qconv" and (every_conv or bool(node.attrs.get("vnni"))) and not node.attrs.get("channels_last")
            and len(node.outputs) == 1 and len(x.shape) == 4)


def _eligible_pool(bld: "_Builder", node: Node) -> bool:
    """An integer 2-D max pool of an NHWC value (a ResNet stem's): it pools NHWC as well."""
    x = node.inputs[0]
    return (node.op == "max_pool" and x in bld.nhwc and not bld.types[x].dtype.is_float
            and len(node.outputs) == 1 and len(node.attrs.get("kernel_shape", ())) == 2
            and not node.attrs.get("storage_order", 0))


class _Builder:
    def __init__(self, graph: Graph):
        self.types = graph.value_types()
        self.constants = graph.constants
        self.consumers = graph.consumers()
        self.new_constants: dict[str, np.ndarray] = {}   # weights permuted for NHWC operands
        self.nodes: list[Node] = []
        self.nhwc: dict[str, str] = {}      # NCHW value -> the NHWC value holding it
        self.restored: set[str] = set()     # NCHW values given back by a transpose already

    def add(self, op: str, inputs, attrs, name: str) -> str:
        t = ops.infer_types(op, [self.types[i] for i in inputs], attrs)[0]
        self.types[name] = t
        self.nodes.append(Node(op, tuple(inputs), (Value(name, t),), attrs))
        return name

    def plain(self, name: str) -> str:
        """``name`` as NCHW under its own name (transposed back once, on first use)."""
        if name in self.nhwc and name not in self.restored:
            self.add("transpose", [self.nhwc[name]], {"perm": TO_NCHW}, name)
            self.restored.add(name)
        return name


def _elementwise_operands(bld: _Builder, node: Node) -> list[str] | None:
    """The NHWC operands of an elementwise node whose tensor inputs are all NHWC values of its
    own shape (scalars as they are), or None. Nodes with an ``axis`` attribute are left alone:
    their meaning depends on the layout."""
    if (len(node.outputs) != 1 or "axis" in node.attrs
            or ops.get(node.op).fusion not in (ops.FusionKind.ELEMENTWISE, ops.FusionKind.BROADCAST)):
        return None
    out = node.outputs[0]
    operands, any_nhwc = [], False
    for name in node.inputs:
        arr = bld.constants.get(name)
        if arr is not None and arr.size == 1:
            operands.append(name)
        elif name in bld.nhwc and bld.types[name].shape == out.type.shape:
            operands.append(bld.nhwc[name])
            any_nhwc = True
        else:
            return None
    return operands if any_nhwc else None


def _flattened_into_matmuls(bld: _Builder, node: Node) -> bool:
    """A reshape of an NHWC value to (N, C*H*W) read only as the activations of plain
    ``qmatmul`` nodes with constant (out, C*H*W) weights: the reshape can flatten the NHWC
    storage as it is (H*W*C order) when those weights' columns are permuted to match, at
    compile time -- no transpose back (a CNN's classifier head)."""
    x = node.inputs[0]
    if node.op != "reshape" or x not in bld.nhwc or len(node.outputs) != 1:
        return False
    n, c, h, w = nchw_shape(bld.types[bld.nhwc[x]].shape, True)
    if tuple(node.outputs[0].type.shape) != (n, c * h * w):
        return False
    readers = bld.consumers.get(node.outputs[0].name, [])
    return bool(readers) and all(
        r.op == "qmatmul" and not r.attrs.get("vnni") and r.inputs[0] == node.outputs[0].name
        and node.outputs[0].name not in r.inputs[1:] and r.inputs[1] in bld.constants
        and bld.constants[r.inputs[1]].shape[1:] == (c * h * w,) for r in readers)


def _permute_weights(bld: _Builder, node: Node, flat: dict[str, tuple[int, int, int]]) -> Node:
    """A ``qmatmul`` reading a flattened NHWC value: its weights' columns in H*W*C order."""
    c, h, w = flat[node.inputs[0]]
    name = f"{node.inputs[1]}__nhwc"
    if name not in bld.new_constants:
        wt = bld.constants[node.inputs[1]]
        bld.new_constants[name] = np.ascontiguousarray(
            wt.reshape(wt.shape[0], c, h, w).transpose(0, 2, 3, 1).reshape(wt.shape))
    return Node(node.op, (node.inputs[0], name, *node.inputs[2:]), node.outputs, node.attrs, node.name)


def channels_last_integers(graph: Graph, every_conv: bool = False) -> Graph:
    """Run VNNI integer convolutions, and the elementwise ops between them, on NHWC
    activations (see the module docstring)."""
    types = graph.value_types()
    if not any(_eligible_conv(n, types, every_conv) for n in graph.nodes):
        return graph
    bld = _Builder(graph)
    flat: dict[str, tuple[int, int, int]] = {}   # NHWC values flattened: (C, H, W) of each
    for node in graph.nodes:
        out = node.outputs[0] if node.outputs else None
        if _eligible_conv(node, bld.types, every_conv):
            x = node.inputs[0]
            attrs = {**node.attrs, "channels_last": 1}
            if x in bld.nhwc:
                x = bld.nhwc[x]
            else:  # an NCHW input (the image) is transposed by the conv's own staging copy
                attrs["nchw_input"] = 1
            bld.nhwc[out.name] = bld.add("qconv", [x, *node.inputs[1:]], attrs, f"{out.name}__nhwc")
            continue
        if node.op == "qglobal_avg_pool" and node.inputs[0] in bld.nhwc and len(bld.types[node.inputs[0]].shape) == 4:
            # (N, C, 1, 1) is the same in both layouts: the pool reads NHWC and writes the value
            bld.add("qglobal_avg_pool", [bld.nhwc[node.inputs[0]], *node.inputs[1:]],
                    {**node.attrs, "channels_last": 1}, out.name)
            continue
        if _eligible_pool(bld, node):
            attrs = {k: v for k, v in node.attrs.items() if k != "pad_rows"}
            bld.nhwc[out.name] = bld.add("max_pool", [bld.nhwc[node.inputs[0]]], {**attrs, "channels_last": 1},
                                         f"{out.name}__nhwc")
            continue
        if _flattened_into_matmuls(bld, node):
            n, c, h, w = nchw_shape(bld.types[bld.nhwc[node.inputs[0]]].shape, True)
            flat[out.name] = (c, h, w)
            bld.nodes.append(Node(node.op, (bld.nhwc[node.inputs[0]],), node.outputs, node.attrs, node.name))
            continue
        if node.op == "qmatmul" and node.inputs[0] in flat:
            bld.nodes.append(_permute_weights(bld, node, flat))
            continue
        operands = _elementwise_operands(bld, node)
        if operands is not None:
            bld.nhwc[out.name] = bld.add(node.op, operands, node.attrs, f"{out.name}__nhwc")
            continue
        inputs = tuple(bld.plain(i) if i else i for i in node.inputs)
        bld.nodes.append(Node(node.op, inputs, node.outputs, node.attrs, node.name))
    for v in graph.outputs:
        bld.plain(v.name)
    return graph.replace(nodes=tuple(bld.nodes), constants={**graph.constants, **bld.new_constants})


def taps_major_depthwise(graph: Graph) -> Graph:
    """Each channels-last depthwise ``qconv`` (one channel per group, one output per channel)
    with its weights taps-major, (KH, KW, OC) (attribute ``taps_major``, see
    ``kiln/ir/ops/qlinear.py``): at one tap, four neighbouring channels' activations and
    weights are then one 4-byte word each, which a Cortex-M multiplies lane by lane
    (``kiln_lane_mac4`` in kiln_dsp.h) instead of one byte at a time."""
    types, consts, extra = graph.value_types(), graph.constants, {}
    nodes = []
    for node in graph.nodes:
        a = node.attrs
        w = consts.get(node.inputs[1]) if node.op == "qconv" and len(node.inputs) > 1 else None
        if (w is not None and a.get("channels_last") and not a.get("vnni") and not a.get("taps_major")
                and w.ndim == 3 and int(a.get("group", 1)) == w.shape[0] > 1
                and nchw_shape(types[node.inputs[0]].shape, input_channels_last(a))[1] == w.shape[0]):
            name = f"{node.inputs[1]}__taps"
            extra[name] = np.ascontiguousarray(w.transpose(1, 2, 0))
            node = Node(node.op, (node.inputs[0], name, *node.inputs[2:]), node.outputs,
                        {**a, "taps_major": 1}, node.name)
        nodes.append(node)
    return graph.replace(nodes=tuple(nodes), constants={**consts, **extra}) if extra else graph


def channels_last_convs(graph: Graph) -> Graph:
    """Every integer convolution on NHWC activations, each reading its padding from its
    input's storage (``kiln/passes/padded_storage.py``): the Cortex-M layout. On a
    microcontroller the staging copy an NCHW convolution makes (its input padded, channels
    last) is arena as well as time: VWW's arena 86,080 -> 58,432 bytes, DS-CNN's 28,096 ->
    20,096, and no copy per layer (docs/benchmarks.md, 2026-11-25)."""
    return taps_major_depthwise(store_padded(channels_last_integers(graph, every_conv=True)))
