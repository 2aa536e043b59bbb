"""ONNX frontend: load, check, infer shapes, dispatch converters by opset -> graph IR.

Steps, in order:
1. read the file or ModelProto (external data only from inside the model's directory),
2. run the ONNX checker and shape inference,
3. list *every* unsupported operator in one ``UnsupportedOperatorError``,
4. convert node by node; nodes whose inputs are all constants fold on the spot, so
   shape subgraphs (Shape -> Gather -> Concat -> Reshape) become constants.
"""
from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from kiln.errors import KilnError, ModelLoadError, ShapeError, UnsupportedOperatorError
from kiln.frontend.onnx_functions import expand_functions
from kiln.frontend.onnx_ops import lookup
from kiln.ir import ops
from kiln.ir.dtype import DType
from kiln.ir.graph import Graph, Node, TensorType, Value
from kiln.ir.symbolic import as_dim, symbols_of
from kiln.passes.fold_constants import try_fold

_ONNX_DTYPES = {
    onnx.TensorProto.FLOAT: DType.float32, onnx.TensorProto.DOUBLE: DType.float64,
    onnx.TensorProto.FLOAT16: DType.float16, onnx.TensorProto.INT8: DType.int8,
    onnx.TensorProto.INT16: DType.int16, onnx.TensorProto.INT32: DType.int32,
    onnx.TensorProto.INT64: DType.int64, onnx.TensorProto.UINT8: DType.uint8,
    onnx.TensorProto.BOOL: DType.bool, onnx.TensorProto.UINT16: DType.uint16,
    onnx.TensorProto.UINT32: DType.uint32, onnx.TensorProto.UINT64: DType.uint64,
    onnx.TensorProto.BFLOAT16: DType.bfloat16,
    onnx.TensorProto.FLOAT8E4M3FN: DType.float8_e4m3fn, onnx.TensorProto.FLOAT8E4M3FNUZ: DType.float8_e4m3fnuz,
    onnx.TensorProto.FLOAT8E5M2: DType.float8_e5m2, onnx.TensorProto.FLOAT8E5M2FNUZ: DType.float8_e5m2fnuz,
    onnx.TensorProto.FLOAT4E2M1: DType.float4_e2m1fn, onnx.TensorProto.FLOAT8E8M0: DType.float8_e8m0fnu,
    onnx.TensorProto.INT4: DType.int4, onnx.TensorProto.UINT4: DType.uint4,
    onnx.TensorProto.INT2: DType.int2, onnx.TensorProto.UINT2: DType.uint2,
}


def _dtype_name(elem_type: int) -> str:
    if elem_type in onnx.TensorProto.DataType.values():
        return onnx.TensorProto.DataType.Name(elem_type)
    return str(elem_type)


def _dtype_reason(names) -> str:
    return (f"element type {', '.join(sorted(set(names)))} is not supported; Kiln supports "
            f"{', '.join(d.value for d in _ONNX_DTYPES.values())}")


def onnx_dtype(elem_type: int) -> DType:
    """Kiln's dtype of an ONNX element type; a valid type Kiln lacks is unsupported, not invalid.

    (``_check_dtypes`` reports such types per node before conversion; this is the backstop.)
    """
    try:
        return _ONNX_DTYPES[elem_type]
    except KeyError:
        name = _dtype_name(elem_type)
        raise UnsupportedOperatorError([(f"element type {name}", 0, ["<value>"])],
                                       reason=_dtype_reason([name])) from None


class NeedsConstantError(UnsupportedOperatorError):
    """A converter needs the value of something that is only known at run time.

    Kiln compiles static shapes ahead of time, so values that fix a shape (axes, pads, a
    Reshape target ...) must be constants. ``inputs`` names the graph inputs the value is
    computed from: binding those to constants makes the model compilable, which is what
    ``kiln.onnx_backend`` does when it specializes a model on its first inputs.
    """

    def __init__(self, unsupported, reason: str, inputs: Sequence[str]):
        super().__init__(unsupported, reason=reason)
        self.inputs = tuple(inputs)


