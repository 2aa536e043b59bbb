"""The model file: every kernel, then ``<prefix>_run`` calling them in order over the arena.

Pointers come from the memory plan: graph inputs and outputs from the caller's pointer
arrays, constants from the weights blob, everything else from the arena.
"""
from __future__ import annotations

from kiln.codegen.c import CRenderer
from kiln.codegen.c_support import C_PRELUDE
from kiln.codegen.templates import render
from kiln.ir.graph import Graph
from kiln.ir.loop import format_func
from kiln.passes.memory_plan import MemoryPlan, Storage
from kiln.targets.base import ModelSource


def _pointer(storage: Storage, ctype: str, const: bool) -> str:
    q = "const " if const else ""
    if storage.kind == "input":
        return f"({q}{ctype}*)inputs[{storage.index}]"
    if storage.kind == "output":
        return f"({q}{ctype}*)outputs[{storage.index}]"
    if storage.kind == "weights":
        return f"(const {ctype}*)(W + {storage.index})"
    return f"({q}{ctype}*)(A + {storage.index})"


def _describe(kernel, graph: Graph) -> str:
    producers = graph.producers()
    ops_ = [producers[o].op for o in kernel.outputs if o in producers]
    return f"{kernel.name}: writes {', '.join(kernel.outputs)} ({', '.join(ops_)})".replace("*/", "* /")


def generate_model(graph: Graph, kernels, plan: MemoryPlan, target: str = "host",
                   renderer: CRenderer | None = None, prefix: str = "kiln_model",
                   prelude: str = C_PRELUDE) -> ModelSource:
    """``model.c`` and ``model.h`` for a C-family target; ``renderer`` and ``prelude`` let a
    target (NEON, C99 for microcontrollers) change how kernels are spelled."""
    from kiln import __version__

    renderer = renderer or CRenderer()
    symbols = model_symbols(graph)
    rendered, calls = [], []
    for k in kernels:
        inputs = {b.name for b in k.func.params[: len(k.inputs)]}
        rendered.append({"source": renderer.render_func(k.func, inputs, symbols=k.symbols),
                         "comment": _describe(k, graph)})
        args = []
        for b, name in zip(k.func.params, k.params):
            ctype = renderer.ctype(b.dtype)
            args.append(_pointer(plan.storage[name], ctype, const=b.name in inputs))
        args += [f"dims[{symbols.index(sym)}]" for sym in k.symbols]
        calls.append(f"{k.name}({', '.join(args)})")

    def io(values):
        return [{"name": v.name, "ctype": renderer.ctype(v.dtype), "shape": [str(d) for d in v.shape]}
                for v in values]

    bounds = [{"name": n, "lo": graph.dim_bounds[n][0], "hi": graph.dim_bounds[n][1]} for n in symbols]
    common = dict(version=__version__, target=target, model_name=graph.name, prefix=prefix, symbols=bounds,
                  arena_size=plan.arena_size, weights_size=len(plan.weights),
                  inputs=io(graph.inputs), outputs=io(graph.outputs))
    model_c = render("model.c.j2", prelude=prelude + renderer.support_code(), kernels=rendered, calls=calls, **common)
    model_h = render("model.h.j2", guard=prefix.upper() + "_H", **common)
    return ModelSource({"model.c": model_c, "model.h": model_h}, "model.c", prefix)


def model_symbols(graph: Graph) -> list[str]:
    """The dim symbols, in the order ``dims`` passes their values at run time."""
    return sorted(graph.dim_bounds)


def loop_ir_text(kernels) -> str:
    return "\n\n".join(format_func(k.func) for k in kernels)
