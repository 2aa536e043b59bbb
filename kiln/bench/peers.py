"""The peers Kiln is timed against: Kiln itself, ONNX Runtime, PyTorch eager, untuned Apache TVM
and numpy. Each turns a :class:`~kiln.bench.harness.Workload` into a zero-argument ``run()``.

Threads: every peer gets ``THREADS`` (2) threads. Kiln's OpenMP runtime and TVM's thread
pool read their variables when they first load (below, unless already set); OpenBLAS reads
its own when numpy loads, so benchmarks/suite.py sets those before importing anything.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

THREADS = 2
for _var in ("OMP_NUM_THREADS", "TVM_NUM_THREADS"):
    os.environ.setdefault(_var, str(THREADS))

import numpy as np  # noqa: E402

from kiln.errors import KilnError  # noqa: E402

if TYPE_CHECKING:
    from kiln.bench.harness import Workload

PEERS = ("kiln", "ort", "torch", "tvm", "numpy")


class PeerSkipped(KilnError):
    """A peer cannot run a workload for a known reason (not installed, no torch definition)."""


class NotApplicable(KilnError):
    """A peer has nothing to time for this workload (numpy outside GEMM): no row at all."""


class Peer(Protocol):
    name: str

    def version(self) -> str: ...

    def prepare(self, workload: Workload) -> Callable[[], Any]:
        """Build what is needed (outside the timing) and return ``run()`` returning outputs.
        Raises PeerSkipped or NotApplicable when the peer cannot or need not run."""


def dist_version(dist: str) -> str | None:
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
        v = dist_version("onnxruntime")
        spin = "spinning" if ORT_SPINNING else "no spinning"
        return f"onnxruntime {v} (intra_op {THREADS}, inter_op 1, ORT_ENABLE_ALL, {spin})" if v \
            else "onnxruntime: not installed"

    def prepare(self, workload):
        if dist_version("onnxruntime") is None:
            raise PeerSkipped("not installed (pip install onnxruntime)")
        sess = ort_session(workload.model())
        feeds, names = workload.feeds(), workload.output_names()
        return lambda: sess.run(names, feeds)


class TorchPeer:
    name = "torch"

    def version(self) -> str:
        v = dist_version("torch")
        return f"torch {v} (eager, inference_mode, {THREADS} threads)" if v else "torch: not installed"

    def prepare(self, workload):
        if dist_version("torch") is None:
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
        v = dist_version("apache-tvm")
        if v is None:
            return "apache-tvm: not installed"
        return (f"apache-tvm {v} with apache-tvm-ffi {dist_version('apache-tvm-ffi')} (Relax default "
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

