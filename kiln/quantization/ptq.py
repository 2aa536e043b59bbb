"""Post-training quantization: a float ONNX model + calibration data -> a QDQ ONNX model.

Calibration and QDQ insertion are ONNX Runtime's (``onnxruntime.quantization``), the
library that owns that job; Kiln chooses the scheme its integer kernels implement,
validates the inputs, and checks the result compiles to integer ops. The output is a
standard QDQ model: any runtime reads it, and ``kiln.compile`` turns its
DQ -> Conv/MatMul/Gemm/Add -> Q patterns into int8 kernels (``kiln/passes/quantize.py``).

Scheme (what the integer kernels implement):
- weights: int8, symmetric (zero point 0), per output channel by default;
- activations: int8 or uint8, asymmetric by default or symmetric;
- calibration: ``minmax`` or ``percentile`` (``percentile=99.99`` by default);
- ``skip``: node names or op types that stay float (sensitive layers).
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import onnx

from kiln.errors import QuantizationError
from kiln.quantization.calibration import load_calibration

ACTIVATION_TYPES = ("int8", "uint8")
WEIGHT_TYPES = ("int8",)
METHODS = ("minmax", "percentile")
# ops whose QDQ form Kiln runs as integer kernels, or passes through exactly
OP_TYPES = ("Conv", "MatMul", "Gemm", "Add", "Relu", "Clip", "MaxPool", "Reshape", "Transpose", "Flatten",
            "AveragePool", "GlobalAveragePool", "Softmax")


def _scheme_error(what: str, got, allowed) -> QuantizationError:
    return QuantizationError(f"unsupported quantization scheme: {what} {got!r}; Kiln's integer kernels "
                             f"implement {what} in {', '.join(map(str, allowed))} "
                             "(weights: int8 symmetric per channel or per tensor; activations: "
                             "int8/uint8, asymmetric or symmetric)")


def _load_model(model) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    try:
        return onnx.load(str(model))
    except Exception as e:  # noqa: BLE001  (onnx raises several types for a bad file)
        raise QuantizationError(f"cannot read the model {model}: {e}; expected an ONNX file") from None


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over a list of feed dicts."""

    def __init__(self, samples):
        self._it = iter(samples)

    def get_next(self):
        return next(self._it, None)


def _skip_nodes(model: onnx.ModelProto, skip: Iterable[str]) -> list[str]:
    skip = list(skip or ())
    names = {n.name for n in model.graph.node}
    types = {n.op_type for n in model.graph.node}
    unknown = [s for s in skip if s not in names and s not in types]
    if unknown:
        raise QuantizationError(f"skip list names {unknown}, which are neither node names nor op types of "
                                f"the model; node names: {sorted(names)[:20]}; op types: {sorted(types)}")
    return [n.name for n in model.graph.node if n.name in skip or n.op_type in skip]


def _preprocessed(model: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    """ONNX Runtime's recommended preparation: shape inference and its basic graph
    optimizations, which fold BatchNorm into the convolutions before they are quantized
    (a Conv -> BatchNorm pair would otherwise keep a float BatchNorm between int8 ops)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src = path.with_name("float.onnx")  # a file: given a ModelProto, ORT writes external data it cannot read back
    onnx.save(model, str(src))
    quant_pre_process(str(src), path, skip_symbolic_shape=True)
    return _named(onnx.load(str(path)))


def _named(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose nodes all have names (ORT's quantizer and the skip list need them)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    seen = set()
    for i, n in enumerate(model.graph.node):
        if not n.name or n.name in seen:
            n.name = f"{n.op_type}_{i}"
        seen.add(n.name)
    return model


def quantize(model, calibration, output=None, *, method: str = "minmax", percentile: float = 99.99,
             activations: str = "uint8", weights: str = "int8", symmetric_activations: bool = False,
             per_channel: bool = True, skip: Iterable[str] = ()) -> onnx.ModelProto:
    """Quantize a float ONNX model to a QDQ model with int8 weights; returns it (and writes
    ``output`` when given).

    ``calibration``: a dict of input name -> array (one or more samples) or an ``.npz`` path
    (see ``kiln.quantization.calibration``). ``skip``: node names or op types kept in float.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if method not in METHODS:
        raise _scheme_error("calibration method", method, METHODS)
    if activations not in ACTIVATION_TYPES:
        raise _scheme_error("activation type", activations, ACTIVATION_TYPES)
    if weights not in WEIGHT_TYPES:
        raise _scheme_error("weight type", weights, WEIGHT_TYPES)
    if not 0 < percentile <= 100:
        raise QuantizationError(f"percentile must be in (0, 100]; got {percentile}")
    model = _named(_load_model(model))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        raise QuantizationError(f"the model uses opset {opset}; per-channel QDQ needs opset >= 13 "
                                "(convert it with onnx.version_converter first)")
    samples = load_calibration(calibration, model)
    exclude = _skip_nodes(model, skip)
    qtype = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    extra = {"ActivationSymmetric": bool(symmetric_activations), "WeightSymmetric": True,
             "CalibPercentile": float(percentile)}
    with tempfile.TemporaryDirectory(prefix="kiln_ptq_") as tmp:
        out = Path(tmp, "quantized.onnx")
        model = _preprocessed(model, Path(tmp, "pre.onnx"))
        quantize_static(model, out, _Reader(samples), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(OP_TYPES), per_channel=per_channel,
                        activation_type=qtype[activations], weight_type=qtype[weights],
                        nodes_to_exclude=exclude,
                        calibrate_method=(CalibrationMethod.MinMax if method == "minmax"
                                          else CalibrationMethod.Percentile),
                        extra_options=extra)
        result = onnx.load(str(out))
    if output is not None:
        onnx.save(result, str(output))
    return result


def calibration_ranges(samples: list[Mapping[str, np.ndarray]]) -> dict[str, tuple[float, float]]:
    """Per-input (min, max) over the samples: what a min/max calibration sees at the inputs."""
    out: dict[str, tuple[float, float]] = {}
    for s in samples:
        for k, v in s.items():
            lo, hi = float(np.min(v)), float(np.max(v))
            a, b = out.get(k, (lo, hi))
            out[k] = (min(a, lo), max(b, hi))
    return out
