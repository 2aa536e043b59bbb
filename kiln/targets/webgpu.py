"""The WebGPU target: WGSL compute shaders, run from Python through ``wgpu`` and in browsers.

From Python the shaders run through the ``wgpu`` package (wgpu-native): on a machine without
a GPU its adapter is Mesa's lavapipe (a Vulkan driver on the CPU, Debian
``mesa-vulkan-drivers``); on an NVIDIA machine, the NVIDIA Vulkan driver. ``export`` writes the
browser bundle: ``model.js`` (an ES module: ``await KilnModel.load(url)`` then
``await model.run({input: Float32Array})``), one ``.wgsl`` file per kernel, ``weights.bin``
and an ``index.html`` demo.
"""
from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping

import numpy as np

from kiln.codegen.templates import numbered
from kiln.codegen.wgsl import DIMS_BINDING, HALF_BINDING
from kiln.ir.symbolic import evaluate
from kiln.errors import ToolchainError
from kiln.targets.base import ModelSource, Target


def _transposable_dequantize(dq, consumers, constants) -> bool:
    """A per-tensor or per-axis dequantize of a constant 8-bit tensor read by one transpose."""
    from kiln.passes.fold_constants import dequantizes_packed_weights

    return (dq is not None and not dq.attrs.get("block_size") and dequantizes_packed_weights(dq, constants)
            and len(consumers.get(dq.outputs[0].name, [])) == 1)


class WebGPUTarget(Target):
    """WGSL kernels: one storage arena, a weights buffer, one dispatch per loop nest."""

    name = "webgpu"
    # +f16: float16 activations in f16 storage (one half per element; needs the adapter's
    # shader-f16 feature, requested by the runner and by model.js); +subgroups: reductions
    # combine through subgroup operations (the adapter's subgroups feature)
    known_options = ("+f16", "+subgroups")
    # WGSL has no 64-bit integers: QDQ models run as float (see Target); ConvInteger /
    # MatMulInteger / QLinear* keep their exact int32 kernels, with 8-bit weights packed four
    # to a word (kiln/codegen/wgsl_model.py)
    fixed_point_requantization = False

    def capabilities(self):
        from kiln.passes.capabilities import Capabilities

        # The CPU schedule is not used for the shaders (gpu_schedule rebinds the unscheduled
        # loops); plain NCHW keeps convolutions in the layout the GPU rules expect.
        return Capabilities(vector_bytes=16, vector_registers=16, threads=1, nchwc=False, pack_matmul=False)

    def prepare_graph(self, graph):
        """RoiAlign's sampling arithmetic in float32 (WGSL has no f64; ONNX Runtime computes it
        in the input's float type too)."""
        from kiln.ir.graph import Node

        if not any(n.op == "roi_align" for n in graph.nodes):
            return graph
        return graph.replace(nodes=tuple(Node(n.op, n.inputs, n.outputs, {**n.attrs, "float32": 1}, n.name)
                                         if n.op == "roi_align" else n for n in graph.nodes))

    def adapt_quantized(self, graph):
        """QLinearConv/QLinearMatMul's float ``requantize`` in float32 (WGSL has no f64), as
        ONNX Runtime computes it; and a transpose of dequantized 8-bit weights (Gemm's transB)
        moved onto the weights themselves, so the dequantize can be read through by the
        matmul (kiln/passes/fuse.py) and the weights ship as int8."""
        from kiln.ir.graph import Node

        consumers = graph.consumers()
        producers = graph.producers()
        constants = dict(graph.constants)
        nodes = []
        for n in graph.nodes:
            if n.op == "requantize":
                n = Node(n.op, n.inputs, n.outputs, {**n.attrs, "float32": 1}, n.name)
            elif n.op == "transpose" and _transposable_dequantize(producers.get(n.inputs[0]), consumers, constants):
                dq = producers[n.inputs[0]]
                perm = tuple(int(p) for p in n.attrs["perm"])
                name = f"{dq.inputs[0]}__t"
                constants[name] = np.ascontiguousarray(constants[dq.inputs[0]].transpose(perm))
                attrs = dict(dq.attrs)
                if "axis" in attrs:
                    attrs["axis"] = perm.index(int(attrs["axis"]) % len(perm))
                n = Node("dequantize_linear", (name, *dq.inputs[1:]), n.outputs, attrs, n.name)
            nodes.append(n)
        used = {i for nd in nodes for i in nd.inputs}
        return graph.replace(nodes=tuple(nodes), constants={k: v for k, v in constants.items() if k in used})

    def generate(self, graph, kernels, plan, prefix) -> ModelSource:
        from kiln.codegen.wgsl_model import build_webgpu_model

        model = build_webgpu_model(graph, kernels, half="+f16" in self.options,
                                   subgroups="+subgroups" in self.options)
        files = {k.file: k.source for k in model.kernels}
        files["model.js"] = _render_bundle("model.js.j2", graph, model)
        files["index.html"] = _render_bundle("index.html.j2", graph, model)
        source = ModelSource(files, model.kernels[0].file if model.kernels else "model.js", prefix)
        source.binaries["weights.bin"] = model.plan.weights.tobytes()
        source.webgpu = model  # the model table the runner walks (an attribute, not a file)
        return source

    def runner(self, compiled):
        return WebGPURunner(compiled.result.source.webgpu, compiled.result.source.files, compiled.graph)


