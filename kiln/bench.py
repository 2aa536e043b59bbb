"""Timing Kiln against its peers: one workload, every peer, interleaved in one process.

The core of ``benchmarks/suite.py`` and ``kiln bench``. A :class:`Workload` is an ONNX model
with fixed inputs and, optionally, a torch definition with the same weights and a numpy
definition. A peer (:class:`Peer`) turns a workload into a zero-argument ``run()``;
:func:`bench_workload` warms every peer up, then times R rounds in which each peer runs once
in a shuffled order, so that a change in machine load hits every peer alike. Each
:class:`Row` holds the median, the p10-p90 spread, GFLOP/s where the FLOP count is known, the
largest relative error against ONNX Runtime, and the time ratio to Kiln. A peer that is
missing or fails records why in its row; it never stops the run.

Threads: every peer gets ``THREADS`` (2) threads. Kiln's OpenMP runtime and TVM's thread
pool read their variables when they first load (below, unless already set); OpenBLAS reads
its own when numpy loads, so benchmarks/suite.py sets those before importing anything.
"""
from __future__ import annotations

import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence

THREADS = 2
for _var in ("OMP_NUM_THREADS", "TVM_NUM_THREADS"):
    os.environ.setdefault(_var, str(THREADS))

import numpy as np  # noqa: E402

from kiln.errors import InputError, KilnError, ShapeError  # noqa: E402

PEERS = ("kiln", "ort", "torch", "tvm", "numpy")


class PeerSkipped(KilnError):
    """A peer cannot run a workload for a known reason (not installed, no torch definition)."""


class NotApplicable(KilnError):
    """A peer has nothing to time for this workload (numpy outside GEMM): no row at all."""


@dataclass
class Workload:
    """One thing to time. ``onnx`` builds the model. ``torch`` and ``numpy`` take that model
    (to reuse its weights) and return a callable taking the inputs by name, as torch tensors
    or numpy arrays."""

    name: str
    kind: str                                  # "kernel" or "model"
    group: str                                 # gemm, conv, dwconv, ..., model
    description: str
    onnx: Callable[[], Any]
    inputs: Callable[[Any], dict] | None = None  # model -> inputs; default: seeded random
    flops: float | None = None
    torch: Callable[[Any], Callable] | None = None   # onnx model -> torch callable
    numpy: Callable[[Any], Callable] | None = None   # onnx model -> numpy callable
    _model: Any = field(default=None, repr=False)
    _inputs: dict | None = field(default=None, repr=False)

    def model(self):
        if self._model is None:
            self._model = self.onnx()
        return self._model

    def feeds(self) -> dict[str, np.ndarray]:
        if self._inputs is None:
            self._inputs = (self.inputs or random_inputs)(self.model())
        return self._inputs

    def output_names(self) -> list[str]:
        return [o.name for o in self.model().graph.output]


