"""Quantization tooling: post-training quantization to QDQ ONNX (``ptq``), calibration
data handling (``calibration``) and the per-layer error report (``report``).

The integer kernels themselves are graph ops (``kiln/ir/ops/qlinear.py``) made by the
``quantize`` pass (``kiln/passes/quantize.py``).
"""
from kiln.quantization.ptq import quantize

__all__ = ["quantize"]
