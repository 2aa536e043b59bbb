"""Fused groups -> kernels: compute stages, inlining, lowering and default schedules.

A kernel's parameters are, in order, the graph values it reads, the values it writes
and its scratch tensors (intermediate stages that cannot be inlined, such as the
padded input of a convolution or the row maxima of a softmax). Scratch tensors get
arena space from the memory planner like any other value.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

from kiln.ir import ops
from kiln.ir.compute import Stage, Tensor
from kiln.ir.dtype import DType
from kiln.ir.expr import Const, Load, replace_loads
from kiln.ir.graph import Graph, TensorType
from kiln.ir.loop import Buffer, Func, canonicalize, seq
from kiln.ir.lower import inline_stages, lower_stage
from kiln.ir.ops.region import in_place_dests
from kiln.ir.schedule import Schedule
from kiln.ir.symbolic import shape_dims, shape_exprs, symbols_of
from kiln.passes.capabilities import DEFAULT_CAPABILITIES, Capabilities
from kiln.passes.default_schedule import schedule_kernel
from kiln.passes.fuse import Group
from kiln.passes.padded_storage import (PADS_IN_STORAGE, border_fill, shift_loads, storage_borders,
                                        store_at_border)


@dataclass
class Kernel:
    name: str
    func: Func                       # scheduled loop IR
    inputs: list[str]                # graph values read, in parameter order
    outputs: list[str]               # graph values written
    temps: list[tuple[str, TensorType]]  # scratch tensors, named "<kernel>.<stage>"
    symbols: list[str] = field(default_factory=list)  # run-time dim symbols, extra int64 params
    stages: list[Stage] = field(default_factory=list)
    trace: list = field(default_factory=list)
    unscheduled: Func | None = None

    @property
    def params(self) -> list[str]:
        return self.inputs + self.outputs + [t for t, _ in self.temps]


def group_stages(group: Group, graph: Graph, types: dict[str, TensorType], borders=None):
    """Compute stages for a group, with C-safe buffer names; returns (stages, inputs, outputs, names).

    ``borders`` (``kiln/passes/padded_storage.py``): values stored with a border. A
    convolution marked ``pads_in_storage`` reads its input's storage, border included, as an
    unpadded convolution; every other node reads such a value's interior."""
    borders = borders or {}
    produced = {o.name for n in group.nodes for o in n.outputs}
    inputs: list[str] = []
    for node in group.nodes:
        for name in node.inputs:
            if name and name not in produced and name not in inputs:
                inputs.append(name)
    consts = graph.constants
    scalars = {n: consts[n] for n in inputs if n in consts and consts[n].size == 1}
    inputs = [n for n in inputs if n not in scalars]
    # An in-place op's destination (insert_slice's) shares the output's storage and is never
    # read: it is no parameter (C's restrict forbids passing one buffer twice).
    dests = in_place_dests(group.nodes)
    in_place = [n for n in inputs if n in dests]
    inputs = [n for n in inputs if n not in in_place]
    outputs = [group.result.outputs[0].name] + [
        o.name for n in group.nodes[:-1] for o in n.outputs if o.name in {v.name for v in graph.outputs}]
    outputs += [o.name for o in group.result.outputs[1:]]
    cname = {n: f"in{k}" for k, n in enumerate(inputs)}
    cname.update({n: f"out{k}" for k, n in enumerate(outputs)})
    internal = [o.name for n in group.nodes for o in n.outputs if o.name not in cname]
    cname.update({n: f"v{k}" for k, n in enumerate(internal)})
    for k, n in enumerate(scalars):
        cname[n] = f"s{k}"
    for k, n in enumerate(in_place):
        cname[n] = f"d{k}"

    def handle(name):
        t = types[name]
        return Tensor(cname[name], shape_exprs(t.shape), t.dtype)

    stages: list[Stage] = []
    for node in group.nodes:
        ins = [handle(n) for n in node.inputs if n]
        outs = [handle(o.name) for o in node.outputs]
        attrs, raw = node.attrs, node.attrs.get(PADS_IN_STORAGE) and node.inputs[0] in borders
        if raw:  # the border is the padding: an unpadded convolution over the whole storage
            x = node.inputs[0]
            ins[0] = Tensor(cname[x], borders[x].storage_shape(types[x].shape), types[x].dtype)
            attrs = {**attrs, "pads": (0, 0, 0, 0)}
        shifts = {cname[n]: borders[n].lo for n in node.inputs
                  if n in borders and n not in produced and not (raw and n == node.inputs[0])}
        stages += [shift_loads(st, shifts) for st in ops.get(node.op).compute(ins, outs, attrs)]
    scalar_values = {cname[n]: v.reshape(()).item() for n, v in scalars.items()}
    scalar_dtypes = {cname[n]: DType.of(v.dtype) for n, v in scalars.items()}
    if scalar_values:
        def sub(ld: Load):
            if ld.buffer in scalar_values:
                return Const(scalar_values[ld.buffer], scalar_dtypes[ld.buffer])
            return None
        stages = [replace(s, body=replace_loads(s.body, sub)) for s in stages]
    return stages, inputs, outputs, cname


