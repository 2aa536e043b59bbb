"""A numpy interpreter for tensor-IR stages.

It gives compute definitions a meaning independent of any code generator: constant
folding evaluates graph nodes with it, and tests use it as a second oracle. Variables
become broadcast index grids; a Reduce adds trailing dimensions and reduces them; an
Iterate refines every element's state at once, ``count`` times.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from kiln.errors import VerificationError
from kiln.ir.compute import Stage, reduce_init
from kiln.ir.dtype import DType
from kiln.ir.expr import Bin, Cast, Const, Expr, Iterate, Load, Reduce, Select, Un, Var

try:  # scipy is optional; erf falls back to math.erf per element
    from scipy.special import erf as _erf
except ImportError:  # pragma: no cover
    _erf = np.vectorize(math.erf, otypes=[np.float64])


def _round_half_even(x):
    return np.round(x)


_UNARY = {
    "neg": np.negative, "exp": np.exp, "log": np.log, "sqrt": np.sqrt, "abs": np.abs,
    "tanh": np.tanh, "floor": np.floor, "ceil": np.ceil, "round": _round_half_even,
    "sin": np.sin, "cos": np.cos, "tan": np.tan, "asin": np.arcsin, "acos": np.arccos,
    "atan": np.arctan, "sinh": np.sinh, "cosh": np.cosh, "asinh": np.arcsinh,
    "acosh": np.arccosh, "atanh": np.arctanh, "not": np.logical_not, "isnan": np.isnan,
    "isinf": np.isinf, "sign": np.sign, "reciprocal": lambda x: 1 / x,
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)), "softplus": lambda x: np.log1p(np.exp(x)),
    "erf": lambda x: _erf(x), "expm1": np.expm1, "exp_nonpos": np.exp,
}


def _div(a, b):
    if np.issubdtype(np.result_type(a, b), np.integer):
        q = np.abs(a) // np.maximum(np.abs(b), 1)
        return np.where((a < 0) != (b < 0), -q, q)
    return a / b


_BINARY = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": _div,
    "floordiv": np.floor_divide, "mod": np.mod, "fmod": np.fmod, "pow": np.power,
    "min": np.minimum, "max": np.maximum, "lt": np.less, "le": np.less_equal,
    "gt": np.greater, "ge": np.greater_equal, "eq": np.equal, "ne": np.not_equal,
    "and": np.logical_and, "or": np.logical_or, "xor": np.logical_xor,
    "bitand": np.bitwise_and, "bitor": np.bitwise_or, "shl": np.left_shift, "shr": np.right_shift,
}

_REDUCE = {"sum": np.sum, "prod": np.prod, "max": np.max, "min": np.min}


def evaluate(e: Expr, env: Mapping[str, np.ndarray], buffers: Mapping[str, np.ndarray], ndim: int):
    """Value of ``e`` as an array broadcastable to ``ndim`` dimensions."""
    if isinstance(e, Const):
        return np.asarray(e.value, dtype=e.dtype.np)
    if isinstance(e, Var):
        return env[e.name]
    if isinstance(e, Bin):
        a, b = evaluate(e.a, env, buffers, ndim), evaluate(e.b, env, buffers, ndim)
        with np.errstate(all="ignore"):
            r = _BINARY[e.op](a, b)
        return np.asarray(r).astype(e.dtype.np, copy=False)
    if isinstance(e, Un) and e.op == "bitcast":  # the same bits as another type of the same width
        a = np.ascontiguousarray(np.asarray(evaluate(e.a, env, buffers, ndim)).astype(e.a.dtype.np, copy=False))
        return a.view(e.dtype.np)
    if isinstance(e, Un):
        with np.errstate(all="ignore"):
            r = _UNARY[e.op](evaluate(e.a, env, buffers, ndim))
        return np.asarray(r).astype(e.dtype.np, copy=False)
    if isinstance(e, Select):
        c = evaluate(e.cond, env, buffers, ndim)
        return np.where(c, evaluate(e.a, env, buffers, ndim), evaluate(e.b, env, buffers, ndim))
    if isinstance(e, Cast):
        with np.errstate(all="ignore"):
            v = np.asarray(evaluate(e.a, env, buffers, ndim))
            if e.dtype is DType.float8_e8m0fnu:  # ONNX's rounding ("up", saturating), not ml_dtypes'
                from onnx.numpy_helper import to_float8e8m0

                return to_float8e8m0(v.astype(np.float32))
            return v.astype(e.dtype.np)
    if isinstance(e, Load):
        buf = buffers[e.buffer]
        if buf.ndim != len(e.indices):
            raise VerificationError(f"load of {e.buffer} with {len(e.indices)} indices, rank {buf.ndim}")
        ix = []
        for i, n in zip(e.indices, buf.shape):
            v = np.asarray(evaluate(i, env, buffers, ndim)).astype(np.int64)
            # Out-of-range lanes only occur on branches a Select discards: clamp them.
            ix.append(np.clip(v, 0, max(n - 1, 0)))
        if buf.ndim == 0:
            return buf[()]
        ix = [np.reshape(v, (1,) * (ndim - v.ndim) + v.shape) if v.ndim < ndim else v for v in ix]
        return buf[tuple(ix)]
    if isinstance(e, Reduce):
        m = len(e.axes)
        inner = {k: _expand(v, ndim, m) for k, v in env.items()}
        for j, (var, n) in enumerate(e.axes):
            shape = [1] * (ndim + m)
            shape[ndim + j] = n
            inner[var.name] = np.arange(n, dtype=np.int64).reshape(shape)
        body = np.asarray(evaluate(e.body, inner, buffers, ndim + m))
        body = np.broadcast_to(body, body.shape[:0] + _full_shape(body, ndim + m))
        axes = tuple(range(ndim, ndim + m))
        if any(n == 0 for _, n in e.axes):
            return np.asarray(reduce_init(e.op, e.dtype), dtype=e.dtype.np)
        return _REDUCE[e.op](body, axis=axes).astype(e.dtype.np)
    if isinstance(e, Iterate):
        state = np.asarray(evaluate(e.init, env, buffers, ndim)).astype(e.dtype.np, copy=False)
        for _ in range(e.count):
            now = {**env, e.state.name: state}
            state = np.asarray(evaluate(e.step, now, buffers, ndim)).astype(e.dtype.np, copy=False)
        return state
    raise VerificationError(f"cannot evaluate {type(e).__name__}")


def _expand(v, ndim, m):
    v = np.asarray(v)
    v = v.reshape((1,) * (ndim - v.ndim) + v.shape)
    return v.reshape(v.shape + (1,) * m)


def _full_shape(a, ndim):
    return (1,) * (ndim - a.ndim) + a.shape


def run_stages(stages: Sequence[Stage], buffers: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Evaluate stages in order; returns every stage's tensor by name."""
    bufs = dict(buffers)
    for st in stages:
        nd = len(st.shape)
        env = {}
        for k, (ax, n) in enumerate(zip(st.axes, st.shape)):
            shape = [1] * nd
            shape[k] = n
            env[ax.name] = np.arange(n, dtype=np.int64).reshape(shape)
        val = np.asarray(evaluate(st.body, env, bufs, nd))
        val = np.broadcast_to(val.reshape((1,) * (nd - val.ndim) + val.shape), st.shape)
        if "store_offset" in st.hints:  # a region write (insert_slice): the box of a larger tensor
            base = st.hints.get("store_base")
            full = (np.array(bufs[base], dtype=st.dtype.np) if base
                    else np.zeros(st.hints["store_shape"], dtype=st.dtype.np))
            full[tuple(slice(a, a + n) for a, n in zip(st.hints["store_offset"], st.shape))] = val
            bufs[st.name] = full
            continue
        bufs[st.name] = np.array(val, dtype=st.dtype.np, order="C")
    return bufs


def dtype_of(arr: np.ndarray) -> DType:
    return DType.of(arr.dtype)


def run_graph(graph, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Evaluate a whole graph with the numpy interpreter (a reference for tests)."""
    from kiln.ir import ops
    from kiln.ir.compute import Tensor

    values = dict(graph.constants)
    values.update({k: np.asarray(v) for k, v in inputs.items()})
    for node in graph.nodes:
        opdef = ops.get(node.op)
        ins = [values[n] for n in node.inputs if n]
        if opdef.fusion == ops.FusionKind.VIEW:
            values[node.outputs[0].name] = np.ascontiguousarray(ins[0]).reshape(node.outputs[0].type.shape)
            continue
        in_t = [Tensor(f"in{i}", tuple(a.shape), DType.of(a.dtype)) for i, a in enumerate(ins)]
        out_t = [Tensor(o.name, tuple(o.type.shape), o.type.dtype) for o in node.outputs]
        bufs = run_stages(opdef.compute(in_t, out_t, node.attrs), {t.name: a for t, a in zip(in_t, ins)})
        for t in out_t:
            values[t.name] = bufs[t.name]
    return {v.name: values[v.name] for v in graph.outputs}
