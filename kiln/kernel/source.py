"""What ``kiln.kernel`` compiles: one ONNX operator, a node range of a model, or a whole model.

Each form is turned into something ``kiln.compile`` accepts, so a kernel goes through the
same pipeline (and the same tuning records) as a model:

- an operator name (``"Gemm"``) with ``inputs={name: (shape, dtype) | ndarray}`` and
  ``attrs=``: a one-node ONNX model built with ``onnx.helper``; an ndarray input becomes a
  constant (embedded in the library as a weight), a ``(shape, dtype)`` pair a run-time input;
- an ONNX model (path or ModelProto) with ``nodes=(start, stop)`` or ``inputs=``/``outputs=``
  value names: the subgraph cut out by ``onnx.utils.Extractor``;
- anything else (an ONNX model, a ``torch.nn.Module`` with ``example_inputs``) unchanged.
"""
from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np

from kiln.errors import KilnError, ModelLoadError

DEFAULT_OPSET = 21


def is_operator_name(model) -> bool:
    """A string naming an ONNX operator (and no file): ``"Gemm"``, ``"Conv"``."""
    if not isinstance(model, str) or os.path.exists(model) or not model.isidentifier():
        return False
    import onnx.defs

    return onnx.defs.has(model)


def operator_model(op_type: str, inputs: Mapping, attrs: Mapping | None = None, *,
                   num_outputs: int | None = None, opset: int = DEFAULT_OPSET):
    """A one-node ONNX model computing ``op_type`` on ``inputs`` (in the operator's input order)."""
    import onnx
    from onnx import helper, numpy_helper

    if not inputs:
        raise KilnError(f"kiln.kernel({op_type!r}) needs inputs={{name: (shape, dtype)}} in the order of the "
                        f"operator's inputs, e.g. inputs={{'A': ((64, 128), 'float32'), ...}}")
    schema = onnx.defs.get_schema(op_type, opset)
    graph_inputs, initializers = [], []
    for name, spec in inputs.items():
        if isinstance(spec, np.ndarray):
            initializers.append(numpy_helper.from_array(np.ascontiguousarray(spec), name))
            continue
        try:
            shape, dtype = spec
            elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
            shape = [int(d) for d in shape]
        except (TypeError, ValueError) as e:
            raise KilnError(f"input {name!r} of {op_type}: expected (shape, dtype) such as ((64, 128), 'float32') "
                            f"or a numpy array (a constant); got {spec!r} ({e})") from None
        graph_inputs.append(helper.make_tensor_value_info(name, elem, shape))
    if num_outputs is None:
        num_outputs = sum(1 for o in schema.outputs if o.option != onnx.defs.OpSchema.FormalParameterOption.Optional)
    outputs = [f"output_{i}" if num_outputs > 1 else "output" for i in range(max(num_outputs, 1))]
    node = helper.make_node(op_type, list(inputs), outputs, name=op_type.lower(), **dict(attrs or {}))
    graph = helper.make_graph([node], op_type.lower(), graph_inputs,
                              [helper.make_empty_tensor_value_info(o) for o in outputs], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as e:  # onnx raises InferenceError / ValidationError with the reason
        raise KilnError(f"{op_type} does not accept these inputs/attributes: {e}") from None
    _fill_outputs(inferred)
    return inferred


def _fill_outputs(model) -> None:
    """Copy the inferred types of the graph outputs (left empty when the node was built) onto them."""
    inferred = {vi.name: vi for vi in model.graph.value_info}
    for out in model.graph.output:
        if out.name in inferred and not out.type.HasField("tensor_type"):
            out.CopyFrom(inferred[out.name])
        elif out.name in inferred:
            out.type.CopyFrom(inferred[out.name].type)


def extract(model, *, nodes: tuple[int, int] | None = None, inputs: Sequence[str] | None = None,
            outputs: Sequence[str] | None = None):
    """The part of an ONNX model between value names, or covering ``graph.node[start:stop]``."""
    import onnx
    import onnx.utils

    from kiln.frontend.onnx import load_model

    proto = onnx.shape_inference.infer_shapes(load_model(model))
    all_nodes = list(proto.graph.node)
    if nodes is not None:
        start, stop = _node_range(nodes, len(all_nodes))
        inputs, outputs = _range_boundary(proto, all_nodes, start, stop, inputs, outputs)
    if not inputs or not outputs:
        raise KilnError("a subgraph needs nodes=(start, stop) or both inputs= and outputs= (value names)")
    known = {vi.name for vi in list(proto.graph.input) + list(proto.graph.value_info) + list(proto.graph.output)}
    missing = [n for n in list(inputs) + list(outputs) if n not in known]
    if missing:
        raise KilnError(f"values {missing} are not in the model (or have no inferred type); "
                        f"known values: {sorted(known)[:20]}")
    try:
        return onnx.utils.Extractor(proto).extract_model(list(inputs), list(outputs))
    except Exception as e:  # noqa: BLE001  (onnx reports an unreachable cut as various errors)
        raise KilnError(f"cannot extract the subgraph from inputs {list(inputs)} to outputs {list(outputs)}: {e}") from None


def _node_range(nodes, count: int) -> tuple[int, int]:
    try:
        start, stop = (int(n) for n in nodes)
    except (TypeError, ValueError):
        raise KilnError(f"nodes= takes (start, stop) node indices; got {nodes!r}") from None
    if not 0 <= start < stop <= count:
        raise KilnError(f"nodes=({start}, {stop}) is outside the model's {count} nodes; expected "
                        f"0 <= start < stop <= {count}")
    return start, stop


def _range_boundary(proto, all_nodes, start, stop, inputs, outputs):
    """Values a node range reads from outside (minus constants) and writes for outside."""
    chosen = all_nodes[start:stop]
    produced = [o for n in chosen for o in n.output if o]
    constants = {t.name for t in proto.graph.initializer}
    read = [i for n in chosen for i in n.input if i and i not in produced and i not in constants]
    used_after = {i for n in all_nodes[stop:] for i in n.input} | {o.name for o in proto.graph.output}
    written = [o for o in produced if o in used_after]
    return list(inputs or dict.fromkeys(read)), list(outputs or written)


def resolve(model, *, inputs=None, outputs=None, attrs=None, nodes=None, num_outputs=None,
            opset: int = DEFAULT_OPSET):
    """What to hand ``kiln.compile`` for a kernel request; see the module docstring."""
    if is_operator_name(model):
        if outputs is not None or nodes is not None:
            raise KilnError("outputs= and nodes= select part of a model; an operator takes inputs= and attrs=")
        return operator_model(model, inputs or {}, attrs, num_outputs=num_outputs, opset=opset)
    if attrs is not None:
        raise KilnError("attrs= applies to a single operator (kiln.kernel('Gemm', inputs=..., attrs=...))")
    if nodes is not None or outputs is not None or inputs is not None:
        if isinstance(inputs, Mapping):
            raise KilnError("for a model, inputs= names the subgraph's input values (a list of names)")
        return extract(model, nodes=nodes, inputs=inputs, outputs=outputs)
    if isinstance(model, str) and not os.path.exists(model):
        raise ModelLoadError(f"{model!r} is neither a file nor an ONNX operator name (e.g. 'Gemm', 'Conv')")
    return model
