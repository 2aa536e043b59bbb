"""A static cost for arm64 kernels: instruction mix and memory traffic from the loop IR.

Under qemu, time measures the emulator, not the chip, so a tuner for arm64 without a board
needs a cost it can compute. This one walks a kernel's loop nest (what the NEON renderer
would print: which loops become vectors, how many lanes), counts per class the instructions
each store executes, multiplied by the trip counts of the loops around it, and estimates the
bytes that reach DRAM. Cycles are the larger of the compute bound (instructions over the
per-class throughput of ``ArmCore``) and the memory bound (bytes over bandwidth), as a
roofline. The defaults describe a Cortex-A76-class big core (two 128-bit FP/NEON pipes, two
loads and one store per cycle); a tuner can pass its own ``ArmCore``.

Interface for a tuner: :func:`estimate` (one kernel) and :class:`ArmStaticCostModel`,
which has the cost-model methods (``predict`` returns higher-is-faster scores, ``update``
ignores measurements, ``save``/``load`` write JSON). A real device replaces it through the
measurement interface (docs/arm.md: Apache TVM's RPC tracker).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from kiln.ir.dtype import DType
from kiln.ir.expr import Bin, Cast, Expr, Load, Select, Un, free_vars, walk
from kiln.ir.loop import UNROLLED, VECTORIZED, Alloc, For, Func, If, Seq, Stmt, Store

SYMBOLIC_TRIPS = 64  # a dynamic extent counts as this many iterations (as the default schedule)
MATH_CALLS = {"exp", "exp_nonpos", "log", "tanh", "erf", "sin", "cos", "tan", "asin", "acos", "atan", "sinh", "cosh",
              "asinh", "acosh", "atanh", "pow", "fmod", "sigmoid", "softplus"}


@dataclass(frozen=True)
class ArmCore:
    """Per-cycle throughputs of one core (instructions per cycle by class) and its memory."""

    fma: float = 2.0          # vector or scalar fmla/fadd/fmul/fmax...
    div: float = 0.25         # fdiv / fsqrt (not pipelined)
    load: float = 2.0
    store: float = 1.0
    integer: float = 3.0      # address arithmetic, loop counters, compares, selects
    math_call_cycles: float = 20.0  # one libm call (expf, tanhf...) per element
    dram_bytes_per_cycle: float = 8.0
    cache_bytes: int = 512 * 1024  # per-core L2: data reused within it is not refetched
    clock_ghz: float = 2.4


DEFAULT_CORE = ArmCore()


@dataclass
class ArmCost:
    """What one kernel costs: instruction counts by class, DRAM bytes, cycles, seconds."""

    instructions: dict[str, float] = field(default_factory=dict)
    dram_bytes: float = 0.0
    compute_cycles: float = 0.0
    memory_cycles: float = 0.0
    vector_fraction: float = 0.0  # share of float operations that run in NEON lanes

    @property
    def cycles(self) -> float:
        return max(self.compute_cycles, self.memory_cycles)

    def seconds(self, core: ArmCore = DEFAULT_CORE) -> float:
        return self.cycles / (core.clock_ghz * 1e9)


def _trips(extent) -> int:
    return extent if isinstance(extent, int) else SYMBOLIC_TRIPS


class _Counter:
    def __init__(self, func: Func, fp16: bool, core: ArmCore, dotprod: bool = False):
        import kiln.codegen.neon_int8  # noqa: F401 -- the int8 lowering, as the arm64 target renders
        from kiln.codegen.neon import NeonRenderer

        self.core = core
        self.renderer = NeonRenderer(fp16=fp16, dotprod=dotprod)
        self.renderer.buffers = {b.name: b for b in func.params}
        self.globals = {b.name: b for b in func.params}
        self.mix = {"fma": 0.0, "div": 0.0, "math": 0.0, "load": 0.0, "store": 0.0, "integer": 0.0}
        self.float_ops = 0.0
        self.vector_ops = 0.0
        # global buffer -> {(index expressions): (elements touched once, times executed)}
        self.accesses: dict[str, list[tuple[float, float]]] = {}

    def stmt(self, s: Stmt, trips: float, loops: list[For], lanes: int = 1):
        if isinstance(s, For) and s.kind == VECTORIZED and self.int8_dot(s, trips, loops):
            return
        if isinstance(s, For):
            n = _trips(s.extent)
            vec = self.renderer.vector_lanes(s) if s.kind == VECTORIZED else 1
            if s.kind != UNROLLED and not (vec > 1 and n <= 2 * vec):  # unrolled loops have no counter
                self.mix["integer"] += trips * n / vec  # counter, compare, branch: one fused op
            self.stmt(s.body, trips * n, loops + [s], vec)
        elif isinstance(s, Seq):
            for x in s.stmts:
                self.stmt(x, trips, loops, lanes)
        elif isinstance(s, Alloc):
            self.renderer.buffers[s.buffer.name] = s.buffer
            self.stmt(s.body, trips, loops, lanes)
        elif isinstance(s, If):
            self.mix["integer"] += trips / lanes
            self.stmt(s.then, trips, loops, lanes)
        elif isinstance(s, Store):
            self.store(s, trips, loops, lanes)

    def int8_dot(self, loop: For, trips: float, loops: list[For]) -> bool:
        """An int8 reduction the NEON renderer prints with sdot (or smull + sadalp): its
        instructions per 16 products, two 16-byte loads and the loop counter per step."""
        from kiln.codegen.neon_int8 import lowered_form, match_int8_dot

        form = lowered_form(self.renderer, loop)
        if form is None:
            return False
        n = _trips(loop.extent)
        steps = trips * n / 16
        self.mix["fma"] += steps * form.ops_per_16
        self.mix["load"] += 2 * steps
        self.mix["integer"] += 3 * steps + 2 * trips  # addresses and counter; across-lanes add and tail
        _, a, b = match_int8_dot(loop)
        for ld in (a, b):
            self._access(ld.buffer, ld.indices, trips * n, loops + [loop])
        return True

    def store(self, s: Store, trips: float, loops: list[For], lanes: int):
        per = trips / lanes
        inner = loops[-1].var.name if loops else None
        for name, indices in [(s.buffer, s.indices)] + [(e.buffer, e.indices) for e in walk(s.value)
                                                         if isinstance(e, Load)]:
            if name not in self.globals:
                continue  # a local tile: registers once the tile loops are unrolled
            self.mix["store" if name == s.buffer and indices is s.indices else "load"] += per
            self._access(name, indices, trips, loops)
            if inner and any(inner in free_vars(i) for i in indices):
                self.mix["integer"] += per  # the address advances; invariant parts are hoisted
        for e in walk(s.value):
            if isinstance(e, Load):
                continue
            elif isinstance(e, (Bin, Un)) and e.dtype.is_float or isinstance(e, Bin) and e.a.dtype.is_float:
                op = e.op
                if op in MATH_CALLS:
                    self.mix["math"] += trips  # a libm call is per element, never vectorized here
                elif op in ("div", "sqrt"):
                    self.mix["div"] += per
                elif not (op == "mul" and _feeds_add(e, s.value)):  # a multiply fused into an add is free
                    self.mix["fma"] += per
                self.float_ops += trips
                if lanes > 1:
                    self.vector_ops += trips
            elif isinstance(e, (Select, Cast)) or isinstance(e, (Bin, Un)) and not _is_index(e, s):
                self.mix["integer"] += per

    def _access(self, buffer: str, indices, trips: float, loops: list[For]):
        if buffer not in self.globals:
            return  # a local tile lives in registers or L1
        used = set().union(*(free_vars(i) for i in indices)) if indices else set()
        unique = 1.0
        for loop in loops:
            if loop.var.name in used:
                unique *= _trips(loop.extent)
        self.accesses.setdefault(buffer, []).append((unique, trips))

    def dram_bytes(self) -> float:
        """Each global buffer is read (or written) from DRAM once when the kernel's working set
        fits in the cache; otherwise every access beyond the first touch misses by cache line
        in proportion to how far the working set overflows."""
        footprint = {b: min(max(u for u, _ in acc) * self.globals[b].dtype.itemsize,
                            _size(self.globals[b]))
                     for b, acc in self.accesses.items()}
        total = sum(footprint.values())
        if total <= self.core.cache_bytes:
            return float(total)
        overflow = 1.0 - self.core.cache_bytes / total
        refetch = sum(t * self.globals[b].dtype.itemsize for b, acc in self.accesses.items() for _, t in acc)
        return float(total + overflow * max(refetch - total, 0.0) / 16)  # 16 elements share a 64-byte line


def _size(buf) -> float:
    n = float(buf.dtype.itemsize)
    for d in buf.shape:
        n *= _trips(d)
    return n


def _is_index(e: Expr, s: Store) -> bool:
    """Index arithmetic (inside a load's subscript) is counted with the address, not here."""
    return any(isinstance(x, Load) and any(e is y for i in x.indices for y in walk(i)) for x in walk(s.value))


def _feeds_add(mul: Expr, root: Expr) -> bool:
    return any(isinstance(x, Bin) and x.op in ("add", "sub") and (x.a is mul or x.b is mul) for x in walk(root))


def estimate(func: Func, fp16: bool = False, core: ArmCore = DEFAULT_CORE, dotprod: bool = False) -> ArmCost:
    """The static cost of one scheduled kernel on an arm64 core (``dotprod``: ``+dotprod``)."""
    c = _Counter(func, fp16, core, dotprod)
    c.stmt(func.body, 1.0, [])
    m = c.mix
    compute = (m["fma"] / core.fma + m["div"] / core.div + m["load"] / core.load + m["store"] / core.store
               + m["integer"] / core.integer + m["math"] * core.math_call_cycles)
    dram = c.dram_bytes()
    return ArmCost(dict(m), dram, compute, dram / core.dram_bytes_per_cycle,
                   c.vector_ops / c.float_ops if c.float_ops else 0.0)


class ArmStaticCostModel:
    """The cost-model interface, backed by :func:`estimate`: no training, no device.

    ``candidates`` are scheduled loop-IR ``Func``\\ s (or objects with a ``func``
    attribute); ``predict`` returns one score per candidate, higher is faster
    (the inverse of the estimated seconds)."""

    def __init__(self, core: ArmCore = DEFAULT_CORE, fp16: bool = False, dotprod: bool = False):
        self.core, self.fp16, self.dotprod = core, fp16, dotprod

    def predict(self, task, candidates) -> np.ndarray:
        costs = [estimate(getattr(c, "func", c), self.fp16, self.core, self.dotprod).seconds(self.core)
                 for c in candidates]
        return np.array([1.0 / max(s, 1e-12) for s in costs])

    def update(self, task, candidates, results) -> None:
        """Measurements do not change a static model (a learned model trains on them instead)."""

    def save(self, path) -> None:
        Path(path).write_text(json.dumps({"kind": "arm-static", "fp16": self.fp16, "dotprod": self.dotprod,
                                          "core": asdict(self.core)}))

    @classmethod
    def load(cls, path) -> "ArmStaticCostModel":
        from kiln.errors import KilnError

        try:
            data = json.loads(Path(path).read_text())
            assert data.get("kind") == "arm-static"
            return cls(ArmCore(**data["core"]), bool(data["fp16"]), bool(data.get("dotprod", False)))
        except (OSError, ValueError, AssertionError, KeyError, TypeError) as e:
            raise KilnError(f"{path} is not a saved arm-static cost model ({type(e).__name__}: {e})") from None


__all__ = ["ArmCore", "ArmCost", "ArmStaticCostModel", "DEFAULT_CORE", "estimate"]
