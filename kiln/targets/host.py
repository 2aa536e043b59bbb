"""The host target: C compiled by gcc into a shared library, run in process via ctypes.

Capabilities: the machine's own vector ISA (``-march=native``) and OpenMP threads.
Built libraries are cached by a hash of their source and flags, so recompiling an
unchanged model only loads the cached library.
"""
from __future__ import annotations

import ctypes
import dataclasses
import functools
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
from collections.abc import Mapping

from kiln.codegen.templates import numbered
from kiln.errors import InputError, ToolchainError
from kiln.ir.symbolic import evaluate
from kiln.targets.base import ModelSource, Target, manifest
from kiln.targets.build_cache import build_cached, source_digest

CC = os.environ.get("KILN_CC", "gcc")
CFLAGS = ["-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", "-std=gnu11",
          "-fno-math-errno", "-fwrapv", "-Wall", "-Wno-unused-variable", "-Wno-unknown-pragmas"]
THREADS = os.cpu_count() or 1

# libgomp's threads spin for a long while at every barrier before they sleep. On a busy
# machine a spinning thread burns the time slice its partner needs: ResNet-18 measured
# 520 ms with the default (300000) and 33-38 ms with 1000 under a load average of 5 on 2
# cores. Too short a spin costs on a quiet machine instead: workers fall asleep between
# kernels and waking a sleeping vCPU is slow (MobileNetV2, 55 kernels: 2.8-3.5 ms with 1000,
# 2.45-2.5 ms with 30000; under three busy processes both measured 29-33 ms on ResNet-18).
# Keep a moderate spin unless the user chose a policy; libgomp reads this when it is
# loaded, which is when the first kernel library is.
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = "30000"


@functools.lru_cache(maxsize=1)
def capabilities() -> "Capabilities":
    """What ``-march=native`` gives on this machine: vector width and register count."""
    from kiln.passes.capabilities import Capabilities

    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        pass
    if " avx512f" in flags:
        return Capabilities(vector_bytes=64, vector_registers=32, threads=THREADS, dot_tile=(8, 4),
                            window_copies=True, vnni=" avx512_vnni" in flags, amx=" amx_int8" in flags and " amx_tile" in flags,
                            winograd=True, concat_in_place=True, interleave_rows=4, wide_panels=True,
                            plain_isolated_convs=True)
    if " avx2" in flags or " avx " in flags:
        return Capabilities(vector_bytes=32, vector_registers=16, threads=THREADS, dot_tile=(8, 2),
                            window_copies=True, winograd=True, concat_in_place=True, interleave_rows=4,
                            plain_isolated_convs=True)
    return Capabilities(vector_bytes=16, vector_registers=16, threads=THREADS, winograd=True, concat_in_place=True,
                        interleave_rows=4, plain_isolated_convs=True)


