"""The Python API: ``kiln.compile``, ``CompiledModel.run/export/source``, ``kiln.inspect``, ``kiln.load``."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from kiln.errors import KilnError
from kiln.ir.dtype import DType
from kiln.ir.graph import Graph, TensorType, Value
from kiln.passes.manager import PipelineResult, run_pipeline
from kiln.ir.symbolic import parse_dim
from kiln.targets import Target, get_target

PREFIX = "kiln_model"


def _import(model, input_shapes=None, example_inputs=None, dim_bounds=None) -> Graph:
    if isinstance(model, Graph):
        return model
    if _is_torch_module(model):
        if input_shapes:
            raise KilnError("input_shapes= applies to ONNX models; a torch.nn.Module takes its input "
                            "shapes from example_inputs=")
        from kiln.frontend.torch import from_torch

        return from_torch(model, example_inputs)
    from kiln.frontend.onnx import from_onnx

    return from_onnx(model, input_shapes, dim_bounds)


def _is_torch_module(model) -> bool:
    """A module can only exist once torch is imported: never import torch just to check."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(model, torch.nn.Module)


class CompiledModel:
    """A model compiled for one target: run it, read its source, or export its project."""

    def __init__(self, result: PipelineResult, target: "str | Target"):
        self.target_impl = get_target(target)
        self.target = str(self.target_impl)
        self.result = result
        self.graph = result.graph
        self._runner = None

    @property
    def input_names(self) -> list[str]:
        return [v.name for v in self.graph.inputs]

    @property
    def output_names(self) -> list[str]:
        return [v.name for v in self.graph.outputs]

    @property
    def arena_size(self) -> int:
        return self.result.plan.arena_size

    @property
    def kernel_count(self) -> int:
        return len(self.result.kernels)

    @property
    def files(self) -> dict[str, str]:
        """Every generated source file, by name."""
        return dict(self.result.source.files)

    def source(self) -> str:
        """The main generated file (``model.c`` for C targets)."""
        return self.result.source.files[self.result.source.main]

    def header(self) -> str:
        return self.result.source.files["model.h"]

    def build(self):
        if self._runner is None:
            self._runner = self.target_impl.runner(self)
        return self._runner

    def profile(self, inputs: Mapping[str, np.ndarray], repeats: int = 10) -> list[dict]:
        """Time each kernel (a build with -DKILN_PROFILE): the median-free mean over ``repeats``
        runs, slowest first, with what the kernel computes. Host target only."""
        import ctypes

        if self.target_impl.name != "host":
            raise KilnError(f"profile() times kernels on the host target; this model is compiled for {self.target}")
        runner = self.target_impl.runner(self, extra_flags=["-DKILN_PROFILE"])
        runner(inputs)  # warm up, then discard its times
        kernels = self.result.kernels
        times = (ctypes.c_double * max(len(kernels), 1))()
        read = getattr(runner._lib, f"{PREFIX}_profile")
        read(times)
        for _ in range(repeats):
            runner(inputs)
        read(times)
        producers = self.graph.producers()
        rows = [{"kernel": k.name, "ms": times[i] / 1e6 / repeats,
                 "ops": "+".join(producers[o].op for o in k.outputs if o in producers),
                 "writes": ", ".join(k.outputs)} for i, k in enumerate(kernels)]
        return sorted(rows, key=lambda r: -r["ms"])

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run on a dict of name -> numpy array; returns a dict of output arrays."""
        return self.build()(inputs)

    def export(self, directory) -> Path:
        """Write a self-contained project for the target (sources, weights, build files, manifest)."""
        return self.target_impl.export(self, directory)


def compile(model, target: str = "host", *, input_shapes: Mapping[str, Sequence] | None = None,
            dim_bounds: Mapping[str, tuple[int, int]] | None = None, db=None,
            example_inputs=None) -> CompiledModel:
    """Compile an ONNX model (path or ModelProto) or a ``torch.nn.Module`` for ``target``.

    A module is exported with ``torch.export`` on ``example_inputs`` (a tuple of tensors or
    numpy arrays, or a dict of keyword inputs); its graph inputs are named after the forward
    arguments and its outputs ``output_0``, ``output_1``, ...

    Dynamic dims: a named input dim (ONNX ``dim_param``, or a name in ``input_shapes``)
    stays symbolic when ``dim_bounds`` gives its range, e.g. ``{"batch": (1, 8)}``; one
    compiled model then runs every size in that range.
    """
    target_impl = get_target(target)
    tuned = None
    if db is not None:  # the best record of each kernel in a `kiln tune` database
        from kiln.autotune.database import tuned_schedules

        tuned = tuned_schedules(db, str(target_impl))
    graph = _import(model, input_shapes, example_inputs, dim_bounds)
    _require_bounds(graph)
    try:
        result = run_pipeline(graph, target=target_impl, prefix=PREFIX, tuned=tuned)
    except KilnError:
        raise
    except Exception as e:  # noqa: BLE001  (a bug in Kiln: still one clean error type for callers)
        raise KilnError(f"internal error while compiling ({type(e).__name__}: {e}); this is a bug "
                        "in Kiln, please report it with the model") from e
    return CompiledModel(result, target_impl)


def tune(model, target: str = "host", *, trials: int = 64, db="tuning", cost_model="xgb", **options):
    """Tune the model's kernels on this machine; the best records go to the database ``db``.

    Same as ``kiln tune``; ``kiln.compile(model, db=db)`` then applies them. Options:
    ``search``, ``batch_size``, ``seed``, ``curve`` (a PNG path), ``progress``, ``measure``
    (``kiln.autotune.measure.MeasureOptions``), ``input_shapes``, ``example_inputs``.
    Returns a ``kiln.autotune.tuner.TuneResult``."""
    from kiln.autotune.tuner import tune as _tune

    return _tune(model, target, trials, db, cost_model=cost_model, **options)


def _require_bounds(graph: Graph) -> None:
    """Every symbolic dim needs bounds (the arena is sized for them); never guess one."""
    from kiln.ir.symbolic import symbols_of

    missing = sorted(set().union(*(symbols_of(v.shape) for v in graph.inputs)) - set(graph.dim_bounds))
    if missing:
        detail = ", ".join(f"{v.name}{[str(d) for d in v.shape]}" for v in graph.inputs if not v.type.is_static)
        raise KilnError(f"symbolic dims {missing} of the inputs ({detail}) need bounds or concrete sizes: "
                        "pass dim_bounds={name: (lowest, highest)} for a dynamic model, or "
                        "input_shapes={input: (dims...)} (CLI: --input-shape NAME=1,3,224,224)")


def inspect(model, *, input_shapes=None, dim_bounds=None, print_ir_after: str | None = None,
            example_inputs=None, target: str = "host") -> str:
    """Text report: the graph IR (or the IR after a named stage), kernels and memory.

    A model whose symbolic dims have no bounds is shown as imported (it cannot be planned)."""
    from kiln.ir.graph import format_graph
    from kiln.passes.manager import check_stage

    check_stage(print_ir_after)
    graph = _import(model, input_shapes, example_inputs, dim_bounds=dim_bounds)
    if print_ir_after == "import":
        return format_graph(graph)
    try:
        _require_bounds(graph)
    except KilnError:
        return format_graph(graph)
    result = run_pipeline(graph, target=target, print_after=print_ir_after, prefix=PREFIX)
    if print_ir_after:
        return result.snapshots[print_ir_after]
    from kiln.passes.manager import _kernel_notes

    lines = [format_graph(result.graph, annotate=_kernel_notes(result.groups)), "",
             f"kernels: {len(result.kernels)}", f"memory: {result.plan.summary()}"]
    return "\n".join(lines)


class _LoadedResult:
    """The parts of a PipelineResult a reloaded export provides."""

    def __init__(self, source, plan, kernels=()):
        self.source, self.plan, self.kernels = source, plan, list(kernels)


def load(directory) -> CompiledModel:
    """Reload a directory written by ``export`` (host target) for running."""
    from kiln.passes.memory_plan import MemoryPlan
    from kiln.targets.base import ModelSource

    d = Path(directory)
    try:
        manifest = json.loads((d / "manifest.json").read_text())
    except (OSError, ValueError) as e:
        raise KilnError(f"{d} is not a Kiln export directory (manifest.json: {e})") from None
    if manifest.get("target") != "host":
        raise KilnError(f"{d} was exported for {manifest.get('target')!r}; only host exports run in process")

    bounds = {k: tuple(v) for k, v in manifest.get("dim_bounds", {}).items()}

    def vals(items):
        return tuple(Value(i["name"], TensorType(tuple(parse_dim(d, bounds) for d in i["shape"]),
                                                 DType(i["dtype"]))) for i in items)

    graph = Graph(vals(manifest["inputs"]), vals(manifest["outputs"]), (), {}, manifest["model"],
                  dim_bounds=bounds)
    source = ModelSource({"model.c": (d / "model.c").read_text(), "model.h": (d / "model.h").read_text()},
                         "model.c", manifest["prefix"])
    plan = MemoryPlan({}, manifest["arena_size"], 0, (d / "weights.bin").read_bytes())
    cm = CompiledModel.__new__(CompiledModel)
    cm.target_impl, cm.graph, cm._runner = get_target("host"), graph, None
    cm.target = "host"
    cm.result = _LoadedResult(source, plan)
    return cm
