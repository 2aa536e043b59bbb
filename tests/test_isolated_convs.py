"""Lone convolutions between NCHW tensors (kiln/passes/isolated_convs.py) and the graph
outputs that stay views (kiln/passes/memory_plan.py, ``output_views``).

Tier 1: which convolutions the layout pass would convert into NCHWc and straight back out
(``layout.isolated_convs``), the rewrite's graph, ``depthwise_conv``'s shape errors and the
memory plan of an output view; tier 2: the rewritten convolutions on the host against ONNX
Runtime."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import kiln
from kiln.errors import ShapeError
from kiln.frontend.onnx import from_onnx as import_model
from kiln.ir import ops
from kiln.ir.graph import TensorType
from kiln.ir.dtype import DType
from kiln.passes.fold_constants import fold_constants
from kiln.passes.isolated_convs import plain_isolated_convs
from kiln.passes.layout import isolated_convs
from kiln.passes.memory_plan import Storage
from tests.util import check_against_ort, make_model

LANES = 16


def conv_model(c=8, oc=None, hw=112, k=3, group=None, stride=1, dilation=1, bias=True, then=(), batch=1):
    """x -> Conv (depthwise unless ``oc``/``group`` say otherwise) -> each op in ``then``
    ("relu6", "pointwise": a 1x1 conv, "relu") -> y."""
    rng = np.random.default_rng(0)
    oc = oc or c
    group = group or (c if oc == c else 1)
    w = (rng.standard_normal((oc, c // group, k, k)) / np.sqrt(c // group * k * k)).astype(np.float32)
    inits = [("w", w)] + ([("b", rng.standard_normal(oc).astype(np.float32))] if bias else [])
    pad = dilation * (k // 2)
    out_hw = (hw + 2 * pad - dilation * (k - 1) - 1) // stride + 1
    names = ["c%d" % i for i in range(len(then))] + ["y"]
    nodes = [helper.make_node("Conv", ["x", "w"] + (["b"] if bias else []), [names[0]], group=group,
                              pads=[pad] * 4, strides=[stride] * 2, dilations=[dilation] * 2)]
    out_c = oc
    for op, src, dst in zip(then, names, names[1:]):
        if op == "relu6":
            nodes.append(helper.make_node("Clip", [src, "lo", "hi"], [dst]))
            inits += [("lo", np.float32(0)), ("hi", np.float32(6))]
        elif op == "relu":
            nodes.append(helper.make_node("Relu", [src], [dst]))
        else:  # a pointwise conv to 16 channels
            inits.append(("w2", (rng.standard_normal((16, out_c, 1, 1)) / np.sqrt(out_c)).astype(np.float32)))
            nodes.append(helper.make_node("Conv", [src, "w2"], [dst]))
            out_c = 16
    return make_model(nodes, [("x", np.float32, [batch, c, hw, hw])],
                      [("y", np.float32, [batch, out_c, out_hw, out_hw])], inits)


def graph_of(model):
    return fold_constants(import_model(model)).verify()


def rewritten(model):
    return plain_isolated_convs(graph_of(model), LANES, LANES, (8, 2 * LANES)).verify()


# -- which convolutions are isolated --------------------------------------------------------

@pytest.mark.parametrize("then, expected", [
    ((), {"y"}),                     # input and output NCHW: converted in and straight back out
    (("relu6",), {"c0"}),            # through an elementwise op with constant operands
    (("pointwise",), set()),         # the depthwise result feeds a blocked conv: a region of two
])
def test_a_conv_is_isolated_when_its_blocked_form_would_only_be_converted(then, expected):
    assert isolated_convs(graph_of(conv_model(then=then)), LANES) == expected


def test_a_conv_whose_input_other_blocked_ops_read_is_not_isolated():
    """x feeds the conv and, as a residual, a blocked add after it: one conversion of x
    serves both."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((16, 1, 3, 3)) / 3).astype(np.float32)  # (64 x 64: isolation only)
    model = make_model([helper.make_node("Conv", ["x", "w"], ["c"], group=16, pads=[1] * 4),
                        helper.make_node("Add", ["c", "x"], ["s"]), helper.make_node("Relu", ["s"], ["y"])],
                       [("x", np.float32, [1, 16, 64, 64])], [("y", np.float32, [1, 16, 64, 64])], [("w", w)])
    assert isolated_convs(graph_of(model), LANES) == set()


