"""Cortex-M targets: C99 with a compile-time arena, built with arm-none-eabi-gcc and run
under qemu-system-arm on the Arm MPS2/MPS3 boards.

``cortex-m4`` (MPS2 AN386), ``cortex-m7`` (MPS2 AN500), ``cortex-m55`` (MPS3 AN547).
Options: ``sram=256K`` (a RAM budget for the arena: a model that does not fit layer by
layer runs its first layers patch by patch when that fits, and is refused with the
numbers otherwise), ``patch=4x4`` (force patch-based execution with that grid, see
``kiln.passes.patch_execution``), ``nodsp`` (plain C dot products instead of SMLAD/Helium).

A quantized (QDQ) model gets integer inputs and outputs (``kiln.passes.integer_io``): the
whole model then runs without floating point, and ``model.h`` gives the scales and zero
points. ``run()`` builds the project with the test harness and runs it in QEMU with
``-icount``; ``last_ticks`` / ``instructions`` then hold the deterministic SysTick count
of each inference.
"""
from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from kiln.errors import InputError, KilnError, TargetError, ToolchainError
from kiln.targets.base import ModelSource, Target
from kiln.targets.host import cache_dir, check_inputs

ICOUNT_SHIFT = 5          # one instruction = 2^5 ns of virtual time
ARENA_ALIGN = 16          # enough for any load on Cortex-M; 64 (a host cache line) wastes SRAM
IN_FILE, OUT_FILE = "kiln_in.bin", "kiln_out.bin"
QEMU_TIMEOUT_S = 120


class SramBudgetError(KilnError):
    """The model's arena does not fit the RAM budget or the board's RAM."""


@dataclass(frozen=True)
class Board:
    name: str
    machine: str            # qemu-system-arm -M
    cpu_flags: tuple[str, ...]
    flash_origin: int
    flash_size: int
    ram_origin: int
    ram_size: int
    clock_hz: int           # SysTick's processor clock in QEMU's board model
    vector_bytes: int       # 4 (32-bit SIMD on DSP cores) or 16 (Helium)