def cache_dir() -> Path:
    d = Path(os.environ.get("KILN_CACHE_DIR", Path.home() / ".cache" / "kiln"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def compiler_path() -> str:
    path = shutil.which(CC)
    if path is None:
        raise ToolchainError(f"C compiler {CC!r} not found; install gcc (Debian package 'gcc') "
                             "or set KILN_CC to a C compiler")
    return path


def build_shared_library(files: dict[str, str], main: str = "model.c", extra_flags=()) -> Path:
    """Compile the given sources (name -> text) into a cached shared library."""
    cc = compiler_path()
    flags = CFLAGS + list(extra_flags)
    out = cache_dir() / f"libkiln_{source_digest([cc, *flags], files)}.so"

    def compile_in(tmp: Path) -> Path:
        lib = tmp / "lib.so"
        proc = subprocess.run([cc, *flags, "-o", str(lib), str(tmp / main), "-lm"], capture_output=True, text=True)
        if proc.returncode != 0:
            raise ToolchainError(
                f"{CC} rejected the generated code:\n{proc.stderr.strip()}\n\n"
                f"--- {main} ---\n{_excerpt(files[main], proc.stderr)}")
        return lib

    return build_cached(out, files, compile_in)


def _excerpt(source: str, stderr: str, context: int = 4) -> str:
    """The numbered source lines around the first line the compiler complained about."""
    import re

    m = re.search(r"model\.c:(\d+):", stderr)
    lines = numbered(source).splitlines()
    if not m:
        return "\n".join(lines[:40])
    n = int(m.group(1))
    return "\n".join(lines[max(0, n - 1 - context): n + context])


_NO_DIMS = np.zeros(1, np.int64)  # the dims argument of a model without dim symbols


class HostRunner:
    """Calls ``<prefix>_run`` of a built library on numpy arrays, without copying them."""

    def __init__(self, library: Path, prefix: str, inputs, outputs, weights: bytes, arena_size: int,
                 dim_bounds=None):
        self.library = Path(library)
        self._lib = ctypes.CDLL(str(library))
        self._run = getattr(self._lib, f"{prefix}_run")
        self._run.restype = ctypes.c_int
        self._run.argtypes = [ctypes.c_void_p] * 5
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.dim_bounds = dict(dim_bounds or {})
        self.symbols = sorted(self.dim_bounds)
        # the weights in a 64-byte aligned copy: the memory plan aligns each tensor to 64 bytes
        # within the blob, so a kernel's full-vector weight loads never straddle two cache
        # lines (int8 ResNet-18 measured 1-2 % slower with the blob 16-48 bytes off)
        self._weights = _aligned_empty(max(len(weights), 64))
        if weights:
            self._weights[:len(weights)] = np.frombuffer(weights, dtype=np.uint8)
        self._arena = _aligned_empty(max(arena_size, 64))
        # a model without dim symbols: every input's (name, shape, dtype) and every output's
        # shape are fixed, so a call only compares (``_static_inputs``); a mismatch goes to
        # check_inputs, which says what is wrong. Small models spend most of a call here.
        self._static_in = None if self.symbols else [(v.name, tuple(v.shape), v.dtype.np) for v in self.inputs]
        self._static_out = None if self.symbols else [(v.name, tuple(v.shape), v.dtype.np) for v in self.outputs]
        self._in_ptrs = (ctypes.c_void_p * max(len(self.inputs), 1))()
        self._out_ptrs = (ctypes.c_void_p * max(len(self.outputs), 1))()
        self._args = (ctypes.cast(self._in_ptrs, ctypes.c_void_p), ctypes.cast(self._out_ptrs, ctypes.c_void_p),
                      self._weights.ctypes.data, self._arena.ctypes.data)

    def _static_inputs(self, feeds) -> list[np.ndarray] | None:
        """The inputs in order when they match the static model exactly (contiguous arrays of
        the right shape and dtype, no other names); None otherwise."""
        if self._static_in is None or not isinstance(feeds, dict) or len(feeds) != len(self._static_in):
            return None
        arrays = []
        for name, shape, dtype in self._static_in:
            a = feeds.get(name)
            if type(a) is not np.ndarray or a.shape != shape or a.dtype != dtype or not a.flags.c_contiguous:
                return None
            arrays.append(a)
        return arrays

    def __call__(self, feeds: Mapping) -> dict[str, np.ndarray]:
        arrays = self._static_inputs(feeds)
        if arrays is not None:
            outs = {name: np.empty(shape, dtype) for name, shape, dtype in self._static_out}
            dim_arr = _NO_DIMS
        else:
            arrays, dims = check_inputs(self.inputs, feeds, self.dim_bounds)
            outs = {v.name: np.empty(tuple(evaluate(d, dims) for d in v.shape), dtype=v.dtype.np)
                    for v in self.outputs}
            dim_arr = np.array([dims[s] for s in self.symbols] or [0], dtype=np.int64)
        for k, a in enumerate(arrays):
            self._in_ptrs[k] = a.ctypes.data
        for k, a in enumerate(outs.values()):
            self._out_ptrs[k] = a.ctypes.data
        rc = self._run(*self._args, dim_arr.ctypes.data)
        if rc != 0:
            raise ToolchainError(f"the generated model returned error code {rc}")
        return outs


def check_inputs(expected, feeds, dim_bounds=None) -> tuple[list[np.ndarray], dict[str, int]]:
    """Validate run-time inputs by name, shape and dtype, and bind the dim symbols.

    Returns the arrays in order (contiguous, not copied when already so) and the value
    of every symbol, read from the inputs' shapes and checked against its bounds.
    """
    import sympy

    if not isinstance(feeds, Mapping):
        raise InputError(f"inputs must be a dict of name -> numpy array; got {type(feeds).__name__}")
    names = [v.name for v in expected]
    unknown = sorted(set(feeds) - set(names))
    missing = [n for n in names if n not in feeds]
    if unknown or missing:
        raise InputError(f"input names do not match the model: missing {missing}, unexpected {unknown}; "
                         f"expected {names}")
    bounds = dict(dim_bounds or {})
    dims: dict[str, int] = {}
    arrays = []
    for v in expected:
        a = np.asarray(feeds[v.name])
        want = tuple(str(d) for d in v.shape)
        if a.ndim != len(v.shape):
            raise InputError(f"input {v.name!r} has shape {tuple(a.shape)}; expected ({', '.join(want)})")
        for axis, (d, n) in enumerate(zip(v.shape, a.shape)):
            if isinstance(d, int):
                if d != n:
                    raise InputError(f"input {v.name!r} has shape {tuple(a.shape)}; expected ({', '.join(want)})")
                continue
            name = d.name if isinstance(d, sympy.Symbol) else None
            if name is None:
                raise InputError(f"input {v.name!r} dim {axis} is the expression {d}; only plain symbols "
                                 "can be bound from input shapes")
            if name in dims and dims[name] != n:
                raise InputError(f"dim {name!r} is {dims[name]} in one input and {n} in input {v.name!r}")
            lo, hi = bounds.get(name, (1, n))
            if not lo <= n <= hi:
                raise InputError(f"input {v.name!r} dim {axis} ({name}) is {n}; expected {lo}..{hi}")
            dims[name] = n
        if a.dtype != v.dtype.np:
            raise InputError(f"input {v.name!r} has dtype {a.dtype}; expected {v.dtype.np}")
        arrays.append(np.ascontiguousarray(a))
    return arrays, dims


def _aligned_empty(nbytes: int, align: int = 64) -> np.ndarray:
    raw = np.empty(nbytes + align, dtype=np.uint8)
    off = (-raw.ctypes.data) % align
    return raw[off: off + nbytes]


class HostTarget(Target):
    """This machine's CPU: C with OpenMP and the native vector ISA, loaded in process."""

    name = "host"
    # ``host:-winograd``: 3x3 convolutions stay direct (results closer to a direct
    # convolution's rounding; for comparisons)
    known_options = ("-winograd",)

    def capabilities(self):
        caps = capabilities()
        return dataclasses.replace(caps, winograd=False) if "-winograd" in self.options else caps

    def generate(self, graph, kernels, plan, prefix) -> ModelSource:
        from kiln.codegen.model import generate_model
        from kiln.codegen.x86 import X86Renderer

        source = generate_model(graph, kernels, plan, target=str(self), prefix=prefix, renderer=X86Renderer())
        source.binaries["weights.bin"] = plan.weights
        return source

    def runner(self, compiled, extra_flags=()) -> HostRunner:
        lib = build_shared_library(compiled.result.source.files, extra_flags=extra_flags)
        return HostRunner(lib, compiled.result.source.prefix, compiled.graph.inputs, compiled.graph.outputs,
                          compiled.result.plan.weights, compiled.result.plan.arena_size,
                          compiled.graph.dim_bounds)

    def export(self, compiled, directory) -> Path:
        from kiln import __version__
        from kiln.codegen.templates import render

        out = super().export(compiled, directory)
        info = manifest(compiled)
        ctx = dict(version=__version__, prefix=info["prefix"], model_name=compiled.graph.name,
                   target=str(self), weights_size=info["weights_size"],
                   inputs=info["inputs"], outputs=info["outputs"])
        (out / "Makefile").write_text(render("Makefile.j2", **ctx))
        (out / "README.md").write_text(render("README.md.j2", **ctx))
        return out
