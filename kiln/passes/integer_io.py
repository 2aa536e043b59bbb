"""Integer model I/O: a quantized model takes and returns its quantized tensors.

A QDQ model (what ``kiln.quantize`` and ONNX Runtime's tools write) takes float inputs
and quantizes them with a QuantizeLinear, and dequantizes its outputs with a
DequantizeLinear. On a microcontroller both ends are float arithmetic in what is
otherwise an integer model, and the sensor data usually arrives as integers anyway. This
pass removes them, as TensorFlow Lite Micro models do: a graph input consumed only by a
per-tensor QuantizeLinear becomes an input of the quantized type, a graph output made by
a per-tensor DequantizeLinear becomes an output of the quantized type, and the scales
and zero points are returned so the generated header can tell the caller how to convert.

The names of inputs and outputs stay as they were. Models without these patterns are
returned unchanged, with no parameters.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kiln.ir.dtype import DType
from kiln.ir.graph import Graph, Node, TensorType, Value

_QTYPES = (DType.int8, DType.uint8)


@dataclass(frozen=True)
class IOQuant:
    """How a float value maps to the integers of one model input or output:
    ``real = scale * (q - zero_point)``."""

    name: str
    scale: float
    zero_point: int
    dtype: DType


def _scalar(graph: Graph, name: str | None, default=None):
    if not name:
        return default
    arr = graph.constants.get(name)
    if arr is None or arr.size != 1:
        return None
    return np.asarray(arr).reshape(-1)[0]


def _params(graph: Graph, node: Node) -> tuple[float, int] | None:
    if node.attrs.get("block_size") or node.attrs.get("precision"):
        return None
    scale = _scalar(graph, node.inputs[1])
    zp = _scalar(graph, node.inputs[2] if len(node.inputs) > 2 else None, default=0)
    if scale is None or zp is None:
        return None
    return float(scale), int(zp)


def integer_io(graph: Graph) -> tuple[Graph, dict[str, IOQuant]]:
    """The graph with quantized inputs and outputs where it has the patterns, and their
    parameters by input/output name."""
    consumers = graph.consumers()
    producers = graph.producers()
    rename: dict[str, str] = {}
    drop: set[int] = set()
    params: dict[str, IOQuant] = {}
    inputs = list(graph.inputs)
    for i, v in enumerate(inputs):
        users = consumers.get(v.name, [])
        if len(users) != 1 or users[0].op != "quantize_linear" or users[0].inputs[0] != v.name:
            continue
        q = users[0]
        p = _params(graph, q)
        out = q.outputs[0]
        if p is None or out.type.dtype not in _QTYPES:
            continue
        inputs[i] = Value(v.name, TensorType(v.shape, out.type.dtype))
        rename[out.name] = v.name
        drop.add(id(q))
        params[v.name] = IOQuant(v.name, p[0], p[1], out.type.dtype)
    outputs = list(graph.outputs)
    output_names = {v.name for v in graph.outputs}
    for i, v in enumerate(outputs):
        dq = producers.get(v.name)
        if dq is None or dq.op != "dequantize_linear":
            continue
        src = dq.inputs[0]
        p = _params(graph, dq)
        src_type = graph.value_types().get(src)
        if (p is None or src_type is None or src_type.dtype not in _QTYPES or src in output_names
                or src in rename.values() or any(x.name == src for x in graph.inputs)
                or len(consumers.get(src, [])) != 1 or src not in producers):
            continue
        outputs[i] = Value(v.name, src_type)
        rename[src] = v.name
        drop.add(id(dq))
        params[v.name] = IOQuant(v.name, p[0], p[1], src_type.dtype)
    if not params:
        return graph, {}
    nodes = []
    for n in graph.nodes:
        if id(n) in drop:
            continue
        outs = tuple(Value(rename.get(o.name, o.name), o.type) for o in n.outputs)
        nodes.append(Node(n.op, tuple(rename.get(x, x) for x in n.inputs), outs, n.attrs, n.name))
    return graph.replace(inputs=tuple(inputs), outputs=tuple(outputs), nodes=tuple(nodes)), params
