"""A scalar Python interpreter for loop IR.

Slow and exact: it executes a kernel statement by statement, so that tests can check
schedule primitives for semantic equivalence without a C compiler.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from kiln.errors import VerificationError
from kiln.ir.expr import Bin, Cast, Const, Expr, Load, Select, Un, Var
from kiln.ir.interp import _BINARY, _UNARY
from kiln.ir.loop import Alloc, For, Func, If, Seq, Stmt, Store


def run_func(func: Func, buffers: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Execute ``func`` on copies of ``buffers`` (every parameter must be given)."""
    bufs = {}
    for b in func.params:
        if b.name not in buffers:
            raise VerificationError(f"run_func: missing buffer {b.name!r}")
        bufs[b.name] = np.array(buffers[b.name], dtype=b.dtype.np).reshape(b.shape)
    _exec(func.body, {}, bufs)
    return bufs


def evaluate(e: Expr, env: Mapping[str, int]) -> int:
    """The value of an index expression (no tensor loads) with its variables bound by ``env``."""
    return _eval(e, env, {})


def _eval(e: Expr, env, bufs):
    if isinstance(e, Const):
        return e.dtype.np.type(e.value)
    if isinstance(e, Var):
        return env[e.name]
    if isinstance(e, Load):
        buf = bufs[e.buffer]
        ix = tuple(int(_eval(i, env, bufs)) for i in e.indices)
        if any(i < 0 or i >= n for i, n in zip(ix, buf.shape)):
            raise VerificationError(f"out-of-bounds load {e.buffer}{list(ix)} of shape {buf.shape}")
        return buf[ix]
    if isinstance(e, Bin):
        with np.errstate(all="ignore"):
            return e.dtype.np.type(_BINARY[e.op](_eval(e.a, env, bufs), _eval(e.b, env, bufs)))
    if isinstance(e, Un):
        with np.errstate(all="ignore"):
            return e.dtype.np.type(_UNARY[e.op](_eval(e.a, env, bufs)))
    if isinstance(e, Select):
        return _eval(e.a, env, bufs) if _eval(e.cond, env, bufs) else _eval(e.b, env, bufs)
    if isinstance(e, Cast):
        return e.dtype.np.type(_eval(e.a, env, bufs))
    raise VerificationError(f"run_func cannot evaluate {type(e).__name__}")


def _exec(s: Stmt, env, bufs):
    if isinstance(s, For):
        for i in range(s.extent):
            env[s.var.name] = np.int64(i)
            _exec(s.body, env, bufs)
        env.pop(s.var.name, None)
    elif isinstance(s, Seq):
        for x in s.stmts:
            _exec(x, env, bufs)
    elif isinstance(s, Store):
        buf = bufs[s.buffer]
        ix = tuple(int(_eval(i, env, bufs)) for i in s.indices)
        if any(i < 0 or i >= n for i, n in zip(ix, buf.shape)):
            raise VerificationError(f"out-of-bounds store {s.buffer}{list(ix)} of shape {buf.shape}")
        buf[ix] = _eval(s.value, env, bufs)
    elif isinstance(s, Alloc):
        bufs[s.buffer.name] = np.zeros(s.buffer.shape, dtype=s.buffer.dtype.np)
        _exec(s.body, env, bufs)
    elif isinstance(s, If):
        if _eval(s.cond, env, bufs):
            _exec(s.then, env, bufs)
    else:
        raise VerificationError(f"run_func cannot execute {type(s).__name__}")