BOARDS = {
    "cortex-m4": Board("MPS2+ AN386 (Cortex-M4)", "mps2-an386",
                       ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"),
                       0x00000000, 4 << 20, 0x20000000, 4 << 20, 25_000_000, 4),
    "cortex-m7": Board("MPS2+ AN500 (Cortex-M7)", "mps2-an500",
                       ("-mcpu=cortex-m7", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv5-d16"),
                       0x00000000, 4 << 20, 0x20000000, 4 << 20, 25_000_000, 4),
    "cortex-m55": Board("MPS3 AN547 (Cortex-M55)", "mps3-an547",
                        ("-mcpu=cortex-m55", "-mthumb", "-mfloat-abi=hard"),
                        0x00000000, 512 << 10, 0x21000000, 4 << 20, 32_000_000, 16),
}
STACK_SIZE = 16 << 10


def parse_size(text: str) -> int:
    """``256K``, ``1M``, ``4096`` -> bytes."""
    m = re.fullmatch(r"\s*(\d+)\s*([KkMm]?)[Bb]?\s*", str(text))
    if not m:
        raise TargetError(f"cannot read the size {text!r}; expected bytes such as 262144, 256K or 1M")
    return int(m.group(1)) << {"": 0, "k": 10, "m": 20}[m.group(2).lower()]


class CortexMTarget(Target):
    """A Cortex-M core on an emulated Arm board: C99, static arena, flash-resident weights."""

    known_options = ("nodsp",)

    def __init__(self, options: tuple[str, ...] = ()):
        self.sram_budget = None
        self.patch_grid = None     # forced by patch=RxC
        self.patch_report = None   # what partition_graph chose
        rest = []
        for o in options:
            if o.startswith("sram="):
                self.sram_budget = parse_size(o[len("sram="):])
            elif o.startswith("patch="):
                from kiln.passes.patch_execution import parse_grid

                self.patch_grid = parse_grid(o[len("patch="):])
            else:
                rest.append(o)
        super().__init__(tuple(rest))
        self.options = tuple(options)
        self.board = BOARDS[self.name]
        self.io_quant: dict = {}

    def capabilities(self):
        from kiln.passes.capabilities import Capabilities

        # Dot-product tiles (kiln_dsp.h): Helium one pixel x four output channels (its
        # four-lane epilogue); M4/M7 two pixels x two channels where the pixels pair up (each
        # widened word serves two sums: VWW's 1x1 over 128 channels 1,029,339 -> 878,181
        # instructions), else one pixel x four (a 1x2 tile: 1,029,339 -> 1,526,574)
        tile = unpaired = None
        if "nodsp" not in self.options:
            tile, unpaired = ((1, 4), None) if self.board.vector_bytes >= 16 else ((2, 2), (1, 4))
        return Capabilities(vector_bytes=self.board.vector_bytes, vector_registers=8, threads=1, nchwc=False,
                            pack_matmul=False, dot_tile=tile, dot_tile_unpaired=unpaired, min_dot_length=4,
                            dot_steps=() if tile is None else (16, 8, 4) if self.helium else (4,),
                            skip_border_taps=False)

    def prepare_graph(self, graph):
        from kiln.passes.integer_io import integer_io

        graph, self.io_quant = integer_io(graph)
        return graph

    def adapt_quantized(self, graph):
        """Activations read as stored (int8 x int8 or uint8 x int8): no staging copy for an
        offset; TFLite-style int8 models read their int8 activations in place. On Helium a
        dot product reads uint8 activations as int8, flipped in registers (sixteen lanes)."""
        from kiln.passes.signed_activations import stage_activations_helium, stage_activations_native

        return (stage_activations_helium if self.helium else stage_activations_native)(graph)

    @property
    def helium(self) -> bool:
        """Whether the kernels call kiln_dsp.h's Helium helpers (an M55 without ``nodsp``)."""
        return self.board.vector_bytes >= 16 and "nodsp" not in self.options

    def partition_graph(self, graph):
        """Patch-based execution of the first layers when forced (``patch=``) or when the
        layer-by-layer arena exceeds ``sram=`` (``kiln.passes.patch_search``); then every
        integer convolution channels last, its padding in its producer's storage
        (``kiln.passes.integer_layout.channels_last_convs``), which the patch search plans
        each candidate with."""
        from kiln.passes.integer_layout import channels_last_convs
        from kiln.passes.memory_plan import plan_memory
        from kiln.passes.patch_search import PatchBudgetError, choose_patching

        try:
            graph, self.patch_report = choose_patching(
                graph, lambda g, ks: plan_memory(g, ks, align=ARENA_ALIGN), self.sram_budget, self.patch_grid,
                finish=channels_last_convs)
        except PatchBudgetError as e:
            raise SramBudgetError(str(e)) from None
        return graph

    def plan_memory(self, graph, kernels):
        from kiln.passes.memory_plan import plan_memory

        plan = plan_memory(graph, kernels, align=ARENA_ALIGN)
        plan.patching = self.patch_report
        limit = self.board.ram_size - STACK_SIZE
        budget = self.sram_budget
        if budget is not None and plan.arena_size > budget:
            raise SramBudgetError(
                f"model {graph.name!r} needs an arena of {plan.arena_size} bytes (lower bound {plan.lower_bound}: "
                f"the largest set of tensors live at one time), more than the SRAM budget of {budget} bytes; "
                "use a smaller input or model, or a larger budget"
                + (f" ({plan.patching.summary()})" if plan.patching is not None else ""))
        if plan.arena_size > limit:
            raise SramBudgetError(f"model {graph.name!r} needs an arena of {plan.arena_size} bytes; the "
                                  f"{self.board.name} board has {limit} bytes of RAM for it")
        return plan

    def generate(self, graph, kernels, plan, prefix) -> ModelSource:
        from kiln.codegen.mcu_model import generate_mcu_model
        from kiln.codegen.templates import render

        model = generate_mcu_model(graph, kernels, plan, str(self), self.io_quant, dsp="nodsp" not in self.options,
                                   helium=self.helium, vector_unit=self.board.vector_bytes >= 16)
        ctx = dict(model.context, board=self.board.name, machine=self.board.machine,
                   cpu_flags=list(self.board.cpu_flags), opt="-O2", icount_shift=ICOUNT_SHIFT,
                   ldlibs=(["-lm"] if model.uses_float else []) + ["-lc", "-lgcc"],
                   in_file=IN_FILE, out_file=OUT_FILE, flash_origin=self.board.flash_origin,
                   flash_size=self.board.flash_size, ram_origin=self.board.ram_origin,
                   ram_size=self.board.ram_size, stack_size=STACK_SIZE)
        files = dict(model.files)
        files["main.c"] = render("mcu/main.c.j2", **ctx)
        files["startup.c"] = render("mcu/startup.c")
        files["kiln_semihost.h"] = render("mcu/kiln_semihost.h")
        files["link.ld"] = render("mcu/link.ld.j2", **ctx)
        files["Makefile"] = render("mcu/Makefile.j2", **ctx)
        files["README.md"] = render("mcu/README.md.j2", **ctx)
        return ModelSource(files, "model.c", ctx["prefix"])

    def runner(self, compiled) -> "CortexMRunner":
        return CortexMRunner(self, compiled)


class CortexM4Target(CortexMTarget):
    name = "cortex-m4"


class CortexM7Target(CortexMTarget):
    name = "cortex-m7"


class CortexM55Target(CortexMTarget):
    name = "cortex-m55"


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ToolchainError(f"{name} not found; install the Debian package {package!r} "
                             "(apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm)")
    return path


def build(files: Mapping[str, str], directory: Path) -> Path:
    """``make`` in a directory holding the generated project; returns the ELF."""
    _tool("arm-none-eabi-gcc", "gcc-arm-none-eabi")
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    proc = subprocess.run(["make", "-s", "model.elf", "model.o"], cwd=directory, capture_output=True, text=True)
    if proc.returncode != 0:
        from kiln.targets.host import _excerpt

        raise ToolchainError(f"arm-none-eabi-gcc rejected the generated project:\n{proc.stdout}{proc.stderr}\n\n"
                             f"--- model.c ---\n{_excerpt(files['model.c'], proc.stderr)}")
    return directory / "model.elf"


def size_report(directory: Path) -> dict[str, int]:
    """Bytes of model code (``model.o`` .text, weights excluded), and of the whole image."""
    size = _tool("arm-none-eabi-size", "gcc-arm-none-eabi")
    out = {}
    for name in ("model.o", "weights.o", "model.elf"):
        r = subprocess.run([size, str(directory / name)], capture_output=True, text=True, check=True)
        text, data, bss = (int(x) for x in r.stdout.splitlines()[1].split()[:3])
        out[name] = {"text": text, "data": data, "bss": bss}
    return {"model_code": out["model.o"]["text"], "weights": out["weights.o"]["text"],
            "flash": out["model.elf"]["text"] + out["model.elf"]["data"],
            "ram_static": out["model.elf"]["data"] + out["model.elf"]["bss"]}


class CortexMRunner:
    """Builds the project once (cached by its sources), then runs it in QEMU per batch."""

    def __init__(self, target: CortexMTarget, compiled):
        self.target = target
        self.board = target.board
        self.inputs = list(compiled.graph.inputs)
        self.outputs = list(compiled.graph.outputs)
        files = compiled.result.source.files
        h = hashlib.sha256(str(self.board).encode())
        for name in sorted(files):
            h.update(name.encode() + b"\0" + files[name].encode() + b"\0")
        self.directory = cache_dir() / f"cortexm_{h.hexdigest()[:24]}"
        if not (self.directory / "model.elf").exists():
            tmp = Path(tempfile.mkdtemp(prefix="kiln_cm_", dir=cache_dir()))
            build(files, tmp)
            try:
                tmp.rename(self.directory)
            except OSError:      # another process built the same project first
                shutil.rmtree(tmp, ignore_errors=True)
        self.elf = self.directory / "model.elf"
        # "kernel_3 (qconv -> conv2)": what each profiled kernel computes
        self.kernels = [f"{k.name} ({_kernel_ops(compiled.graph, k)})" for k in compiled.result.kernels]
        self.last_ticks: list[int] = []

    @property
    def instructions(self) -> list[int]:
        """Executed instructions per inference: with ``-icount shift=S`` each instruction
        takes 2^S ns of virtual time, and SysTick counts processor-clock periods."""
        return [self._to_instructions(t) for t in self.last_ticks]

    def sizes(self) -> dict[str, int]:
        return size_report(self.directory)

    def __call__(self, feeds) -> dict[str, np.ndarray]:
        return self.run_batch([feeds])[0]

    def run_batch(self, batch) -> list[dict[str, np.ndarray]]:
        """Runs every feed dict in one QEMU session; one output dict per feed."""
        raw, log = self._qemu(self.elf, batch)
        self.last_ticks = [int(x) for x in re.findall(r"kiln: ticks (\d+)", log)]
        return self._outputs(raw, len(batch), log)

    def profile(self, feeds) -> list[tuple[str, int]]:
        """(kernel, executed instructions) of one inference, kernel by kernel, from the
        harness built with ``make profile`` (the model calls a clock-reading hook after each
        kernel; the hook's few dozen instructions count in the next kernel's share).
        ``instructions`` afterwards holds the whole run, hooks included."""
        elf = self.directory / "model_profile.elf"
        if not elf.exists():
            proc = subprocess.run(["make", "-s", "model_profile.elf"], cwd=self.directory, capture_output=True,
                                  text=True)
            if proc.returncode != 0:
                raise ToolchainError(f"arm-none-eabi-gcc rejected the profiling build:\n{proc.stdout}{proc.stderr}")
        _, log = self._qemu(elf, [feeds])
        self.last_ticks = [int(x) for x in re.findall(r"kiln: ticks (\d+)", log)]
        ticks = [int(x) for x in re.findall(r"kiln: kernel ticks (\d+)", log)]
        if len(ticks) != len(self.kernels):
            raise ToolchainError(f"the profiling harness printed {len(ticks)} kernel times; expected "
                                 f"{len(self.kernels)}\n{log}")
        return [(name, self._to_instructions(t)) for name, t in zip(self.kernels, ticks)]

    def _to_instructions(self, ticks: int) -> int:
        return round(ticks * (1e9 / self.board.clock_hz) / (1 << ICOUNT_SHIFT))

    def _qemu(self, elf: Path, batch) -> tuple[bytes, str]:
        """One QEMU session over the records of ``batch``: (the output file's bytes, the log)."""
        records = []
        for feeds in batch:
            arrays, _ = check_inputs(self.inputs, feeds)
            records.append(b"".join(a.tobytes() for a in arrays))
        if not records:
            raise InputError("run_batch needs at least one input dict")
        qemu = _tool("qemu-system-arm", "qemu-system-arm")
        with tempfile.TemporaryDirectory(prefix="kiln_qemu_") as tmp:
            Path(tmp, IN_FILE).write_bytes(b"".join(records))
            cmd = [qemu, "-M", self.board.machine, "-nographic", "-monitor", "none", "-serial", "null",
                   "-semihosting-config", "enable=on,target=native", "-icount", f"shift={ICOUNT_SHIFT}",
                   "-kernel", str(elf)]
            try:
                proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=QEMU_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                raise ToolchainError(f"QEMU ({self.board.machine}) did not finish within {QEMU_TIMEOUT_S} s") from None
            log = proc.stdout + proc.stderr
            if proc.returncode != 0:
                raise ToolchainError(f"the model failed on {self.board.name} under QEMU (exit {proc.returncode}):\n{log}")
            return Path(tmp, OUT_FILE).read_bytes(), log

    def _outputs(self, raw: bytes, count: int, log: str) -> list[dict[str, np.ndarray]]:
        per = [int(np.prod([int(d) for d in v.shape])) * v.dtype.itemsize for v in self.outputs]
        if len(raw) != sum(per) * count:
            raise ToolchainError(f"the harness wrote {len(raw)} bytes; expected {sum(per) * count}\n{log}")
        results, pos = [], 0
        for _ in range(count):
            out = {}
            for v, n in zip(self.outputs, per):
                out[v.name] = np.frombuffer(raw[pos:pos + n], dtype=v.dtype.np).reshape(
                    tuple(int(d) for d in v.shape)).copy()
                pos += n
            results.append(out)
        return results


def _kernel_ops(graph, kernel) -> str:
    producers = graph.producers()
    return ", ".join(f"{producers[o].op} -> {o}" for o in kernel.outputs if o in producers)
