"""Integer kernels from quantized ONNX: the quantize pass (IR level), QDQ and QLinear models
built with onnx.helper, ONNX Runtime's own QDQ models of the project's models, and the
calibration/PTQ front door (kiln.quantize) with its errors."""
from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from hypothesis import given, settings, strategies as st
from onnx import TensorProto as TP, helper, numpy_helper as nh

import kiln
from kiln.errors import QuantizationError
from kiln.frontend.onnx import from_onnx
from kiln.ir.interp import run_graph
from kiln.ir.ops.qlinear import fixed_point
from kiln.passes.quantize import quantize_integer_ops
from tests.util import ort_run

RNG = np.random.default_rng(0)


def _ops(graph) -> Counter:
    return Counter(n.op for n in graph.nodes)


def _steps(got: np.ndarray, want: np.ndarray, scale: float) -> float:
    """Largest difference in quantization steps of the output."""
    return float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))) / scale) - 1e-3  # float32 rounding of the dequantized values


def qdq_conv(act_dtype=np.uint8, act="Relu", per_channel=True, pads=(1, 1, 1, 1), group=1, bias=True,
             strides=(1, 1), dilations=(1, 1), c=8, oc=16, hw=10):
    w = RNG.integers(-127, 128, (oc, c // group, 3, 3)).astype(np.int8)
    sw = (RNG.random(oc if per_channel else 1) * 0.01 + 0.001).astype(np.float32)
    sw = sw if per_channel else sw.reshape(())
    sx, zx = np.float32(0.02), np.array(128 if act_dtype == np.uint8 else 3, act_dtype)
    sy, zy = np.float32(0.05), np.array(10 if act_dtype == np.uint8 else -5, act_dtype)
    inits = [nh.from_array(w, "w"), nh.from_array(sw, "sw"), nh.from_array(np.array(sx), "sx"),
             nh.from_array(zx, "zx"), nh.from_array(np.array(sy), "sy"), nh.from_array(zy, "zy"),
             nh.from_array(RNG.integers(-1000, 1000, oc).astype(np.int32), "b"),
             nh.from_array((sx * sw).astype(np.float32), "sb"),
             nh.from_array(np.zeros(sw.shape, np.int8), "zw")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "sw", "zw"], ["wd"], axis=0),
             helper.make_node("DequantizeLinear", ["b", "sb"], ["bd"], axis=0),
             helper.make_node("Conv", ["xd", "wd"] + (["bd"] if bias else []), ["c"], pads=list(pads),
                              group=group, strides=list(strides), dilations=list(dilations))]
    last = "c"
    if act == "Clip6":
        inits += [nh.from_array(np.array(0.0, np.float32), "lo"), nh.from_array(np.array(6.0, np.float32), "hi")]
        nodes.append(helper.make_node("Clip", ["c", "lo", "hi"], ["a"]))
        last = "a"
    elif act:
        nodes.append(helper.make_node(act, ["c"], ["a"]))
        last = "a"
    nodes += [helper.make_node("QuantizeLinear", [last, "sy", "zy"], ["yq"]),
              helper.make_node("DequantizeLinear", ["yq", "sy", "zy"], ["y"])]
    g = helper.make_graph(nodes, "qdq_conv", [helper.make_tensor_value_info("x", TP.FLOAT, [1, c, hw, hw])],
                          [helper.make_tensor_value_info("y", TP.FLOAT, None)], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return onnx.shape_inference.infer_shapes(m), float(sy)


# -- the pass, without a compiler ----------------------------------------------------------------

def test_pass_turns_qdq_conv_into_one_integer_op():
    model, sy = qdq_conv()
    g = quantize_integer_ops(from_onnx(model))
    ops = _ops(g)
    assert ops["qconv"] == 1 and ops["conv"] == 0 and ops["relu"] == 0
    node = next(n for n in g.nodes if n.op == "qconv")
    assert g.constants[node.inputs[1]].dtype == np.int8  # weights stay int8, packed (OC, KH, KW*C)
    assert g.constants[node.inputs[1]].shape == (16, 3, 24)
    assert node.attrs["lo"] == 10  # the ReLU became a clamp at the output zero point
    x = RNG.standard_normal((1, 8, 10, 10)).astype(np.float32)
    assert _steps(run_graph(g, {"x": x})["y"], ort_run(model, {"x": x})["y"], sy) <= 1


def test_pass_leaves_inexact_patterns_as_float():
    """A Sigmoid between conv and Q is no clamp: no integer op can be exact, so the model
    keeps its float conv and still computes what ONNX Runtime does."""
    model, sy = qdq_conv()
    for n in model.graph.node:
        if n.op_type == "Relu":
            n.op_type = "Sigmoid"
    g = quantize_integer_ops(from_onnx(model))
    assert _ops(g)["conv"] == 1 and _ops(g)["qconv"] == 0
    x = RNG.standard_normal((1, 8, 10, 10)).astype(np.float32)
    assert _steps(run_graph(g, {"x": x})["y"], ort_run(model, {"x": x})["y"], sy) <= 1


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=1e-12, max_value=1e6, allow_nan=False))
def test_fixed_point_multiplier_is_exact_to_31_bits(real):
    mult, shift = fixed_point(np.array([real]))
    assert 0 < shift[0] <= 62
    approx = int(mult[0]) * 2.0 ** -int(shift[0])
    assert abs(approx - real) <= real * 2.0 ** -30 + 2.0 ** -62


