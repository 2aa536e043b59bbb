"""Cortex-M integer convolutions channels last (kiln/passes/integer_layout.py
``channels_last_convs``): the graph the pass makes (Before/Expected), the same integers as the
NCHW graph in the numpy interpreter and as the host build on the emulated M4, an arena without
staging copies; the per-kernel profile of the MCU harness; and the index identity the C99
renderer needs to see a channels-last dot product (kiln/ir/expr.py ``linear_terms``)."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto as TP, helper, numpy_helper as nh

import kiln
from kiln.frontend.onnx import from_onnx
from kiln.ir.dtype import INDEX
from kiln.ir.expr import Bin, Const, Var, linear_terms
from kiln.ir.interp import run_graph
from kiln.passes.integer_io import integer_io
from kiln.passes.integer_layout import channels_last_convs
from tests.conftest import require_toolchain

RNG = np.random.default_rng(5)


def _small_cnn(head_reads_flat_twice: bool = False):
    """conv 3x3 (1 -> 8, pads 1) -> ReLU -> depthwise 3x3 (pads 1) -> ReLU -> conv 1x1 (8 -> 12)
    -> ReLU -> Flatten -> Gemm (12*6*6 -> 5), quantized (min-max). ``head_reads_flat_twice``:
    the flattened activations also feed an Add (so they cannot stay in NHWC order)."""
    def w(*shape):
        return (RNG.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)
    n = helper.make_node
    inits = [nh.from_array(w(8, 1, 3, 3), "w0"), nh.from_array(w(8, 1, 3, 3), "w1"),
             nh.from_array(w(12, 8, 1, 1), "w2"), nh.from_array(w(5, 432), "fw"),
             nh.from_array(np.zeros(5, np.float32), "fb")]
    nodes = [n("Conv", ["x", "w0"], ["a"], pads=[1] * 4), n("Relu", ["a"], ["ar"]),
             n("Conv", ["ar", "w1"], ["b"], pads=[1] * 4, group=8), n("Relu", ["b"], ["br"]),
             n("Conv", ["br", "w2"], ["c"]), n("Relu", ["c"], ["cr"]), n("Flatten", ["cr"], ["f"]),
             n("Gemm", ["f", "fw", "fb"], ["y"], transB=1)]
    outputs = [helper.make_tensor_value_info("y", TP.FLOAT, [1, 5])]
    if head_reads_flat_twice:
        nodes.append(n("Add", ["f", "f"], ["f2"]))
        outputs.append(helper.make_tensor_value_info("f2", TP.FLOAT, [1, 432]))
    g = helper.make_graph(nodes, "small_cnn", [helper.make_tensor_value_info("x", TP.FLOAT, [1, 1, 6, 6])],
                          outputs, initializer=inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    return kiln.quantize(model, {"x": RNG.random((16, 1, 6, 6)).astype(np.float32)}, method="minmax")


def _before(model):
    """The integer graph as the Cortex-M pipeline hands it to ``partition_graph``."""
    from kiln.passes.manager import run_pipeline
    from kiln.targets import get_target

    target, handed = get_target("cortex-m4"), []
    target.partition_graph = lambda g: handed.append(g) or g
    run_pipeline(from_onnx(model), target)
    return handed[0]


def _layout(graph):
    """(op, channels_last, nchw_input, pads_in_storage, taps_major) of each node, in order."""
    return [(n.op, *(n.attrs.get(a, 0) for a in ("channels_last", "nchw_input", "pads_in_storage", "taps_major")))
            for n in graph.nodes]


def test_convolutions_go_channels_last_and_the_head_reads_nhwc_with_permuted_weights():
    before = _before(_small_cnn())
    assert [op for op, *_ in _layout(before)] == ["qconv", "qconv", "qconv", "reshape", "qmatmul"]
    after = channels_last_convs(before)
    expected = [("qconv", 1, 1, 0, 0),    # reads the NCHW image (its own staging copy pads and transposes)
                ("qconv", 1, 0, 1, 1),    # depthwise: padding in its producer's storage, weights taps-major
                ("qconv", 1, 0, 0, 0),    # 1x1: reads the NHWC value in place
                ("reshape", 0, 0, 0, 0),  # flattens the NHWC value as it is: no transpose back
                ("qmatmul", 0, 0, 0, 0)]
    assert _layout(after) == expected
    shapes = [tuple(n.outputs[0].type.shape) for n in after.nodes]
    assert shapes == [(1, 6, 6, 8), (1, 6, 6, 8), (1, 6, 6, 12), (1, 432), (1, 5)]
    dw_old, dw_new = (g.constants[g.nodes[1].inputs[1]] for g in (before, after))
    assert dw_old.shape == (8, 3, 3) and np.array_equal(dw_new, dw_old.transpose(1, 2, 0))  # (KH, KW, OC)
    mm = after.nodes[-1]
    w_old, w_new = before.constants[before.nodes[-1].inputs[1]], after.constants[mm.inputs[1]]
    # column (h, w, c) of the new weights is column (c, h, w) of the old ones
    assert np.array_equal(w_new.reshape(5, 6, 6, 12), w_old.reshape(5, 12, 6, 6).transpose(0, 2, 3, 1))
    x = {"x": RNG.integers(0, 256, (1, 1, 6, 6)).astype(np.uint8)}
    assert np.array_equal(run_graph(after, x)["y"], run_graph(before, x)["y"])


def test_flattened_value_read_by_anything_but_matmuls_is_transposed_back():
    before = _before(_small_cnn(head_reads_flat_twice=True))
    after = channels_last_convs(before)
    ops = [op for op, *_ in _layout(after)]
    assert ops[:4] == ["qconv", "qconv", "qconv", "transpose"] and "qmatmul" in ops
    mm = next(n for n in after.nodes if n.op == "qmatmul")
    assert not mm.inputs[1].endswith("__nhwc")           # the weights as they were
    x = {"x": RNG.integers(0, 256, (1, 1, 6, 6)).astype(np.uint8)}
    want, got = run_graph(before, x), run_graph(after, x)
    assert all(np.array_equal(got[k], want[k]) for k in want)


def test_cortex_m_kernels_stage_only_the_image():
    """Only the first convolution (over the NCHW image) keeps a staging copy; the arena is
    the activations alone."""
    cm = kiln.compile(_small_cnn(), target="cortex-m4")
    temps = [name for k in cm.result.kernels for name, _ in k.temps]
    assert len(temps) == 1 and temps[0].startswith("kernel_0.")
    assert "transpose" not in {n.op for n in cm.graph.nodes}
    # no test around window rows on Cortex-M (Capabilities.skip_border_taps)
    assert "if (" not in cm.files["model.c"].split("kiln_small_cnn_run")[0]


@pytest.mark.parametrize("target", ["cortex-m4", "cortex-m55", "cortex-m4:nodsp"])
def test_channels_last_model_matches_host_exactly_and_profiles_each_kernel(target):
    """The DSP (SMLABB/SMLATT), Helium and plain-C lane-wise depthwise helpers, and the
    1x4 dot-product tiles of the other convolutions, against the host build."""
    require_toolchain("arm-none-eabi-gcc")
    require_toolchain("qemu-system-arm")
    model = _small_cnn()
    cm = kiln.compile(model, target=target)
    assert ("kiln_lane_mac4_u8s8(" in cm.files["model.c"]) == (target != "cortex-m4:nodsp")
    host = kiln.compile(integer_io(from_onnx(model))[0], target="host")
    xs = [{"x": RNG.integers(0, 256, (1, 1, 6, 6)).astype(np.uint8)} for _ in range(3)]
    runner = cm.build()
    for x, o in zip(xs, runner.run_batch(xs)):
        assert np.array_equal(o["y"], host.run(x)["y"])
    total = runner.instructions[0]
    profile = runner.profile(xs[0])
    assert [name.split(" ")[0] for name, _ in profile] == [k.name for k in cm.result.kernels]
    assert "qconv -> " in profile[0][0] and all(count > 0 for _, count in profile)
    # the kernels account for the run, less the harness's checks and plus one mark per kernel
    assert 0.9 * total < sum(count for _, count in profile) < total + 100 * len(profile)
    assert runner.instructions[0] >= total                # the profiled run counts its marks too


@pytest.mark.parametrize("c,k", [(8, 1), (8, 3), (64, 2), (5, -2)])
def test_linear_terms_merge_a_division_with_its_remainder(c, k):
    q, a = Var("q", INDEX), Var("a", INDEX)
    x = Bin("add", Bin("mul", a, Const(10, INDEX), INDEX), q, INDEX)
    div, mod = Bin("floordiv", x, Const(c, INDEX), INDEX), Bin("mod", x, Const(c, INDEX), INDEX)
    e = Bin("add", Bin("mul", div, Const(k * c, INDEX), INDEX), Bin("mul", mod, Const(k, INDEX), INDEX), INDEX)
    assert linear_terms(e) == {a: 10 * k, q: k, "": 0}


def test_linear_terms_keep_a_division_whose_remainder_does_not_match():
    q = Var("q", INDEX)
    div, mod = Bin("floordiv", q, Const(8, INDEX), INDEX), Bin("mod", q, Const(8, INDEX), INDEX)
    e = Bin("add", Bin("mul", div, Const(4, INDEX), INDEX), mod, INDEX)     # 4 * (q // 8) + q % 8
    assert linear_terms(e) == {div: 4, mod: 1, "": 0}


def test_taps_major_weights_of_the_wrong_rank_are_refused():
    from kiln.errors import ShapeError
    from kiln.ir.ops.qlinear import logical_weights

    assert logical_weights((3, 3, 16), {"taps_major": 1}, "qconv") == (16, 3, 3)
    with pytest.raises(ShapeError, match=r"taps-major must be \(KH, KW, OC\); got \(16, 9\)"):
        logical_weights((16, 9), {"taps_major": 1}, "qconv")
