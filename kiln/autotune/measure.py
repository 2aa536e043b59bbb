"""Measurement: build and run candidate kernels in separate processes, and check them.

Each candidate becomes a small executable (``templates/tune_harness.c.j2``): gcc builds
it under a timeout, then it runs as its own process under a timeout, so a kernel that
segfaults, loops forever or corrupts memory costs one trial and never the tuning run.
The harness surrounds every buffer with guard zones and exits with ``OOB_STATUS`` when
one was written. Before its time counts, a candidate's outputs must match those of the
untuned kernel (the default schedule) on the same random inputs.

Results carry an ``error`` kind: ``build``, ``timeout``, ``crash``, ``oob``, ``wrong``
(or ``None`` when the candidate is valid and ``latency`` holds its median time).

Noise: on a shared machine one run of a kernel can be 10 % faster than the next for no
reason the schedule explains. So a candidate that would become the task's new best
(``measure(..., confirm_below=best)``) is run ``confirm`` more times before its time
counts, and its latency is the median of all its runs: a single lucky run never defines
the best. ``retime`` times a set of finished candidates in interleaved rounds (each round
runs every candidate once), for comparisons that drift in the machine's speed must not bias.
"""
from __future__ import annotations

import math
import os
import shutil
import statistics
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kiln.codegen.c_support import C_PRELUDE
from kiln.codegen.x86 import X86Renderer
from kiln.codegen.templates import render
from kiln.errors import TuningError
from kiln.ir.loop import Func
from kiln.ir.schedule import Schedule
from kiln.passes.default_schedule import schedule_kernel

OOB_STATUS = 86
GUARD_BYTES = 4096
ERROR_KINDS = ("build", "timeout", "crash", "oob", "wrong")


@dataclass
class MeasureOptions:
    build_timeout: float = 120.0   # seconds for gcc
    run_timeout: float = 10.0      # seconds for one candidate's whole run
    repeats: int = 3               # timed repeats; the median counts
    min_repeat_ms: float = 2.0     # each repeat calls the kernel until it lasted this long
    builders: int = 2              # parallel gcc processes
    rtol: float = 1e-3             # output check against the untuned kernel
    atol: float = 1e-4
    confirm: int = 2               # extra runs of a candidate that would become the new best
    cold_weights: bool = True      # evict the task's weights from the caches before each timed call


@dataclass
class Result:
    latency: float | None          # seconds per call (median of repeats); None when it failed
    error: str | None = None       # one of ERROR_KINDS
    detail: str = ""
    costs: list[float] = field(default_factory=list)
    runs: list[float] = field(default_factory=list)   # per-run medians when it was confirmed

    @property
    def ok(self) -> bool:
        return self.error is None


def default_schedule(task) -> Schedule:
    """The untuned kernel's schedule: the default rules, as the compiler applies them without a record."""
    return schedule_kernel(Schedule(task.func), task.stages, task.caps)


def default_func(task) -> Func:
    return default_schedule(task).func


def harness_source(func: Func, cold=()) -> str:
    """The measurement program of ``func``; ``cold``: names of parameters (the model's
    weights) evicted from the caches before each timed call."""
    renderer = X86Renderer()  # the host's renderer: the tuner times what compile builds
    inputs = {b.name for b in func.params if b.name.startswith("in")}
    kernel = renderer.render_func(func, inputs, static=True)
    params = [{"ctype": renderer.ctype(b.dtype)} for b in func.params]
    sizes = [int(np.prod(b.shape, dtype=np.int64)) * b.dtype.itemsize for b in func.params]
    return render("tune_harness.c.j2", prelude=C_PRELUDE + renderer.support_code(), kernel=kernel, params=params,
                  sizes=[max(s, 1) for s in sizes], guard=GUARD_BYTES, oob_status=OOB_STATUS,
                  input_indices=[i for i, b in enumerate(func.params) if b.name in inputs],
                  output_indices=[i for i, b in enumerate(func.params) if b.name.startswith("out")],
                  cold=[i for i, b in enumerate(func.params) if b.name in set(cold)])


