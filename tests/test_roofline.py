"""kiln.roofline: the multiply-adds counted from ONNX models (Before/Expected by hand), the
host's peak measured by a real compiled program, and benchmarks/roofline.py on tiny sizes.
(How fast the host is, is the benchmark's business: the tests check that the numbers exist
and are consistent, not what they are.)"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from kiln.roofline import Peak, arithmetic, host_peak, model_flops
from tests.conftest import require_toolchain


@pytest.fixture(scope="module")
def gcc():
    require_toolchain("gcc")


def _model(nodes, inputs, outputs, inits=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _f(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def _w(name, shape, dtype=np.float32):
    return numpy_helper.from_array(np.zeros(shape, dtype), name)


def test_conv_counts_output_elements_times_its_window():
    # 1x3x8x8 -> 1x4x8x8 (pad 1): 256 outputs x (3 x 3 x 3) products
    m = _model([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
               [_f("x", [1, 3, 8, 8])], [_f("y", [1, 4, 8, 8])], [_w("w", (4, 3, 3, 3))])
    assert model_flops(m) == 2 * 256 * 27


def test_depthwise_conv_counts_one_channel_per_output():
    m = _model([helper.make_node("Conv", ["x", "w"], ["y"], group=8, strides=[2, 2], pads=[1, 1, 1, 1])],
               [_f("x", [1, 8, 8, 8])], [_f("y", [1, 8, 4, 4])], [_w("w", (8, 1, 3, 3))])
    assert model_flops(m) == 2 * (8 * 4 * 4) * 9


def test_matmul_gemm_and_batched_products_count_k_per_output():
    nodes = [helper.make_node("MatMul", ["a", "b"], ["ab"]),                      # (2,3,4)x(4,5): 30 outputs x 4
             helper.make_node("Gemm", ["c", "d"], ["cd"], transA=1, transB=1)]   # c (6,2)^T, d (7,6)^T: 14 x 6
    m = _model(nodes, [_f("a", [2, 3, 4]), _f("c", [6, 2])], [_f("ab", [2, 3, 5]), _f("cd", [2, 7])],
               [_w("b", (4, 5)), _w("d", (7, 6))])
    assert model_flops(m) == 2 * (30 * 4 + 14 * 6)


def test_integer_forms_count_like_their_float_ops_and_other_ops_count_nothing():
    u8, i8 = TensorProto.UINT8, TensorProto.INT8
    nodes = [helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"]),
             helper.make_node("Relu", ["f"], ["g"]),
             helper.make_node("MatMulInteger", ["p", "q"], ["r"])]
    inits = [numpy_helper.from_array(np.array(v, dt), n) for n, v, dt in
             (("xs", 0.1, np.float32), ("xz", 0, np.uint8), ("ws", 0.1, np.float32), ("wz", 0, np.int8),
              ("ys", 0.1, np.float32), ("yz", 0, np.uint8))]
    inits += [_w("w", (2, 3, 1, 1), np.int8), _w("q", (3, 4), np.int8)]
    m = _model(nodes, [_f("x", [1, 3, 5, 5], u8), _f("f", [100]), _f("p", [2, 3], u8)],
               [_f("y", [1, 2, 5, 5], u8), _f("g", [100]), _f("r", [2, 4], TensorProto.INT32)], inits)
    assert model_flops(m) == 2 * (50 * 3 + 8 * 3)


def test_conv_transpose_counts_input_elements_times_its_scatter():
    m = _model([helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2])],
               [_f("x", [1, 4, 3, 3])], [_f("y", [1, 2, 7, 7])], [_w("w", (4, 2, 3, 3))])
    assert model_flops(m) == 2 * (4 * 9) * (2 * 9)


def test_a_symbolic_shape_gives_no_count():
    m = _model([helper.make_node("MatMul", ["a", "b"], ["y"])], [_f("a", ["batch", 4])], [_f("y", ["batch", 5])],
               [_w("b", (4, 5))])
    assert model_flops(m) is None


def test_fraction_of_the_peak():
    p = Peak(threads=2, fp32_gflops=200.0, int8_gops=800.0)
    assert p.fraction(100e9, 1.0) == pytest.approx(0.5)
    assert p.fraction(400e9, 1.0, integer=True) == pytest.approx(0.5)
    assert Peak(1, 100.0, None).fraction(1e9, 1.0, integer=True) is None
    assert (p.roof(), p.roof(integer=True)) == (200.0, 800.0)


def test_the_best_of_two_measurements_counts():
    a, b = Peak(2, 200.0, None), Peak(2, 150.0, 700.0)
    assert a.best(b) == Peak(2, 200.0, 700.0) == b.best(a)


def test_integer_arithmetic_is_a_model_that_quantizes_its_activations():
    relu = _model([helper.make_node("Relu", ["x"], ["y"])], [_f("x", [4])], [_f("y", [4])])
    assert arithmetic(relu) == "fp32"
    qdq = _model([helper.make_node("QuantizeLinear", ["x", "s"], ["q"]),
                  helper.make_node("DequantizeLinear", ["q", "s"], ["y"])], [_f("x", [4])], [_f("y", [4])],
                 [numpy_helper.from_array(np.array(0.1, np.float32), "s")])
    assert arithmetic(qdq) == "int8"
    weight_only = _model([helper.make_node("DequantizeLinear", ["wq", "s"], ["w"]),
                          helper.make_node("MatMul", ["x", "w"], ["y"])], [_f("x", [1, 4])], [_f("y", [1, 2])],
                         [numpy_helper.from_array(np.zeros((4, 2), np.int8), "wq"),
                          numpy_helper.from_array(np.array(0.1, np.float32), "s")])
    assert arithmetic(weight_only) == "fp32"  # int8 weights, float arithmetic


def test_host_peak_is_measured_by_a_compiled_program(gcc):
    one = host_peak(1, seconds=0.02, repeats=1)
    assert one.threads == 1 and one.fp32_gflops > 1.0
    with open("/proc/cpuinfo") as f:
        vnni = " avx512_vnni" in f.read()
    assert (one.int8_gops is not None) == vnni


def test_roofline_script_quick_run_writes_its_table(gcc, tmp_path, capsys):
    from benchmarks import roofline as R

    out = tmp_path / "roofline.md"
    assert R.main(["--quick", "--models", "gpt", "--repeats", "2", "--write", "--out", str(out)]) == 0
    md = out.read_text()
    assert "measured peak on 2 threads" in md
    gpt = next(line for line in md.splitlines() if line.startswith("| gpt | fp32 |"))
    cells = [c.strip() for c in gpt.strip("|").split("|")]
    assert "—" not in cells  # every column has a number: both peers ran, the flops were counted
    int8 = next(line for line in md.splitlines() if "_int8 | int8 |" in line)
    with open("/proc/cpuinfo") as f:
        vnni = " avx512_vnni" in f.read()
    assert int8.count("—") == (0 if vnni else 3)  # without VNNI: no int8 peak, no shares, no roof
    assert "| model | arithmetic | GFLOP |" in capsys.readouterr().out


def test_roofline_script_rejects_an_unknown_model(capsys):
    from benchmarks import roofline as R

    assert R.main(["--quick", "--models", "nope"]) == 2
    assert "nope" in capsys.readouterr().err


def test_shapes_come_from_onnx_shape_inference():
    """A value without declared shape (an intermediate) is inferred, not skipped."""
    nodes = [helper.make_node("Relu", ["x"], ["h"]), helper.make_node("MatMul", ["h", "w"], ["y"])]
    m = _model(nodes, [_f("x", [3, 4])], [_f("y", [3, 6])], [_w("w", (4, 6))])
    assert not any(v.name == "h" for v in m.graph.value_info)
    assert model_flops(onnx.ModelProto.FromString(m.SerializeToString())) == 2 * 18 * 4
