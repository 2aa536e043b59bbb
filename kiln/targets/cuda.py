"""The CUDA target: CUDA C++ built by nvcc, run on an NVIDIA GPU through CuPy.

``cuda`` builds for sm_80 and sm_90 at once (SASS for each plus compute_90 PTX for newer
GPUs); ``cuda:sm_80`` or ``cuda:sm_90`` for one. nvcc needs no GPU, so every machine
compiles the generated code (CI does, warnings as errors); running needs a GPU and CuPy,
both imported only when a model runs. Builds are cached by a hash of source and flags,
as the host target's are.

The runner keeps the weights and the arena in device memory, accepts numpy arrays or any
DLPack-capable device array (CuPy, torch) and returns numpy arrays from ``run`` or device
arrays from ``run_device``; ``time`` measures with CUDA events.
"""
from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from kiln.codegen.templates import numbered
from kiln.errors import InputError, TargetError, ToolchainError
from kiln.ir.symbolic import evaluate
from kiln.targets.base import ModelSource, Target, manifest
from kiln.targets.build_cache import build_cached, source_digest
from kiln.targets.host import cache_dir, check_inputs

NVCC = os.environ.get("KILN_NVCC", "nvcc")
ARCHS = ("sm_80", "sm_90")
# Warnings are errors in nvcc's own diagnostics (all-warnings) and in the host compiler's.
NVCC_FLAGS = ["-O3", "-std=c++17", "-lineinfo", "-Werror", "all-warnings", "-Xcompiler", "-Wall,-Werror,-fPIC"]


def gencode_flags(archs) -> list[str]:
    """SASS (a cubin) for each arch, and PTX of the newest for GPUs not yet released."""
    flags = []
    for i, arch in enumerate(archs):
        num = arch.split("_")[1]
        code = f"[sm_{num},compute_{num}]" if i == len(archs) - 1 else f"sm_{num}"
        flags += ["-gencode", f"arch=compute_{num},code={code}"]
    return flags


def nvcc_path() -> str:
    path = shutil.which(NVCC)
    if path is None:
        raise ToolchainError(f"CUDA compiler {NVCC!r} not found; install the CUDA toolkit "
                             "(https://developer.nvidia.com/cuda-downloads) or set KILN_NVCC")
    return path


def nvcc_build(files: dict[str, str], archs=ARCHS, kind: str = "shared", main: str = "model.cu") -> Path:
    """Compile ``main`` with nvcc, cached by hash: ``shared`` is a loadable library,
    ``object`` an object file (the CI check: both archs in one call), ``ptx``/``cubin``
    the single-arch device code."""
    nvcc = nvcc_path()
    mode = {"shared": ["-shared"], "object": ["-c"], "ptx": ["-ptx"], "cubin": ["-cubin"]}
    if kind not in mode:
        raise ToolchainError(f"unknown nvcc build kind {kind!r}; expected one of {', '.join(mode)}")
    if kind in ("ptx", "cubin"):
        if len(archs) != 1:
            raise ToolchainError(f"a {kind} holds one architecture; got {', '.join(archs)}")
        arch_flags = [f"-arch={archs[0]}"]
    else:
        arch_flags = gencode_flags(archs)
    cmd = [nvcc, *NVCC_FLAGS, *arch_flags, *mode[kind]]
    suffix = {"shared": ".so", "object": ".o", "ptx": ".ptx", "cubin": ".cubin"}[kind]
    out = cache_dir() / f"kiln_cuda_{source_digest(cmd, files)}{suffix}"

    def compile_in(tmp: Path) -> Path:
        target = tmp / ("out" + suffix)
        proc = subprocess.run([*cmd, "-o", str(target), str(tmp / main)], capture_output=True, text=True, cwd=tmp)
        if proc.returncode != 0:
            raise ToolchainError(f"nvcc rejected the generated code:\n{proc.stderr.strip()[:4000]}\n\n"
                                 f"--- {main} ---\n{_excerpt(files[main], proc.stderr)}")
        return target

    return build_cached(out, files, compile_in, prefix="kiln_nvcc_")


