"""The WebGPU model: word memory plan, one ``.wgsl`` file per kernel, and the model table.

Every tensor element is one 32-bit word on the device (WGSL has no 8- or 64-bit integers and
no f64) -- except 8-bit and float16 constants (a quantized or half-precision model's weights),
packed four or two to a word and unpacked by the shader, and, with ``webgpu:+f16``, float16
activations, one half each in a second arena (``arena16``) -- so the host memory plan's byte
offsets do not apply: this module plans its own, in words (and halves), with the same liveness
rule (greedy by size over kernel intervals). The arena holds
the graph inputs and outputs first, then the intermediates; constants live in separate
read-only ``weights`` buffers (128 MiB bindings). Dynamic dims count at their upper bounds. ``to_words``/``from_words`` are the conversions at the edge,
mirrored by ``model.js`` in the browser.

The model table (:class:`WebGPUModel`) lists, per kernel, its WGSL file and its dispatches
(entry point and workgroup grid) in launch order: the Python runner and ``model.js`` both
just walk it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import json

import numpy as np

from kiln.codegen.templates import render
from kiln.codegen.wgsl import WGSL_PRELUDE, WGSLRenderer, bindings, uses_subgroups
from kiln.codegen.wgsl_views import MAX_VIEWS, OFFSET_ALIGN_WORDS, VIEW_BINDING, View, aligned_words, dispatch_views
from kiln.errors import KilnError, ShapeError
from kiln.ir.dtype import DType
from kiln.ir.graph import Graph
from kiln.passes.gpu_schedule import Dispatch, schedule_dispatches
from kiln.passes.memory_plan import _greedy_by_size, output_views, view_roots

WORD_ALIGN = OFFSET_ALIGN_WORDS  # 256 bytes: any region can also be bound on its own (wgsl_views)
BINDING_WORDS = 1 << 25  # 128 MiB: WebGPU's default maxStorageBufferBindingSize
CHUNK_WORDS = BINDING_WORDS  # weights are bound in chunks of at most this many words
MAX_STORAGE_BINDINGS = MAX_VIEWS  # WebGPU's default per shader stage: the arena + 7 weight chunks
UNSUPPORTED = (DType.float64,)


def to_words(a: np.ndarray) -> np.ndarray:
    """A tensor as device words: f32 bits, i32 for every integer type, 0/1 for bool."""
    a = np.ascontiguousarray(a)
    if a.dtype == np.float32:
        return a.reshape(-1).view(np.uint32)
    if a.dtype == np.float16:
        return a.astype(np.float32).reshape(-1).view(np.uint32)
    if a.dtype == np.bool_:
        return a.astype(np.uint32).reshape(-1)
    if a.dtype.kind in "iu":
        info = np.iinfo(np.int32)
        return np.clip(a, info.min, info.max).astype(np.int32).reshape(-1).view(np.uint32)
    raise ShapeError(f"the webgpu target stores float32, float16, integer and bool tensors; got {a.dtype}")


# constants stored several to a word: 8-bit integers four, float16 two (little-endian, as
# WebGPU buffers are); the shader unpacks them (``WGSLRenderer.load``)
PACKED_DTYPES = (np.dtype(np.int8), np.dtype(np.uint8), np.dtype(np.float16))


def to_packed_words(a: np.ndarray) -> np.ndarray:
    """An 8-bit or float16 constant as device words, ``4 / itemsize`` elements per word
    (element ``i`` in the bits at ``8 * itemsize * (i % per_word)`` of word ``i // per_word``):
    a quantized model's weights take a quarter, a float16 model's half, of the space one word
    per element would."""
    raw = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
    pad = -raw.size % 4
    return np.concatenate([raw, np.zeros(pad, np.uint8)]).view("<u4").astype(np.uint32)


def from_words(w: np.ndarray, dtype: DType, shape) -> np.ndarray:
    w = np.ascontiguousarray(w, dtype=np.uint32)
    if dtype.is_float:
        return w.view(np.float32).astype(dtype.np).reshape(shape)
    if dtype is DType.bool:
        return (w != 0).reshape(shape)
    return w.view(np.int32).astype(dtype.np).reshape(shape)


@dataclass
class WordPlan:
    storage: dict[str, tuple[str, int]]  # value -> ("arena" | "arena16" | "weights", offset in its units)
    arena_words: int
    weights: np.ndarray                  # uint32 words
    chunk_words: int = CHUNK_WORDS       # weights are bound in chunks of this many words
    packed: set = field(default_factory=set)  # 8-bit constants stored four to a word
    arena16_halves: int = 0              # f16 storage (webgpu:+f16): float16 values, one half each

    @property
    def weight_chunks(self) -> list[np.ndarray]:
        w = self.weights
        return [w[i: i + self.chunk_words] for i in range(0, max(w.size, 1), self.chunk_words)]

    def offset(self, name: str) -> int:
        return self.storage[name][1]


def _max_size(t, bounds) -> int:
    """Elements of a tensor type at the upper bounds of its dim symbols."""
    return t.max_nbytes(bounds) // t.dtype.itemsize


def plan_words(graph: Graph, kernels, chunk_words: int | None = None, half: bool = False) -> WordPlan:
    """Word offsets of every value; dynamic dims count at their upper bounds.

    ``half`` (f16 storage): float16 values that are not constants live in a second arena,
    ``arena16``, one 16-bit half per element (WGSL ``array<f16>``, needs ``shader-f16``),
    planned the same way in halves; everything else stays one word per element."""
    chunk_words = chunk_words or CHUNK_WORDS
    bounds = graph.dim_bounds
    types = graph.value_types()
    roots = view_roots(graph)

    def region(t) -> str:
        return "arena16" if half and t.dtype is DType.float16 else "arena"

    def units(t) -> int:  # halves align to the same 256 bytes as words
        n = _max_size(t, bounds)
        return aligned_words(n) if region(t) == "arena" else 2 * aligned_words(-(-n // 2))

    storage: dict[str, tuple[str, int]] = {}
    off = {"arena": 0, "arena16": 0}
    for v in list(graph.inputs) + list(graph.outputs):
        r = region(v.type)
        storage[v.name] = (r, off[r])
        off[r] += units(v.type)
    for out, viewed in output_views(graph).items():  # computed in the output's words
        storage[viewed] = storage[out]
    chunks, woff, packed = [], 0, set()
    for name, arr in graph.constants.items():
        if arr.dtype in PACKED_DTYPES:
            w = to_packed_words(arr)
            packed.add(name)
        else:
            w = to_words(arr)
        storage[name] = ("weights", woff)
        pad = aligned_words(w.size) - w.size
        chunks += [w, np.zeros(pad, np.uint32)]
        woff += w.size + pad
    weights = np.concatenate(chunks) if chunks else np.zeros(WORD_ALIGN, np.uint32)

    intervals: dict[str, dict[str, list[int]]] = {"arena": {}, "arena16": {}}
    sizes: dict[str, int] = {}
    for step, k in enumerate(kernels):
        for name in k.outputs:
            r = roots.get(name, name)
            if r not in storage:
                intervals[region(types[r])].setdefault(r, [step, step])
                sizes[r] = units(types[r])
        for name, t in k.temps:
            intervals[region(t)][name] = [step, step]
            sizes[name] = units(t)
        for name in k.inputs:
            r = roots.get(name, name)
            for live in intervals.values():
                if r in live:
                    live[r][1] = max(live[r][1], step)
    total = {}
    for reg, live in intervals.items():
        offsets, size = _greedy_by_size(live, {n: sizes[n] for n in live})
        for name, o in offsets.items():
            storage[name] = (reg, off[reg] + o)
        total[reg] = off[reg] + size
    for alias, r in roots.items():
        if r in storage and alias not in storage:
            storage[alias] = storage[r]
    for reg, per_unit in (("arena", 4), ("arena16", 2)):
        if total[reg] * per_unit > BINDING_WORDS * 4:
            raise KilnError(f"the model needs {total[reg] * per_unit} bytes of activations at once in {reg}; a "
                            f"WebGPU storage binding holds at most {BINDING_WORDS * 4} bytes by default")
    plan = WordPlan(storage, total["arena"], weights, chunk_words, packed, total["arena16"])
    arenas = 1 + (plan.arena16_halves > 0)
    if len(plan.weight_chunks) + arenas > MAX_STORAGE_BINDINGS:
        raise KilnError(f"the model has {weights.size * 4} bytes of weights: {len(plan.weight_chunks)} bindings of "
                        f"{chunk_words * 4} bytes, but WebGPU guarantees only {MAX_STORAGE_BINDINGS - arenas} beside "
                        f"the arena{'s' if arenas > 1 else ''}")
    return plan


@dataclass
class WebGPUKernel:
    name: str
    file: str
    source: str
    dispatches: list[Dispatch]
    comment: str = ""
    views: dict[str, list[View]] = field(default_factory=dict)  # entry -> its own bindings (vector loads)


@dataclass
class WebGPUModel:
    kernels: list[WebGPUKernel]
    plan: WordPlan
    inputs: list[dict]
    outputs: list[dict]
    traces: dict[str, list] = field(default_factory=dict)
    symbols: list[str] = field(default_factory=list)     # dynamic dims, in kiln_dims order
    dim_bounds: dict = field(default_factory=dict)

    @property
    def features(self) -> list[str]:
        """The WebGPU features the kernels need (browser names): ``shader-f16`` for f16 storage,
        ``subgroups`` for subgroup operations."""
        need = ["shader-f16"] if self.plan.arena16_halves else []
        if any(uses_subgroups(d.func) for k in self.kernels for d in k.dispatches):
            need.append("subgroups")
        return need

    def table(self) -> dict:
        """What a runner needs, as plain JSON-able data (``model.js`` embeds it)."""
        return {
            "arenaWords": self.plan.arena_words, "weightsWords": int(self.plan.weights.size),
            "arena16Halves": self.plan.arena16_halves, "features": self.features,
            "symbols": self.symbols, "dimBounds": {k: list(self.dim_bounds[k]) for k in self.symbols},
            "weightChunks": [int(c.size) for c in self.plan.weight_chunks],
            "inputs": self.inputs, "outputs": self.outputs,
            "kernels": [{"name": k.name, "file": k.file,
                         "dispatches": [{"entry": d.name, "grid": list(d.grid()),
                                         **({"views": [v.table() for v in k.views[d.name]]}
                                            if d.name in k.views else {})}
                                        for d in k.dispatches]}
                        for k in self.kernels],
        }


def _io(values, plan: WordPlan, bounds) -> list[dict]:
    """Inputs/outputs for runners; a dynamic dim is a JavaScript expression over ``d`` (the
    dim values by name), e.g. ``d["batch"] * 4``."""
    return [{"name": v.name, "shape": [d if isinstance(d, int) else _js(d) for d in v.shape],
             "dtype": v.dtype.value, "region": plan.storage[v.name][0], "offset": plan.offset(v.name),
             "size": _max_size(v.type, bounds)}
            for v in values]


def _js(dim) -> str:
    import sympy

    syms = sorted(dim.free_symbols, key=lambda x: x.name)
    marks = {x: sympy.Symbol(f"KILNDIM{i}X", integer=True, positive=True) for i, x in enumerate(syms)}
    text = sympy.jscode(dim.subs(marks))
    for x, m in marks.items():
        text = text.replace(m.name, f"d[{json.dumps(x.name)}]")
    return text


def build_webgpu_model(graph: Graph, kernels, tiling: bool = True, half: bool = False,
                       subgroups: bool = False) -> WebGPUModel:
    """``half``: f16 storage for float16 values (``plan_words``); the kernels then enable f16.
    ``subgroups``: reductions combine through subgroup operations where the row rule applies
    (:mod:`kiln.passes.gpu_rows`); the kernels that use them enable subgroups."""
    symbols = sorted(graph.dim_bounds)
    for v in list(graph.inputs) + list(graph.outputs):
        if v.dtype in UNSUPPORTED:
            raise ShapeError(f"{'input' if v in graph.inputs else 'output'} {v.name!r} is {v.dtype}; "
                             "WGSL has no 64-bit floats (the webgpu target takes float32, float16, "
                             "integer and bool tensors)")
    plan = plan_words(graph, kernels, half=half)
    half = plan.arena16_halves > 0  # only a model with float16 values needs the extension
    producers = graph.producers()
    out, traces = [], {}
    for k in kernels:
        bases = {b.name: plan.storage[name] for b, name in zip(k.unscheduled.params, k.params)}
        dispatches = schedule_dispatches(k.unscheduled, k.stages, tiling=tiling, bounds=graph.dim_bounds,
                                         subgroups=subgroups)
        packed = {b.name for b, name in zip(k.unscheduled.params, k.params) if name in plan.packed}
        renderer = WGSLRenderer(bases, plan.chunk_words, symbols, packed)
        entries, views, binding = [], {}, VIEW_BINDING
        for d in dispatches:
            found = dispatch_views(d.func, bases, plan.chunk_words, packed, binding)
            if found is not None:
                views[d.name] = found[0]
                binding += len(found[0])
            entries.append(renderer.render_entry(d.func, d.workgroup_size, found[1] if found else None))
        ops_ = "+".join(producers[o].op for o in k.outputs if o in producers)
        comment = f"{k.name}: writes {', '.join(k.outputs)} ({ops_})"
        prelude = bindings(len(plan.weight_chunks), plan.chunk_words, symbols, half,
                           any(uses_subgroups(d.func) for d in dispatches))
        prelude += "".join(v.declaration() + "\n" for vs in views.values() for v in vs) + WGSL_PRELUDE
        source = render("kernel.wgsl.j2", comment=comment, prelude=prelude, entries=entries,
                        params=[{"name": b.name, "value": name, "region": bases[b.name][0],
                                 "offset": bases[b.name][1], "dtype": b.dtype.value,
                                 "shape": list(b.shape)} for b, name in zip(k.unscheduled.params, k.params)])
        out.append(WebGPUKernel(k.name, f"{k.name}.wgsl", source, dispatches, comment, views))
        traces[k.name] = [d.trace for d in dispatches]
    bounds = graph.dim_bounds
    return WebGPUModel(out, plan, _io(graph.inputs, plan, bounds), _io(graph.outputs, plan, bounds), traces,
                       symbols, dict(bounds))


__all__ = ["WebGPUKernel", "WebGPUModel", "WordPlan", "build_webgpu_model", "from_words", "plan_words",
           "to_words"]
