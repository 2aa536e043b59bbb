"""Calibration data: read, check against the model's inputs, split into samples.

A calibration set is a mapping (or an ``.npz`` file) from each model input name to an
array holding one or more samples of that input:

- exactly the input's shape: one sample;
- the input's shape with a leading sample axis, ``(S, *shape)``: S samples;
- for an input whose batch dim is 1 or symbolic, ``(S, *shape[1:])``: S samples along the
  batch axis (a stack of images, as a data loader gives them).

Anything else -- a missing or unknown name, a wrong rank, dim or dtype -- is rejected
with the expected names and shapes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import onnx

from kiln.errors import QuantizationError

_ONNX_NP = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64,
            onnx.TensorProto.FLOAT16: np.float16, onnx.TensorProto.INT64: np.int64,
            onnx.TensorProto.INT32: np.int32, onnx.TensorProto.UINT8: np.uint8, onnx.TensorProto.INT8: np.int8}


def model_inputs(model: onnx.ModelProto) -> dict[str, tuple[tuple, np.dtype]]:
    """Graph inputs that are not initializers: name -> (shape with None for a free dim, dtype)."""
    inits = {i.name for i in model.graph.initializer}
    out = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        t = vi.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
        out[vi.name] = (shape, np.dtype(_ONNX_NP.get(t.elem_type, np.float32)))
    return out


def _describe(inputs) -> str:
    return ", ".join(f"{n}: {dt.name}[{', '.join('?' if d is None else str(d) for d in s)}]"
                     for n, (s, dt) in inputs.items())


def _fits(shape, want) -> bool:
    return len(shape) == len(want) and all(w is None or w == s for s, w in zip(shape, want))


def _samples(name: str, a: np.ndarray, want: tuple, inputs) -> list[np.ndarray]:
    if _fits(a.shape, want):
        if want and want[0] is None:  # a free batch dim: the whole array is one batch
            return [a]
        return [a]
    if a.ndim == len(want) + 1 and _fits(a.shape[1:], want):
        return [a[i] for i in range(a.shape[0])]
    if want and (want[0] in (1, None)) and a.ndim == len(want) and _fits(a.shape[1:], want[1:]):
        return [a[i:i + 1] for i in range(a.shape[0])]
    raise QuantizationError(
        f"calibration array {name!r} has shape {tuple(a.shape)}, which is neither the input's shape, "
        f"nor that shape with a leading sample axis; expected inputs {_describe(inputs)}")


def load_calibration(data, model: onnx.ModelProto) -> list[dict[str, np.ndarray]]:
    """The calibration samples, one feed dict each, checked against ``model``'s inputs."""
    if isinstance(data, (str, Path)):
        try:
            with np.load(data) as f:
                data = {k: f[k] for k in f.files}
        except (OSError, ValueError) as e:
            raise QuantizationError(f"cannot read calibration data {data}: {e}; expected an .npz file "
                                    "with one array per model input") from None
    if not isinstance(data, Mapping):
        raise QuantizationError(f"calibration data must be a dict of input name -> array or an .npz path; "
                                f"got {type(data).__name__}")
    inputs = model_inputs(model)
    missing, unknown = [n for n in inputs if n not in data], sorted(set(data) - set(inputs))
    if missing or unknown:
        raise QuantizationError(f"calibration data names do not match the model: missing {missing}, "
                                f"unexpected {unknown}; expected inputs {_describe(inputs)}")
    per_input = {}
    for name, (shape, dtype) in inputs.items():
        a = np.asarray(data[name])
        if a.dtype != dtype:
            if a.dtype.kind != dtype.kind:
                raise QuantizationError(f"calibration array {name!r} has dtype {a.dtype}; expected {dtype} "
                                        f"(inputs {_describe(inputs)})")
            a = a.astype(dtype)
        per_input[name] = _samples(name, a, shape, inputs)
    counts = {n: len(s) for n, s in per_input.items()}
    if len(set(counts.values())) != 1:
        raise QuantizationError(f"calibration inputs hold different numbers of samples: {counts}")
    n = next(iter(counts.values()), 0)
    if n == 0:
        raise QuantizationError("calibration data holds no samples")
    return [{k: v[i] for k, v in per_input.items()} for i in range(n)]