# -- loading -----------------------------------------------------------------------------

def load_model(model) -> onnx.ModelProto:
    """A checked ModelProto from a path, bytes or ModelProto."""
    if isinstance(model, onnx.ModelProto):
        proto, base_dir = model, None
    elif isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        if not os.path.isfile(path):
            raise ModelLoadError(f"model file {path!r} does not exist")
        try:
            proto = onnx.load(path, load_external_data=False)
        except Exception as e:  # protobuf raises DecodeError and friends
            raise ModelLoadError(f"{path!r} is not a readable ONNX model ({type(e).__name__}: {e}); "
                                 "expected a serialized onnx.ModelProto") from None
        base_dir = os.path.dirname(os.path.abspath(path))
        _load_external_data(proto, base_dir)
    else:
        raise ModelLoadError(f"expected a path or onnx.ModelProto, got {type(model).__name__}")
    if not proto.graph.node and not proto.graph.output:
        raise ModelLoadError("the model has an empty graph (no nodes, no outputs): the file is "
                             "truncated or not an ONNX model")
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as e:
        raise ModelLoadError(f"the ONNX checker rejected the model: {str(e).splitlines()[0]}") from None
    return _infer_shapes(proto)


# ops whose ONNX shape inference rejects valid models: STFT's counts dft_length bins where a
# onesided transform has dft_length // 2 + 1 (ONNX's own test_stft fails strict inference)
LOOSE_INFERENCE = ("STFT",)


