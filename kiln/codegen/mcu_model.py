"""The microcontroller model files: ``model.h``, ``model.c`` and ``weights.c`` in C99.

Unlike the host's ``model.c`` (a weights blob loaded at run time, pointer arrays), the
microcontroller project links its constants as typed ``const`` arrays (the linker puts
them in flash), passes inputs and outputs through named structs, and takes one arena
whose size is a compile-time constant in ``model.h``. Every pointer comes from the
memory plan: inputs and outputs from the structs, constants by symbol, everything else
at a fixed offset into the arena.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from kiln.codegen.c99 import C99Renderer, c99_prelude
from kiln.codegen.templates import render
from kiln.ir.dtype import DType
from kiln.ir.expr import walk
from kiln.ir.graph import Graph
from kiln.ir.loop import Alloc, For, If, Seq, Store
from kiln.passes.memory_plan import MemoryPlan


def c_identifier(name: str, taken: set[str] | None = None) -> str:
    """A C identifier made from ``name`` (unique within ``taken``, which it extends)."""
    ident = re.sub(r"\W", "_", name) or "v"
    if ident[0].isdigit():
        ident = "v_" + ident
    if taken is not None:
        base, k = ident, 1
        while ident in taken:
            k += 1
            ident = f"{base}_{k}"
        taken.add(ident)
    return ident


def model_prefix(graph: Graph) -> str:
    """``kiln_<name>``: the prefix of every symbol the model exports."""
    return "kiln_" + c_identifier(graph.name or "model").lower()


@dataclass
class MCUModel:
    files: dict[str, str]
    context: dict          # what the project templates (Makefile, harness, README) need
    uses_float: bool


def _values(graph: Graph, renderer: C99Renderer, values, role: str, quant: dict) -> list[dict]:
    taken: set[str] = set()
    out = []
    for v in values:
        member = c_identifier(v.name, taken)
        q = quant.get(v.name)
        out.append({"name": v.name, "member": member, "macro": f"{role.upper()}_{member.upper()}", "role": role,
                    "ctype": renderer.ctype(v.dtype), "shape": [str(d) for d in v.shape],
                    "size": int(np.prod([int(d) for d in v.shape], dtype=np.int64)),
                    "dtype": v.dtype.value,
                    "quant": None if q is None else {"scale": repr(float(np.float32(q.scale))),
                                                     "zero_point": q.zero_point}})
    return out


def _array_body(arr: np.ndarray, dtype: DType) -> str:
    flat = np.ascontiguousarray(arr).reshape(-1)
    if dtype.is_float:
        if dtype is not DType.float32:
            flat = flat.astype(np.float32)
        items = []
        for x in flat.tolist():
            if np.isnan(x):
                items.append("(0.0f/0.0f)")
            elif np.isinf(x):
                items.append("(1.0f/0.0f)" if x > 0 else "(-1.0f/0.0f)")
            else:
                items.append(float(x).hex() + "f")   # exact: hexadecimal float literals are C99
    elif dtype is DType.bool:
        items = [str(int(bool(x))) for x in flat.tolist()]
    elif dtype in (DType.int64,):
        items = [f"INT64_C({int(x)})" if int(x) != -(1 << 63) else "INT64_MIN" for x in flat.tolist()]
    else:
        items = [str(int(x)) for x in flat.tolist()]
    rows = [", ".join(items[i:i + 16]) for i in range(0, len(items), 16)]
    return "  " + ",\n  ".join(rows) if rows else "  0"


def _uses_float(funcs) -> bool:
    """True when any kernel loads, stores or computes a floating-point value."""
    def exprs(s):
        if isinstance(s, For):
            yield from exprs(s.body)
        elif isinstance(s, Seq):
            for x in s.stmts:
                yield from exprs(x)
        elif isinstance(s, Alloc):
            if s.buffer.dtype.is_float:
                yield None
            yield from exprs(s.body)
        elif isinstance(s, If):
            yield s.cond
            yield from exprs(s.then)
        elif isinstance(s, Store):
            yield s.value
            yield from s.indices

    for f in funcs:
        if any(b.dtype.is_float for b in f.params):
            return True
        for e in exprs(f.body):
            if e is None or any(getattr(x, "dtype", None) is not None and x.dtype.is_float for x in walk(e)):
                return True
    return False


def generate_mcu_model(graph: Graph, kernels, plan: MemoryPlan, target: str, io_quant: dict,
                       dsp: bool = True, helium: bool = False, vector_unit: bool = False) -> MCUModel:
    from kiln import __version__

    renderer = C99Renderer(dsp=dsp, helium=helium, vector_unit=vector_unit)
    prefix = model_prefix(graph)
    inputs = _values(graph, renderer, graph.inputs, "input", io_quant)
    outputs = _values(graph, renderer, graph.outputs, "output", io_quant)

    weights, wsym = [], {}
    types = graph.value_types()
    rendered, calls = [], []
    for k in kernels:
        in_names = {b.name for b in k.func.params[: len(k.inputs)]}
        rendered.append({"source": renderer.render_func(k.func, in_names),
                         "comment": _describe(k, graph)})
        args = []
        for b, name in zip(k.func.params, k.params):
            ctype = renderer.ctype(b.dtype)
            st = plan.storage[name]
            # by the storage's index: the value may be a view of the input or output (a
            # recurrent layer reads its [seq, batch, features] input as [seq * batch, features])
            if st.kind == "input":
                args.append(f"inputs->{inputs[st.index]['member']}")
            elif st.kind == "output":
                args.append(f"outputs->{outputs[st.index]['member']}")
            elif st.kind == "weights":
                if name not in wsym:
                    wsym[name] = f"{prefix}_w{len(weights)}"
                    arr = np.asarray(graph.constants[name])
                    dt = types[name].dtype
                    weights.append({"name": name, "symbol": wsym[name], "ctype": renderer.ctype(dt),
                                    "shape": list(arr.shape) or [1], "count": max(arr.size, 1),
                                    "body": _array_body(arr, dt), "nbytes": arr.nbytes})
                args.append(wsym[name])
            else:
                args.append(f"({ctype}*)(A + {st.index})")
        calls.append(f"{k.name}({', '.join(args)})")
    if any(k.symbols for k in kernels):
        from kiln.errors import TargetError

        raise TargetError("microcontroller targets need static shapes; give every dim a size "
                          "(input_shapes= or --input-shape)")

    uses_float = _uses_float([k.func for k in kernels])
    quantized = any(v["quant"] for v in inputs + outputs)
    common = dict(version=__version__, target=target, model_name=graph.name, prefix=prefix, PREFIX=prefix.upper(),
                  arena_size=plan.arena_size, lower_bound=plan.lower_bound,
                  weights_size=sum(w["nbytes"] for w in weights), inputs=inputs, outputs=outputs,
                  uses_float=uses_float, quantized=quantized, kernel_count=len(kernels))
    prelude = c99_prelude(uses_float, bool(renderer.dot_used)) + renderer.support_code()
    files = {
        "model.c": render("mcu/model.c.j2", prelude=prelude, kernels=rendered, calls=calls, weights=weights,
                          **common),
        "model.h": render("mcu/model.h.j2", guard=prefix.upper() + "_H", **common),
        "weights.c": render("mcu/weights.c.j2", weights=weights, **common),
        "kiln_dsp.h": render("mcu/kiln_dsp.h"),
    }
    return MCUModel(files, common, uses_float)


def _describe(kernel, graph: Graph) -> str:
    producers = graph.producers()
    ops_ = [producers[o].op for o in kernel.outputs if o in producers]
    return f"{kernel.name}: writes {', '.join(kernel.outputs)} ({', '.join(ops_)})".replace("*/", "* /")