def random_inputs(func: Func, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = []
    for b in func.params:
        if not b.name.startswith("in"):
            continue
        dt = b.dtype.np
        if dt.kind == "f":
            arrays.append(rng.uniform(-1, 1, b.shape).astype(dt))
        elif dt.kind == "b":
            arrays.append(rng.integers(0, 2, b.shape).astype(dt))
        else:
            arrays.append(rng.integers(0, 4, b.shape).astype(dt))
        if b.zero_outside is not None:  # the kernel may skip products with that border: keep it 0
            arrays[-1] = zero_outside_box(arrays[-1], b.zero_outside)
    return arrays


def zero_outside_box(a: np.ndarray, box) -> np.ndarray:
    """``a`` with 0 outside ``box`` (per dim a [start, stop) or None for the whole dim)."""
    inside = np.zeros_like(a)
    region = tuple(slice(None) if iv is None else slice(*iv) for iv in box)
    inside[region] = a[region]
    return inside


class Measurer:
    """Builds and runs candidates of one task at a time; keeps the reference outputs per task."""

    def __init__(self, options: MeasureOptions | None = None, workdir: str | None = None):
        from kiln.targets.host import CFLAGS, compiler_path

        self.options = options or MeasureOptions()
        self._own = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="kiln_tune_"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.cc = compiler_path()
        self.flags = [f for f in CFLAGS if f not in ("-shared", "-fPIC")]
        self._refs: dict[str, tuple[Path, list[np.ndarray], float]] = {}
        self._count = 0

    def close(self) -> None:
        if self._own:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- one candidate ----------------------------------------------------------------------
    def _cold(self, task) -> tuple[str, ...]:
        return task.weights if self.options.cold_weights else ()

    def _build(self, func: Func, name: str, cold=()) -> tuple[Path | None, str]:
        d = self.workdir / name
        d.mkdir(parents=True, exist_ok=True)
        src = d / "harness.c"
        src.write_text(harness_source(func, cold))
        exe = d / "harness"
        try:
            proc = subprocess.run([self.cc, *self.flags, "-o", str(exe), str(src), "-lm"],
                                  capture_output=True, text=True, timeout=self.options.build_timeout)
        except subprocess.TimeoutExpired:
            return None, f"gcc took longer than {self.options.build_timeout:.0f} s"
        if proc.returncode != 0:
            return None, proc.stderr.strip()[-2000:]
        return exe, ""

    def _run(self, exe: Path, inputs_file: Path, outputs_file: Path, threads: int) -> Result:
        env = dict(os.environ, OMP_NUM_THREADS=str(max(threads, 1)))
        env.setdefault("GOMP_SPINCOUNT", "1000")
        cmd = [str(exe), str(inputs_file), str(outputs_file), str(self.options.min_repeat_ms),
               str(self.options.repeats)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=self.options.run_timeout, env=env)
        except subprocess.TimeoutExpired:
            return Result(None, "timeout", f"ran longer than {self.options.run_timeout:.1f} s")
        if proc.returncode == OOB_STATUS:
            return Result(None, "oob", proc.stderr.strip())
        if proc.returncode != 0:
            why = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit status {proc.returncode}"
            return Result(None, "crash", f"{why}: {proc.stderr.strip()[-500:]}")
        costs = [float(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("time ")]
        if not costs:
            return Result(None, "crash", "the harness printed no timings")
        return Result(statistics.median(costs), None, "", costs)

    # -- per task -----------------------------------------------------------------------
    def reference(self, task) -> tuple[list[np.ndarray], float]:
        """Outputs and latency of the untuned kernel on the task's random inputs (cached)."""
        if task.key in self._refs:
            _, outs, lat = self._refs[task.key]
            return outs, lat
        func = default_func(task)
        inputs = random_inputs(func)
        inputs_file = self.workdir / f"{task.key}.inputs.bin"
        with open(inputs_file, "wb") as f:
            for a in inputs:
                f.write(np.ascontiguousarray(a).tobytes())
        exe, err = self._build(func, f"{task.key}_ref", self._cold(task))
        if exe is None:
            raise TuningError(f"the untuned kernel of task {task.name} does not build:\n{err}")
        out_file = exe.parent / "outputs.bin"
        res = self._run(exe, inputs_file, out_file, task.caps.threads)
        if not res.ok:
            raise TuningError(f"the untuned kernel of task {task.name} failed ({res.error}: {res.detail})")
        outs = self._read_outputs(func, out_file)
        res = self._confirm(exe, inputs_file, task.caps.threads, res)  # the bar every candidate is held to
        if not res.ok:
            raise TuningError(f"the untuned kernel of task {task.name} failed ({res.error}: {res.detail})")
        self._refs[task.key] = (inputs_file, outs, res.latency)
        return outs, res.latency

    @staticmethod
    def _read_outputs(func: Func, path: Path) -> list[np.ndarray]:
        data = path.read_bytes()
        outs, off = [], 0
        for b in func.params:
            if b.name.startswith("out"):
                n = int(np.prod(b.shape, dtype=np.int64)) * b.dtype.itemsize
                outs.append(np.frombuffer(data[off: off + n], dtype=b.dtype.np).reshape(b.shape))
                off += n
        return outs

    def _build_all(self, funcs: list[Func], cold=()) -> list[tuple[Path | None, str]]:
        names = []
        for _ in funcs:
            self._count += 1
            names.append(f"c{self._count}")
        with ThreadPoolExecutor(max_workers=max(self.options.builders, 1)) as pool:
            return list(pool.map(self._build, funcs, names, [cold] * len(funcs)))

    def _confirm(self, exe: Path, inputs_file: Path, threads: int, res: Result) -> Result:
        """``res`` run ``confirm`` more times; its latency becomes the median of all runs."""
        runs = [res.latency]
        costs = list(res.costs)
        scratch = exe.parent / "confirm.bin"
        for _ in range(self.options.confirm):
            again = self._run(exe, inputs_file, scratch, threads)
            if not again.ok:  # flaky: crashed or hung on a later run, so it never counts
                return Result(None, again.error, f"on a confirming run: {again.detail}")
            runs.append(again.latency)
            costs += again.costs
        return Result(statistics.median(runs), None, res.detail, costs, runs)

    def measure(self, task, funcs: list[Func], confirm_below: float | None = None) -> list[Result]:
        """Build (in parallel) and run (one at a time, for quiet timings) scheduled candidates.

        ``confirm_below``: the task's best latency so far (None: no best yet). A valid
        candidate measured faster than it is confirmed (``MeasureOptions.confirm`` more
        runs, median of all), and the bar moves to its confirmed latency.
        """
        ref_outs, _ = self.reference(task)
        inputs_file = self._refs[task.key][0]
        results = []
        bar = math.inf if confirm_below is None else confirm_below
        for func, (exe, err) in zip(funcs, self._build_all(funcs, self._cold(task))):
            if exe is None:
                results.append(Result(None, "build", err))
                continue
            out_file = exe.parent / "outputs.bin"
            res = self._run(exe, inputs_file, out_file, task.caps.threads)
            if res.ok:
                res = self._check(func, out_file, ref_outs, res)
            if res.ok and res.latency < bar and self.options.confirm > 0:
                res = self._confirm(exe, inputs_file, task.caps.threads, res)
                if res.ok:
                    bar = min(bar, res.latency)
            shutil.rmtree(exe.parent, ignore_errors=True)
            results.append(res)
        return results

    def retime(self, task, funcs: list[Func], rounds: int = 5) -> list[Result]:
        """Time finished candidates in ``rounds`` interleaved rounds (every candidate once per
        round, in a rotating order), checked against the untuned kernel; the latency is the
        median over rounds. For judging which of several tuned kernels is really fastest."""
        if not isinstance(rounds, int) or rounds < 1:
            raise TuningError(f"rounds must be a positive integer, got {rounds!r}")
        ref_outs, _ = self.reference(task)
        inputs_file = self._refs[task.key][0]
        built = self._build_all(funcs, self._cold(task))
        failed: dict[int, Result] = {i: Result(None, "build", err) for i, (exe, err) in enumerate(built) if exe is None}
        runs: dict[int, list[Result]] = {i: [] for i in range(len(funcs)) if i not in failed}
        try:
            for r in range(rounds):
                live = [i for i in runs if i not in failed]
                shift = r % len(live) if live else 0
                for i in live[shift:] + live[:shift]:  # no candidate always runs first
                    exe = built[i][0]
                    out_file = exe.parent / "outputs.bin"
                    res = self._run(exe, inputs_file, out_file, task.caps.threads)
                    if res.ok and r == 0:
                        res = self._check(funcs[i], out_file, ref_outs, res)
                    if not res.ok:
                        failed[i] = res
                    else:
                        runs[i].append(res)
        finally:
            for exe, _ in built:
                if exe is not None:
                    shutil.rmtree(exe.parent, ignore_errors=True)
        out = []
        for i in range(len(funcs)):
            if i in failed:
                out.append(failed[i])
                continue
            lats = [x.latency for x in runs[i]]
            out.append(Result(statistics.median(lats), None, "", [c for x in runs[i] for c in x.costs], lats))
        return out

    def _check(self, func: Func, out_file: Path, ref_outs, res: Result) -> Result:
        try:
            outs = self._read_outputs(func, out_file)
        except (OSError, ValueError) as e:
            return Result(None, "wrong", f"outputs unreadable: {e}")
        for k, (got, want) in enumerate(zip(outs, ref_outs)):
            if got.shape != want.shape:
                return Result(None, "wrong", f"output {k} has {got.size} elements; expected {want.size}")
            if want.dtype.kind == "f":
                scale = float(np.max(np.abs(want))) if want.size else 0.0
                bad = ~np.isclose(got, want, rtol=self.options.rtol, atol=self.options.atol * max(scale, 1.0),
                                  equal_nan=True)
            else:
                bad = got != want
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                return Result(None, "wrong", f"output {k} differs from the untuned kernel at flat index {i}: "
                                              f"{got.flat[i]!r} vs {want.flat[i]!r} ({int(bad.sum())} elements)")
        return res


def schedule_of(task, trace) -> Func:
    """The scheduled loop IR of a candidate trace, replayed as the compiler replays records."""
    from kiln.autotune.space import apply_trace

    return apply_trace(task.func, trace)


__all__ = ["Measurer", "MeasureOptions", "Result", "default_func", "harness_source", "random_inputs",
           "schedule_of", "ERROR_KINDS", "OOB_STATUS"]