def _render_bundle(template: str, graph, model) -> str:
    from kiln import __version__
    from kiln.codegen.templates import render

    return render(template, version=__version__, model_name=graph.name,
                  table=json.dumps(model.table(), indent=1), kernel_count=len(model.kernels),
                  dims_binding=DIMS_BINDING, half_binding=HALF_BINDING)


# -- running through wgpu ---------------------------------------------------------------------

# the WebGPU features a model can need (browser names, as in the model table) -> what
# wgpu-native calls them, and the target option that asks for them
FEATURES = {"shader-f16": ("shader-f16", "webgpu:+f16", "float16 values then take one word each"),
            "subgroups": ("subgroup", "webgpu:+subgroups", "reductions then combine through workgroup memory")}


@functools.lru_cache(maxsize=4)
def device(features: tuple[str, ...] = ()):
    """The wgpu device (lavapipe without a GPU), with the adapter's largest buffer limits and
    the WebGPU ``features`` a model needs (:data:`FEATURES`)."""
    os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")  # the Vulkan loader complains without one
    try:
        import wgpu
    except ImportError as e:
        raise ToolchainError("the webgpu target runs through the 'wgpu' package: pip install wgpu "
                             f"({e})") from None
    adapter = wgpu.gpu.request_adapter_sync(power_preference="high-performance")
    if adapter is None:
        raise ToolchainError("wgpu found no WebGPU adapter: install a Vulkan driver (Debian "
                             "'mesa-vulkan-drivers' for lavapipe on the CPU, plus 'libvulkan1')")
    native = []
    for f in features:
        name, option, otherwise = FEATURES[f]
        if name not in adapter.features:
            raise ToolchainError(f"the model was compiled for {option}, but this WebGPU adapter "
                                 f"({adapter.info.get('device', '?')}) has no '{f}' feature; compile for "
                                 f"'webgpu' ({otherwise})")
        native.append(name)
    lim = adapter.limits
    limits = {k: lim[k] for k in ("max-storage-buffer-binding-size", "max-buffer-size",
                                  "max-compute-workgroup-storage-size") if k in lim}
    return adapter.request_device_sync(required_limits=limits, required_features=native)


