"""Activations that exporters write out op by op, recognized as the one op they compute.

GELU reaches Kiln three ways: ONNX's ``Gelu`` (opset 20), torch's ``aten.gelu``, and -- from
older exporters and hand-written models (GPT-2's ``0.5 * x * (1 + tanh(...))``, torch.onnx's
``nn.GELU``) -- as a chain of Mul, Add, Pow, Tanh or Erf nodes. The rule here turns that
chain into ``gelu`` (``approximate="tanh"`` or ``"none"``), so that it computes the way the
op does: the tanh form as ``x * sigmoid(2u)`` (``kiln/ir/ops/elementwise.py``), one
exponential and no tanh, which took a GPT FFN's epilogue from 227 to 155 us per 393k values
on one core.

The match is by value, not by spelling: the product is flattened (any nesting and order of
``mul``), its constant factors must multiply to 1/2, and the constants inside must be
GELU's (sqrt(2/pi), 0.044715, 1/sqrt(2)) to float32 precision. Anything else is left alone.
"""
from __future__ import annotations

import math

import numpy as np

from kiln.passes.rewrite import Any, Match, Op, Rewriter, Rule

# float32 spellings of the constants differ from the float64 values in the 8th digit
_RTOL = 1e-6


def _close(value: float, want: float) -> bool:
    return abs(value - want) <= _RTOL * abs(want)


def _scalar(rw: Rewriter, name: str) -> float | None:
    """The constant ``name`` as a float when it is one number (any rank), else None."""
    a = rw.constants.get(name)
    if a is None or a.size != 1 or a.dtype.kind != "f":
        return None
    return float(np.asarray(a).reshape(()))


def _factors(rw: Rewriter, name: str, depth: int = 8) -> tuple[float, list[str]]:
    """``name`` as (product of its constant factors, its other factors), through nested
    ``mul`` nodes and ``pow(x, 2|3)``, and a ``div`` by a constant."""
    c = _scalar(rw, name)
    if c is not None:
        return c, []
    node = rw.producers.get(name)
    if depth == 0 or node is None or len(node.outputs) != 1:
        return 1.0, [name]
    if node.op == "mul" and len(node.inputs) == 2:
        ca, fa = _factors(rw, node.inputs[0], depth - 1)
        cb, fb = _factors(rw, node.inputs[1], depth - 1)
        return ca * cb, fa + fb
    if node.op == "div" and len(node.inputs) == 2:
        d = _scalar(rw, node.inputs[1])
        if d is not None and d != 0.0:
            ca, fa = _factors(rw, node.inputs[0], depth - 1)
            return ca / d, fa
    if node.op == "pow" and len(node.inputs) == 2:
        p = _scalar(rw, node.inputs[1])
        if p in (2.0, 3.0):
            return 1.0, [node.inputs[0]] * int(p)
    return 1.0, [name]


def _plus_one(rw: Rewriter, name: str) -> str | None:
    """``t`` when ``name`` is ``t + 1`` or ``1 + t``."""
    node = rw.producers.get(name)
    if node is None or node.op != "add" or len(node.inputs) != 2:
        return None
    a, b = node.inputs
    if _scalar(rw, b) == 1.0:
        return a
    if _scalar(rw, a) == 1.0:
        return b
    return None


def _is_tanh_argument(rw: Rewriter, name: str, x: str) -> bool:
    """``name`` is sqrt(2/pi) * (x + 0.044715 * x^3), in any arrangement of the products."""
    k, rest = _factors(rw, name)
    if not _close(k, math.sqrt(2.0 / math.pi)) or len(rest) != 1:
        return False
    node = rw.producers.get(rest[0])
    if node is None or node.op != "add" or len(node.inputs) != 2:
        return False
    for lone, cubic in (node.inputs, node.inputs[::-1]):
        c, xs = _factors(rw, cubic)
        if lone == x and _close(c, 0.044715) and xs == [x, x, x]:
            return True
    return False


def _is_erf_argument(rw: Rewriter, name: str, x: str) -> bool:
    """``name`` is x / sqrt(2) (or x * 0.7071...)."""
    k, rest = _factors(rw, name)
    return rest == [x] and _close(k, 1.0 / math.sqrt(2.0))


def _gelu(m: Match, rw: Rewriter) -> str | None:
    """0.5 * x * (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) -> gelu(x, tanh);
    0.5 * x * (1 + erf(x / sqrt(2))) -> gelu(x)."""
    half, factors = _factors(rw, m.root.outputs[0].name)
    if not _close(half, 0.5) or len(factors) != 2:
        return None
    out = m.root.outputs[0].type
    for x, s in (factors, factors[::-1]):
        t = _plus_one(rw, s)
        node = rw.producers.get(t) if t else None
        if node is None or rw.type(x) != out or not out.dtype.is_float:
            continue
        if node.op == "tanh" and _is_tanh_argument(rw, node.inputs[0], x):
            return rw.emit("gelu", [x], {"approximate": "tanh"})
        if node.op == "erf" and _is_erf_argument(rw, node.inputs[0], x):
            return rw.emit("gelu", [x], {"approximate": "none"})
    return None


RULES: list[Rule] = [
    (Op("mul", Any("a"), Any("b")), _gelu),
]
