"""PyTorch frontend: torch.export -> core ATen -> graph IR, keyed by aten overload name.

Steps, in order:
1. ``torch.export.export(module, example_inputs)`` with the module in eval mode (restored
   afterwards, as ``torch.onnx.export`` does), then ``run_decompositions()`` to core ATen,
   a closed set of a couple of hundred ops (a few ops whose decomposition is worse for
   Kiln than its own op, such as bicubic upsampling, stay whole: ``torch_ops.PRESERVE``),
2. list *every* unsupported op, with its FX node names, in one ``UnsupportedOperatorError``
   before anything is converted,
3. placeholders: user inputs become graph inputs named after the forward arguments;
   parameters, buffers and lifted constants become graph constants (numpy arrays),
4. convert node by node through ``TorchContext.emit`` (the ONNX frontend's context, so each
   op's shape rule runs at once and nodes with constant inputs fold: causal masks built
   from ``arange``/``full`` become constants). Every result is checked against the shape
   and dtype torch recorded for it, so a converter bug fails at its node, not at run time,
5. user outputs (tuples, lists and dicts are flattened by export) become
   ``output_0``, ``output_1``, ...

Dynamic shapes are not handled here: the program is exported with the static shapes of
the example inputs.
"""
from __future__ import annotations

import contextlib
import operator
import warnings
from typing import Mapping, Sequence

import numpy as np

from kiln.errors import KilnError, ModelLoadError, ShapeError, UnsupportedOperatorError, VerificationError
from kiln.frontend.onnx import ConvertContext, _c_ident
from kiln.frontend.torch_ops import PRESERVE, lookup, torch_dtype
from kiln.ir.dtype import DType
from kiln.ir.graph import Graph, Node, TensorType, Value


def _torch():
    try:
        import torch
    except ImportError:
        raise ModelLoadError("compiling a torch.nn.Module needs PyTorch: pip install torch==2.13.0") from None
    return torch


# -- op names ---------------------------------------------------------------------------------

def op_key(target) -> str | None:
    """``"convolution.default"`` for ``torch.ops.aten.convolution.default``; None for others."""
    schema = getattr(target, "_schema", None)
    if schema is None or getattr(target, "namespace", None) != "aten":
        return None
    return f"{schema.name.split('::', 1)[1]}.{target._overloadname}"


def display_name(node) -> str:
    """How an FX node's operation is named in errors: ``aten.convolution.default``."""
    if node.op == "call_function":
        key = op_key(node.target)
        return f"aten.{key}" if key else str(getattr(node.target, "__name__", node.target))
    return f"{node.op} {node.target}"


def _is_supported(node) -> bool:
    if node.op in ("placeholder", "output"):
        return True
    if node.op != "call_function":
        return False  # get_attr / call_module only appear with control flow or submodules
    if node.target is operator.getitem:
        return True
    key = op_key(node.target)
    return key is not None and lookup(key) is not None


def _check_supported(fx_graph, version: str) -> None:
    missing: dict[str, list[str]] = {}
    for node in fx_graph.nodes:
        if not _is_supported(node):
            missing.setdefault(display_name(node), []).append(node.name)
    if missing:
        raise UnsupportedOperatorError([(op, version, names) for op, names in missing.items()])


# -- the conversion context ---------------------------------------------------------------------

def bind_args(node) -> dict:
    """Every schema argument of an aten call by name, defaults filled in."""
    out = {}
    for i, arg in enumerate(node.target._schema.arguments):
        if i < len(node.args) and not arg.kwarg_only:
            out[arg.name] = node.args[i]
        elif arg.name in node.kwargs:
            out[arg.name] = node.kwargs[arg.name]
        else:
            out[arg.name] = arg.default_value if arg.has_default_value() else None
    return out


