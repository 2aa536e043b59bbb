"""Timing Kiln against its peers (``benchmarks/suite.py``, ``kiln bench``).

- :mod:`kiln.bench.peers`: the peers (Kiln, ONNX Runtime, torch, TVM, numpy) and their threads;
- :mod:`kiln.bench.harness`: workloads, interleaved timing, output checks, rows;
- :mod:`kiln.bench.report`: markdown tables, ratio summaries, the machine and its load.

``peers`` is imported first: it sets ``OMP_NUM_THREADS`` and ``TVM_NUM_THREADS`` (unless set)
before numpy, Kiln's OpenMP runtime or TVM load and read them.
"""
from kiln.bench.peers import (  # noqa: I001  (first: the thread variables)
    PEER_CLASSES, PEERS, THREADS, KilnPeer, NotApplicable, NumpyPeer, OrtPeer, Peer, PeerSkipped,
    TorchPeer, TvmPeer, dist_version, make_peers, ort_session, tvm_target)
from kiln.bench.harness import (
    Options, Row, Workload, as_arrays, bench_workload, describe, join_notes, max_rel_err,
    onnx_workload, random_inputs, reference, set_ratios)
from kiln.bench.report import (
    fmt_ms, fmt_ratio, geomean, load_average, load_warning, log_stderr, machine, markdown_table,
    md_cell, ratio_summary, report_header, roofline_summary, starting_load)
from kiln.errors import KilnError

__all__ = [
    "PEER_CLASSES", "PEERS", "THREADS", "KilnPeer", "NotApplicable", "NumpyPeer", "OrtPeer", "Peer",
    "PeerSkipped", "TorchPeer", "TvmPeer", "dist_version", "make_peers", "ort_session", "tvm_target",
    "Options", "Row", "Workload", "as_arrays", "bench_workload", "describe", "join_notes",
    "max_rel_err", "onnx_workload", "random_inputs", "reference", "set_ratios",
    "fmt_ms", "fmt_ratio", "geomean", "load_average", "load_warning", "log_stderr", "machine",
    "markdown_table", "md_cell", "ratio_summary", "report_header", "roofline_summary",
    "starting_load", "KilnError",
]
