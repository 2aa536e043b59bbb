"""The lowering pipeline: one readable list of named stages, run in order.

    import -> quantize -> integer_ops -> fold_constants -> simplify -> cse -> algebraic -> dce -> layout -> materialize_outputs
           -> partition -> fuse -> lower -> schedule -> memory_plan -> codegen

(``partition``: the target's own rewrite before fusion -- patch-based execution on MCUs;
on VNNI hosts also ``store_padded``, convolutions' padding kept in their inputs' storage;
on CPUs then ``assemble_concats``, concats whose parts their producers write in place.)

``print_after`` names a stage; its IR is captured as text (``kiln inspect
--print-ir-after NAME``). Graph stages print the graph IR, ``fuse`` the graph with each
node's kernel, ``lower``/``schedule`` the loop IR, ``memory_plan`` the tensor
placement, ``codegen`` the C source.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from kiln.codegen.kernels import Kernel, build_kernels
from kiln.codegen.model import loop_ir_text
from kiln.errors import KilnError
from kiln.ir.graph import Graph, format_graph
from kiln.ir.loop import format_func
from kiln.passes.algebraic import eliminate_common_subexpressions, simplify_algebra
from kiln.passes.concat_in_place import assemble_concats
from kiln.passes.fold_constants import dequantizes_packed_weights, fold_constants
from kiln.passes.fuse import Group, fuse
from kiln.passes.grouped_conv import rewrite_grouped_convs
from kiln.passes.isolated_convs import plain_isolated_convs
from kiln.passes.layout import to_nchwc
from kiln.passes.integer_layout import channels_last_integers
from kiln.passes.integer_ops import pack_integer_ops, stage_windows
from kiln.passes.pack_matmul import pack_matmuls
from kiln.passes.quantize import quantize_integer_ops
from kiln.passes.memory_plan import MemoryPlan, plan_memory
from kiln.passes.padded_storage import store_padded
from kiln.passes.simplify import eliminate_dead_code, eliminate_identity, materialize_output_views
from kiln.passes.vnni_pack import pack_vnni
from kiln.passes.winograd import winograd_convs
from kiln.targets import Target, get_target
from kiln.targets.base import ModelSource

GRAPH_PASSES: list[tuple[str, Callable[[Graph], Graph]]] = [
    ("quantize", quantize_integer_ops),  # first: folding would turn DQ(int8 weights) into floats
    ("integer_ops", pack_integer_ops),   # MatMulInteger/ConvInteger with constant weights: packed
    ("fold_constants", fold_constants),
    ("simplify", eliminate_identity),
    ("cse", eliminate_common_subexpressions),
    ("algebraic", simplify_algebra),
    ("dce", eliminate_dead_code),
    ("materialize_outputs", materialize_output_views),
]
_GRAPH_STAGES = [n for n, _ in GRAPH_PASSES]
# "layout" (grouped 1x1 convolutions as matmuls, NCHWc for convolutions, matmul B in panels)
# runs after "dce": it needs the target's vector width.
STAGES = (["import"] + _GRAPH_STAGES[: _GRAPH_STAGES.index("dce") + 1] + ["layout"]
          + _GRAPH_STAGES[_GRAPH_STAGES.index("dce") + 1:]
          + ["partition", "fuse", "lower", "schedule", "memory_plan", "codegen"])


@dataclass
class PipelineResult:
    graph: Graph
    groups: list[Group]
    kernels: list[Kernel]
    plan: MemoryPlan
    source: ModelSource
    snapshots: dict[str, str] = field(default_factory=dict)


def check_stage(name: str | None) -> None:
    if name is not None and name not in STAGES:
        raise KilnError(f"unknown pipeline stage {name!r}; expected one of: {', '.join(STAGES)}")


def run_pipeline(graph: Graph, target: Target | str = "host", print_after: str | None = None,
                 prefix: str = "kiln_model", tuned=None) -> PipelineResult:
    """``tuned``: optional ``func -> trace or None`` applying tuning records (``kiln.autotune``)."""
    check_stage(print_after)
    if isinstance(target, str):
        target = get_target(target)
    snaps: dict[str, str] = {}

    def snap(name: str, text: Callable[[], str]):
        if print_after == name:
            snaps[name] = text()

    snap("import", lambda: format_graph(graph))
    graph = target.prepare_graph(graph).verify()  # a target's own graph rewrites (integer I/O on MCUs)
    caps = target.capabilities()
    for name, fn in GRAPH_PASSES:
        if name == "fold_constants" and not target.fixed_point_requantization:
            # QDQ stays float on such a target: keep its 8-bit weights (and their dequantize)
            graph = fold_constants(graph, keep=dequantizes_packed_weights).verify()
        elif name != "quantize" or target.fixed_point_requantization:
            graph = fn(graph).verify()
        if name == "quantize":
            graph = target.adapt_quantized(graph).verify()  # a target's variant of the integer ops
        snap(name, lambda: format_graph(graph))
        if name == "dce":
            if caps.nchwc:
                graph = rewrite_grouped_convs(graph, caps.vector_bytes // 4).verify()
                if caps.plain_isolated_convs:
                    graph = plain_isolated_convs(graph, caps.vector_bytes // 4, caps.vector_bytes // 4,
                                                 caps.tile()).verify()
                graph = to_nchwc(graph, caps.vector_bytes // 4).verify()
            if caps.pack_matmul:
                graph = pack_matmuls(graph, caps.panel_widths()).verify()
            if caps.winograd and caps.nchwc and caps.pack_matmul:
                graph = winograd_convs(graph, caps.tile()[1]).verify()
            if caps.window_copies:
                graph = stage_windows(graph).verify()
            if caps.vnni:
                graph = pack_vnni(graph).verify()
                graph = channels_last_integers(graph).verify()
            snap("layout", lambda: format_graph(graph))
    graph = target.partition_graph(graph).verify()
    if caps.vnni:  # last before fusion: producers then write the padded layouts convolutions read
        graph = store_padded(graph).verify()
    if caps.concat_in_place:  # after store_padded: a part stored with a border keeps its copy
        graph = assemble_concats(graph).verify()
    snap("partition", lambda: format_graph(graph))
    groups = fuse(graph)
    snap("fuse", lambda: format_graph(graph, annotate=_kernel_notes(groups)))
    kernels = build_kernels(graph, groups, caps, tuned=tuned)
    snap("lower", lambda: "\n\n".join(format_func(k.unscheduled) for k in kernels))
    snap("schedule", lambda: loop_ir_text(kernels))
    plan = target.plan_memory(graph, kernels)
    snap("memory_plan", lambda: _plan_text(plan))
    source = target.generate(graph, kernels, plan, prefix)
    snap("codegen", lambda: source.files[source.main])
    return PipelineResult(graph, groups, kernels, plan, source, snaps)


def _kernel_notes(groups) -> dict[str, str]:
    notes = {}
    for i, g in enumerate(groups):
        for n in g.nodes:
            notes[n.outputs[0].name] = f"kernel_{i}"
    return notes


def _plan_text(plan: MemoryPlan) -> str:
    lines = [plan.summary()]
    for name, st in sorted(plan.storage.items(), key=lambda kv: (kv[1].kind, kv[1].index)):
        extra = ""
        if name in plan.intervals:
            a, b, size = plan.intervals[name]
            extra = f"  live kernels {a}..{b}, {size} bytes"
        lines.append(f"  {name}: {st.kind}+{st.index}{extra}")
    return "\n".join(lines)