def random_inputs(model, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs for every graph input that is not an initializer: standard normal
    floats, small non-negative integers, and ones for an input named ``attention_mask``."""
    from onnx import helper

    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    out = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        shape = tuple(d.dim_value for d in tt.shape.dim)
        if any(d.dim_value <= 0 for d in tt.shape.dim):
            declared = [d.dim_param or d.dim_value for d in tt.shape.dim]
            raise InputError(f"input {vi.name!r} has the shape {declared}; give it a static shape "
                             f"(--input-shape {vi.name}=D1,D2,...)")
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type))
        if vi.name == "attention_mask":
            out[vi.name] = np.ones(shape, dtype)
        elif dtype.kind == "f":
            out[vi.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            out[vi.name] = rng.integers(0, 2, shape).astype(dtype)
        else:
            out[vi.name] = rng.integers(0, 4, shape).astype(dtype)
    return out


def onnx_workload(model, input_shapes: Mapping[str, Sequence[int]] | None = None) -> Workload:
    """A workload for an ONNX file or ModelProto (``kiln bench``): seeded random inputs, no
    torch definition. ``input_shapes`` fixes the shapes of inputs with symbolic dims."""
    from pathlib import Path

    from kiln.frontend.onnx import load_model
    from kiln.roofline import model_flops

    proto = load_model(model)
    if input_shapes:
        proto = _with_input_shapes(proto, input_shapes)
    name = Path(model).stem if isinstance(model, (str, os.PathLike)) else (proto.graph.name or "model")
    # the convolutions' and matrix products' multiply-adds, for GFLOP/s (None: symbolic shapes)
    return Workload(name, "model", "models", f"{name} (ONNX)", lambda: proto, flops=model_flops(proto))


def _with_input_shapes(proto, shapes: Mapping[str, Sequence[int]]):
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(proto)
    out.graph.ClearField("value_info")  # inferred for the old shapes
    declared = {vi.name: vi for vi in out.graph.input}
    for name, shape in shapes.items():
        if name not in declared:
            raise ShapeError(f"--input-shape names {name!r}, which is not a model input; inputs: "
                             f"{', '.join(declared)}")
        dims = declared[name].type.tensor_type.shape.dim
        if len(dims) != len(shape) or not all(isinstance(n, int) for n in shape):
            raise ShapeError(f"--input-shape {name}: give {len(dims)} integer dims; got {tuple(shape)}")
        for d, n in zip(dims, shape):
            d.Clear()
            d.dim_value = int(n)
    return out


# -- peers ---------------------------------------------------------------------------------

class Peer(Protocol):
    name: str

    def version(self) -> str: ...

    def prepare(self, workload: Workload) -> Callable[[], Any]:
        """Build what is needed (outside the timing) and return ``run()`` returning outputs.
        Raises PeerSkipped or NotApplicable when the peer cannot or need not run."""


def _dist_version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


class KilnPeer:
    """``kiln.compile(model, target)``; with ``db`` the tuned records of that database applied
    (named ``kiln`` still, unless ``name`` says otherwise, so ratios are against it)."""

    name = "kiln"

    def __init__(self, target: str = "host", db=None, name: str | None = None):
        self.target, self.db = target, db
        if name:
            self.name = name

    def version(self) -> str:
        import kiln

        tuned = f", tuned records from {self.db}" if self.db is not None else ""
        return (f"kiln {kiln.__version__} (target {self.target}{tuned}, "
                f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']})")

    def prepare(self, workload):
        import kiln

        db = None if self.db is None else str(self.db)
        compiled = kiln.compile(workload.model(), target=self.target, db=db)
        compiled.build()  # gcc runs here, not in the first timed call
        feeds = workload.feeds()
        return lambda: compiled.run(feeds)


# ORT's pool threads spin between ops by default, and ORT is timed as users get it: on a quiet
# machine that is the stronger ORT (MobileNetV2 2.3 ms spinning, 3.0 without). Spinning
# threads can starve the next peer's threads on 2 cores (Kiln 7x slower right after a
# spinning ORT session, without the pause before each sample); on a busy machine
# KILN_BENCH_ORT_SPINNING=0 turns it off.
ORT_SPINNING = os.environ.get("KILN_BENCH_ORT_SPINNING", "1") != "0"


def ort_session(model, threads: int = THREADS):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if ORT_SPINNING else "0")
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


class OrtPeer:
    name = "ort"

    def version(self) -> str:
        v = _dist_version("onnxruntime")
        spin = "spinning" if ORT_SPINNING else "no spinning"
        return f"onnxruntime {v} (intra_op {THREADS}, inter_op 1, ORT_ENABLE_ALL, {spin})" if v \
            else "onnxruntime: not installed"

    def prepare(self, workload):
        if _dist_version("onnxruntime") is None:
            raise PeerSkipped("not installed (pip install onnxruntime)")
        sess = ort_session(workload.model())
        feeds, names = workload.feeds(), workload.output_names()
        return lambda: sess.run(names, feeds)


class TorchPeer:
    name = "torch"

    def version(self) -> str:
        v = _dist_version("torch")
        return f"torch {v} (eager, inference_mode, {THREADS} threads)" if v else "torch: not installed"

    def prepare(self, workload):
        if _dist_version("torch") is None:
            raise PeerSkipped("not installed (pip install torch==2.13.0)")
        if workload.torch is None:
            raise PeerSkipped("no torch definition (an ONNX model: torch cannot run it)")
        import torch

        torch.set_num_threads(THREADS)
        fn = workload.torch(workload.model())
        feeds = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in workload.feeds().items()}

        def run():
            with torch.inference_mode():
                return fn(**feeds)
        return run


def tvm_target():
    """The host CPU for TVM's LLVM backend. TVM 0.27 accepts only the dict form of a target."""
    import tvm

    cpu = tvm.target.codegen.llvm_get_system_cpu()
    try:
        return tvm.target.Target({"kind": "llvm", "mcpu": cpu})
    except Exception:  # noqa: BLE001  (older TVM: the string form)
        return tvm.target.Target(f"llvm -mcpu={cpu}")


class TvmPeer:
    """Apache TVM, untuned: Relax's ONNX frontend, ``relax.build`` with the default pipeline."""

    name = "tvm"

    def version(self) -> str:
        v = _dist_version("apache-tvm")
        if v is None:
            return "apache-tvm: not installed"
        return (f"apache-tvm {v} with apache-tvm-ffi {_dist_version('apache-tvm-ffi')} (Relax default "
                f"pipeline, untuned, TVM_NUM_THREADS={os.environ['TVM_NUM_THREADS']})")

    def prepare(self, workload):
        try:
            import tvm
            from tvm import relax
            from tvm.relax.frontend.onnx import from_onnx
        except ImportError as e:
            raise PeerSkipped(f"not installed ({e}; pip install 'kiln[tvm]')") from None
        feeds = workload.feeds()
        mod = from_onnx(workload.model(), shape_dict={k: list(v.shape) for k, v in feeds.items()},
                        keep_params_in_input=False)
        vm = relax.VirtualMachine(relax.build(mod, target=tvm_target()), tvm.cpu())
        make = getattr(tvm.runtime, "tensor", None) or tvm.nd.array
        order = [vi.name for vi in workload.model().graph.input if vi.name in feeds]
        args = [make(feeds[name]) for name in order]  # from_onnx binds inputs in graph order
        main = vm["main"]
        return lambda: main(*args)


class NumpyPeer:
    """numpy (OpenBLAS) for the workloads that define one, GEMM only in the suite."""

    name = "numpy"

    def version(self) -> str:
        threads = os.environ.get("OPENBLAS_NUM_THREADS", f"unset: {os.cpu_count()} CPUs")
        return f"numpy {np.__version__} (OpenBLAS, OPENBLAS_NUM_THREADS={threads})"

    def prepare(self, workload):
        if workload.numpy is None:
            raise NotApplicable(f"numpy does not define {workload.name}")
        fn, feeds = workload.numpy(workload.model()), workload.feeds()
        return lambda: fn(**feeds)


PEER_CLASSES = {"kiln": KilnPeer, "ort": OrtPeer, "torch": TorchPeer, "tvm": TvmPeer, "numpy": NumpyPeer}


def make_peers(names: Sequence[str], target: str = "host") -> list:
    unknown = [n for n in names if n not in PEER_CLASSES]
    if unknown:
        raise KilnError(f"unknown peer(s) {', '.join(unknown)}; choose from {', '.join(PEER_CLASSES)}")
    return [KilnPeer(target) if n == "kiln" else PEER_CLASSES[n]() for n in names]


# -- outputs and errors --------------------------------------------------------------------

def as_arrays(result, names: Sequence[str]) -> list[np.ndarray]:
    """Any peer's outputs (dict, list, tuple, torch or TVM tensors) as numpy arrays in the
    order of the ONNX graph outputs."""
    if isinstance(result, Mapping):
        return [_to_numpy(result[n]) for n in names]
    if isinstance(result, (np.ndarray, np.generic)) or hasattr(result, "numpy"):
        return [_to_numpy(result)]
    return [_to_numpy(r) for r in result]  # list, tuple, TVM's Array of tensors


def _to_numpy(x) -> np.ndarray:
    x = x.detach() if hasattr(x, "detach") else x   # torch
    return x.numpy() if hasattr(x, "numpy") else np.asarray(x)  # torch and TVM tensors


def max_rel_err(got: Sequence[np.ndarray], want: Sequence[np.ndarray]) -> float:
    """max |got - want| / max |want| over all outputs; raises on a count or shape mismatch."""
    if len(got) != len(want):
        raise KilnError(f"{len(got)} outputs, the reference has {len(want)}")
    worst = 0.0
    for g, w in zip(got, want):
        g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
        if g.shape != w.shape:
            raise KilnError(f"output shape {g.shape}, the reference has {w.shape}")
        if not w.size:
            continue
        diff = float(np.max(np.abs(g - w)))
        if math.isnan(diff):  # max() below would drop a NaN and report 0
            return math.inf
        worst = max(worst, diff / max(float(np.max(np.abs(w))), 1e-30))
    return worst


def reference(workload: Workload) -> list[np.ndarray] | str:
    """ONNX Runtime's outputs (its own untimed session), or why there are none."""
    try:
        sess = ort_session(workload.model())
        return sess.run(workload.output_names(), workload.feeds())
    except Exception as e:  # noqa: BLE001  (no reference only blanks the error column)
        return f"no reference: {describe(e)}"


# -- timing --------------------------------------------------------------------------------

@dataclass
class Row:
    workload: str
    peer: str
    median_ms: float | None = None
    p10_ms: float | None = None
    p90_ms: float | None = None
    runs: int = 0
    gflops: float | None = None
    max_rel_err: float | None = None
    ratio: float | None = None            # peer time / kiln time: above 1, Kiln is faster
    prepare_s: float | None = None
    error: str | None = None              # the peer failed or could not run: why
    note: str | None = None               # it ran, with a caveat
    samples: list = field(default_factory=list, repr=False)

    @property
    def ok(self) -> bool:
        return self.error is None and self.median_ms is not None


@dataclass
class Options:
    repeats: int = 10           # rounds: timed samples per peer
    warmup: int = 2             # untimed calls per peer first (the first also checks outputs)
    min_sample_s: float = 0.02  # a sample repeats a fast call until it lasts this long
    budget_s: float = 30.0      # a slow peer gets fewer samples, at most this much time
    pause_s: float = 0.05       # idle time before each sample: other runtimes' threads go quiet
    seed: int = 0               # for the order of peers in each round


def describe(e: BaseException, limit: int = 300) -> str:
    if getattr(e, "unsupported", None):  # UnsupportedOperatorError: the op names say it all
        return f"{type(e).__name__}: " + ", ".join(op for op, _, _ in e.unsupported)
    text = " ".join(str(e).split())
    if isinstance(e, PeerSkipped):
        return text
    return f"{type(e).__name__}: " + (text[:limit] + " ..." if len(text) > limit else text)


@dataclass
class _Timed:
    row: Row
    run: Callable[[], Any]
    inner: int = 1
    target_runs: int = 0


def _prepare(peer, workload: Workload, want, opts: Options, log) -> _Timed | None:
    """Build the peer, warm it up, check its outputs and size its samples; None: no row."""
    row = Row(workload.name, peer.name)
    t0 = time.perf_counter()
    try:
        run = peer.prepare(workload)
        row.prepare_s = time.perf_counter() - t0
        first, spent = _warm(run, opts)
    except NotApplicable:
        return None
    except Exception as e:  # noqa: BLE001  (a failing peer is a row, never the end of the run)
        row.error = describe(e)
        log(f"[{workload.name}] {peer.name}: {row.error}")
        return _Timed(row, None)
    if isinstance(want, str):
        row.note = want
    else:
        try:
            row.max_rel_err = max_rel_err(as_arrays(first, workload.output_names()), want)
        except Exception as e:  # noqa: BLE001
            row.note = f"outputs not comparable: {describe(e)}"
    try:
        spent = _seconds_per_call(run, spent, opts)
    except Exception as e:  # noqa: BLE001
        row.error = f"failed while timing: {describe(e)}"
        log(f"[{workload.name}] {peer.name}: {row.error}")
        return _Timed(row, None)
    timed = _Timed(row, run)
    timed.inner = max(1, min(1000, math.ceil(opts.min_sample_s / max(spent, 1e-7))))
    fits = int(opts.budget_s / max(spent * timed.inner, 1e-9))
    timed.target_runs = max(1, min(opts.repeats, fits))
    if spent > opts.budget_s:  # one call is over budget (untuned TVM: 70 s at GEMM 2048):
        row.samples = [spent]   # its warm-up call is its one sample; no second call
        row.note = join_notes(row.note, f"slow: timed once, the warm-up call ({spent:.1f} s)")
    elif timed.target_runs < opts.repeats:
        row.note = join_notes(row.note, f"slow: {timed.target_runs} of {opts.repeats} runs ({spent:.2f} s each)")
    log(f"[{workload.name}] {peer.name}: ready in {row.prepare_s:.1f} s, one call {spent * 1e3:.3f} ms"
        + (f", max rel err {row.max_rel_err:.1e}" if row.max_rel_err is not None else ""))
    return timed


def _warm(run, opts: Options) -> tuple[Any, float]:
    """Call ``run`` up to ``warmup`` times (a slow one fewer); the first result, the last time."""
    t = time.perf_counter()
    first = run()
    spent = time.perf_counter() - t
    total = spent
    for _ in range(max(0, opts.warmup - 1)):
        if total > opts.budget_s / 4:  # an 11 s call needs no second warm-up
            break
        t = time.perf_counter()
        run()
        spent = time.perf_counter() - t
        total += spent
    return first, spent


def _seconds_per_call(run, spent: float, opts: Options) -> float:
    """A fast call's time back to back, from batches of doubling size until one lasts a
    quarter of a sample (``spent``, the last warm-up call, when that alone does). One call
    can be far slower than the ones after it: sized by a warm-up call of 1.2-1.7 ms where
    the calls after took 20 us (Kiln's worker still on the caller's CPU), a sample was 12
    calls, and the slow first call after each pause weighed on all of them."""
    per_call, n = spent, 1
    while per_call * n < opts.min_sample_s / 4 and n < 1024:
        n *= 2
        t = time.perf_counter()
        for _ in range(n):
            run()
        per_call = (time.perf_counter() - t) / n
    return per_call


def join_notes(a: str | None, b: str) -> str:
    return f"{a}; {b}" if a else b


def _time_rounds(timed: list[_Timed], opts: Options, log, name: str) -> None:
    """R rounds; each runs every peer that still wants samples once, in a shuffled order."""
    rng = random.Random(opts.seed)
    for _ in range(opts.repeats):
        order = [t for t in timed if t.run is not None and len(t.row.samples) < t.target_runs]
        if not order:
            break
        rng.shuffle(order)
        for t in order:
            if opts.pause_s:
                time.sleep(opts.pause_s)
            try:
                start = time.perf_counter()
                for _ in range(t.inner):
                    t.run()
                t.row.samples.append((time.perf_counter() - start) / t.inner)
            except Exception as e:  # noqa: BLE001
                t.row.error, t.run = f"failed while timing: {describe(e)}", None
                log(f"[{name}] {t.row.peer}: {t.row.error}")


def _summarize(rows: list[Row], flops: float | None) -> None:
    """Median, spread and GFLOP/s from each row's samples, then the ratios to Kiln."""
    for r in rows:
        if r.error or not r.samples:
            continue
        ms = np.array(r.samples) * 1e3
        r.median_ms = float(np.median(ms))
        r.p10_ms, r.p90_ms = (float(v) for v in np.percentile(ms, [10, 90]))
        r.runs = len(ms)
        if flops:
            r.gflops = flops / (r.median_ms * 1e-3) / 1e9
    set_ratios(rows)


def set_ratios(rows: list[Row]) -> None:
    """peer median / Kiln median for every row of one workload that has a time."""
    kiln = next((r for r in rows if r.peer == "kiln" and r.ok), None)
    for r in rows:
        if kiln and r.ok:
            r.ratio = r.median_ms / kiln.median_ms


def bench_workload(workload: Workload, peers: Sequence, opts: Options | None = None,
                   log: Callable[[str], None] = lambda s: None) -> list[Row]:
    """Time every peer on ``workload``, interleaved; one Row per peer (none for a peer that
    does not apply). Never raises for a peer's failure: the row says what went wrong."""
    opts = opts or Options()
    want = reference(workload)  # a model that cannot be built fails each peer's prepare below
    timed = [t for t in (_prepare(p, workload, want, opts, log) for p in peers) if t is not None]
    _time_rounds(timed, opts, log, workload.name)
    rows = [t.row for t in timed]
    _summarize(rows, workload.flops)
    return rows


# -- reporting -----------------------------------------------------------------------------

def _ms(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:.3f}" if v < 10 else f"{v:.1f}" if v < 1000 else f"{v:.0f}"


def _cell(text: str | None, limit: int = 160) -> str:
    """Error text fit for one markdown cell: one line, no pipes, bounded length."""
    if not text:
        return ""
    text = " ".join(text.split()).replace("|", "\\|")
    return text[:limit] + " ..." if len(text) > limit else text


def markdown_table(rows: Sequence[Row]) -> str:
    lines = ["| workload | peer | median ms | p10–p90 ms | GFLOP/s | max rel err | peer/kiln | runs | "
             "prepare s | note |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        spread = f"{_ms(r.p10_ms)}–{_ms(r.p90_ms)}" if r.ok else "—"
        lines.append(
            f"| {r.workload} | {r.peer} | {_ms(r.median_ms)} | {spread} | "
            f"{'—' if r.gflops is None else f'{r.gflops:.1f}'} | "
            f"{'—' if r.max_rel_err is None else f'{r.max_rel_err:.1e}'} | "
            f"{fmt_ratio(r.ratio)} | {r.runs or '—'} | "
            f"{'—' if r.prepare_s is None else f'{r.prepare_s:.1f}'} | {_cell(r.error or r.note)} |")
    return "\n".join(lines)


def fmt_ratio(v: float | None) -> str:
    """Two decimals, or two significant digits for a ratio below 0.1 (0.0042, not 0.00)."""
    return "—" if v is None else f"{v:.2f}" if v >= 0.1 else f"{v:.2g}"


def geomean(values: Sequence[float]) -> float | None:
    vals = [v for v in values if v and v > 0]
    return math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals else None


def ratio_summary(rows: Sequence[Row], peer: str, workloads: Sequence[str]) -> str:
    """'geomean ort/kiln over N models: X' over the workloads where both ran."""
    ratios = [r.ratio for r in rows if r.peer == peer and r.workload in workloads and r.ratio]
    g = geomean(ratios)
    if g is None:
        return f"{peer}/kiln: no workload where both ran"
    verdict = "Kiln faster" if g > 1 else "Kiln slower"
    if len(workloads) == 1:
        return f"{peer}/kiln on {workloads[0]}: {fmt_ratio(g)} ({verdict})"
    return f"{peer}/kiln geometric mean over {len(ratios)} of {len(workloads)} workloads: {fmt_ratio(g)} ({verdict})"


def roofline_summary(rows: Sequence[Row], workload: Workload, threads: int = THREADS) -> str | None:
    """Kiln's rate on the model's multiply-adds as a share of this machine's peak, measured
    now on the same threads (``kiln.roofline``); None without a count or a Kiln time."""
    from kiln.roofline import arithmetic, host_peak

    kiln = next((r for r in rows if r.peer == "kiln" and r.ok and r.gflops), None)
    if kiln is None:
        return None
    kind = arithmetic(workload.model())
    unit = "GOP/s" if kind == "int8" else "GFLOP/s"
    rate = f"kiln: {kiln.gflops:.1f} {unit} on the convolutions and matrix products"
    try:
        peak = host_peak(threads)
    except KilnError as e:  # no FMA: nothing measured to compare with
        return f"{rate}; {e}"
    roof = peak.roof(integer=kind == "int8")
    if roof is None:
        return f"{rate}; this CPU has no int8 dot-product instructions, so no int8 peak"
    return f"{rate}, {100 * kiln.gflops / roof:.0f} % of this machine's {kind} peak ({roof:.1f} {unit}, " \
           f"{threads} threads, measured now)"


def log_stderr(text: str) -> None:
    """A benchmark script's progress line: on stderr, so that stdout is its table alone."""
    print(text, file=sys.stderr, flush=True)


def starting_load(log: Callable[[str], None] = log_stderr) -> float | None:
    """The load average as a benchmark run starts; a warning goes to ``log`` when the machine
    is busy."""
    warning = load_warning()
    if warning:
        log(warning)
    return load_average()


def report_header(title: str, script: str, what: str, loads, machine_note: str = "") -> list[str]:
    """A benchmark report's first lines: its title, the script that wrote it (``what``: where
    the script explains itself), the date, the machine and the load before and after."""
    import datetime

    return [f"# {title}", "", f"Generated by `{script}` ({what}).", "",
            f"- Date: {datetime.date.today().isoformat()}",
            f"- Machine: {machine()}" + (f"; {machine_note}" if machine_note else ""),
            "- Load average (1 min) at the start and end: "
            + " and ".join("unknown" if v is None else f"{v:.2f}" for v in loads)]


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def load_warning(limit: float = 1.0) -> str | None:
    """A warning when other processes are busy: with 2 threads on 2 cores, an OpenMP barrier
    then waits for a descheduled thread, and times jump in steps of the scheduler tick."""
    load = load_average()
    if load is None or load <= limit:
        return None
    return f"warning: load average {load:.2f}: other processes are running; timings will be noisy"


def machine() -> str:
    """CPU model name, logical CPU count and vector ISA (from lscpu, else /proc/cpuinfo)."""
    fields = _lscpu()
    name = fields.get("model name", "unknown CPU")
    cpus = fields.get("cpu(s)", str(os.cpu_count()))
    flags = fields.get("flags", "").split()
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_int8") if f in flags]
    return f"{name}, {cpus} logical CPUs, {' '.join(isa) or 'no AVX2'}"


def _lscpu() -> dict[str, str]:
    import subprocess

    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        with open("/proc/cpuinfo") as f:  # its first processor has the same keys
            text = f.read().split("\n\n")[0]
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out.setdefault(key.strip().lower(), value.strip())
    return out
