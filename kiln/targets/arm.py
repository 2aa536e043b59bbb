"""The arm64 target: AArch64 Linux, C with NEON intrinsics, cross-compiled and run under qemu.

``arm64`` assumes ARMv8-A (NEON is mandatory there); ``arm64:+fp16`` adds half-precision
vector arithmetic (ARMv8.2-A FP16) and ``arm64:+dotprod`` the int8 dot product
instructions (``sdot``/``udot``, ARMv8.2-A DotProd), for kernels that register a lowering
using them.

Build: ``aarch64-linux-gnu-gcc`` (Debian ``gcc-aarch64-linux-gnu``), a static executable made
of ``model.c`` and a small driver (``arm_main.c``) that reads the weights, the dims and every
input from files and writes every output to a file. Run: ``qemu-aarch64`` (Debian
``qemu-user``) in user mode. Under emulation, time means nothing: use this runner for
correctness and :mod:`kiln.targets.arm_cost` for a static cost; a real board is reached as
docs/arm.md describes.

Threads: the generated code marks parallel loops with ``KILN_PARALLEL_FOR``, an OpenMP
pragma when compiled with ``-fopenmp`` and nothing otherwise. The qemu runner builds
single-threaded (emulated threads on a shared CI machine only add noise); set
``KILN_ARM_OPENMP=1`` to link the cross toolchain's static libgomp instead. Exported CMake
projects are single-threaded unless configured with ``-DKILN_OPENMP=ON``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Mapping

import numpy as np

from kiln.errors import ToolchainError
from kiln.ir.symbolic import evaluate
from kiln.targets.base import ModelSource, Target
from kiln.targets.build_cache import build_cached, source_digest
from kiln.targets.host import _excerpt, cache_dir, check_inputs

CC = os.environ.get("KILN_ARM_CC", "aarch64-linux-gnu-gcc")
QEMU = os.environ.get("KILN_QEMU_AARCH64", "qemu-aarch64")
OBJDUMP = os.environ.get("KILN_ARM_OBJDUMP", "aarch64-linux-gnu-objdump")
# The generated code must compile warning-free; every build checks that.
WARNINGS = ["-Wall", "-Wextra", "-Werror"]
CFLAGS = ["-O3", "-std=gnu11", "-fno-math-errno", "-fwrapv", *WARNINGS]
RUN_TIMEOUT_S = float(os.environ.get("KILN_QEMU_TIMEOUT", "900"))

PACKAGES = {"aarch64-linux-gnu-gcc": "gcc-aarch64-linux-gnu", "qemu-aarch64": "qemu-user",
            "aarch64-linux-gnu-objdump": "binutils-aarch64-linux-gnu"}


def march(options) -> str:
    """``-march`` for the target options: ARMv8-A, or ARMv8.2-A with the named extensions."""
    ext = [o.lstrip("+") for o in ("+fp16", "+dotprod") if o in options]
    return "-march=armv8.2-a+" + "+".join(ext) if ext else "-march=armv8-a"


def arch_flags(options) -> list[str]:
    """The architecture flags of a build: ``-march``, and with ``+fp16`` no floating-point
    contraction. Native half arithmetic rounds each op to fp16 as the reference does, but gcc
    would fuse a multiply and an add (even ``vmulq_f16`` + ``vaddq_f16``, which arm_neon.h
    spells as vector operators) into one fmla that rounds once."""
    return [march(options)] + (["-ffp-contract=off"] if "+fp16" in options else [])


def tool_path(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        base = os.path.basename(name)
        pkg = PACKAGES.get(base)
        hint = f"install the Debian package {pkg!r} (apt-get install -y {pkg}, or `make toolchains`)" \
            if pkg else "install it"
        raise ToolchainError(f"{name!r} is not on PATH; {hint}")
    return path


def build_static_binary(files: dict[str, str], sources: list[str], flags: list[str]) -> Path:
    """Cross-compile ``sources`` (names in ``files``) into a cached static AArch64 executable."""
    cc = tool_path(CC)
    cmd_flags = CFLAGS + list(flags) + ["-static"]
    out = cache_dir() / f"kiln_arm64_{source_digest([cc, *cmd_flags, *sources], files)}"

    def compile_in(tmp: Path) -> Path:
        exe = tmp / "model_main"
        cmd = [cc, *cmd_flags, "-o", str(exe), *[str(tmp / s) for s in sources], "-lm"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ToolchainError(
                f"{CC} rejected the generated code ({' '.join(cmd_flags)}):\n{proc.stderr.strip()[:4000]}\n\n"
                f"--- model.c ---\n{_excerpt(files['model.c'], proc.stderr)}")
        return exe

    return build_cached(out, files, compile_in, prefix="kiln_arm_build_")


class FileRunner:
    """Runs a built model driver (``arm_main.c``) as a process, every tensor through files.

    ``launcher`` goes before the program: ``[qemu-aarch64, -cpu, max]`` for an AArch64 build,
    nothing for a host build. ``weights=None`` passes ``-``: the weights compiled into the
    program (an exported project's driver)."""

    def __init__(self, binary: Path, inputs, outputs, weights: bytes | None, dim_bounds=None,
                 launcher: list[str] | None = None, env: dict | None = None):
        self.binary = Path(binary)
        self.inputs, self.outputs = list(inputs), list(outputs)
        self.dim_bounds = dict(dim_bounds or {})
        self.symbols = sorted(self.dim_bounds)
        self.weights = weights
        self.launcher = list(launcher or [])
        self.env = env

    def command(self, workdir: Path, out_sizes) -> list[str]:
        args = ["-" if self.weights is None else str(workdir / "weights.bin"), str(workdir / "dims.bin")]
        args += [str(workdir / f"in_{i}.bin") for i in range(len(self.inputs))]
        args += [f"{workdir / f'out_{i}.bin'}:{n}" for i, n in enumerate(out_sizes)]
        return [*self.launcher, str(self.binary), *args]

    def __call__(self, feeds: Mapping) -> dict[str, np.ndarray]:
        arrays, dims = check_inputs(self.inputs, feeds, self.dim_bounds)
        shapes = [tuple(int(evaluate(d, dims)) for d in v.shape) for v in self.outputs]
        sizes = [int(np.prod(s, dtype=np.int64)) * v.dtype.itemsize for s, v in zip(shapes, self.outputs)]
        where = " ".join(self.launcher[:1]) or "the host"
        with tempfile.TemporaryDirectory(prefix="kiln_run_") as tmp:
            work = Path(tmp)
            if self.weights is not None:
                (work / "weights.bin").write_bytes(self.weights)
            np.array([dims[s] for s in self.symbols], dtype="<i8").tofile(work / "dims.bin")
            for i, a in enumerate(arrays):
                a.tofile(work / f"in_{i}.bin")
            try:
                proc = subprocess.run(self.command(work, sizes), capture_output=True, text=True,
                                      timeout=RUN_TIMEOUT_S, env=self.env)
            except subprocess.TimeoutExpired:
                raise ToolchainError(f"the model ran longer than {RUN_TIMEOUT_S:.0f} s on {where} "
                                     "(KILN_QEMU_TIMEOUT sets the limit)") from None
            if proc.returncode != 0:
                raise ToolchainError(f"the model exited with status {proc.returncode} on {where}:"
                                     f"\n{proc.stderr.strip()[-2000:]}")
            return {v.name: np.fromfile(work / f"out_{i}.bin", dtype=v.dtype.np).reshape(shape)
                    for i, (v, shape) in enumerate(zip(self.outputs, shapes))}


def qemu_launcher(cpu: str = "max") -> list[str]:
    """``qemu-aarch64 -cpu max``: user-mode emulation of a CPU with every extension (fp16, dotprod)."""
    return [tool_path(QEMU), "-cpu", cpu]


class Arm64Target(Target):
    """AArch64 Linux (phones, boards): C with NEON intrinsics, static, run under qemu-aarch64."""

    name = "arm64"
    known_options = ("+dotprod", "+fp16")

    @property
    def fp16(self) -> bool:
        return "+fp16" in self.options

    @property
    def dotprod(self) -> bool:
        return "+dotprod" in self.options

    def cflags(self) -> list[str]:
        return arch_flags(self.options)

    def capabilities(self):
        from kiln.passes.capabilities import Capabilities

        # 128-bit NEON, 32 vector registers: an 8 x 8 fp32 register tile (16 accumulators).
        threads = (os.cpu_count() or 1) if os.environ.get("KILN_ARM_OPENMP") == "1" else 1
        return Capabilities(vector_bytes=16, vector_registers=32, threads=threads, nchwc=True,
                            concat_in_place=True)

    def renderer(self):
        import kiln.codegen.neon_int8  # noqa: F401 -- registers the int8 dot-product lowering
        from kiln.codegen.neon import NeonRenderer

        return NeonRenderer(fp16=self.fp16, dotprod=self.dotprod)

    def adapt_quantized(self, graph):
        """int8 x int8 dot products (sdot, smull): integer kernels read int8 activations."""
        from kiln.passes.signed_activations import stage_activations_signed

        return stage_activations_signed(graph)

    def generate(self, graph, kernels, plan, prefix) -> ModelSource:
        from kiln import __version__
        from kiln.codegen.model import generate_model
        from kiln.codegen.neon import NEON_PRELUDE, fallback_header
        from kiln.codegen.templates import render

        renderer = self.renderer()
        source = generate_model(graph, kernels, plan, target=str(self), renderer=renderer, prefix=prefix,
                                prelude=NEON_PRELUDE)
        source.files["kiln_neon_fallback.h"] = fallback_header(self.fp16)
        source.files["arm_main.c"] = render("arm_main.c.j2", version=__version__, prefix=prefix,
                                            num_inputs=len(graph.inputs), num_outputs=len(graph.outputs))
        source.binaries["weights.bin"] = plan.weights
        self.last_stats = dict(renderer.stats)
        return source

    def build(self, compiled, extra_flags=()) -> Path:
        flags = self.cflags() + list(extra_flags)
        if os.environ.get("KILN_ARM_OPENMP") == "1":
            flags.append("-fopenmp")
        return build_static_binary(compiled.result.source.files, ["model.c", "arm_main.c"], flags)

    def runner(self, compiled) -> FileRunner:
        launcher = qemu_launcher()  # before building: a missing qemu is reported first
        binary = self.build(compiled)
        return FileRunner(binary, compiled.graph.inputs, compiled.graph.outputs, compiled.result.plan.weights,
                          compiled.graph.dim_bounds, launcher=launcher)

    def export(self, compiled, directory) -> Path:
        from kiln.targets.arm_export import write_cmake_project

        out = super().export(compiled, directory)
        return write_cmake_project(self, compiled, out)