# -- the rewrite ------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, expected", [
    ({}, ["depthwise_conv"]),                              # 7 tiles of 16 columns: plain
    ({"then": ("relu6",)}, ["depthwise_conv", "clip"]),
    ({"hw": 64}, ["conv"]),                                # 2 tiles of 32: every tile at a border
    ({"hw": 56}, ["conv"]),                                # rows not whole vectors
    ({"stride": 2}, ["conv"]),                             # strided columns would be gathers
    ({"then": ("pointwise",)}, ["conv", "conv"]),          # not isolated
    ({"oc": 16, "k": 1, "hw": 8}, ["reshape", "matmul", "add", "reshape"]),  # 64 pixels: 2 tiles
    ({"oc": 16, "k": 1, "hw": 7}, ["conv"]),               # 49 pixels: the blocked conv is faster
    ({"oc": 16, "k": 3, "hw": 64}, ["conv"]),              # a dense window keeps NCHWc
])
def test_which_isolated_convs_run_plain(kwargs, expected):
    assert [n.op for n in rewritten(conv_model(**kwargs)).nodes] == expected


def test_a_pointwise_conv_as_matmul_writes_the_graph_output_in_place():
    """Before: conv(x [1, 8, 8, 8], w [16, 8, 1, 1], b) -> y, a graph output.
    Expected: x viewed as [1, 1, 8, 64]; matmul(w [1, 16, 8], x') + b [1, 16, 1]; y a view of
    the sum, computed in the caller's buffer: no copy kernel."""
    g = rewritten(conv_model(oc=16, k=1, hw=8))
    reshape, matmul, add, back = g.nodes
    types = g.value_types()
    assert types[reshape.outputs[0].name].shape == (1, 1, 8, 64)
    assert g.constants[matmul.inputs[0]].shape == (1, 16, 8)
    assert g.constants[add.inputs[1]].shape == (1, 16, 1)
    assert back.outputs[0].name == "y" and back.inputs[0] == add.outputs[0].name
    m = kiln.compile(conv_model(oc=16, k=1, hw=8), target="host")
    assert [n.op for n in m.result.graph.nodes if n.op in ("reshape", "reshape_copy", "identity")] == ["reshape",
                                                                                                       "reshape"]
    assert m.result.plan.storage[add.outputs[0].name] == Storage("output", 0)


def test_depthwise_conv_refuses_what_is_not_depthwise():
    x = TensorType((1, 8, 16, 16), DType.float32)
    with pytest.raises(ShapeError, match="depthwise_conv takes x"):
        ops.infer_types("depthwise_conv", [x, TensorType((8, 2, 3, 3), DType.float32)], {"group": 4})
    with pytest.raises(ShapeError, match="group=C"):
        ops.infer_types("depthwise_conv", [x, TensorType((8, 1, 3, 3), DType.float32)], {"group": 1})


# -- against ONNX Runtime ---------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [
    {},
    {"then": ("relu6",), "bias": False},
    {"k": 5, "dilation": 2, "batch": 2},
    {"hw": 144, "c": 4, "then": ("relu",)},
    {"oc": 32, "k": 1, "hw": 16, "then": ("relu",)},   # the activation joins the matmul's epilogue
    {"oc": 24, "k": 1, "hw": 8, "batch": 3, "bias": False},
])
def test_plain_convs_match_ort(kwargs):
    model = conv_model(**kwargs)
    m = kiln.compile(model, target="host")
    assert not {"conv", "conv_nchwc"} & {n.op for n in m.result.graph.nodes}
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    check_against_ort(model, {"x": x}, "host", rtol=1e-4, atol=1e-5)


def test_two_outputs_viewing_one_value_both_hold_it():
    """y1 and y2 both reshape relu(x): the first is computed in place, the second copied."""
    model = make_model([helper.make_node("Relu", ["x"], ["r"]),
                        helper.make_node("Reshape", ["r", "s1"], ["y1"]),
                        helper.make_node("Reshape", ["r", "s2"], ["y2"])],
                       [("x", np.float32, [4, 6])], [("y1", np.float32, [24]), ("y2", np.float32, [6, 4])],
                       [("s1", np.array([24], np.int64)), ("s2", np.array([6, 4], np.int64))])
    m = kiln.compile(model, target="host")
    assert [n.op for n in m.result.graph.nodes].count("reshape_copy") == 1
    x = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    out = m.run({"x": x})
    np.testing.assert_array_equal(out["y1"], np.maximum(x, 0).reshape(24))
    np.testing.assert_array_equal(out["y2"], np.maximum(x, 0).reshape(6, 4))


def test_snapshot_plain_depthwise_conv(monkeypatch):
    """The bounds-tested depthwise kernel on an AVX2-class host (pinned: the schedule depends
    on the vector width): tiles of rows x 16 columns, the border tests partitioned out of the
    interior rows and columns."""
    from kiln.passes.capabilities import Capabilities
    from kiln.targets import host
    from tests.test_codegen import check_snapshot

    monkeypatch.setattr(host, "capabilities", lambda: Capabilities(32, 16, 2, plain_isolated_convs=True))
    m = kiln.compile(conv_model(c=16, then=("relu6",)), target="host")
    assert m.kernel_count == 1  # the clip joins the conv's epilogue
    check_snapshot("plain_depthwise_conv_relu6.c", m.source())
