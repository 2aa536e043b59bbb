"""Kiln as an ONNX backend (``onnx.backend.base.Backend``).

This lets ONNX's standard test runner, and any tool written against the backend API, drive
Kiln::

    import kiln.onnx_backend as backend
    rep = backend.prepare(model)             # compiles for the host target
    outputs = rep.run([x, y])                # or {"x": x, "y": y}; outputs in model order

Only the CPU device exists: ``prepare`` compiles with ``kiln.compile(model, target="host")``.
A model whose shapes depend on input *values* (a Reshape target or Pad pads fed as graph
inputs, as ONNX's node tests do) cannot be compiled ahead of time; its rep compiles at the
first ``run``, specialized to those values, and again whenever they change
(``rep.specialized_on`` names the inputs). Everything Kiln cannot compile raises
``UnsupportedOperatorError`` from that compile step.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import onnx
from onnx.backend.base import Backend, BackendRep, Device, DeviceType, namedtupledict

import kiln
from kiln.errors import InputError, ModelLoadError, TargetError
from kiln.frontend.onnx import NeedsConstantError


class KilnBackendRep(BackendRep):
    """A model compiled for the host; ``run`` takes a list (graph input order) or a dict.

    A model whose shapes depend on the values of some inputs (a Reshape target, Reduce axes,
    Pad pads given as graph inputs) cannot be compiled ahead of time. For those, ``prepare``
    returns a rep that compiles at the first ``run``, with those inputs bound to the values
    given, and compiles again whenever they change: ``specialized_on`` names them.
    """

    def __init__(self, model: onnx.ModelProto, compiled: kiln.CompiledModel | None = None,
                 specialize_on: Sequence[str] = (), input_shapes=None):
        self.model = model
        self.input_shapes = input_shapes
        inits = {t.name for t in model.graph.initializer}
        self.input_names = [vi.name for vi in model.graph.input if vi.name not in inits]
        self.output_names = [vi.name for vi in model.graph.output]
        self.specialized_on = tuple(specialize_on)
        self._compiled: dict[tuple, kiln.CompiledModel] = {(): compiled} if compiled else {}

    def run(self, inputs: Any, **kwargs: Any) -> tuple:
        feeds = self.feeds(inputs)
        compiled = self.compiled_for(feeds)
        out = compiled.run({k: v for k, v in feeds.items() if k in compiled.input_names})
        values = [out[n] for n in self.output_names]
        return namedtupledict("Outputs", self.output_names)(*values)

    def feeds(self, inputs) -> dict[str, np.ndarray]:
        """``inputs`` (a dict, a list in graph input order, or one array) as a dict by name."""
        if isinstance(inputs, Mapping):
            return {k: np.asarray(v) for k, v in inputs.items()}
        if isinstance(inputs, np.ndarray):
            inputs = [inputs]
        inputs = list(inputs)
        if len(inputs) != len(self.input_names):
            raise InputError(f"got {len(inputs)} inputs; the model takes {len(self.input_names)} "
                             f"({', '.join(self.input_names)})")
        return {n: np.asarray(v) for n, v in zip(self.input_names, inputs)}

    def compiled_for(self, feeds: Mapping[str, np.ndarray]) -> kiln.CompiledModel:
        """The compiled model for these inputs (compiling, specialized, on first use)."""
        if not self.specialized_on:
            return self._compiled[()]
        missing = [n for n in self.specialized_on if n not in feeds]
        if missing:
            raise InputError(f"inputs {missing} are missing; expected {self.input_names}")
        key = tuple((n, feeds[n].dtype.str, feeds[n].shape, feeds[n].tobytes()) for n in self.specialized_on)
        if key not in self._compiled:
            compiled, bound = _compile_specialized(self.model, feeds, self.specialized_on, self.input_shapes)
            self.specialized_on = bound
            key = tuple((n, feeds[n].dtype.str, feeds[n].shape, feeds[n].tobytes()) for n in bound)
            self._compiled[key] = compiled
        return self._compiled[key]


def bind_inputs(model: onnx.ModelProto, values: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``model`` where the named graph inputs are initializers holding ``values``."""
    from onnx import numpy_helper

    bound = onnx.ModelProto()
    bound.CopyFrom(model)
    for vi in bound.graph.input:
        if vi.name in values:
            _check_value(vi, np.asarray(values[vi.name]))
    keep = [vi for vi in bound.graph.input if vi.name not in values]
    del bound.graph.input[:]
    bound.graph.input.extend(keep)
    for name, arr in values.items():
        bound.graph.initializer.append(numpy_helper.from_array(np.asarray(arr), name))
    return bound


