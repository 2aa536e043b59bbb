"""ONNX function ops without a Kiln converter, expanded into their function bodies.

Many standard ops are defined by ONNX as *functions*: a body of simpler ops, fixed
(``OpSchema.function_body``) or built for the node's attributes and input types (a
*context-dependent* function, e.g. CausalConvWithState). When Kiln has no converter of its
own for such a node, the node is replaced by its body before conversion -- the body's
values renamed apart (``<node>__fn<k>__<name>``), the formal inputs and outputs bound to
the node's, attribute references (``ref_attr_name``) resolved against the node's attributes
or the function's defaults -- so every op ONNX defines as a function is supported as soon
as its body's ops are. Bodies may call other function ops; expansion repeats up to
``MAX_DEPTH`` levels. A body with subgraphs (If, Loop, Scan) or with an op Kiln cannot
convert is not expanded: the node stays unsupported and the usual error names it.

Each expanded node remembers the opset its function was written for (``FunctionProto``'s
``opset_import``), and is converted at that opset: a body written for opset 18 means
ReduceMean with axes as an input even in a model of another opset.
"""
from __future__ import annotations

import onnx

MAX_DEPTH = 4


def expand_functions(proto: onnx.ModelProto, opset: int, has_converter) -> tuple[onnx.ModelProto, dict[int, int]]:
    """``proto`` with the function ops that ``has_converter(op, domain, opset)`` rejects replaced
    by their bodies, and the opset of each expanded node (by position in the new graph's node
    list; nodes not listed convert at the model's ``opset``)."""
    nodes = list(proto.graph.node)
    if all(has_converter(n.op_type, n.domain, opset) for n in nodes):
        return proto, {}  # the common case: no function to expand, no types to gather
    opsets = [opset] * len(nodes)
    types = _value_types(proto)  # values inside expanded bodies have none: nested context-
    changed = False              # dependent functions there stay unexpanded
    for depth in range(MAX_DEPTH):
        out_nodes, out_opsets, expanded = [], [], False
        for k, (node, node_opset) in enumerate(zip(nodes, opsets)):
            body = None
            if not has_converter(node.op_type, node.domain, node_opset):
                body = _body(node, node_opset, types, prefix=f"{node.name or node.op_type}__fn{depth}_{k}")
            # a body with an op Kiln cannot convert is not used: the node stays, so the error
            # names the op the model uses rather than one of its body's
            if body is not None and all(has_converter(n.op_type, n.domain, body[1])
                                        or _function(n, body[1], types) is not None for n in body[0]):
                out_nodes += body[0]
                out_opsets += [body[1]] * len(body[0])
                expanded = changed = True
            else:
                out_nodes.append(node)
                out_opsets.append(node_opset)
        nodes, opsets = out_nodes, out_opsets
        if not expanded:
            break
    if not changed:
        return proto, {}
    result = onnx.ModelProto()
    result.CopyFrom(proto)
    del result.graph.node[:]
    result.graph.node.extend(nodes)
    return result, {i: v for i, v in enumerate(opsets) if v != opset}


def _value_types(proto: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    """Every value's type that shape inference found (context-dependent bodies need them)."""
    types = {}
    for vi in list(proto.graph.input) + list(proto.graph.value_info) + list(proto.graph.output):
        types[vi.name] = vi.type
    for t in proto.graph.initializer:
        tp = onnx.TypeProto()
        tp.tensor_type.elem_type = t.data_type
        for d in t.dims:
            tp.tensor_type.shape.dim.add().dim_value = d
        types[t.name] = tp
    return types


def _function(node: onnx.NodeProto, opset: int, types) -> onnx.FunctionProto | None:
    if node.domain not in ("", "ai.onnx"):
        return None
    try:
        schema = onnx.defs.get_schema(node.op_type, opset)
    except Exception:  # noqa: BLE001  (not a standard op at this opset)
        return None
    if schema.has_function:
        fn = schema.get_function_with_opset_version(opset) or schema.function_body
        if isinstance(fn, bytes):  # some onnx versions hand the body over serialized
            proto = onnx.FunctionProto()
            proto.ParseFromString(fn)
            fn = proto
        return fn
    if schema.has_context_dependent_function:
        if any(name and name not in types for name in node.input):
            return None  # an input without an inferred type: the body cannot be built
        empty = onnx.TypeProto()
        input_types = [(types[n] if n else empty).SerializeToString() for n in node.input]
        try:
            raw = schema.get_context_dependent_function_with_opset_version(
                opset, node.SerializeToString(), input_types)
        except Exception:  # noqa: BLE001  (onnx refuses this node's variant)
            return None
        fn = onnx.FunctionProto()
        fn.ParseFromString(raw)
        return fn
    return None


def _body(node: onnx.NodeProto, opset: int, types, prefix: str):
    """(renamed body nodes, the body's opset) or None when ``node`` cannot be expanded."""
    fn = _function(node, opset, types)
    if fn is None or not fn.node:
        return None
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in fn.node for a in n.attribute):
        return None  # subgraphs would need renaming inside: the node stays unsupported
    names = {formal: actual for formal, actual in zip(fn.input, node.input)}
    names.update({formal: "" for formal in list(fn.input)[len(node.input):]})  # optional inputs left out
    names.update({formal: actual for formal, actual in zip(fn.output, node.output)})

    def rename(name: str) -> str:
        if not name:
            return ""
        if name not in names:
            names[name] = f"{prefix}__{name}"
        return names[name]

    given = {a.name: a for a in node.attribute}
    defaults = {a.name: a for a in fn.attribute_proto}
    out = []
    for body_node in fn.node:
        n = onnx.NodeProto()
        n.CopyFrom(body_node)
        n.name = f"{prefix}__{body_node.name or body_node.op_type}_{len(out)}"
        del n.input[:], n.output[:]
        n.input.extend(rename(x) for x in body_node.input)
        n.output.extend(rename(x) for x in body_node.output)
        del n.attribute[:]
        for a in body_node.attribute:
            if a.ref_attr_name:
                src = given.get(a.ref_attr_name) or defaults.get(a.ref_attr_name)
                if src is None:
                    continue  # neither given nor defaulted: the attribute is absent
                resolved = onnx.AttributeProto()
                resolved.CopyFrom(src)
                resolved.name = a.name
                n.attribute.append(resolved)
            else:
                n.attribute.append(a)
        out.append(n)
    fn_opset = next((o.version for o in fn.opset_import if o.domain in ("", "ai.onnx")), opset)
    return out, fn_opset


__all__ = ["expand_functions", "MAX_DEPTH"]
