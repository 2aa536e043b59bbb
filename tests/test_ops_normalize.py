"""RMSNormalization, LpNormalization, MeanVarianceNormalization, LpPool and GlobalLpPool
against ONNX Runtime."""
from __future__ import annotations

import numpy as np
import pytest

from tests.test_ops_shape import X, check, node_model
from tests.util import BACKENDS, assert_close, check_against_ort, kiln_run

RNG = np.random.default_rng(5)
backends = pytest.mark.parametrize("backend", BACKENDS)


def randn(*shape, dtype=np.float32):
    return RNG.standard_normal(shape).astype(dtype)


@backends
@pytest.mark.parametrize("axis,scale_shape", [(-1, (6,)), (1, (4, 5, 6)), (2, (5, 6)), (0, (1,)), (-2, (5, 1))])
@pytest.mark.parametrize("epsilon", [None, 1e-3])
def test_rms_norm(backend, axis, scale_shape, epsilon):
    attrs = {"axis": axis} | ({} if epsilon is None else {"epsilon": epsilon})
    check("RMSNormalization", [X("x", randn(3, 4, 5, 6)), X("s", randn(*scale_shape))], backend, attrs, opset=23)


@backends
def test_rms_norm_float16(backend):
    model, feeds = node_model("RMSNormalization", [X("x", randn(2, 8, dtype=np.float16)),
                                                   X("s", randn(8, dtype=np.float16))], opset=23)
    check_against_ort(model, feeds, backend, rtol=2e-3, atol=2e-3)


@backends
@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("opset", [1, 22])
def test_lp_norm(backend, p, axis, opset):
    check("LpNormalization", [X("x", randn(3, 4, 5))], backend, {"p": p, "axis": axis}, opset=opset)


@backends
def test_lp_norm_zero_norm_gives_zero(backend):
    # the ONNX spec (opset 22): 0 where the norm is 0 (no NaN)
    x = np.array([[0.0, 0.0], [3.0, 4.0]], np.float32)
    model, feeds = node_model("LpNormalization", [X("x", x)], {"axis": 1, "p": 2}, opset=22)
    assert_close(kiln_run(model, feeds, backend), {"y0": np.array([[0, 0], [0.6, 0.8]], np.float32)})


# (ONNX's strict shape inference of the function body fails without an axes attribute, so
# the default [0, 2, 3] is spelled out; the node test test_mvn covers the absent attribute.)
@backends
@pytest.mark.parametrize("axes", [[0, 2, 3], [1], [2, 3], [-1]])
def test_mvn(backend, axes):
    check("MeanVarianceNormalization", [X("x", randn(2, 3, 4, 5))], backend, {"axes": axes}, opset=13)


LP_POOL = [
    {"kernel_shape": [2, 2]},
    {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [2, 2]},
    {"kernel_shape": [2, 3], "dilations": [2, 1]},
    {"kernel_shape": [3, 3], "auto_pad": "SAME_UPPER"},
    {"kernel_shape": [3, 3], "auto_pad": "SAME_LOWER", "strides": [2, 2]},
    {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1},
    {"kernel_shape": [2, 2], "p": 1},
    {"kernel_shape": [2, 2], "p": 3},
]


@backends
@pytest.mark.parametrize("attrs", LP_POOL)
def test_lp_pool_2d(backend, attrs):
    check("LpPool", [X("x", randn(2, 3, 7, 8))], backend, attrs, opset=18)


@backends
@pytest.mark.parametrize("shape,kernel", [((1, 2, 9), [3]), ((1, 2, 4, 5, 6), [2, 2, 3])])
def test_lp_pool_nd(backend, shape, kernel):
    check("LpPool", [X("x", randn(*shape))], backend, {"kernel_shape": kernel}, opset=11)


@backends
@pytest.mark.parametrize("p", [1, 2, 3])
@pytest.mark.parametrize("shape", [(2, 3, 5, 4), (1, 2, 7)])
def test_global_lp_pool(backend, p, shape):
    check("GlobalLpPool", [X("x", randn(*shape))], backend, {"p": p}, opset=7)
