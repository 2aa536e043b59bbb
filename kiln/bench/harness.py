"""Timing Kiln against its peers: one workload, every peer, interleaved in one process.

The core of ``benchmarks/suite.py`` and ``kiln bench``. A :class:`Workload` is an ONNX model
with fixed inputs and, optionally, a torch definition with the same weights and a numpy
definition. A peer (:mod:`kiln.bench.peers`) turns a workload into a zero-argument ``run()``;
:func:`bench_workload` warms every peer up, then times R rounds in which each peer runs once
in a shuffled order, so that a change in machine load hits every peer alike. Each
:class:`Row` holds the median, the p10-p90 spread, GFLOP/s where the FLOP count is known, the
largest relative error against ONNX Runtime, and the time ratio to Kiln. A peer that is
missing or fails records why in its row; it never stops the run.
"""
from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from kiln.bench.peers import NotApplicable, PeerSkipped, ort_session
from kiln.errors import InputError, KilnError, ShapeError


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

