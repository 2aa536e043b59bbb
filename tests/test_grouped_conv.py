"""Grouped convolutions (kiln/passes/grouped_conv.py): 1x1 ones as batched matmuls, wider
windows with a few wide groups as one dense conv per group.

Tier 1: the rewrite's graph (Before/Expected) and the convolutions it leaves alone; tier 2:
grouped convolutions on the host against ONNX Runtime."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from kiln.frontend.onnx import from_onnx as import_model
from kiln.passes.fold_constants import fold_constants
from kiln.passes.grouped_conv import rewrite_grouped_convs
from tests.util import check_against_ort, make_model

LANES = 16


def grouped_conv_model(c=8, oc=12, hw=4, group=2, k=1, stride=1, bias=True, relu=True, batch=1):
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((oc, c // group, k, k)) / np.sqrt(c // group * k * k)).astype(np.float32)
    inits = [("w", w)] + ([("b", rng.standard_normal(oc).astype(np.float32))] if bias else [])
    out_hw = (hw + 2 * (k // 2) - k) // stride + 1
    nodes = [helper.make_node("Conv", ["x", "w"] + (["b"] if bias else []), ["c" if relu else "y"], group=group,
                              pads=[k // 2] * 4, strides=[stride] * 2)]
    if relu:
        nodes.append(helper.make_node("Relu", ["c"], ["y"]))
    return make_model(nodes, [("x", np.float32, [batch, c, hw, hw])], [("y", np.float32, [batch, oc, out_hw, out_hw])],
                      inits)


def rewritten(model):
    return rewrite_grouped_convs(fold_constants(import_model(model)), LANES).verify()


def test_a_grouped_pointwise_conv_becomes_a_batched_matmul():
    """Before: conv(x [1, 8, 4, 4], w [12, 4, 1, 1], b; group 2), relu.
    Expected: reshape x -> [1, 2, 4, 16]; matmul(w [2, 6, 4], x') + b [2, 6, 1]; reshape ->
    [1, 12, 4, 4]; relu. 16 pixels are one vector: no padding."""
    g = rewritten(grouped_conv_model())
    assert [n.op for n in g.nodes] == ["reshape", "matmul", "add", "reshape", "relu"]
    types = g.value_types()
    reshape, matmul, add, back, _ = g.nodes
    assert types[reshape.outputs[0].name].shape == (1, 2, 4, 16)
    assert g.constants[matmul.inputs[0]].shape == (2, 6, 4)
    assert g.constants[add.inputs[1]].shape == (2, 6, 1)
    assert types[back.outputs[0].name].shape == (1, 12, 4, 4)


def test_pixels_that_are_not_whole_vectors_are_padded_and_sliced_off():
    """7 x 7 = 49 pixels: columns padded with zeros to 64, products sliced back to 49."""
    g = rewritten(grouped_conv_model(hw=7, bias=False))
    assert [n.op for n in g.nodes] == ["reshape", "pad", "matmul", "slice", "reshape", "relu"]
    pad, sl = g.nodes[1], g.nodes[3]
    assert pad.attrs["pads"] == (0, 0, 0, 0, 0, 0, 0, 15)
    assert g.value_types()[sl.outputs[0].name].shape == (1, 2, 6, 49)


def test_a_grouped_window_with_wide_groups_becomes_one_conv_per_group():
    """Before: conv(x [1, 32, 6, 6], w [48, 16, 3, 3], b; group 2), relu.
    Expected: per group g, conv(slice(x, channels 16g..16g+16), w[24g..24g+24], b[...]);
    concat over channels; relu."""
    model = grouped_conv_model(c=32, oc=48, hw=6, group=2, k=3)
    g = rewritten(model)
    assert [n.op for n in g.nodes] == ["slice", "conv", "slice", "conv", "concat", "relu"]
    w = next(a for a in fold_constants(import_model(model)).constants.values() if a.ndim == 4)
    for k, (sl, conv) in enumerate([g.nodes[0:2], g.nodes[2:4]]):
        assert sl.attrs["starts"] == (0, 16 * k, 0, 0) and sl.attrs["ends"] == (1, 16 * k + 16, 6, 6)
        assert "group" not in conv.attrs
        np.testing.assert_array_equal(g.constants[conv.inputs[1]], w[24 * k: 24 * k + 24])


@pytest.mark.parametrize("kwargs", [
    dict(group=1),                    # dense: the NCHWc layout pass's
    dict(c=8, oc=8, group=8),         # depthwise (one input channel per group)
    dict(k=3),                        # a window, but 4 channels per group: too narrow to split
    dict(stride=2),                   # strided 1x1, narrow groups
    dict(c=64, oc=64, k=3, group=16),  # many groups (ResNeXt-like)
])
def test_other_convolutions_are_left_alone(kwargs):
    assert [n.op for n in rewritten(grouped_conv_model(**kwargs)).nodes] == ["conv", "relu"]


@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(hw=7, bias=False),
    dict(c=136, oc=136, hw=14, group=4),           # ShuffleNet's stage 3 layer
    dict(c=24, oc=112, hw=10, group=4, relu=False),
    dict(c=12, oc=6, hw=5, group=3, batch=2),
    dict(group=2, k=3),                            # left as a conv, for comparison
    dict(c=32, oc=48, hw=6, group=2, k=3),         # split per group (AlexNet-like)
    dict(c=32, oc=32, hw=9, group=2, k=5, batch=2, bias=False),
])
def test_grouped_convolutions_match_ort(kwargs):
    model = grouped_conv_model(**kwargs)
    c, hw, batch = kwargs.get("c", 8), kwargs.get("hw", 4), kwargs.get("batch", 1)
    x = np.random.default_rng(1).standard_normal((batch, c, hw, hw)).astype(np.float32)
    check_against_ort(model, {"x": x}, "host", rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("hw,expected", [
    (4, ["reshape", "matmul", "add", "relu", "reshape", "neg"]),
    (7, ["reshape", "pad", "matmul", "add", "relu", "slice", "reshape", "neg"]),
])
def test_the_activation_moves_into_the_matmuls_epilogue(hw, expected):
    """Before: ... add, [slice,] reshape, relu, neg. Expected: the relu right after the add
    (one kernel with the matmul), the slice and reshape after it; a relu that is the
    graph's output stays last (no extra copy)."""
    model = grouped_conv_model(hw=hw)
    model.graph.node.append(helper.make_node("Neg", ["y"], ["z"]))
    model.graph.output[0].name = "z"
    assert [n.op for n in rewritten(model).nodes] == expected
    x = np.random.default_rng(3).standard_normal((1, 8, hw, hw)).astype(np.float32)
    check_against_ort(model, {"x": x}, "host", rtol=1e-4, atol=1e-5)
