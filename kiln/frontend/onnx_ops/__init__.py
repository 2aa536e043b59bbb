"""ONNX converters, registered per (op type, first opset version) and split by family.

A converter receives a ``ConvertContext`` (see ``kiln.frontend.onnx``) and the ONNX node,
and returns the kiln value names of the node's outputs. ``lookup`` picks the converter
with the highest ``since`` not above the model's opset, as ONNX versions operators.
"""
from __future__ import annotations

from typing import Callable

CONVERTERS: dict[tuple[str, str], list[tuple[int, Callable]]] = {}


def converter(op_type: str, since: int = 1, domain: str = ""):
    def deco(fn):
        CONVERTERS.setdefault((domain, op_type), []).append((since, fn))
        CONVERTERS[(domain, op_type)].sort(key=lambda t: t[0])
        return fn
    return deco


def lookup(op_type: str, domain: str, opset: int) -> Callable | None:
    domain = "" if domain == "ai.onnx" else domain
    best = None
    for since, fn in CONVERTERS.get((domain, op_type), []):
        if since <= opset:
            best = fn
    return best


from kiln.frontend.onnx_ops import (  # noqa: E402,F401
    attention, deform, elementwise, flex_attention, linear_attention, math, ml, ml_encoders, ml_svm, nn, norm,
    normalize, pool, quant, recurrent, reduce, resize, sample, scatter, shape, signal, tfidf, trees,
    weight_only)
