"""Tunable tasks of a model: its fused kernels, deduplicated by a structural hash.

A task is one kernel's *unscheduled* loop IR (after lowering, before any schedule) on
one target. Two kernels with the same loop IR text -- parameter buffers are named by
role (``in0``, ``out0``, ``v1__pad``), never by graph value -- are the same task, so a
ResNet's repeated 3x3 convolutions are tuned once and the task's ``weight`` counts how
often it runs per inference. The hash is the key of the tuning database: the compiler
recomputes it for every kernel it builds and looks up the best record.

Only kernels with a design space (``space.has_space``) become tasks; the others keep
their default schedule.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

from kiln.errors import TuningError
from kiln.ir.compute import Stage
from kiln.ir.expr import Bin, Un, walk
from kiln.ir.loop import Alloc, For, Func, If, Seq, Store, format_func
from kiln.passes.capabilities import DEFAULT_CAPABILITIES, Capabilities

HASH_VERSION = "kiln-task-v1"  # bump when the loop IR text of a kernel changes meaning


def normalized(func: Func) -> Func:
    """The kernel under a fixed name: its position in the model is not part of the task."""
    return replace(func, name="kernel")


def task_key(func: Func, target: str) -> str:
    text = f"{HASH_VERSION}\n{target}\n{format_func(normalized(func))}"
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def count_flops(func: Func) -> int:
    """Floating-point operations of one run: arithmetic in each store times its trip count."""
    total = 0

    def visit(s, trips: int):
        nonlocal total
        if isinstance(s, For):
            visit(s.body, trips * (s.extent if isinstance(s.extent, int) else 1))
        elif isinstance(s, Seq):
            for x in s.stmts:
                visit(x, trips)
        elif isinstance(s, (Alloc,)):
            visit(s.body, trips)
        elif isinstance(s, If):
            visit(s.then, trips)
        elif isinstance(s, Store):
            # comparisons have a bool dtype and are not counted; selects are not arithmetic
            n = sum(1 for e in walk(s.value) if isinstance(e, (Bin, Un)) and e.dtype.is_float)
            total += n * trips

    visit(func.body, 1)
    return total


@dataclass
class Task:
    """One tunable kernel: what the tuner searches, measures and records."""

    key: str
    target: str
    func: Func                      # unscheduled loop IR, named "kernel"
    stages: list[Stage]
    caps: Capabilities = DEFAULT_CAPABILITIES
    weight: int = 1                 # occurrences per inference
    flops: int = 0
    desc: str = ""                  # what it computes, for people ("Conv+Relu 1x64x56x56")
    kernels: list[str] = field(default_factory=list)  # kernel names in the model
    # parameters holding the model's constants: a model run finds them in memory, not in
    # the caches (a network's weights outgrow the last-level cache), so the measurement
    # harness evicts them before each timed call (MeasureOptions.cold_weights)
    weights: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.desc or 'kernel'} [{self.key[:8]}]"

    def workload(self) -> dict:
        """The database's description of the task (enough for a person, the key for the tool)."""
        return {"key": self.key, "target": self.target, "desc": self.desc, "flops": self.flops,
                "weight": self.weight, "hash_version": HASH_VERSION,
                "params": [[b.name, list(b.shape), str(b.dtype)] for b in self.func.params]}


def extract_tasks(model, target="host", *, input_shapes=None, example_inputs=None) -> list[Task]:
    """Tasks of a model (an ONNX path/ModelProto, a torch module, or a graph IR), heaviest first."""
    from kiln.api import _import, _require_bounds
    from kiln.autotune.space import has_space
    from kiln.passes.manager import run_pipeline
    from kiln.targets import get_target

    target_impl = get_target(target)
    graph = _import(model, input_shapes, example_inputs)
    _require_bounds(graph)
    result = run_pipeline(graph, target=target_impl)
    caps = target_impl.capabilities()
    tasks: dict[str, Task] = {}
    for k, group in zip(result.kernels, result.groups):
        func = k.unscheduled
        if func is None or k.symbols or not has_space(func, k.stages):
            continue
        key = task_key(func, str(target_impl))
        if key in tasks:
            tasks[key].weight += 1
            tasks[key].kernels.append(k.name)
            continue
        ops_ = "+".join(dict.fromkeys(n.op for n in group.nodes)) or k.name
        shape = "x".join(str(d) for d in k.stages[-1].shape) if k.stages else ""
        weights = tuple(p.name for p, value in zip(func.params, k.inputs) if value in result.graph.constants)
        tasks[key] = Task(key, str(target_impl), normalized(func), list(k.stages), caps,
                          flops=count_flops(func), desc=f"{ops_} {shape}".strip(), kernels=[k.name],
                          weights=weights)
    if not tasks:
        raise TuningError("the model has no tunable kernels (no static-shape GEMM-like, convolution "
                          "or pooling reductions); compile it without tuning")
    return sorted(tasks.values(), key=lambda t: -t.flops * t.weight)


__all__ = ["Task", "extract_tasks", "task_key", "count_flops", "normalized", "HASH_VERSION"]
