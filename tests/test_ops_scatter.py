"""ScatterElements, Scatter and ScatterND (all reductions) against ONNX Runtime."""
from __future__ import annotations

import numpy as np
import pytest

from tests.test_ops_shape import C, X, check
from tests.util import BACKENDS

RNG = np.random.default_rng(11)
backends = pytest.mark.parametrize("backend", BACKENDS)
REDUCTIONS = ["none", "add", "mul", "max", "min"]


def data(shape, dtype):
    if np.dtype(dtype).kind == "f":
        return RNG.standard_normal(shape).astype(dtype)
    return RNG.integers(-20, 20, shape).astype(dtype)


def distinct_indices(n_axis: int, shape, axis: int) -> np.ndarray:
    """Indices along ``axis`` without repeats in any line (for reduction none), some negative."""
    idx = np.empty(shape, np.int64)
    for pos in np.ndindex(*[s for k, s in enumerate(shape) if k != axis]):
        line = RNG.permutation(n_axis)[:shape[axis]]
        line = np.where(RNG.random(line.shape) < 0.3, line - n_axis, line)
        full = list(pos)
        full.insert(axis, slice(None))
        idx[tuple(full)] = line
    return idx


@backends
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("dtype", [np.float32, np.int64])
def test_scatter_elements(backend, reduction, axis, dtype):
    x = data((4, 5, 3), dtype)
    ishape = [3, 4, 2]
    ishape[axis] = 3
    if reduction == "none":
        idx = distinct_indices(x.shape[axis], tuple(ishape), axis % 3)
    else:  # repeats: several updates reduce into one element
        idx = RNG.integers(-x.shape[axis], x.shape[axis], ishape)
    upd = data(tuple(ishape), dtype)
    check("ScatterElements", [X("x", x), X("i", idx), X("u", upd)], backend,
          {"axis": axis, "reduction": reduction}, opset=18)


@backends
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_scatter_elements_opset11_constant_indices(backend, index_dtype):
    x = data((3, 4), np.float32)
    idx = np.array([[1, 0, 2, -1], [0, 2, 1, 2]], index_dtype)
    check("ScatterElements", [X("x", x), C("i", idx), X("u", data((2, 4), np.float32))], backend,
          {"axis": 0}, opset=11)


@backends
def test_scatter_opset10(backend):
    x = data((3, 3), np.float32)
    idx = np.array([[1, 0, 2], [0, 2, 1]], np.int64)
    check("Scatter", [X("x", x), X("i", idx), X("u", data((2, 3), np.float32))], backend, {"axis": 1}, opset=10)


@backends
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.int64])
def test_scatter_nd(backend, reduction, k, dtype):
    x = data((4, 3, 5), dtype)
    n_upd = 3
    if reduction == "none":  # distinct targets
        flat = RNG.permutation(int(np.prod(x.shape[:k])))[:n_upd]
        idx = np.stack(np.unravel_index(flat, x.shape[:k]), axis=-1)
    else:
        idx = np.stack([RNG.integers(0, n, n_upd) for n in x.shape[:k]], axis=-1)
        idx[0] = idx[-1]  # a repeated target
    idx = np.where(RNG.random(idx.shape) < 0.3, idx - np.array(x.shape[:k]), idx).astype(np.int64)
    upd = data((n_upd,) + x.shape[k:], dtype)
    check("ScatterND", [X("x", x), X("i", idx), X("u", upd)], backend, {"reduction": reduction}, opset=18)


@backends
def test_scatter_nd_batched_indices(backend):
    x = data((4, 4), np.float32)
    idx = np.array([[[0, 1], [2, 3]], [[3, 3], [1, 0]]], np.int64)  # indices (2, 2, 2): updates (2, 2)
    check("ScatterND", [X("x", x), X("i", idx), X("u", data((2, 2), np.float32))], backend, opset=11)