def build_kernel(index: int, group: Group, graph: Graph, types: dict[str, TensorType],
                 trace: list | None = None, caps: Capabilities = DEFAULT_CAPABILITIES,
                 tuned=None, borders=None) -> Kernel:
    """``tuned``: optional ``func -> trace or None`` (a tuning database's best records).
    ``borders``: values stored with a border (``kiln/passes/padded_storage.py``); a kernel
    writing one stores into its interior and fills the border."""
    borders = borders or {}
    stages, inputs, outputs, cname = group_stages(group, graph, types, borders)
    out_c = {cname[n] for n in outputs}
    stages = inline_stages(stages, keep=out_c)
    bordered = {cname[n]: borders[n] for n in outputs if n in borders}
    stages = [store_at_border(s, bordered[s.name]) if s.name in bordered else s for s in stages]
    name = f"kernel_{index}"
    temps = [s for s in stages if s.name not in out_c]
    stored = {n: borders[n].storage_shape(types[n].shape) if n in borders else types[n].shape for n in inputs + outputs}
    params = [Buffer(cname[n], shape_exprs(stored[n]), types[n].dtype,
                     zero_outside=borders[n].zero_box(types[n].shape)
                     if n in inputs and n in borders and caps.skip_border_taps else None)
              for n in inputs + outputs]
    params += [Buffer(s.name, s.shape, s.dtype) for s in temps]
    func = canonicalize(Func(name, tuple(params), seq(*(lower_stage(s) for s in stages))))
    sch = _tuned_schedule(func, tuned) if trace is None and tuned is not None else None
    if sch is None:
        sch = schedule_kernel(Schedule(func), stages, caps) if trace is None else Schedule.replay(func, trace)
    fills = [border_fill(cname[n], types[n].shape, borders[n], types[n].dtype) for n in outputs if n in borders]
    if fills:  # after scheduling: a few kilobytes in serial loops, outside any tuning record's trace
        sch.func = replace(sch.func, body=seq(*fills, sch.func.body))
    temp_types = [(f"{name}.{s.name}", TensorType(shape_dims(s.shape), s.dtype)) for s in temps]
    symbols = sorted(set().union(*(symbols_of(types[n].shape) for n in inputs + outputs)))
    return Kernel(name, sch.func, inputs, outputs, temp_types, symbols, stages, sch.trace, func)


def _tuned_schedule(func: Func, tuned) -> Schedule | None:
    """The tuned schedule of a kernel, replayed as the tuner measured it; None without a record.
    A record that no longer replays (a database from another Kiln version) falls back to the
    default rules with a warning instead of failing the compile."""
    import warnings

    from kiln.errors import ScheduleError, TuningWarning
    from kiln.passes.hoist_loads import cleanup_loops

    record = tuned(func)
    if record is None:
        return None
    try:
        sch = Schedule.replay(func, record)
    except ScheduleError as e:
        warnings.warn(f"tuning record for {func.name} does not replay ({e}); using the default schedule",
                      TuningWarning, stacklevel=2)
        return None
    sch.func = cleanup_loops(sch.func)
    return sch


def build_kernels(graph: Graph, groups: Sequence[Group],
                  caps: Capabilities = DEFAULT_CAPABILITIES, tuned=None) -> list[Kernel]:
    types, borders = graph.value_types(), storage_borders(graph)
    return [build_kernel(i, g, graph, types, caps=caps, tuned=tuned, borders=borders) for i, g in enumerate(groups)]