class TorchContext(ConvertContext):
    """The ONNX frontend's context (``emit``, ``add_const``, types, folding) for FX nodes.

    ``env`` maps each FX node name to its kiln value name, or to a list of them for ops
    with several results. ``node`` is the FX node being converted; ``emit`` names the
    kiln nodes after it.
    """

    def __init__(self, graph_inputs: Sequence[Value], constants: dict[str, np.ndarray], version: str):
        super().__init__(graph_inputs, constants, opset=0)
        self.version = version
        self.env: dict[str, object] = {}
        self.node = None
        self._scalars: dict[tuple, str] = {}

    @property
    def op(self) -> str:
        return display_name(self.node)

    def outputs(self) -> list[str]:
        """No fixed output names: the ONNX helpers then pick fresh ones."""
        return []

    # -- errors -------------------------------------------------------------------------
    def fail(self, message: str):
        """The program is inconsistent (a shape or argument Kiln cannot make sense of)."""
        raise ShapeError(f"{self.op} node {self.node.name!r}: {message}")

    def unsupported(self, reason: str):
        """A valid variant of the op that Kiln does not implement."""
        raise UnsupportedOperatorError([(self.op, self.version, [self.node.name])], reason=reason)

    # -- arguments -------------------------------------------------------------------------
    def value(self, arg) -> str:
        """The kiln value of an FX node argument."""
        v = self.env.get(getattr(arg, "name", None))
        if not isinstance(v, str):
            self.fail(f"expected a tensor argument; got {arg!r}")
        return v

    def tensor(self, arg, dtype: DType) -> str:
        """A tensor argument cast to ``dtype``, or a Python scalar as a rank-0 constant."""
        if isinstance(arg, (bool, int, float)):
            return self.scalar(arg, dtype)
        return self.cast(self.value(arg), dtype)

    def scalar(self, v, dtype: DType) -> str:
        """A rank-0 constant; one per (value, dtype), since traced code repeats 0, 1 and -inf a lot."""
        key = (dtype, repr(v))
        if key not in self._scalars:
            self._scalars[key] = self.add_const(np.asarray(v, dtype=dtype.np), "scalar")
        return self._scalars[key]

    def cast(self, name: str, dtype: DType) -> str:
        if self.type(name).dtype == dtype:
            return name
        return self.emit("cast", [name], {"to": dtype.value})[0]

    def meta(self, arg=None):
        """The value torch recorded for ``arg`` (default: the node being converted)."""
        node = self.node if arg is None else arg
        return node.meta.get("val")

    def out_type(self, index: int | None = None) -> TensorType:
        """Shape and dtype torch recorded for the node's result (``index`` for tuples)."""
        val = self.meta()
        if index is not None:
            val = val[index]
        return TensorType(tuple(int(d) for d in val.shape), torch_dtype(val.dtype))

    def used_results(self) -> set[int]:
        """Indices of the results that some ``getitem`` reads."""
        return {u.args[1] for u in self.node.users if u.target is operator.getitem}


# -- placeholders and outputs ----------------------------------------------------------------------

def _to_numpy(t) -> np.ndarray:
    arr = t.detach().cpu().contiguous().numpy().copy()  # a copy: later edits to the module must not leak in
    DType.of(arr.dtype)
    return arr


def _placeholders(ep, version: str) -> tuple[list[Value], dict[str, np.ndarray], dict[str, str]]:
    """Graph inputs, constants, and the env entries of every placeholder."""
    from torch.export.graph_signature import InputKind, TensorArgument

    inputs, constants, env = [], {}, {}
    placeholders = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    for spec in ep.graph_signature.input_specs:
        name = spec.arg.name
        if spec.kind == InputKind.USER_INPUT:
            if not isinstance(spec.arg, TensorArgument):
                continue  # a non-tensor example input: export baked its value into the program
            val = placeholders[name].meta["val"]
            inputs.append(Value(name, TensorType(tuple(int(d) for d in val.shape), torch_dtype(val.dtype))))
        elif spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            source = ep.state_dict if spec.target in ep.state_dict else ep.constants
            constants[name] = _to_numpy(source[spec.target])
        else:
            raise UnsupportedOperatorError([(f"placeholder kind {spec.kind.name}", version, [name])],
                                           reason="Kiln converts tensor inputs, parameters, buffers and constants")
        env[name] = name
    return inputs, constants, env


def _user_outputs(ep) -> list[str]:
    """FX names of the user outputs, in flattened order; rejects in-place buffer updates."""
    from torch.export.graph_signature import OutputKind, TensorArgument

    names = []
    for k, spec in enumerate(ep.graph_signature.output_specs):
        if spec.kind != OutputKind.USER_OUTPUT:
            raise ModelLoadError(f"forward() updates {spec.target!r} in place ({spec.kind.name}); Kiln compiles "
                                 "pure inference functions (is a BatchNorm still in training mode?)")
        if not isinstance(spec.arg, TensorArgument):
            raise ModelLoadError(f"output {len(names)} of forward() is {getattr(spec.arg, 'value', spec.arg)!r}, "
                                 "not a tensor; Kiln models return tensors only")
        names.append(spec.arg.name)
    return names


def _finish(ctx: TorchContext, sources: list[str], inputs: Sequence[Value], name: str) -> Graph:
    """Name the outputs output_0, ...; an output that is a constant, an input or a repeat gets a copy."""
    input_names = {v.name for v in inputs}
    ctx.node = None
    renames: dict[str, str] = {}
    outputs = []
    for k, src in enumerate(sources):
        out = f"output_{k}"
        if src in ctx.constants or src in input_names or src in renames:
            ctx.emit("identity", [src], out_names=[out], fold=False)
        else:
            renames[src] = out
        outputs.append(Value(out, ctx.types[src]))
    nodes = [Node(n.op, tuple(renames.get(i, i) for i in n.inputs),
                  tuple(Value(renames.get(o.name, o.name), o.type) for o in n.outputs), n.attrs, n.name)
             for n in ctx.nodes]
    used = {i for n in nodes for i in n.inputs}
    consts = {k: v for k, v in ctx.constants.items() if k in used}
    return Graph(tuple(inputs), tuple(outputs), tuple(nodes), consts, name=_c_ident(name)).verify()


