"""How close a run comes to the machine: a model's multiply-adds and the host's measured peak.

Two numbers make a roofline's compute roof:

- ``model_flops(model)``: the work an ONNX model asks for, counted the way papers and other
  tools count it: 2 operations per multiply-add of every convolution and matrix product
  (``Conv``, ``ConvTranspose``, ``MatMul``, ``Gemm`` and their integer forms ``ConvInteger``,
  ``QLinearConv``, ``MatMulInteger``, ``QLinearMatMul``). Everything else (activations,
  normalizations, softmax, data movement) is left out: it is a few percent of the
  arithmetic of the models this is for, and has no single fair count. An algorithm that
  does fewer multiplications (Winograd) is credited with the direct count, so its
  throughput can exceed the peak: it is an *effective* rate, as cuDNN and MLPerf report it.
- ``host_peak(threads)``: multiply-adds per second the host's cores really sustain, measured
  by a small C program built with the host toolchain (``codegen/templates/peak.c.j2``):
  independent chains of the widest fp32 FMA, and of int8 dot products (AVX-512 VNNI) where
  the CPU has them. Measured, not computed from a clock: a VM's clock and turbo state are
  unknown, and its neighbours share the cores.

``fraction = (flops / seconds) / peak`` then says how much of the hardware a run used; a
peer's fraction next to Kiln's says how much faster either could possibly get.
"""
from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass

import numpy as np

# convolution -> the index of its weight input; matrix products read K off their first input
_CONVS = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3, "ConvTranspose": 1}
_MATMULS = {"MatMul", "MatMulInteger", "QLinearMatMul", "Gemm"}


def model_flops(model) -> float | None:
    """2 x the multiply-adds of the model's convolutions and matrix products, from ONNX's
    shape inference; None when a shape they need is not static (a symbolic batch)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = _static_shapes(inferred.graph)
    macs = 0
    for node in inferred.graph.node:
        if node.op_type in _CONVS or node.op_type in _MATMULS:
            n = _node_macs(node, shapes)
            if n is None:
                return None
            macs += n
    return 2.0 * macs


# ops whose presence means the model's arithmetic is integer: activations quantized by the
# model itself (a DequantizeLinear on constant weights alone is weight-only: float arithmetic)
_INTEGER_OPS = {"QuantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
                "MatMulInteger"}


def arithmetic(model) -> str:
    """``"int8"`` for a model that quantizes its activations (QDQ, QLinear*, *Integer ops),
    else ``"fp32"``: which of the two peaks its multiply-adds are measured against."""
    return "int8" if any(n.op_type in _INTEGER_OPS for n in model.graph.node) else "fp32"


def _static_shapes(graph) -> dict[str, tuple[int, ...] | None]:
    """Every value's shape as ints; None for a value whose shape has a symbolic dim."""
    out: dict[str, tuple[int, ...] | None] = {t.name: tuple(t.dims) for t in graph.initializer}
    for v in list(graph.input) + list(graph.value_info) + list(graph.output):
        if v.name in out or not v.type.HasField("tensor_type") or not v.type.tensor_type.HasField("shape"):
            continue
        dims = v.type.tensor_type.shape.dim
        out[v.name] = tuple(d.dim_value for d in dims) if all(d.HasField("dim_value") for d in dims) else None
    return out


def _node_macs(node, shapes) -> int | None:
    def shape(i: int) -> tuple[int, ...] | None:
        return shapes.get(node.input[i]) if i < len(node.input) else None

    y = shapes.get(node.output[0])
    if node.op_type in _CONVS:
        x, w = shape(0), shape(_CONVS[node.op_type])
        if w is None or (x if node.op_type == "ConvTranspose" else y) is None:
            return None
        if node.op_type == "ConvTranspose":  # each input element feeds (M/group) x kernel outputs
            return int(np.prod(x)) * int(np.prod(w[1:]))
        return int(np.prod(y)) * int(np.prod(w[1:]))  # (C/group) x kernel products per output
    a = shape(0)
    if a is None or y is None:
        return None
    trans_a = node.op_type == "Gemm" and any(at.name == "transA" and at.i for at in node.attribute)
    k = a[0] if trans_a else a[-1]
    return int(np.prod(y)) * int(k)


@dataclass(frozen=True)
class Peak:
    """The host's sustained rates on ``threads`` threads: fp32 FLOP/s (2 per FMA lane) and
    int8 operations/s (2 per multiply-add of a VNNI dot product; None without VNNI)."""

    threads: int
    fp32_gflops: float
    int8_gops: float | None

    def best(self, other: "Peak") -> "Peak":
        """The higher of two measurements of each rate: on a shared machine a neighbour only
        ever slows a measurement down, so the best one is the closest to the hardware."""
        int8 = [v for v in (self.int8_gops, other.int8_gops) if v is not None]
        return Peak(self.threads, max(self.fp32_gflops, other.fp32_gflops), max(int8) if int8 else None)

    def roof(self, integer: bool = False) -> float | None:
        """The rate (G operations/s) that int8 or fp32 arithmetic is measured against."""
        return self.int8_gops if integer else self.fp32_gflops

    def fraction(self, flops: float, seconds: float, integer: bool = False) -> float | None:
        """The share of the peak a run of ``flops`` in ``seconds`` used."""
        roof = self.roof(integer)
        if not roof or seconds <= 0:
            return None
        return flops / seconds / 1e9 / roof


def host_peak(threads: int, seconds: float = 0.2, repeats: int = 3) -> Peak:
    """Measure the peak (best of ``repeats`` runs of about ``seconds`` each). Raises
    ``ToolchainError`` without a C compiler, ``KilnError`` on a CPU with no FMA."""
    from kiln.errors import KilnError

    lib = _peak_library()
    fp32 = _best_rate(lib.kiln_peak_fp32, ctypes.c_float, threads, seconds, repeats)
    if not fp32:
        raise KilnError("host_peak: this CPU has neither AVX-512 nor FMA; its peak is not measured")
    int8 = _best_rate(lib.kiln_peak_int8, ctypes.c_int32, threads, seconds, repeats)
    return Peak(threads, fp32 / 1e9, 2 * int8 / 1e9 if int8 else None)


@functools.lru_cache(maxsize=1)
def _peak_library() -> ctypes.CDLL:
    from kiln.codegen.templates import render
    from kiln.targets.host import build_shared_library

    return ctypes.CDLL(str(build_shared_library({"peak.c": render("peak.c.j2", chains=16)}, main="peak.c")))


def _best_rate(fn, sink_type, threads: int, seconds: float, repeats: int) -> float:
    """Operations per second: a short run sizes the loop to ``seconds``, then the best of
    ``repeats`` (the least disturbed by other processes)."""
    fn.restype = ctypes.c_double
    fn.argtypes = [ctypes.c_int64, ctypes.c_int, ctypes.POINTER(ctypes.c_double), ctypes.POINTER(sink_type)]
    ops, sink = ctypes.c_double(), sink_type()
    steps = 1 << 16
    spent = fn(steps, threads, ctypes.byref(ops), ctypes.byref(sink))
    if ops.value == 0:
        return 0.0
    steps = max(steps, int(steps * seconds / max(spent, 1e-6)))
    best = 0.0
    for _ in range(repeats):
        spent = fn(steps, threads, ctypes.byref(ops), ctypes.byref(sink))
        best = max(best, ops.value / spent)
    return best


__all__ = ["Peak", "arithmetic", "host_peak", "model_flops"]
