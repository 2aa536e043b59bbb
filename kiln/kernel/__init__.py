"""Tuned kernels for other runtimes: ``kiln.kernel(...)`` -> a shared library with a C ABI.

    lib = kiln.kernel("Gemm", inputs={"A": ((64, 128), "float32"), "B": ((128, 32), "float32")})
    lib = kiln.kernel("model.onnx", nodes=(3, 7), name="block")        # a node range
    lib = kiln.kernel(module, example_inputs=(x,), name="mlp")         # a torch.nn.Module
    lib.build("out/")          # libNAME.so, NAME.h, manifest.json (+ the sources)
    y = lib(x)                 # DLPack: numpy / torch CPU tensors in and out, no copies
    op = lib.torch_op()        # torch.library.custom_op "kiln::NAME", works under torch.compile
    mod = lib.tvm_ffi_module() # tvm_ffi.load_module of libNAME_tvm_ffi.so; mod.NAME(*inputs, *outputs)
"""
from __future__ import annotations

import re

from kiln.kernel.library import KernelLibrary
from kiln.kernel.source import DEFAULT_OPSET, is_operator_name, resolve

__all__ = ["kernel", "KernelLibrary"]


def kernel(model, *, name: str | None = None, inputs=None, outputs=None, attrs=None, nodes=None,
           num_outputs: int | None = None, opset: int = DEFAULT_OPSET, input_shapes=None,
           example_inputs=None, db=None, target: str = "host") -> KernelLibrary:
    """Compile one operator, a subgraph, or a model into a :class:`KernelLibrary`.

    ``model`` is an ONNX operator name (with ``inputs={name: (shape, dtype) | constant array}``
    in the operator's input order and ``attrs={...}``), an ONNX model (path or ModelProto,
    optionally cut with ``nodes=(start, stop)`` or ``inputs=[names]``/``outputs=[names]``), or
    anything ``kiln.compile`` accepts (a ``torch.nn.Module`` with ``example_inputs``).
    ``db`` (a tuning database) is passed to ``kiln.compile``; the schedule traces the kernels
    were built with go into the manifest as the tuning record.
    """
    from kiln.api import compile as kiln_compile

    origin = _describe(model, nodes, outputs)
    source = resolve(model, inputs=inputs, outputs=outputs, attrs=attrs, nodes=nodes,
                     num_outputs=num_outputs, opset=opset)
    compiled = kiln_compile(source, target=target, input_shapes=input_shapes, example_inputs=example_inputs,
                            db=db)
    return KernelLibrary(compiled, name or _default_name(model, compiled), db=db, origin=origin)


def _describe(model, nodes, outputs) -> str:
    if is_operator_name(model):
        return f"ONNX operator {model}"
    what = model if isinstance(model, str) else type(model).__name__
    if nodes is not None:
        return f"{what} nodes [{nodes[0]}, {nodes[1]})"
    if outputs is not None:
        return f"{what} up to {list(outputs)}"
    return str(what)


def _default_name(model, compiled) -> str:
    base = model if is_operator_name(model) else compiled.graph.name or "kernel"
    ident = re.sub(r"[^A-Za-z0-9_]", "_", str(base)).strip("_").lower() or "kernel"
    return "kiln_" + ident