def _excerpt(source: str, stderr: str, context: int = 4) -> str:
    m = re.search(r"model\.cu\((\d+)\)", stderr)
    lines = numbered(source).splitlines()
    if not m:
        return "\n".join(lines[:40])
    n = int(m.group(1))
    return "\n".join(lines[max(0, n - 1 - context): n + context])


def _cupy():
    try:
        import cupy
    except ImportError as e:
        raise ToolchainError("running the cuda target needs CuPy (pip install cupy-cuda13x) and an "
                             f"NVIDIA GPU; CuPy is not importable here ({e})") from e
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # noqa: BLE001  (cupy raises its own CUDARuntimeError without a driver)
        raise TargetError(f"no usable NVIDIA GPU: {e}") from e
    if count < 1:
        raise TargetError("no NVIDIA GPU found; compile for cuda anyway and export the project, "
                          "or run on a machine with a GPU")
    return cupy


class CudaRunner:
    """Runs ``<prefix>_run`` of a built library on device arrays, on one CuPy stream."""

    def __init__(self, library: Path, prefix: str, inputs, outputs, weights: bytes, arena_size: int,
                 dim_bounds=None):
        cp = self.cp = _cupy()
        self.library = Path(library)
        self._lib = ctypes.CDLL(str(library))
        self._run = getattr(self._lib, f"{prefix}_run")
        self._run.restype = ctypes.c_int
        self._run.argtypes = [ctypes.c_void_p] * 6
        self.inputs, self.outputs = list(inputs), list(outputs)
        self.dim_bounds = dict(dim_bounds or {})
        self.symbols = sorted(self.dim_bounds)
        self.weights = cp.asarray(np.frombuffer(weights, np.uint8)) if weights else cp.zeros(256, cp.uint8)
        self.arena = cp.zeros(max(arena_size, 256), cp.uint8)
        self.stream = cp.cuda.Stream(non_blocking=True)

    def _device_inputs(self, feeds: Mapping):
        """Checked device arrays (DLPack in, no copy for device arrays) and the dim values."""
        cp = self.cp
        if not isinstance(feeds, Mapping):
            raise InputError(f"inputs must be a dict of name -> array; got {type(feeds).__name__}")
        device = {}
        for name, x in feeds.items():
            if isinstance(x, np.ndarray) or np.isscalar(x) or isinstance(x, (list, tuple)):
                device[name] = cp.asarray(np.asarray(x))
            elif isinstance(x, cp.ndarray):
                device[name] = x
            elif hasattr(x, "__dlpack__"):
                device[name] = cp.from_dlpack(x)
            else:
                raise InputError(f"input {name!r} is a {type(x).__name__}; expected a numpy array or a "
                                 "DLPack-capable device array (CuPy, torch)")
        # validate names, shapes and dtypes with the host rules, on zero-stride stand-ins
        shadows = {n: np.lib.stride_tricks.as_strided(np.zeros(1, a.dtype), a.shape, (0,) * a.ndim)
                   for n, a in device.items()}
        _, dims = check_inputs(self.inputs, shadows, self.dim_bounds)
        return [cp.ascontiguousarray(device[v.name]) for v in self.inputs], dims

    def _launch(self, arrays, outs, dims):
        in_ptrs = (ctypes.c_void_p * max(len(arrays), 1))(*[a.data.ptr for a in arrays])
        out_ptrs = (ctypes.c_void_p * max(len(outs), 1))(*[a.data.ptr for a in outs])
        dim_arr = np.array([dims[s] for s in self.symbols] or [0], dtype=np.int64)
        rc = self._run(ctypes.cast(in_ptrs, ctypes.c_void_p), ctypes.cast(out_ptrs, ctypes.c_void_p),
                       self.weights.data.ptr, self.arena.data.ptr, dim_arr.ctypes.data, self.stream.ptr)
        if rc != 0:
            raise TargetError(f"the generated model returned error code {rc} "
                              "(1: a dim out of bounds, 2: a kernel launch failed)")

    def run_device(self, feeds: Mapping) -> dict:
        """Outputs as CuPy arrays (``torch.from_dlpack`` takes them without a copy)."""
        cp = self.cp
        arrays, dims = self._device_inputs(feeds)
        outs = {v.name: cp.empty(tuple(evaluate(d, dims) for d in v.shape), dtype=v.dtype.np)
                for v in self.outputs}
        self.stream.use()
        self._launch(arrays, list(outs.values()), dims)
        self.stream.synchronize()
        return outs

    def __call__(self, feeds: Mapping) -> dict[str, np.ndarray]:
        return {k: v.get() for k, v in self.run_device(feeds).items()}

    def time(self, feeds: Mapping, repeats: int = 50, warmup: int = 5) -> float:
        """Mean milliseconds per run, measured with CUDA events around ``repeats`` runs."""
        cp = self.cp
        arrays, dims = self._device_inputs(feeds)
        outs = [cp.empty(tuple(evaluate(d, dims) for d in v.shape), dtype=v.dtype.np) for v in self.outputs]
        for _ in range(warmup):
            self._launch(arrays, outs, dims)
        start, end = cp.cuda.Event(), cp.cuda.Event()
        start.record(self.stream)
        for _ in range(repeats):
            self._launch(arrays, outs, dims)
        end.record(self.stream)
        end.synchronize()
        return cp.cuda.get_elapsed_time(start, end) / repeats