# -- QDQ models on the host ----------------------------------------------------------------------

@pytest.mark.parametrize("kw", [
    dict(), dict(act_dtype=np.int8), dict(act=None, pads=(0, 0, 0, 0)), dict(per_channel=False),
    dict(group=2, act_dtype=np.int8), dict(group=8, c=8, oc=8), dict(strides=(2, 2), act="Clip6"),
    dict(dilations=(2, 2), pads=(2, 2, 2, 2), bias=False), dict(c=64, oc=32, hw=8),
], ids=["u8", "s8", "nopad", "per_tensor", "group2", "depthwise", "stride_clip", "dilated", "wide"])
def test_qdq_conv_matches_ort(kw):
    model, sy = qdq_conv(**kw)
    x = (RNG.standard_normal(tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim))
         * 1.5).astype(np.float32)
    cm = kiln.compile(model)
    assert _ops(cm.graph)["qconv"] == 1
    got, want = cm.run({"x": x})["y"], ort_run(model, {"x": x})["y"]
    assert _steps(got, want, sy) <= 1
    assert np.mean(got == want) > 0.99  # almost all bit-exact; ties round half up, not to even


def test_integer_reduction_has_no_omp_simd_and_maps_to_vnni():
    """gcc maps an integer dot product to vpdpbusd only without `omp simd` (see CRenderer)."""
    import re
    import subprocess
    import tempfile
    from pathlib import Path

    model, _ = qdq_conv(c=64, oc=32, hw=8)
    cm = kiln.compile(model)
    src = cm.source()
    # (the conv's input is the float tensor it quantizes while staging it, or uint8)
    kernel = src[re.search(r"\(const (uint8_t|float)\* restrict in0, const int8_t\* restrict in1", src).start():]
    assert "reduction(+:acc" not in kernel.split("\n}\n")[0]
    flags = open("/proc/cpuinfo").read()
    if "avx512_vnni" not in flags and "avx_vnni" not in flags:
        return  # the instruction check needs a VNNI host; the pragma check above ran
    with tempfile.TemporaryDirectory() as tmp:
        cm.export(tmp)
        asm = subprocess.run(["gcc", "-O3", "-march=native", "-fopenmp", "-std=gnu11", "-fwrapv", "-S",
                              "-o", "-", str(Path(tmp, "model.c"))], capture_output=True, text=True, check=True)
    assert re.search(r"\bvpdpbusd\b", asm.stdout)