# -- node conversion ---------------------------------------------------------------------------------

def _getitem(ctx: TorchContext, node):
    src, index = node.args
    results = ctx.env[src.name]
    value = results[index] if isinstance(results, (list, tuple)) and index < len(results) else None
    if value is None:
        computed = [k for k, r in enumerate(results or []) if r is not None]
        raise UnsupportedOperatorError(
            [(display_name(src), ctx.version, [src.name])],
            reason=f"its result {index} is read by {node.name!r}; Kiln computes only results {computed}")
    return value


def _check_result(ctx: TorchContext, node, result) -> None:
    """The converter's result types must be what torch recorded for the node."""
    val = node.meta.get("val")
    pairs = zip(result, val) if isinstance(result, (list, tuple)) else [(result, val)]
    for name, v in pairs:
        if name is None or v is None or not hasattr(v, "shape"):
            continue
        want = TensorType(tuple(int(d) for d in v.shape), torch_dtype(v.dtype))
        got = ctx.types[name]
        if tuple(got.shape) != want.shape or got.dtype != want.dtype:
            raise VerificationError(f"{display_name(node)} node {node.name!r} converted to {got}; torch "
                                    f"computes {want} (a bug in its Kiln converter)")


def _convert(ctx: TorchContext, node) -> None:
    ctx.node = node
    if node.target is operator.getitem:
        result = _getitem(ctx, node)
    else:
        fn = lookup(op_key(node.target))
        try:
            result = fn(ctx, bind_args(node))
        except KilnError:
            raise
        except (ValueError, IndexError, KeyError, TypeError, ZeroDivisionError) as e:
            raise ShapeError(f"{ctx.op} node {node.name!r} could not be converted: {e}") from None
    _check_result(ctx, node, result)
    ctx.env[node.name] = result


# -- export --------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _eval_mode(module):
    """The module and its submodules in eval mode, their own modes restored afterwards."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _example_args(torch, example_inputs) -> tuple[tuple, dict]:
    """Positional and keyword example inputs; numpy arrays become tensors."""
    if example_inputs is None:
        raise ModelLoadError("compiling a torch.nn.Module needs example_inputs=(tensor, ...) to export it")
    kwargs = {}
    if isinstance(example_inputs, Mapping):
        args, kwargs = (), dict(example_inputs)
    elif isinstance(example_inputs, (tuple, list)):
        args = tuple(example_inputs)
    else:
        args = (example_inputs,)

    def as_torch(x):
        return torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x

    return tuple(as_torch(a) for a in args), {k: as_torch(v) for k, v in kwargs.items()}


def _decomposition_table(torch):
    """torch's core-ATen decompositions, less the ops Kiln converts better whole (``PRESERVE``)."""
    table = torch.export.default_decompositions()
    for op in list(table.keys()):
        if op_key(op) in PRESERVE:
            del table[op]
    return table


def export_program(module, example_inputs):
    """``torch.export`` in eval mode, decomposed to core ATen; failures as ModelLoadError."""
    torch = _torch()
    if not isinstance(module, torch.nn.Module):
        raise ModelLoadError(f"expected a torch.nn.Module, got {type(module).__name__}")
    args, kwargs = _example_args(torch, example_inputs)
    try:
        with _eval_mode(module), torch.no_grad(), warnings.catch_warnings():
            # torch 2.13 warns about its own pytree internals on every export: not the user's to fix
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
            ep = torch.export.export(module, args, kwargs or None)
            return ep.run_decompositions(_decomposition_table(torch))
    except KilnError:
        raise
    except Exception as e:  # export raises many types (UserError, Unsupported, RuntimeError ...)
        first = (str(e).strip().splitlines() or [""])[0]
        raise ModelLoadError(f"torch.export could not export {type(module).__name__}: "
                             f"{type(e).__name__}: {first}") from None


def from_torch(module, example_inputs) -> Graph:
    """Convert a ``torch.nn.Module`` (exported with ``example_inputs``) into a verified graph IR."""
    torch = _torch()
    ep = export_program(module, example_inputs)
    version = torch.__version__
    _check_supported(ep.graph, version)
    inputs, constants, env = _placeholders(ep, version)
    ctx = TorchContext(inputs, constants, version)
    ctx.env.update(env)
    for node in ep.graph.nodes:
        if node.op == "call_function":
            _convert(ctx, node)
    nodes = {n.name: n for n in ep.graph.nodes}
    sources = []
    for name in _user_outputs(ep):
        ctx.node = nodes[name]
        sources.append(ctx.value(ctx.node))
    return _finish(ctx, sources, inputs, type(module).__name__)