class CudaTarget(Target):
    """NVIDIA GPUs from Ampere (sm_80) and Hopper (sm_90)."""

    name = "cuda"
    known_options = ARCHS

    def __init__(self, options=()):
        super().__init__(options)
        self.archs = tuple(o for o in ARCHS if o in self.options) or ARCHS

    def capabilities(self):
        from kiln.passes.capabilities import Capabilities

        # the CPU rules still run (the tuner's traces replay on them), but the CUDA
        # renderer plans from the unscheduled loop IR; no NCHWc layout on a GPU
        return Capabilities(vector_bytes=16, vector_registers=32, threads=1, nchwc=False, pack_matmul=False)

    def generate(self, graph, kernels, plan, prefix) -> ModelSource:
        from kiln.codegen.cuda import generate_cuda_model

        source = generate_cuda_model(graph, kernels, plan, target=str(self), prefix=prefix)
        source.binaries["weights.bin"] = plan.weights
        return source

    def build(self, compiled, kind: str = "shared") -> Path:
        return nvcc_build(compiled.result.source.files, self.archs, kind)

    def runner(self, compiled) -> CudaRunner:
        _cupy()  # fail before a long build when there is no GPU to run on
        lib = self.build(compiled)
        return CudaRunner(lib, compiled.result.source.prefix, compiled.graph.inputs, compiled.graph.outputs,
                          compiled.result.plan.weights, compiled.result.plan.arena_size,
                          compiled.graph.dim_bounds)

    def export(self, compiled, directory) -> Path:
        from kiln import __version__
        from kiln.codegen.templates import render

        out = super().export(compiled, directory)
        info = manifest(compiled)
        ctx = dict(version=__version__, prefix=info["prefix"], model_name=compiled.graph.name,
                   target=str(self), weights_size=info["weights_size"], arena_size=info["arena_size"],
                   inputs=info["inputs"], outputs=info["outputs"],
                   archs=[a.split("_")[1] for a in self.archs], num_dims=len(info["dim_bounds"]))
        (out / "CMakeLists.txt").write_text(render("cuda/CMakeLists.txt.j2", **ctx))
        (out / "demo.cu").write_text(render("cuda/demo.cu.j2", **ctx))
        (out / "README.md").write_text(render("cuda/README.md.j2", **ctx))
        return out


__all__ = ["ARCHS", "CudaRunner", "CudaTarget", "gencode_flags", "nvcc_build", "nvcc_path"]