def _qlinear_conv_model():
    x_s, x_z, w_s, y_s, y_z = 0.03, 120, np.linspace(0.002, 0.01, 6).astype(np.float32), 0.07, 100
    w = RNG.integers(-100, 100, (6, 3, 3, 3)).astype(np.int8)
    b = RNG.integers(-500, 500, 6).astype(np.int32)
    inits = [nh.from_array(np.array(x_s, np.float32), "xs"), nh.from_array(np.array(x_z, np.uint8), "xz"),
             nh.from_array(w, "w"), nh.from_array(w_s, "ws"), nh.from_array(np.zeros(6, np.int8), "wz"),
             nh.from_array(np.array(y_s, np.float32), "ys"), nh.from_array(np.array(y_z, np.uint8), "yz"),
             nh.from_array(b, "b")]
    node = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], ["y"], pads=[1, 1, 1, 1])
    g = helper.make_graph([node], "qlc", [helper.make_tensor_value_info("x", TP.UINT8, [1, 3, 9, 9])],
                          [helper.make_tensor_value_info("y", TP.UINT8, [1, 6, 9, 9])], initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def _qlinear_matmul_model():
    a_s, a_z, b_s, y_s, y_z = 0.05, -3, np.float32(0.01), 0.2, 5
    w = RNG.integers(-120, 120, (32, 12)).astype(np.int8)
    inits = [nh.from_array(np.array(a_s, np.float32), "as"), nh.from_array(np.array(a_z, np.int8), "az"),
             nh.from_array(w, "w"), nh.from_array(np.array(b_s), "bs"), nh.from_array(np.array(0, np.int8), "bz"),
             nh.from_array(np.array(y_s, np.float32), "ys"), nh.from_array(np.array(y_z, np.int8), "yz")]
    node = helper.make_node("QLinearMatMul", ["a", "as", "az", "w", "bs", "bz", "ys", "yz"], ["y"])
    g = helper.make_graph([node], "qlm", [helper.make_tensor_value_info("a", TP.INT8, [2, 5, 32])],
                          [helper.make_tensor_value_info("y", TP.INT8, [2, 5, 12])], initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


@pytest.mark.parametrize("build,op,name,dtype,shape", [
    (_qlinear_conv_model, "qconv", "x", np.uint8, (1, 3, 9, 9)),
    (_qlinear_matmul_model, "qmatmul", "a", np.int8, (2, 5, 32)),
], ids=["QLinearConv", "QLinearMatMul"])
def test_qlinear_ops_become_integer_kernels(build, op, name, dtype, shape):
    model = build()
    info = np.iinfo(dtype)
    x = RNG.integers(info.min, info.max + 1, shape).astype(dtype)
    cm = kiln.compile(model)
    assert _ops(cm.graph)[op] == 1 and "requantize" not in _ops(cm.graph)
    got, want = cm.run({name: x})["y"], ort_run(model, {name: x})["y"]
    assert np.max(np.abs(got.astype(int) - want.astype(int))) <= 1
    assert np.mean(got == want) > 0.99


# -- ONNX Runtime's QDQ models of the project's models ----------------------------------------------

def _ort_qdq(model, samples=8, **kw):
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static  # noqa: F401
    from examples.models import example_inputs

    cal = {k: np.stack([example_inputs(model, seed=s)[k] for s in range(samples)]) for k in example_inputs(model)}
    return kiln.quantize(model, cal, **kw)


@pytest.mark.parametrize("name", ["small_cnn", "resnet_style", "bert_encoder"])
def test_ort_quantized_models_match_ort(name):
    from examples.models import bert_encoder, example_inputs, resnet_style, small_cnn

    model = {"small_cnn": lambda: small_cnn(),
             "resnet_style": lambda: resnet_style(depth=10, image=32, width=16, classes=10),
             "bert_encoder": lambda: bert_encoder(layers=1, hidden=64, seq=16, ffn=128)}[name]()
    q = _ort_qdq(model)
    x = example_inputs(model, seed=100)
    cm = kiln.compile(q)
    ops = _ops(cm.graph)
    heavy = ops["qconv"] + ops["qmatmul"]
    assert heavy >= {"small_cnn": 3, "resnet_style": 13, "bert_encoder": 6}[name], ops
    assert ops["conv"] == 0
    got, want = cm.run(x), ort_run(q, x)
    out_scale = _output_scale(q)
    for k in want:
        assert _steps(got[k], want[k], out_scale) <= 1, k


def _output_scale(q: onnx.ModelProto) -> float:
    """Scale of the DequantizeLinear producing the graph output (or of the last one)."""
    inits = {i.name: nh.to_array(i) for i in q.graph.initializer}
    outs = {o.name for o in q.graph.output}
    dqs = [n for n in q.graph.node if n.op_type == "DequantizeLinear"]
    dq = next((n for n in dqs if n.output[0] in outs), dqs[-1])
    return float(inits[dq.input[1]].reshape(-1)[0])


# -- errors -----------------------------------------------------------------------------------------

def _float_conv_model():
    from examples.models import small_cnn

    return small_cnn(image=8, channels=(4,))


@pytest.mark.parametrize("kw,words", [
    (dict(activations="int16"), ["activation type", "'int16'", "int8, uint8"]),
    (dict(weights="uint8"), ["weight type", "int8"]),
    (dict(method="entropy"), ["calibration method", "minmax, percentile"]),
    (dict(skip=["NoSuchNode"]), ["NoSuchNode", "neither node names nor op types"]),
])
def test_unsupported_schemes_are_listed(kw, words):
    x = np.zeros((4, 1, 1, 8, 8), np.float32)
    with pytest.raises(QuantizationError) as e:
        kiln.quantize(_float_conv_model(), {"input": x}, **kw)
    for w in words:
        assert w in str(e.value)


@pytest.mark.parametrize("data,words", [
    ({"image": np.zeros((4, 1, 1, 8, 8), np.float32)}, ["missing ['input']", "unexpected ['image']", "input: float32[1, 1, 8, 8]"]),
    ({"input": np.zeros((4, 3, 8, 8), np.float32)}, ["shape (4, 3, 8, 8)", "input: float32[1, 1, 8, 8]"]),
    ({"input": np.zeros((4, 1, 1, 8, 8), np.int64)}, ["dtype int64", "float32"]),
])
def test_calibration_data_is_checked(data, words):
    with pytest.raises(QuantizationError) as e:
        kiln.quantize(_float_conv_model(), data)
    for w in words:
        assert w in str(e.value)


def test_calibration_npz_samples_along_the_batch_axis(tmp_path):
    from kiln.quantization.calibration import load_calibration

    np.savez(tmp_path / "c.npz", input=np.ones((5, 1, 8, 8), np.float32))
    samples = load_calibration(tmp_path / "c.npz", _float_conv_model())
    assert len(samples) == 5 and samples[0]["input"].shape == (1, 1, 8, 8)


def test_inspect_quant_reports_every_quantized_activation(tmp_path):
    from click.testing import CliRunner

    from kiln.cli import cli

    model, _ = qdq_conv()
    onnx.save(model, tmp_path / "q.onnx")
    res = CliRunner().invoke(cli, ["inspect", str(tmp_path / "q.onnx"), "--quant"])
    assert res.exit_code == 0, res.output
    rows = res.output.strip().splitlines()
    assert "SQNR dB" in rows[0] and len(rows) == 3  # the input and the conv output
    sqnr = [float(r.split()[2]) for r in rows[1:]]
    steps = [float(r.split()[3]) for r in rows[1:]]
    assert steps[0] <= 0.5 + 1e-6  # the input: rounding only
    assert min(sqnr) > 20 and max(steps) < 4
