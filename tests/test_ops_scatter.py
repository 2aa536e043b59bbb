"""ScatterElements, Scatter and ScatterND (all reductions) and TensorScatter against ONNX Runtime."""
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


def _tensor_scatter_reference(past, update, write, axis, circular):
    """ONNX's pseudocode for TensorScatter."""
    out = past.copy()
    length, seq = past.shape[axis], update.shape[axis]
    for prefix in np.ndindex(*past.shape[:axis]):
        for s in range(seq):
            c = write[prefix[0]] + s
            c = c % length if circular else c
            out[prefix + (c,)] = update[prefix + (s,)]
    return out


@backends
@pytest.mark.parametrize("mode, axis", [("linear", -2), ("circular", -2), ("linear", 1), ("circular", 2)])
def test_tensor_scatter_writes_each_batch_row_from_its_index(backend, mode, axis):
    """A KV-cache update (opset 24): every batch row has its own write index; circular writes
    wrap around the cache."""
    past = data((3, 10, 10, 6), np.float32)  # every axis tested is 10 long
    ushape = list(past.shape)
    ushape[axis] = 4
    update = data(tuple(ushape), np.float32)
    length = past.shape[axis]
    write = np.array([0, 3, 8 if mode == "circular" else length - 4], np.int64)
    got = check("TensorScatter", [X("past", past), X("update", update), X("write", write)], backend,
                {"mode": mode, "axis": axis}, opset=24)
    want = _tensor_scatter_reference(past, update, write, axis % 4, mode == "circular")
    np.testing.assert_array_equal(got["y0"], want)


@backends
def test_tensor_scatter_without_write_indices_writes_from_zero(backend):
    past, update = data((2, 3, 8, 4), np.float16), data((2, 3, 5, 4), np.float16)
    got = check("TensorScatter", [X("past", past), X("update", update)], backend, opset=24)
    np.testing.assert_array_equal(got["y0"], _tensor_scatter_reference(past, update, [0, 0], 2, False))
