"""Schedules of the integer convolution kernels (kiln/passes/dot_schedule.py and the im2col
form of ``qconv`` in kiln/ir/ops/qlinear.py): every variant computes the same integers."""
from __future__ import annotations

import re

import numpy as np
import pytest
from onnx import TensorProto as TP, helper, numpy_helper as nh

import kiln
import kiln.ir.ops.qlinear as QL
from kiln.ir.dtype import DType
from kiln.ir.expr import Var, simplify
from tests.test_quantize import qdq_conv
from tests.util import ort_run

RNG = np.random.default_rng(11)


@pytest.fixture(autouse=True)
def row_major_weights(monkeypatch):
    """These tests are about the row-major dot-product kernels (im2col, per-row, padded
    window rows); the VNNI-panel kernels a VNNI host would choose are tests/test_vnni.py's."""
    import dataclasses

    import kiln.targets.host as host

    caps = dataclasses.replace(host.capabilities(), vnni=False)
    monkeypatch.setattr(host, "capabilities", lambda: caps)


def _input(model) -> np.ndarray:
    shape = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim)
    return (RNG.standard_normal(shape) * 1.5).astype(np.float32)


def _stem(c=3, oc=16, hw=24):
    """A ResNet stem (7x7, stride 2, pad 3) quantized by ONNX Runtime (through kiln.quantize)."""
    w = (RNG.standard_normal((oc, c, 7, 7)) * 0.1).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], strides=[2, 2], pads=[3, 3, 3, 3])
    g = helper.make_graph([node, helper.make_node("Relu", ["y"], ["z"])], "stem",
                          [helper.make_tensor_value_info("x", TP.FLOAT, [1, c, hw, hw])],
                          [helper.make_tensor_value_info("z", TP.FLOAT, [1, oc, hw // 2, hw // 2])],
                          initializer=[nh.from_array(w, "w")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    cal = {"x": RNG.standard_normal((4, c, hw, hw)).astype(np.float32)}
    return kiln.quantize(model, cal)


@pytest.mark.parametrize("build", [lambda: qdq_conv(c=64, oc=32, hw=8)[0], lambda: qdq_conv(strides=(2, 2))[0],
                                   _stem], ids=["3x3", "3x3_stride2", "7x7_stem"])
def test_im2col_and_per_row_kernels_are_bit_identical(build, monkeypatch):
    model = build()
    x = {model.graph.input[0].name: _input(model)}
    monkeypatch.setattr(QL, "IM2COL", False)
    rows = kiln.compile(model)
    monkeypatch.setattr(QL, "IM2COL", True)
    windows = kiln.compile(model)
    assert "__win" in windows.source() and "__win" not in rows.source()
    a, b = rows.run(x), windows.run(x)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_stem_window_rows_are_padded_and_match_ort():
    q = _stem()
    cm = kiln.compile(q)
    src = cm.source()
    assert "__wpad" in src                                    # 7 * 3 = 21-byte rows padded to 32
    assert re.search(r"__win\[[^\]]*\* INT64_C\(224\)\)", src)  # 7 rows of 32 bytes per window
    x = {"x": _input(q)}
    got, want = cm.run(x)["z"], ort_run(q, x)["z"]
    inits = {i.name: nh.to_array(i) for i in q.graph.initializer}
    dq = next(n for n in q.graph.node if n.op_type == "DequantizeLinear" and n.output[0] == "z")
    step = float(inits[dq.input[1]])
    assert np.max(np.abs(got - want)) <= step * 1.001
    assert np.mean(got == want) > 0.99


def test_staging_reads_each_input_row_contiguously():
    """The NCHW -> padded NHWC staging loops over channels outside pixels: its innermost loop
    variable steps the NCHW input by one element (the input is quantized as it is copied, and
    the copy of the pixels inside the padding reads ``in0[.. + pixel]``)."""
    src = kiln.compile(qdq_conv(c=64, oc=32, hw=8)[0]).source()
    kernel = src[src.index("static void kernel_0"):]
    store = next(line for line in kernel.splitlines() if "__xu[" in line and "in0[" in line)
    loops = re.findall(r"for \(int64_t (\w+) = 0;", kernel[:kernel.index(store)])
    innermost = loops[-1]
    read = store[store.index("in0["):]
    assert re.match(rf"in0\[[^\]]*\+ {innermost}\)\]", read), read  # unit stride


def test_flat_window_index_simplifies():
    """(p + y // c) * c + y % c == p * c + y: the weight index of the im2col form."""
    p, y = Var("p", DType.int64), Var("y", DType.int64)
    e = simplify((p + y // 192) * 192 + y % 192)
    assert str(e) == str(simplify(p * 192 + y))
