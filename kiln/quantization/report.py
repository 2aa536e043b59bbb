"""Per-layer quantization error: a QDQ model against its own float version.

Every activation QuantizeLinear -> DequantizeLinear pair is a "layer output". The float
version is the same graph with each pair replaced by a clip to its representable range
(weights stay dequantized): the report isolates the rounding of activations and how it
accumulates through the network, layer by layer. Both
graphs run in Kiln's interpreter of the compute definitions (the quantized one after the
quantize pass, so its integer ops are the kernels' own semantics) on the same inputs; for each pair the
report gives the scale, the signal-to-quantization-noise ratio (dB) and the largest error
in quantization steps.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from kiln.ir.graph import Graph, Node, Value


def _pairs(g: Graph) -> list[tuple[Node, Node]]:
    producers = g.producers()
    pairs = []
    for n in g.nodes:
        if n.op == "dequantize_linear" and n.inputs[0] not in g.constants:
            q = producers.get(n.inputs[0])
            if q is not None and q.op == "quantize_linear":
                pairs.append((q, n))
    return pairs


def _float_graph(g: Graph, pairs) -> Graph:
    """Each activation Q -> DQ pair replaced by a float clip to the range it can represent:
    the graph's own semantics without rounding. (Removing the pair would be wrong:
    quantizers drop a ReLU whose job the output range already does.)"""
    replace = {}
    for q, dq in pairs:
        s = float(np.asarray(g.constants[q.inputs[1]]).reshape(-1)[0])
        z = int(np.asarray(g.constants[q.inputs[2]]).reshape(-1)[0]) if len(q.inputs) > 2 and q.inputs[2] else 0
        info = np.iinfo(q.outputs[0].type.dtype.np)
        clip = Node("clip", (q.inputs[0],), (Value(dq.outputs[0].name, dq.outputs[0].type),),
                    {"min": (int(info.min) - z) * s, "max": (int(info.max) - z) * s})
        replace[id(dq)] = clip
    drop = {id(q) for q, _ in pairs}
    nodes = tuple(replace.get(id(n), n) for n in g.nodes if id(n) not in drop)
    types = g.value_types()
    extra = tuple(Value(dq.outputs[0].name, types[dq.outputs[0].name]) for _, dq in pairs)
    return g.replace(nodes=nodes, outputs=_unique(tuple(g.outputs) + extra))


def _unique(values):
    seen, out = set(), []
    for v in values:
        if v.name not in seen:
            seen.add(v.name)
            out.append(v)
    return tuple(out)


def quant_report(model, inputs: Mapping[str, np.ndarray] | None = None, seed: int = 0) -> str:
    """A text table, one row per quantized activation (see the module docstring)."""
    from kiln.frontend.onnx import from_onnx
    from kiln.ir.interp import run_graph
    from kiln.passes.quantize import quantize_integer_ops

    g = model if isinstance(model, Graph) else from_onnx(model)
    pairs = _pairs(g)
    if not pairs:
        return "no quantized activations (QuantizeLinear -> DequantizeLinear pairs) in this model"
    if inputs is None:
        rng = np.random.default_rng(seed)
        inputs = {v.name: rng.standard_normal(tuple(v.shape)).astype(v.dtype.np) for v in g.inputs}
    types = g.value_types()
    qg = g.replace(outputs=_unique(tuple(g.outputs) + tuple(Value(dq.outputs[0].name, types[dq.outputs[0].name])
                                                          for _, dq in pairs)))
    # The numpy interpreter of the compute definitions: the quantized graph after the
    # quantize pass evaluates the same integer ops the generated kernels run.
    got = run_graph(quantize_integer_ops(qg), inputs)
    ref = run_graph(_float_graph(g, pairs), inputs)
    rows = [f"{'layer output':<40} {'scale':>10} {'SQNR dB':>8} {'max err (steps)':>16}"]
    for q, dq in pairs:
        f, x = ref[dq.outputs[0].name].astype(np.float64), got[dq.outputs[0].name].astype(np.float64)
        scale = float(np.asarray(g.constants.get(q.inputs[1], np.nan)).reshape(-1)[0])
        noise = float(np.sum((f - x) ** 2))
        sqnr = float("inf") if noise == 0 else 10 * np.log10(max(float(np.sum(f ** 2)), 1e-30) / noise)
        rows.append(f"{q.inputs[0][:40]:<40} {scale:>10.4g} {sqnr:>8.1f} {np.max(np.abs(f - x)) / scale:>16.2f}")
    return "\n".join(rows)
