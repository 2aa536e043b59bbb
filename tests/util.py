"""Shared test helpers: build one-node ONNX models and compare Kiln with ONNX Runtime."""
from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import helper

# Backends every op test runs on: the numpy interpreter of the compute definitions ("interp"),
# generated C compiled for the host ("host") and WGSL through wgpu ("webgpu", lavapipe on a
# machine without a GPU). A case past WebGPU's documented limits is skipped there, by name.
BACKENDS = os.environ.get("KILN_TEST_BACKENDS", "interp,host,webgpu").split(",")
# what the webgpu target refuses by design (docs/webgpu.md): 64-bit floats, and element types
# narrower than a byte or float8 (a word holds f32, i32 or two halves)
WEBGPU_LIMITS = ("WGSL has no 64-bit floats", "the webgpu target stores float32, float16, integer and bool")


def make_model(nodes, inputs, outputs, initializers=(), opset=17, name="test"):
    """inputs/outputs: lists of (name, numpy dtype, shape)."""
    def vi(n, dt, shape):
        return helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(np.dtype(dt)), shape)

    graph = helper.make_graph(
        list(nodes), name, [vi(*i) for i in inputs], [vi(*o) for o in outputs],
        initializer=[onnx.numpy_helper.from_array(np.asarray(a), n) for n, a in initializers])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def ort_run(model: onnx.ModelProto, inputs: dict) -> dict:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, inputs)))


def kiln_run(model: onnx.ModelProto, inputs: dict, backend: str) -> dict:
    if backend == "interp":
        from kiln.frontend.onnx import from_onnx
        from kiln.ir.interp import run_graph

        return run_graph(from_onnx(model), inputs)
    import kiln
    from kiln.errors import KilnError

    if backend == "webgpu":
        from tests.conftest import require_webgpu

        require_webgpu()
        try:
            return kiln.compile(model, target=backend).run(inputs)
        except KilnError as e:
            if any(limit in str(e) for limit in WEBGPU_LIMITS):
                import pytest

                pytest.skip(f"a documented WebGPU limit: {str(e).splitlines()[0][:140]}")
            raise
    return kiln.compile(model, target=backend).run(inputs)


def assert_close(got: dict, want: dict, rtol=1e-3, atol=1e-4):
    assert set(got) == set(want), f"outputs {sorted(got)} != {sorted(want)}"
    for k in want:
        g, w = np.asarray(got[k]), np.asarray(want[k])
        assert g.shape == w.shape, f"{k}: shape {g.shape} != {w.shape}"
        assert g.dtype == w.dtype, f"{k}: dtype {g.dtype} != {w.dtype}"
        if w.dtype.kind in "biu":
            np.testing.assert_array_equal(g, w, err_msg=k)
        else:
            np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, err_msg=k)


def check_against_ort(model, inputs, backend, rtol=1e-3, atol=1e-4):
    want = ort_run(model, inputs)
    got = kiln_run(model, inputs, backend)
    assert_close(got, want, rtol, atol)
    return got


def qlinear_conv_model(w: np.ndarray, batch: int, hw: int, y_scale: float = 0.05) -> onnx.ModelProto:
    """A 3x3 (pad 1) QLinearConv over uint8 (N, C, hw, hw) with the given int8 weights
    (OC, C, 3, 3), per-channel weight scales, uint8 output: an integer model whose weights
    and output stay integers in every backend."""
    from onnx import TensorProto as TP, numpy_helper as nh

    oc, c = w.shape[:2]
    inits = [nh.from_array(np.array(0.03, np.float32), "xs"), nh.from_array(np.array(120, np.uint8), "xz"),
             nh.from_array(w.astype(np.int8), "w"), nh.from_array(np.linspace(0.002, 0.01, oc).astype(np.float32), "ws"),
             nh.from_array(np.zeros(oc, np.int8), "wz"), nh.from_array(np.array(y_scale, np.float32), "ys"),
             nh.from_array(np.array(100, np.uint8), "yz")]
    node = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"], pads=[1, 1, 1, 1])
    g = helper.make_graph([node], "qlc", [helper.make_tensor_value_info("x", TP.UINT8, [batch, c, hw, hw])],
                          [helper.make_tensor_value_info("y", TP.UINT8, [batch, oc, hw, hw])], initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
