"""Quantization tooling: post-training quantization to QDQ ONNX (``ptq``), calibration
data handling (``calibration``), weight-only packing (``weight_only``) and the per-layer
error report (``report``).

The integer kernels themselves are graph ops (``kiln/ir/ops/qlinear.py``) made by the
``quantize`` pass (``kiln/passes/quantize.py``).
"""


def quantize(model, calibration, output=None, **options):
    """Post-training int8 quantization to a QDQ ONNX model; see ``kiln.quantization.ptq.quantize``."""
    from kiln.quantization.ptq import quantize as _quantize

    return _quantize(model, calibration, output, **options)


def quantize_weights(model, bits: int = 4, group_size: int = 32, **options):
    """Weight-only int4/int8 MatMul/Gemm (MatMulNBits); see ``kiln.quantization.weight_only``."""
    from kiln.quantization.weight_only import quantize_weights as _qw

    return _qw(model, bits, group_size, **options)


__all__ = ["quantize", "quantize_weights"]
