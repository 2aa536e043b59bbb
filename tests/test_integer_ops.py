"""MatMulInteger / ConvInteger / DynamicQuantizeLinear -> packed integer kernels
(``kiln/passes/integer_ops.py``, ``kiln/ir/ops/integer_acc.py``), against ONNX Runtime:
integer outputs must be equal, not close."""
from __future__ import annotations

import re
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP, helper, numpy_helper as nh

import kiln
from kiln.errors import ShapeError
from kiln.ir.dtype import DType
from kiln.ir.graph import TensorType
from kiln.ir.ops import infer_types
from tests.util import ort_run

RNG = np.random.default_rng(7)
ONNX_TYPE = {np.uint8: TP.UINT8, np.int8: TP.INT8, np.float32: TP.FLOAT, np.int32: TP.INT32}


def _q(shape, dtype, lo=None, hi=None):
    info = np.iinfo(dtype)
    return RNG.integers(info.min if lo is None else lo, (info.max if hi is None else hi) + 1, shape).astype(dtype)


def _model(nodes, inputs, outputs, inits, opset=13):
    vi = [helper.make_tensor_value_info(n, ONNX_TYPE[dt], s) for n, dt, s in inputs]
    vo = [helper.make_tensor_value_info(n, ONNX_TYPE[dt], s) for n, dt, s in outputs]
    g = helper.make_graph(nodes, "int_ops", vi, vo, initializer=[nh.from_array(a, n) for n, a in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _ops(cm) -> Counter:
    return Counter(n.op for n in cm.graph.nodes)


def _matmul_integer(a_dtype, w_dtype, a_shape, n, a_zp=None, w_zp=None, w_zp_range=(-3, 3)):
    k = a_shape[-1]
    inits = {"w": _q((k, n), w_dtype, *((-100, 100) if w_dtype == np.int8 else (20, 230)))}
    names = ["a", "w", "", ""]
    if a_zp is not None:
        inits["az"], names[2] = np.array(a_zp, a_dtype), "az"
    if w_zp == "scalar":
        inits["wz"], names[3] = np.array(RNG.integers(*w_zp_range), w_dtype), "wz"
    elif w_zp == "column":
        inits["wz"], names[3] = RNG.integers(*w_zp_range, n).astype(w_dtype), "wz"
    names = names[:4] if names[3] else names[:3] if names[2] else names[:2]
    node = helper.make_node("MatMulInteger", names, ["y"])
    return _model([node], [("a", a_dtype, a_shape)], [("y", np.int32, a_shape[:-1] + [n])], inits)


@pytest.mark.parametrize("a_dtype,w_dtype,a_shape,a_zp,w_zp", [
    (np.uint8, np.int8, [7, 64], None, None),
    (np.uint8, np.int8, [2, 5, 48], 131, "scalar"),
    (np.int8, np.int8, [9, 40], -5, "column"),
    (np.uint8, np.uint8, [6, 32], 17, "scalar"),      # uint8 weights centred on a zero point
    (np.int8, np.int8, [1, 96], None, "scalar"),      # a GEMV row
], ids=["u8s8", "batched_zps", "s8s8_per_column", "u8u8", "gemv"])
def test_matmul_integer_with_constant_weights_is_a_packed_kernel(a_dtype, w_dtype, a_shape, a_zp, w_zp):
    model = _matmul_integer(a_dtype, w_dtype, a_shape, 24, a_zp, w_zp,
                            w_zp_range=(120, 136) if w_dtype == np.uint8 else (-3, 3))
    a = _q(tuple(a_shape), a_dtype)
    cm = kiln.compile(model)
    assert _ops(cm)["qmatmul_i32"] == 1 and "matmul_integer" not in _ops(cm), _ops(cm)
    got, want = cm.run({"a": a})["y"], ort_run(model, {"a": a})["y"]
    np.testing.assert_array_equal(got, want)


def test_weights_that_do_not_fit_int8_after_centering_stay_generic():
    model = _matmul_integer(np.uint8, np.uint8, [4, 32], 3, None, "scalar", w_zp_range=(0, 2))  # w - 0..1 up to 230
    a = _q((4, 32), np.uint8)
    cm = kiln.compile(model)
    assert "qmatmul_i32" not in _ops(cm)
    np.testing.assert_array_equal(cm.run({"a": a})["y"], ort_run(model, {"a": a})["y"])


def _dynamic_matmul(m, k, n):
    """What ``quantize_dynamic`` writes for a MatMul: DynamicQuantizeLinear -> MatMulInteger
    (run-time activation zero point) -> Cast -> Mul(x_scale * w_scale)."""
    w = _q((k, n), np.int8, -127, 127)
    inits = {"w": w, "ws": np.array(0.02, np.float32)}
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
             helper.make_node("MatMulInteger", ["xq", "w", "xz"], ["acc"]),
             helper.make_node("Cast", ["acc"], ["accf"], to=TP.FLOAT),
             helper.make_node("Mul", ["xs", "ws"], ["s"]),
             helper.make_node("Mul", ["accf", "s"], ["y"])]
    return _model(nodes, [("x", np.float32, [m, k])], [("y", np.float32, [m, n]), ("acc", np.int32, [m, n])],
                  inits)


def test_dynamic_quantize_then_matmul_integer_matches_ort_exactly():
    model = _dynamic_matmul(16, 128, 40)
    x = RNG.standard_normal((16, 128)).astype(np.float32) * 3 + 0.5
    cm = kiln.compile(model)
    assert _ops(cm)["qmatmul_i32"] == 1 and "matmul_integer" not in _ops(cm)
    got, want = cm.run({"x": x}), ort_run(model, {"x": x})
    np.testing.assert_array_equal(got["acc"], want["acc"])
    np.testing.assert_array_equal(got["y"], want["y"])


CONVS = [
    dict(pads=[1, 1, 1, 1]),
    dict(strides=[2, 2], pads=[0, 1, 1, 0]),
    dict(dilations=[2, 2], pads=[2, 2, 2, 2]),
    dict(group=2),
]


@pytest.mark.parametrize("attrs", CONVS, ids=["pad", "stride", "dilated", "group"])
@pytest.mark.parametrize("zp", ["constant", "dynamic"])
def test_conv_integer_with_constant_weights_is_a_packed_kernel(attrs, zp):
    c, oc = 8, 16
    g = attrs.get("group", 1)
    w = _q((oc, c // g, 3, 3), np.uint8, 100, 156)
    inits = {"w": w, "wz": np.array(128, np.uint8)}
    if zp == "constant":
        inits["xz"] = np.array(77, np.uint8)
        nodes = [helper.make_node("ConvInteger", ["x", "w", "xz", "wz"], ["y"], **attrs)]
        x_in = ("x", np.uint8, [1, c, 9, 10])
    else:  # ORT's dynamic quantization of a Conv
        nodes = [helper.make_node("DynamicQuantizeLinear", ["xf"], ["x", "xs", "xz"]),
                 helper.make_node("ConvInteger", ["x", "w", "xz", "wz"], ["y"], **attrs)]
        x_in = ("xf", np.float32, [1, c, 9, 10])
    ref = onnx.shape_inference.infer_shapes(_model(nodes, [x_in], [], inits))
    out_shape = [d.dim_value for d in next(v for v in ref.graph.value_info if v.name == "y").type.tensor_type.shape.dim]
    model = _model(nodes, [x_in], [("y", np.int32, out_shape)], inits)
    feeds = {x_in[0]: _q(tuple(x_in[2]), np.uint8) if zp == "constant"
             else RNG.standard_normal(tuple(x_in[2])).astype(np.float32) * 2 + 1}
    cm = kiln.compile(model)
    assert _ops(cm)["qconv_i32"] == 1 and "conv_integer" not in _ops(cm), _ops(cm)
    np.testing.assert_array_equal(cm.run(feeds)["y"], ort_run(model, feeds)["y"])


def test_bert_encoder_dynamically_quantized_by_ort():
    """``quantize_dynamic`` on the project's transformer: every MatMulInteger becomes a packed
    integer kernel, outputs within ONNX Runtime's own rounding of the same model."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from examples.models import bert_encoder, example_inputs

    model = bert_encoder(layers=2, hidden=64, seq=16, ffn=128)
    with tempfile.TemporaryDirectory() as tmp:
        onnx.save(model, f"{tmp}/f.onnx")
        quantize_dynamic(f"{tmp}/f.onnx", f"{tmp}/q.onnx", weight_type=QuantType.QInt8)
        q = onnx.load(f"{tmp}/q.onnx")
    n_mmi = sum(n.op_type == "MatMulInteger" for n in q.graph.node)
    assert n_mmi == 12
    cm = kiln.compile(q)
    ops = _ops(cm)
    assert ops["qmatmul_i32"] == n_mmi and ops["matmul_integer"] == 0, ops
    for seed in (1, 2):
        x = example_inputs(model, seed=seed)
        got, want = cm.run(x), ort_run(q, x)
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-4 * np.abs(want[k]).max())


def test_dynamic_int8_kernel_maps_to_vnni():
    model = _dynamic_matmul(32, 256, 64)
    cm = kiln.compile(model)
    src = cm.source()
    from kiln.targets.host import capabilities

    if capabilities().amx:  # AMX: 32 rows x two panels in 2 x 2 tiles (tests/test_amx.py)
        assert "int32_t acc0[32][32]" in src and "_tile_dpbusd(" in src
    elif capabilities().vnni:  # weights in VNNI panels: an 8-row tile of two 16-lane panels
        assert "int32_t acc0[8][32]" in src and "KILN_DPBUSD(" in src
    elif capabilities().dot_tile:  # every x86 host with AVX2: outputs computed in a register tile
        rows, cols = capabilities().dot_tile
        assert f"int32_t acc0[{rows}][{cols}]" in src
    flags = open("/proc/cpuinfo").read()
    if "avx512_vnni" not in flags and "avx_vnni" not in flags:
        return
    with tempfile.TemporaryDirectory() as tmp:
        cm.export(tmp)
        asm = subprocess.run(["gcc", "-O3", "-march=native", "-fopenmp", "-std=gnu11", "-fwrapv", "-S", "-o", "-",
                              str(Path(tmp, "model.c"))], capture_output=True, text=True, check=True)
    assert re.search(r"\btdpbusd\b" if capabilities().amx else r"\bvpdpbusd\b", asm.stdout)


@pytest.mark.parametrize("op,ins,attrs,words", [
    ("qmatmul_i32", [((4, 8), DType.uint8), ((5, 8), DType.int8), ((5,), DType.int32), ((), DType.int8)], {},
     ["zero point", "uint8"]),
    ("qmatmul_i32", [((4, 8), DType.uint8), ((5, 9), DType.int8), ((5,), DType.int32), ((), DType.uint8)], {},
     ["(N, K)"]),
    ("qmatmul_i32", [((4, 8), DType.uint8), ((5, 8), DType.int8), ((4,), DType.int32), ((), DType.uint8)], {},
     ["weight sums", "(5,)"]),
    ("qconv_i32", [((1, 4, 6, 6), DType.uint8), ((8, 3, 9), DType.int8), ((8,), DType.int32), ((1,), DType.uint8)],
     {"kernel": (3, 3)}, ["do not match"]),
])
def test_bad_operands_are_rejected(op, ins, attrs, words):
    with pytest.raises(ShapeError) as e:
        infer_types(op, [TensorType(s, d) for s, d in ins], attrs)
    for w in words:
        assert w in str(e.value)


def test_pass_rewrites_in_the_graph_and_the_interpreter_agrees():
    """Tier 1 (no compiler): the pass alone, run by the IR interpreter."""
    from kiln.frontend.onnx import from_onnx
    from kiln.ir.interp import run_graph
    from kiln.passes.integer_ops import pack_integer_ops

    model = _dynamic_matmul(3, 40, 6)
    graph = from_onnx(model)
    rewritten = pack_integer_ops(graph)
    assert "matmul_integer" in {n.op for n in graph.nodes}
    assert {n.op for n in rewritten.nodes} >= {"qmatmul_i32"} and "matmul_integer" not in {n.op for n in rewritten.nodes}
    x = RNG.standard_normal((3, 40)).astype(np.float32)
    np.testing.assert_array_equal(run_graph(rewritten, {"x": x})["acc"], ort_run(model, {"x": x})["acc"])