class WebGPURunner:
    """Runs the model table on the wgpu device: write inputs, dispatch in order, read outputs."""

    def __init__(self, model, files: dict[str, str], graph):
        import wgpu

        self.model, self.graph = model, graph
        halves = model.plan.arena16_halves
        self.dev = dev = device(tuple(model.features))
        arena_bytes = max(model.plan.arena_words, 1) * 4
        limit = dev.limits["max-storage-buffer-binding-size"]
        widest = max(arena_bytes, halves * 2, max(c.nbytes for c in model.plan.weight_chunks))
        if widest > limit:
            raise ToolchainError(f"the model binds {widest} bytes at once; this WebGPU device binds at most "
                                 f"{limit} bytes")
        S = wgpu.BufferUsage
        self.arena = dev.create_buffer(size=arena_bytes, usage=S.STORAGE | S.COPY_SRC | S.COPY_DST)
        chunks = model.plan.weight_chunks
        self.weights = [dev.create_buffer_with_data(data=_nonempty(c).tobytes(), usage=S.STORAGE) for c in chunks]
        storage = {"binding": 0, "visibility": wgpu.ShaderStage.COMPUTE,
                   "buffer": {"type": wgpu.BufferBindingType.storage}}
        entries = [storage] + [
            {"binding": i + 1, "visibility": wgpu.ShaderStage.COMPUTE,
             "buffer": {"type": wgpu.BufferBindingType.read_only_storage}} for i in range(len(chunks))]
        resources = [{"binding": 0, "resource": {"buffer": self.arena}}] + [
            {"binding": i + 1, "resource": {"buffer": b}} for i, b in enumerate(self.weights)]
        self.arena16 = None
        if halves:  # f16 storage: float16 values, one half each
            self.arena16 = dev.create_buffer(size=halves * 2, usage=S.STORAGE | S.COPY_SRC | S.COPY_DST)
            entries.append({"binding": HALF_BINDING, "visibility": wgpu.ShaderStage.COMPUTE,
                            "buffer": {"type": wgpu.BufferBindingType.storage}})
            resources.append({"binding": HALF_BINDING, "resource": {"buffer": self.arena16}})
        self.dims = None
        if model.symbols:  # dynamic dims: a uniform of vec4<i32>, written before each run
            self.dims = dev.create_buffer(size=16 * -(-len(model.symbols) // 4), usage=S.UNIFORM | S.COPY_DST)
            entries.append({"binding": DIMS_BINDING, "visibility": wgpu.ShaderStage.COMPUTE,
                            "buffer": {"type": wgpu.BufferBindingType.uniform}})
            resources.append({"binding": DIMS_BINDING, "resource": {"buffer": self.dims}})
        layout = dev.create_bind_group_layout(entries=entries)
        self.bind_group = dev.create_bind_group(layout=layout, entries=resources)
        playout = dev.create_pipeline_layout(bind_group_layouts=[layout])
        self.steps = []  # (pipeline, workgroup grid, bind group)
        for k in model.kernels:
            module = _shader(dev, files[k.file], k.file)
            for d in k.dispatches:
                layout_, group = playout, self.bind_group
                if d.name in k.views:  # the dispatch binds its tensors on their own (vector loads)
                    layout_, group = self._views(k.views[d.name], entries, resources)
                try:
                    pipe = dev.create_compute_pipeline(layout=layout_,
                                                       compute={"module": module, "entry_point": d.name})
                except Exception as e:  # noqa: BLE001  (wgpu raises its own error types)
                    raise ToolchainError(f"WebGPU rejected entry point {d.name} of {k.file}: {e}") from None
                self.steps.append((pipe, d.grid(), group))

    def _views(self, views, entries, resources):
        """Pipeline layout and bind group of a dispatch with its own tensor views
        (:mod:`kiln.codegen.wgsl_views`): each view a range of the arena or of a weight chunk;
        the dims uniform as for every kernel."""
        import wgpu

        T = wgpu.BufferBindingType
        own = [{"binding": v.binding, "visibility": wgpu.ShaderStage.COMPUTE,
                "buffer": {"type": T.read_only_storage if v.buffer == "weights" else T.storage}} for v in views]
        bound = [{"binding": v.binding,
                  "resource": {"buffer": self.weights[v.chunk] if v.buffer == "weights" else self.arena,
                               "offset": v.offset * 4, "size": v.words * 4}} for v in views]
        shared = [i for i, e in enumerate(entries) if e["binding"] == DIMS_BINDING]
        layout = self.dev.create_bind_group_layout(entries=own + [entries[i] for i in shared])
        group = self.dev.create_bind_group(layout=layout, entries=bound + [resources[i] for i in shared])
        return self.dev.create_pipeline_layout(bind_group_layouts=[layout]), group

    def time(self, feeds: Mapping, repeats: int = 50, warmup: int = 3) -> float:
        """Milliseconds per run of the model's dispatches on the device, inputs already there:
        ``repeats`` runs encoded back to back in one command buffer, timed from submit until
        the queue is done, after ``warmup`` untimed runs: the time a benchmark compares with
        CUDA events on the same GPU. The wait is a 4-byte readback, which completes after the
        work submitted before it (wgpu 0.32's ``on_submitted_work_done_sync`` fails in cffi)."""
        import time

        self(feeds)  # writes the inputs (and checks the model runs)
        for n in (warmup, repeats):
            enc = self.dev.create_command_encoder()
            for _ in range(n):
                self._encode(enc)
            start = time.perf_counter()
            self.dev.queue.submit([enc.finish()])
            self.dev.queue.read_buffer(self.arena, 0, 4)
            elapsed = time.perf_counter() - start
        return 1e3 * elapsed / max(repeats, 1)

    def _encode(self, enc) -> None:
        cpass = enc.begin_compute_pass()
        current = None
        for pipe, grid, group in self.steps:
            if group is not current:
                cpass.set_bind_group(0, group)
                current = group
            cpass.set_pipeline(pipe)
            cpass.dispatch_workgroups(*grid)
        cpass.end()

    def __call__(self, feeds: Mapping) -> dict[str, np.ndarray]:
        from kiln.codegen.wgsl_model import from_words, to_words
        from kiln.targets.host import check_inputs

        arrays, dims = check_inputs(self.graph.inputs, feeds, self.graph.dim_bounds)
        q = self.dev.queue
        if self.dims is not None:
            values = np.zeros(4 * -(-len(self.model.symbols) // 4), np.int32)
            values[: len(self.model.symbols)] = [dims[n] for n in self.model.symbols]
            q.write_buffer(self.dims, 0, values.tobytes())
        for spec, a in zip(self.model.inputs, arrays):
            if a.size == 0:
                continue  # an empty tensor: nothing to write (wgpu refuses an empty write)
            if spec["region"] == "arena16":
                q.write_buffer(self.arena16, spec["offset"] * 2, _even(a.astype(np.float16).reshape(-1)).tobytes())
            else:
                q.write_buffer(self.arena, spec["offset"] * 4, to_words(a).tobytes())
        enc = self.dev.create_command_encoder()
        self._encode(enc)
        q.submit([enc.finish()])
        outs = {}
        for v, spec in zip(self.graph.outputs, self.model.outputs):
            shape = tuple(evaluate(d, dims) for d in v.shape)
            size = int(np.prod(shape, dtype=np.int64))
            if spec["region"] == "arena16":
                raw = q.read_buffer(self.arena16, spec["offset"] * 2, _pad4(-(-size // 2)))
                outs[v.name] = np.frombuffer(raw, np.float16)[:size].reshape(shape).copy()
                continue
            raw = q.read_buffer(self.arena, spec["offset"] * 4, _pad4(size))
            outs[v.name] = from_words(np.frombuffer(raw, np.uint32)[:size], v.dtype, shape)
        return outs


def _nonempty(words: np.ndarray) -> np.ndarray:
    return words if words.size else np.zeros(1, np.uint32)


def _even(halves: np.ndarray) -> np.ndarray:
    """float16 data padded to whole 4-byte words (WebGPU copies move multiples of 4 bytes)."""
    return np.concatenate([halves, np.zeros(1, np.float16)]) if halves.size % 2 else halves


def _pad4(n: int) -> int:
    """Byte count of ``n`` words rounded so copies stay 4-byte aligned (and never zero)."""
    return max(n, 1) * 4


def _shader(dev, source: str, name: str):
    # wgpu's shader compiler (naga) has subgroup operations but not yet the standard
    # `enable subgroups;` directive that browsers require: the bundle keeps it, wgpu gets
    # the module without it (the device has the feature)
    code = source.replace("enable subgroups;\n", "", 1)
    try:
        return dev.create_shader_module(code=code, label=name)
    except Exception as e:  # noqa: BLE001
        raise ToolchainError(f"WebGPU rejected the generated shader {name}:\n{e}\n\n--- {name} ---\n"
                             f"{numbered(source)}") from None


__all__ = ["WebGPUTarget", "WebGPURunner", "device"]
