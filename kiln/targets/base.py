"""The interface every target implements.

A target is one device kind. It tells the pipeline what its schedules may assume
(:meth:`Target.capabilities`), turns scheduled kernels and the memory plan into source
files (:meth:`Target.generate`), and knows how to build and run those files
(:meth:`Target.runner`) and how to write them out as a project (:meth:`Target.export`).

Adding a target is adding one module under ``kiln/targets/`` that defines a subclass and
registering its name in ``kiln/targets/__init__.py``; nothing else in the pipeline changes.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping

from kiln.errors import TargetError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from kiln.ir.graph import Graph
    from kiln.passes.capabilities import Capabilities
    from kiln.passes.memory_plan import MemoryPlan


@dataclass
class ModelSource:
    """The generated files of one model, by file name; ``main`` is what ``source()`` shows."""

    files: dict[str, str]
    main: str
    prefix: str
    binaries: dict[str, bytes] = field(default_factory=dict)  # weights and other non-text files

    @property
    def model_c(self) -> str:
        return self.files["model.c"]

    @property
    def model_h(self) -> str:
        return self.files["model.h"]


class Target:
    """Base class: subclasses set ``name`` and ``known_options`` and override what differs."""

    name: str = ""
    known_options: tuple[str, ...] = ()

    def __init__(self, options: tuple[str, ...] = ()):
        unknown = [o for o in options if o not in self.known_options]
        if unknown:
            accepted = ", ".join(self.known_options) if self.known_options else "none"
            raise TargetError(f"target {self.name!r} does not know the option(s) {', '.join(unknown)}; "
                              f"accepted options: {accepted}")
        self.options = tuple(options)

    def __str__(self) -> str:
        return self.name + (":" + ",".join(self.options) if self.options else "")

    def __repr__(self) -> str:
        return f"<target {self}>"

    # -- what the pipeline asks -------------------------------------------------------------
    # Whether the target computes the integer kernels' fixed-point requantization (an int64
    # product of the int32 accumulator and a 31-bit multiplier, ``kiln/ir/ops/qlinear.py``).
    # A target without 64-bit integers (WGSL) sets False: the ``quantize`` stage then leaves
    # QDQ patterns as float (dequantize, op, quantize) -- the reference semantics -- instead
    # of integer kernels whose products would wrap at 32 bits.
    fixed_point_requantization = True

    def capabilities(self) -> "Capabilities":
        from kiln.passes.capabilities import DEFAULT_CAPABILITIES

        return DEFAULT_CAPABILITIES

    def prepare_graph(self, graph: "Graph") -> "Graph":
        """A target's own rewrite of the imported graph, before the graph passes (none here)."""
        return graph

    def adapt_quantized(self, graph: "Graph") -> "Graph":
        """A target's choice among equivalent integer kernels, right after the ``quantize``
        pass (arm64 stages int8 activations for its signed dot products); none here."""
        return graph

    def partition_graph(self, graph: "Graph") -> "Graph":
        """A target's rewrite of the optimized graph just before fusion, e.g. patch-based
        execution of the first layers on microcontrollers (none here)."""
        return graph

    def plan_memory(self, graph: "Graph", kernels: list) -> "MemoryPlan":
        """Where every tensor lives; targets may change the alignment or check a budget."""
        from kiln.passes.memory_plan import plan_memory

        return plan_memory(graph, kernels)

    def generate(self, graph: "Graph", kernels: list, plan: "MemoryPlan", prefix: str) -> ModelSource:
        raise NotImplementedError

    # -- what a compiled model asks ---------------------------------------------------------
    def runner(self, compiled) -> Callable[[Mapping[str, "np.ndarray"]], dict]:
        """A callable running ``compiled`` on a dict of numpy inputs, returning its outputs."""
        raise TargetError(f"models compiled for {self} cannot run on this machine; export them instead")

    def export(self, compiled, directory) -> Path:
        """Write the generated files, the weights and ``manifest.json`` into ``directory``."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        source = compiled.result.source
        for name, text in source.files.items():
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            (out / name).write_text(text)
        for name, data in source.binaries.items():
            (out / name).write_bytes(data)
        (out / "manifest.json").write_text(json.dumps(manifest(compiled), indent=2))
        return out


def manifest(compiled) -> dict:
    """What a tool (or ``kiln.load``) needs to call an exported model."""
    graph, plan = compiled.graph, compiled.result.plan

    def io(vals):
        return [{"name": v.name, "shape": [d if isinstance(d, int) else str(d) for d in v.shape],
                 "dtype": v.dtype.value} for v in vals]

    return {"format": "kiln-export-1", "target": str(compiled.target), "prefix": compiled.result.source.prefix,
            "model": graph.name, "inputs": io(graph.inputs), "outputs": io(graph.outputs),
            "dim_bounds": {k: list(v) for k, v in graph.dim_bounds.items()},
            "arena_size": plan.arena_size, "weights_size": len(plan.weights)}