def _infer_shapes(proto: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX shape inference in strict mode (an inconsistent model is a ShapeError).

    ONNX's strict inference of some function ops' bodies fails on valid models (for
    example MeanVarianceNormalization at opset 13), as does its rule for the ops in
    ``LOOSE_INFERENCE``. When the failure is in such an op, the non-strict result is used:
    Kiln's own shape rules still check every node.
    """
    import re

    try:
        return onnx.shape_inference.infer_shapes(proto, strict_mode=True, data_prop=True)
    except Exception as e:  # noqa: BLE001  (onnx raises InferenceError and plain RuntimeErrors)
        message = str(e).strip()
    m = re.search(r"\(op_type:(\w+)", message)
    loose = any(n.op_type in LOOSE_INFERENCE for n in proto.graph.node)  # its errors reach later nodes
    if loose or (m and _is_function_op(m.group(1), proto)):
        try:
            return onnx.shape_inference.infer_shapes(proto, strict_mode=False, data_prop=True)
        except Exception:  # noqa: BLE001
            pass
    raise ShapeError(f"ONNX shape inference failed: {message.splitlines()[-1]}")


def _is_function_op(op_type: str, proto: onnx.ModelProto) -> bool:
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)
    try:
        schema = onnx.defs.get_schema(op_type, opset)
    except Exception:  # noqa: BLE001  (not a standard op)
        return False
    return bool(schema.has_function or schema.has_context_dependent_function)


def _load_external_data(proto: onnx.ModelProto, base_dir: str) -> None:
    """Load external tensors, refusing any location that leaves the model's directory."""
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    base = os.path.realpath(base_dir)
    for tensor in _get_all_tensors(proto):
        if not uses_external_data(tensor):
            continue
        info = {e.key: e.value for e in tensor.external_data}
        loc = info.get("location", "")
        full = os.path.realpath(os.path.join(base, loc))
        if os.path.isabs(loc) or os.path.commonpath([base, full]) != base:
            raise ModelLoadError(f"external data location {loc!r} of tensor {tensor.name!r} escapes the "
                                 f"model directory {base_dir!r}; expected a relative path inside it")
        if not os.path.isfile(full):
            raise ModelLoadError(f"external data file {loc!r} of tensor {tensor.name!r} is missing")
        offset, length = int(info.get("offset", 0) or 0), info.get("length")
        with open(full, "rb") as f:
            f.seek(offset)
            data = f.read(int(length)) if length else f.read()
        expected = int(np.prod(tensor.dims)) * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
        if len(data) < expected:
            raise ModelLoadError(f"external data for {tensor.name!r} has {len(data)} bytes; expected {expected}")
        tensor.raw_data = data[:expected]
        tensor.data_location = onnx.TensorProto.DEFAULT
        del tensor.external_data[:]


# -- conversion ------------------------------------------------------------------------------

class ConvertContext:
    """What a converter sees: inputs, constants, attributes, and ``emit`` for kiln ops."""

    def __init__(self, graph_inputs: Sequence[Value], constants: dict[str, np.ndarray], opset: int):
        self.opset = opset
        self.constants = constants
        self.graph_inputs = {v.name for v in graph_inputs}
        self.types: dict[str, TensorType] = {v.name: v.type for v in graph_inputs}
        for k, v in constants.items():
            self.types[k] = TensorType(tuple(v.shape), DType.of(v.dtype))
        self.nodes: list[Node] = []
        self._n = 0
        self.node: onnx.NodeProto | None = None
        # ONNX value name -> kiln value name (converters may return any existing value)
        self.names: dict[str, str] = {n: n for n in self.types}

    # inputs and attributes of the node being converted
    def inputs(self) -> list[str]:
        return [self.names[n] if n else "" for n in self.node.input]

    def outputs(self) -> list[str]:
        return list(self.node.output)

    def has_input(self, i: int) -> bool:
        return i < len(self.node.input) and self.node.input[i] != ""

    def input(self, i: int) -> str:
        name = self.node.input[i]
        if name not in self.names:
            self.fail(f"input {name!r} is not defined before this node")
        return self.names[name]

    def type(self, name: str) -> TensorType:
        return self.types[name]

    def shape(self, name: str) -> tuple:
        return self.types[name].shape

    def const(self, name: str) -> np.ndarray | None:
        return self.constants.get(name)

    def require_const(self, i: int, what: str) -> np.ndarray:
        name = self.input(i)
        v = self.constants.get(name)
        if v is None:
            sources = self.graph_inputs_of(name)
            raise NeedsConstantError(
                [(self.node.op_type, self.opset, [self.node.name or "<unnamed>"])],
                f"input {i} ({what}) is a run-time value (from graph inputs {sorted(sources)}); Kiln "
                "needs it constant (an initializer, or computable from static shapes)", sources)
        return v

    def graph_inputs_of(self, name: str) -> set[str]:
        """The graph inputs that value ``name`` is computed from (through emitted nodes)."""
        producers = {o.name: n for n in self.nodes for o in n.outputs}
        found, stack, seen = set(), [name], set()
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            if n in self.graph_inputs:
                found.add(n)
            elif n in producers:
                stack.extend(i for i in producers[n].inputs if i)
        return found

    def attr(self, name: str, default=None):
        for a in self.node.attribute:
            if a.name == name:
                v = onnx.helper.get_attribute_value(a)
                if isinstance(v, bytes):
                    return v.decode()
                if isinstance(v, onnx.TensorProto):
                    return numpy_helper.to_array(v)
                if isinstance(v, list):
                    return [x.decode() if isinstance(x, bytes) else x for x in v]
                return v
        return default

    def fail(self, message: str):
        """The model is invalid (inconsistent shapes or attributes)."""
        raise ShapeError(f"{self.node.op_type} node {self.node.name!r}: {message}")

    def unsupported(self, reason: str):
        """The model is valid ONNX but Kiln does not implement this variant of the op."""
        raise UnsupportedOperatorError([(self.node.op_type, self.opset, [self.node.name or "<unnamed>"])],
                                       reason=reason)

    def convert(self, node: onnx.NodeProto, opset: int) -> None:
        """Convert one ONNX node at ``opset`` (its converter must exist) and record the kiln
        names of its outputs; the context is left on that node."""
        self.node, self.opset = node, opset
        fn = lookup(node.op_type, node.domain, opset)
        if fn is None:
            self.unsupported(f"no converter for {node.op_type} at opset {opset}")
        try:
            outs = fn(self, node)
        except KilnError:
            raise
        except (ValueError, IndexError, KeyError, TypeError) as e:
            raise ShapeError(f"{node.op_type} node {node.name!r} could not be converted: {e}") from None
        except Exception as e:  # noqa: BLE001  (overflow, zero division ... in a converter or folding)
            raise KilnError(f"{node.op_type} node {node.name!r}: internal error while converting "
                            f"({type(e).__name__}: {e}); this is a bug in Kiln") from e
        for onnx_name, kiln_name in zip(node.output, outs):
            if onnx_name:
                self.names[onnx_name] = kiln_name

    # building the graph
    def fresh(self, hint: str = "t") -> str:
        self._n += 1
        return f"{hint}__{self._n}"

    def add_const(self, array: np.ndarray, hint: str = "c") -> str:
        name = self.fresh(hint)
        array = np.asarray(array, order="C")
        self.constants[name] = array
        self.types[name] = TensorType(tuple(array.shape), DType.of(array.dtype))
        return name

    def emit(self, op: str, inputs: Sequence[str], attrs: Mapping[str, object] | None = None,
             out_names: Sequence[str] | None = None, num_outputs: int | None = None,
             fold: bool = True) -> list[str]:
        attrs = dict(attrs or {})
        in_types = [self.types[n] for n in inputs]
        out_types = ops.infer_types(op, in_types, attrs)
        if num_outputs is not None and len(out_types) != num_outputs:
            raise ShapeError(f"op {op} produced {len(out_types)} outputs; expected {num_outputs}")
        names = list(out_names) if out_names else [self.fresh(op) for _ in out_types]
        outs = tuple(Value(n, t) for n, t in zip(names, out_types))
        node = Node(op, tuple(inputs), outs, attrs, name=self.node.name if self.node else "")
        folded = try_fold(node, self.constants) if fold else None
        for v in outs:
            self.types[v.name] = v.type
            self.names.setdefault(v.name, v.name)
        if folded is not None:
            for v, arr in zip(outs, folded):
                self.constants[v.name] = arr
        else:
            self.nodes.append(node)
        return names



def _value_info_type(vi: onnx.ValueInfoProto, overrides: Mapping[str, Sequence]) -> TensorType:
    """An input's type; a named dim (dim_param) stays symbolic, an anonymous one is an error."""
    tt = vi.type.tensor_type
    if vi.name in overrides:
        return TensorType(tuple(as_dim(d) for d in overrides[vi.name]), onnx_dtype(tt.elem_type))
    shape = []
    for axis, d in enumerate(tt.shape.dim):
        if d.HasField("dim_value"):
            shape.append(int(d.dim_value))
        elif d.dim_param:
            shape.append(as_dim(d.dim_param))
        else:
            raise ShapeError(f"input {vi.name!r} dim {axis} has neither a size nor a name; give its "
                             f"shape with input_shapes={{{vi.name!r}: (...)}} (CLI: --input-shape)")
    return TensorType(tuple(shape), onnx_dtype(tt.elem_type))


def _check_supported(proto: onnx.ModelProto, opset: int, node_opsets: Mapping[int, int] | None = None) -> None:
    missing: dict[tuple[str, int], list[str]] = {}
    for k, node in enumerate(proto.graph.node):
        version = (node_opsets or {}).get(k, opset)
        if lookup(node.op_type, node.domain, version) is None:
            missing.setdefault((node.op_type, version), []).append(node.name or f"<{node.op_type} #{len(missing)}>")
    if missing:
        raise UnsupportedOperatorError([(op, ver, names) for (op, ver), names in missing.items()])


# attributes that name an element type (Cast's "to", EyeLike's "dtype" ...)
_DTYPE_ATTRS = ("to", "dtype", "output_dtype", "output_datatype", "stash_type")


def _node_dtypes(node: onnx.NodeProto, elem: Mapping[str, int]) -> set[int]:
    """Element types a node reads, writes or names in its attributes."""
    types = {elem[n] for n in list(node.input) + list(node.output) if n in elem}
    for a in node.attribute:
        if a.name in _DTYPE_ATTRS and a.type == onnx.AttributeProto.INT:
            types.add(a.i)
        elif a.type == onnx.AttributeProto.TENSOR:
            types.add(a.t.data_type)
    return types


def _check_dtypes(proto: onnx.ModelProto, opset: int) -> None:
    """Every node touching an element type Kiln lacks (bfloat16, float8, int4, uint16/32/64,
    string, complex ...) in one UnsupportedOperatorError, before anything is converted."""
    g = proto.graph
    elem = {vi.name: vi.type.tensor_type.elem_type for vi in list(g.input) + list(g.output) + list(g.value_info)
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type}
    elem.update({t.name: t.data_type for t in g.initializer})
    bad: dict[str, list[str]] = {}
    names: list[str] = []
    for k, node in enumerate(g.node):
        missing = {t for t in _node_dtypes(node, elem) if t not in _ONNX_DTYPES}
        if missing:
            bad.setdefault(node.op_type, []).append(node.name or f"<{node.op_type} #{k}>")
            names += [_dtype_name(t) for t in missing]
    for kind, values in (("graph input", g.input), ("graph output", g.output)):
        for vi in values if not bad else ():  # only when no node reported it already
            if vi.name in elem and elem[vi.name] not in _ONNX_DTYPES:
                names.append(_dtype_name(elem[vi.name]))
                bad.setdefault(kind, []).append(vi.name)
    if bad:
        raise UnsupportedOperatorError([(op, opset, ns) for op, ns in bad.items()], reason=_dtype_reason(names))


def from_onnx(model, input_shapes: Mapping[str, Sequence] | None = None,
              dim_bounds: Mapping[str, tuple[int, int]] | None = None) -> Graph:
    """Convert an ONNX model (path or ModelProto) into a verified graph IR.

    ``input_shapes`` fixes input shapes (an entry may be a name, declaring that dim
    symbolic); ``dim_bounds`` gives each symbolic dim its (lowest, highest) value.
    """
    input_shapes = dict(input_shapes or {})
    proto = load_model(model)
    if input_shapes:
        proto = _override_input_shapes(proto, input_shapes)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)
    proto, node_opsets = expand_functions(proto, opset, lambda op, domain, v: lookup(op, domain, v) is not None)
    _check_supported(proto, opset, node_opsets)
    _check_dtypes(proto, opset)

    constants = {t.name: np.asarray(numpy_helper.to_array(t), order="C") for t in proto.graph.initializer}
    for arr in constants.values():
        DType.of(arr.dtype)
    inputs = tuple(Value(vi.name, _value_info_type(vi, input_shapes))
                   for vi in proto.graph.input if vi.name not in constants)
    unknown = set(input_shapes) - {v.name for v in inputs}
    if unknown:
        raise ShapeError(f"--input-shape names {sorted(unknown)}, which are not model inputs; "
                         f"inputs are {[v.name for v in inputs]}")
    ctx = ConvertContext(inputs, constants, opset)
    for k, node in enumerate(proto.graph.node):
        ctx.convert(node, node_opsets.get(k, opset))  # an expanded function body has its own opset
    ctx.node, ctx.opset = None, opset
    return _finish_graph(ctx, proto, inputs, _bounds_for(inputs, dim_bounds))