def _check_value(vi: onnx.ValueInfoProto, arr: np.ndarray) -> None:
    """A value bound into the model must have the input's declared dtype and static dims: the
    compiled model would otherwise silently describe a different model."""
    tt = vi.type.tensor_type
    want = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
    if arr.dtype != want or (tt.HasField("shape") and (len(dims) != arr.ndim or any(
            d is not None and d != n for d, n in zip(dims, arr.shape)))):
        raise InputError(f"input {vi.name!r} has dtype {arr.dtype} and shape {arr.shape}; the model "
                         f"declares {want} and {tuple(d if d is not None else '?' for d in dims)}")


def _compile_specialized(model, feeds, names, input_shapes):
    """Compile with ``names`` bound to their values in ``feeds``; when the compiler asks for
    more inputs to be constant, bind those too. Returns (compiled model, bound names)."""
    bound = tuple(names)
    while True:
        try:
            return kiln.compile(bind_inputs(model, {n: feeds[n] for n in bound}), target="host",
                                input_shapes=input_shapes), bound
        except NeedsConstantError as e:
            more = tuple(n for n in e.inputs if n not in bound and n in feeds)
            if not more:
                raise
            bound += more


class KilnBackend(Backend):
    """``prepare`` compiles the model for the host CPU; other devices are not supported."""

    @classmethod
    def is_compatible(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> bool:
        return cls.supports_device(device)

    @classmethod
    def prepare(cls, model: onnx.ModelProto | str | bytes, device: str = "CPU",
                **kwargs: Any) -> KilnBackendRep:
        """Compile ``model`` (a ModelProto, a path, or serialized bytes).

        ``input_shapes`` (name -> dims) is passed on to ``kiln.compile``; other keyword
        arguments of the backend API (such as rtol/atol from the test runner) are ignored.
        """
        if not cls.supports_device(device):
            raise TargetError(f"device {device!r} is not supported by the Kiln ONNX backend; expected 'CPU'")
        if isinstance(model, bytes):
            try:
                model = onnx.load_from_string(model)
            except Exception as e:  # noqa: BLE001  (protobuf's DecodeError and friends)
                raise ModelLoadError(f"the bytes are not a serialized ONNX model ({type(e).__name__}: {e})") from None
        elif not isinstance(model, onnx.ModelProto):
            from kiln.frontend.onnx import load_model

            model = load_model(model)  # a path: Kiln's loader keeps external data in its directory
        shapes = kwargs.get("input_shapes")
        try:
            return KilnBackendRep(model, kiln.compile(model, target="host", input_shapes=shapes),
                                  input_shapes=shapes)
        except NeedsConstantError as e:
            inputs = {vi.name for vi in model.graph.input}
            if not e.inputs or not set(e.inputs) <= inputs:
                raise
            return KilnBackendRep(model, specialize_on=e.inputs, input_shapes=shapes)

    @classmethod
    def run_model(cls, model, inputs: Any, device: str = "CPU", **kwargs: Any) -> tuple:
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(cls, node: onnx.NodeProto, inputs: Any, device: str = "CPU",
                 outputs_info: Sequence | None = None, **kwargs: Any) -> tuple:
        """Run a single node by wrapping it in a one-node model (inputs as a list or dict)."""
        model = _node_model(node, inputs, outputs_info, kwargs.get("opset_version"))
        if isinstance(inputs, Mapping):
            inputs = [inputs[n] for n in node.input if n]
        return cls.run_model(model, inputs, device)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        try:
            return Device(device).type == DeviceType.CPU
        except Exception:  # noqa: BLE001  (an unparsable device string is simply not supported)
            return False


def _node_model(node, inputs, outputs_info, opset_version) -> onnx.ModelProto:
    """A one-node model whose inputs have the given arrays' dtypes and shapes."""
    from onnx import helper

    arrays = [np.asarray(inputs[n]) for n in node.input if n] if isinstance(inputs, Mapping) \
        else [np.asarray(a) for a in inputs]
    names = [n for n in node.input if n]
    ins = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
           for n, a in zip(names, arrays)]
    outs = []
    for k, name in enumerate(n for n in node.output if n):
        if outputs_info and k < len(outputs_info):
            dtype, shape = outputs_info[k]
            outs.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), shape))
        else:
            outs.append(helper.make_empty_tensor_value_info(name))
    graph = helper.make_graph([node], "run_node", ins, outs)
    opsets = [helper.make_opsetid("", opset_version)] if opset_version else None
    # ONNX shape inference fills in the output types that outputs_info did not give
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=opsets))


prepare = KilnBackend.prepare
run_model = KilnBackend.run_model
run_node = KilnBackend.run_node
supports_device = KilnBackend.supports_device
is_compatible = KilnBackend.is_compatible
