"""Quantized models on the WebGPU target (lavapipe through wgpu).

WGSL has no 64-bit integers, so the fixed-point requantization of Kiln's integer kernels
cannot run there: QDQ models stay float (dequantize, op, quantize) and match ONNX Runtime;
ConvInteger / MatMulInteger / QLinearConv keep their exact int32 kernels, with their 8-bit
weights packed four to a word in ``weights.bin`` (``kiln/codegen/wgsl_model.py``); float16
weights are packed two to a word."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto as TP, helper, numpy_helper as nh

import kiln
from examples import models
from kiln.codegen.wgsl_model import to_packed_words
from tests.conftest import require_webgpu
from tests.util import ort_run, qlinear_conv_model

RNG = np.random.default_rng(17)


@pytest.fixture(scope="module")
def wgpu_device():
    return require_webgpu()


def _step(ref: np.ndarray) -> float:
    return np.abs(np.diff(np.unique(ref))).min(initial=1.0)


# -- tier 1: packing and the pipeline, no device ---------------------------------------------------

def test_packed_words_hold_four_elements_little_endian():
    a = np.array([1, -2, 3, -128, 127], np.int8)
    w = to_packed_words(a)
    assert w.dtype == np.uint32 and w.size == 2
    assert int(w[0]) == 0x80_03_FE_01 and int(w[1]) == 0x7F
    u = np.array([[255, 0], [7, 200]], np.uint8)
    assert int(to_packed_words(u)[0]) == 0xC8_07_00_FF


def test_qdq_model_stays_float_on_webgpu():
    q = kiln.quantize(models.small_cnn(), {"input": RNG.standard_normal((4, 1, 28, 28)).astype(np.float32)})
    ops = {n.op for n in kiln.compile(q, target="webgpu").graph.nodes}
    assert not ops & {"qconv", "qmatmul", "qadd"}          # no int64 requantization in WGSL
    assert {"qconv", "qmatmul"} & {n.op for n in kiln.compile(q, target="host").graph.nodes}


def _qlinear_conv(oc=5, c=3):
    return qlinear_conv_model(RNG.integers(-128, 128, (oc, c, 3, 3)), batch=1, hw=8)


def _matmul_integer(k=7, n=5, wtype=np.int8):
    info = np.iinfo(wtype)
    w = RNG.integers(info.min, info.max + 1, (k, n)).astype(wtype)
    g = helper.make_graph([helper.make_node("MatMulInteger", ["a", "w", "az", "wz"], ["y"])], "mmi",
                          [helper.make_tensor_value_info("a", TP.UINT8, [3, k])],
                          [helper.make_tensor_value_info("y", TP.INT32, [3, n])],
                          initializer=[nh.from_array(w, "w"), nh.from_array(np.array(17, np.uint8), "az"),
                                       nh.from_array(np.array(3 if wtype == np.uint8 else -2, wtype), "wz")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def test_8bit_weights_are_packed_in_the_bundle():
    m = kiln.compile(_qlinear_conv(), target="webgpu")
    plan = m.result.source.webgpu.plan
    packed = [name for name in plan.packed if m.graph.constants[name].dtype == np.int8]
    assert packed
    w = m.graph.constants[packed[0]]
    start = plan.offset(packed[0])
    np.testing.assert_array_equal(plan.weights[start:start + -(-w.size // 4)], to_packed_words(w))
    src = "\n".join(k.source for k in m.result.source.webgpu.kernels)
    assert "extractBits(bitcast<i32>(" in src


# -- tier 2: on the device ---------------------------------------------------------------------------

def test_qdq_cnn_matches_ort(wgpu_device):
    q = kiln.quantize(models.small_cnn(), {"input": RNG.standard_normal((4, 1, 28, 28)).astype(np.float32)})
    x = {"input": RNG.standard_normal((1, 1, 28, 28)).astype(np.float32)}
    got, ref = kiln.compile(q, target="webgpu").run(x), ort_run(q, x)
    for k in ref:
        assert np.abs(got[k] - ref[k]).max() <= _step(ref[k]) * 1.01


def test_qlinear_conv_with_packed_weights_matches_ort(wgpu_device):
    model = _qlinear_conv()
    x = {"x": RNG.integers(0, 256, (1, 3, 8, 8)).astype(np.uint8)}
    got, want = kiln.compile(model, target="webgpu").run(x)["y"], ort_run(model, x)["y"]
    assert np.max(np.abs(got.astype(int) - want.astype(int))) <= 1


def _qlinear_matmul_with_ties(y_zp: int):
    """a (1 x 16, int8) @ ones (16 x 16) with scales 1, 1 and 2: an odd sum of ``a`` scales to
    a value half way between two integers, the case where the rounding rule decides."""
    inits = [nh.from_array(np.array(1.0, np.float32), "as"), nh.from_array(np.array(0, np.int8), "az"),
             nh.from_array(np.ones((16, 16), np.int8), "b"), nh.from_array(np.array(1.0, np.float32), "bs"),
             nh.from_array(np.array(0, np.int8), "bz"), nh.from_array(np.array(2.0, np.float32), "ys"),
             nh.from_array(np.array(y_zp, np.int8), "yz")]
    node = helper.make_node("QLinearMatMul", ["a", "as", "az", "b", "bs", "bz", "ys", "yz"], ["y"])
    g = helper.make_graph([node], "ties", [helper.make_tensor_value_info("a", TP.INT8, [1, 16])],
                          [helper.make_tensor_value_info("y", TP.INT8, [1, 16])], initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


@pytest.mark.parametrize("y_zp", [0, 1, -3])
def test_requantized_ties_round_before_the_zero_point_is_added(y_zp, wgpu_device):
    """ORT rounds the scaled accumulator half to even, then adds the zero point: an odd zero
    point added first sent 2.5 + 1 to 4 instead of 3."""
    model = _qlinear_matmul_with_ties(y_zp)
    compiled = kiln.compile(model, target="webgpu")
    for total in (5, -5, 3, -3, 7, 1, -1):  # b is all ones: every y is sum(a) / 2
        a = np.zeros((1, 16), np.int8)
        a[0, 0] = total
        want = ort_run(model, {"a": a})["y"]
        assert want[0, 0] == np.round(total / 2) + y_zp  # the tie goes to even, then the zero point
        np.testing.assert_array_equal(compiled.run({"a": a})["y"], want)


@pytest.mark.parametrize("wtype", [np.int8, np.uint8], ids=["int8", "uint8"])
def test_matmul_integer_with_packed_weights_is_exact(wtype, wgpu_device):
    """7 x 5 = 35 weights: a partly filled last word; uint8 weights zero-extended, int8 sign-extended."""
    model = _matmul_integer(wtype=wtype)
    x = {"a": RNG.integers(0, 256, (3, 7)).astype(np.uint8)}
    np.testing.assert_array_equal(kiln.compile(model, target="webgpu").run(x)["y"], ort_run(model, x)["y"])


# -- float16 weights, two to a word --------------------------------------------------------------------

def _half_matmul(k=9, n=7):
    w = (RNG.standard_normal((k, n)) * 3).astype(np.float16)
    w[0, 0], w[1, 1] = np.float16(2047), np.float16(-6e-8)   # a large half and a subnormal
    g = helper.make_graph([helper.make_node("MatMul", ["a", "w"], ["y"])], "hmm",
                          [helper.make_tensor_value_info("a", TP.FLOAT16, [2, k])],
                          [helper.make_tensor_value_info("y", TP.FLOAT16, [2, n])], initializer=[nh.from_array(w, "w")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_float16_weights_are_packed_two_to_a_word():
    m = kiln.compile(_half_matmul(), target="webgpu")
    plan = m.result.source.webgpu.plan
    (name,) = [n for n in plan.packed if m.graph.constants[n].dtype == np.float16]
    w = m.graph.constants[name]
    start = plan.offset(name)
    words = plan.weights[start:start + -(-w.size // 2)]
    np.testing.assert_array_equal(words.view(np.float16)[:w.size], w.reshape(-1))
    assert "unpack2x16float(" in "\n".join(k.source for k in m.result.source.webgpu.kernels)


def test_float16_weights_unpack_exactly(wgpu_device):
    model = _half_matmul()
    x = {"a": RNG.standard_normal((2, 9)).astype(np.float16)}
    got = kiln.compile(model, target="webgpu").run(x)["y"]
    host = kiln.compile(model, target="host").run(x)["y"]
    np.testing.assert_array_equal(got, host)   # both compute in float32 from the same halves


# -- QDQ weights ship as int8 --------------------------------------------------------------------------

def _qdq_cnn():
    return kiln.quantize(models.small_cnn(), {"input": RNG.standard_normal((4, 1, 28, 28)).astype(np.float32)})


def test_qdq_weights_stay_int8_and_are_dequantized_inside_the_conv():
    """On WebGPU the dequantize of constant int8 weights is not folded (fold_constants'
    ``dequantizes_packed_weights``): weights.bin holds the packed int8 weights, and each conv
    reads its weights through the dequantize as a prologue (fuse.py), not from a float copy."""
    m = kiln.compile(_qdq_cnn(), target="webgpu")
    plan = m.result.source.webgpu.plan
    assert any(m.graph.constants[n].dtype == np.int8 for n in plan.packed)
    consts = set(m.graph.constants)
    for g in m.result.groups:
        ops = [n.op for n in g.nodes]
        if any(n.op == "dequantize_linear" and n.inputs[0] in consts for n in g.nodes):
            assert {"conv", "matmul"} & set(ops), ops   # never a kernel of its own
    host = kiln.compile(_qdq_cnn(), target="host").graph
    assert not any(n.op == "dequantize_linear" and host.constants.get(n.inputs[0]) is not None
                   and host.constants[n.inputs[0]].dtype == np.int8 for n in host.nodes)


def test_fold_constants_keeps_only_what_it_is_told_to():
    from kiln.ir.dtype import DType
    from kiln.ir.graph import Graph, Node, TensorType, Value
    from kiln.passes.fold_constants import dequantizes_packed_weights, fold_constants

    w8 = RNG.integers(-128, 128, (4, 3)).astype(np.int8)
    consts = {"w8": w8, "s": np.array(0.5, np.float32), "z": np.array(0, np.int8), "c": np.ones((4, 3), np.float32)}
    f32 = TensorType((4, 3), DType.float32)
    nodes = (Node("dequantize_linear", ("w8", "s", "z"), (Value("wf", f32),), {"axis": 1}),
             Node("add", ("c", "c"), (Value("c2", f32),), {}),
             Node("add", ("wf", "c2"), (Value("y", f32),), {}))
    g = Graph((), (Value("y", f32),), nodes, consts)
    kept = fold_constants(g, keep=dequantizes_packed_weights)
    assert [n.op for n in kept.nodes] == ["dequantize_linear", "add"]     # c + c folded, the dequantize kept
    plain = fold_constants(g)
    assert [n.op for n in plain.nodes] == ["add"] and plain.nodes[0].inputs == ("wf", "c2")  # only the output's node stays
    assert plain.constants["wf"].dtype == np.float32