def _bounds_for(inputs, dim_bounds) -> dict[str, tuple[int, int]]:
    """Bounds of the inputs' symbols that were declared (compile checks none is missing)."""
    declared = {k: _check_bound(k, v) for k, v in (dim_bounds or {}).items()}
    used = set().union(*(symbols_of(v.shape) for v in inputs)) if inputs else set()
    unknown = set(declared) - used
    if unknown:
        raise ShapeError(f"dim_bounds names {sorted(unknown)}, which are not symbolic dims of the inputs; "
                         f"the symbolic dims are {sorted(used)}")
    return {k: v for k, v in declared.items() if k in used}


def _check_bound(name, bound) -> tuple[int, int]:
    lo, hi = (1, bound) if isinstance(bound, int) else tuple(bound)
    if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi):
        raise ShapeError(f"bounds of dim {name!r} must be (lowest, highest) with 1 <= lowest <= highest; got {bound!r}")
    return (lo, hi)


def _finish_graph(ctx: "ConvertContext", proto: onnx.ModelProto, inputs, dim_bounds) -> Graph:
    """Name graph outputs as ONNX does.

    A computed value takes the name of the (first) output it is; an output that is a
    constant, a graph input or a value another output already claimed gets a copy kernel.
    """
    input_names = {v.name for v in inputs}
    output_names = {vi.name for vi in proto.graph.output}
    renames: dict[str, str] = {}   # computed value -> the output name it takes
    moved: dict[str, str] = {}     # folded output -> the new name of its constant
    claimed: set[str] = set()
    copies: list[tuple[str, str]] = []
    outputs = []
    for vi in proto.graph.output:
        src = ctx.names.get(vi.name)
        if src is None:
            raise ShapeError(f"graph output {vi.name!r} is never computed")
        if vi.name in input_names:
            raise UnsupportedOperatorError(
                [(f"graph output {vi.name!r}", 0, [vi.name])],
                reason=f"graph output {vi.name!r} is the graph input of the same name; Kiln's outputs are "
                       "tensors of their own: give the output another name (an Identity node)")
        if src in ctx.constants or src in input_names:
            if src == vi.name and src in ctx.constants:
                # a folded output keeps its name (the copy kernel writes it); the constant
                # moves to a new name, which the nodes reading it read instead
                moved[src] = ctx.add_const(ctx.constants.pop(src), "out")
            copies.append((moved.get(src, src), vi.name))
        elif src == vi.name and src not in claimed:
            claimed.add(src)
        elif src in claimed or src in output_names:
            copies.append((src, vi.name))
        else:
            renames[src] = vi.name
            claimed.add(src)
        outputs.append(Value(vi.name, ctx.types[src]))
    nodes = []
    for node in ctx.nodes:
        nodes.append(Node(node.op, tuple(renames.get(n, n) for n in (moved.get(i, i) for i in node.inputs)),
                          tuple(Value(renames.get(o.name, o.name), o.type) for o in node.outputs),
                          node.attrs, node.name))
    for src, out in copies:
        nodes.append(Node("identity", (renames.get(src, src),), (Value(out, ctx.types[src]),), {}, "output"))
    used = {n for node in nodes for n in node.inputs}
    consts = {k: v for k, v in ctx.constants.items() if k in used}
    name = proto.graph.name or "model"
    return Graph(inputs, tuple(outputs), tuple(nodes), consts, name=_c_ident(name),
                 dim_bounds=dim_bounds).verify()


def _override_input_shapes(proto: onnx.ModelProto, shapes: Mapping[str, Sequence[int]]) -> onnx.ModelProto:
    proto2 = onnx.ModelProto()
    proto2.CopyFrom(proto)
    proto2.graph.ClearField("value_info")
    for vi in proto2.graph.input:
        if vi.name in shapes:
            dims = vi.type.tensor_type.shape.dim
            new = list(shapes[vi.name])
            if len(dims) != len(new):
                raise ShapeError(f"--input-shape {vi.name} has rank {len(new)}; the model declares rank {len(dims)}")
            for d, n in zip(dims, new):
                d.Clear()
                if isinstance(n, str):
                    d.dim_param = n  # declared symbolic: a dynamic dim with bounds
                else:
                    d.dim_value = int(n)
    return _infer_shapes(proto2)


def _c_ident(name: str) -> str:
    import re

    s = re.sub(r"[^0-9a-zA-Z_]", "_", name)
    return s if s and not s[0].isdigit() else "m_" + s
