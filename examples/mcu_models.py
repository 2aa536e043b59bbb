"""Microcontroller reference models, built with onnx.helper (random weights, fixed seed).

``ds_cnn``: the keyword-spotting DS-CNN (Zhang et al., "Hello Edge", 2017) on a 49x10 MFCC
input, as in the MLPerf Tiny KWS benchmark: conv 10x4 stride 2, four depthwise-separable
blocks, global average pool, fully connected to 12 classes.
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto as TP, helper, numpy_helper as nh


def ds_cnn(ch=64, blocks=4, classes=12, seed=0):
    """DS-CNN-S for keyword spotting (Zhang et al. 2017): conv 10x4/2, 4 x (dw3x3, pw1x1), avgpool, fc."""
    rng = np.random.default_rng(seed); inits=[]; nodes=[]
    def w(name, shape, fan):
        inits.append(nh.from_array((rng.standard_normal(shape) * np.sqrt(2.0 / fan)).astype(np.float32), name)); return name
    def b(name, n):
        inits.append(nh.from_array((rng.standard_normal(n) * 0.05).astype(np.float32), name)); return name
    nodes.append(helper.make_node("Conv", ["input", w("w0", (ch, 1, 10, 4), 40), b("b0", ch)], ["c0"], pads=[4, 1, 5, 2], strides=[2, 2]))
    nodes.append(helper.make_node("Relu", ["c0"], ["r0"])); x = "r0"
    for i in range(blocks):
        nodes.append(helper.make_node("Conv", [x, w(f"dw{i}", (ch, 1, 3, 3), 9), b(f"db{i}", ch)], [f"d{i}"], pads=[1, 1, 1, 1], group=ch))
        nodes.append(helper.make_node("Relu", [f"d{i}"], [f"dr{i}"]))
        nodes.append(helper.make_node("Conv", [f"dr{i}", w(f"pw{i}", (ch, ch, 1, 1), ch), b(f"pb{i}", ch)], [f"p{i}"]))
        nodes.append(helper.make_node("Relu", [f"p{i}"], [f"pr{i}"])); x = f"pr{i}"
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"]))
    nodes.append(helper.make_node("Gemm", ["flat", w("fw", (classes, ch), ch), b("fb", classes)], ["logits"], transB=1))
    g = helper.make_graph(nodes, "ds_cnn", [helper.make_tensor_value_info("input", TP.FLOAT, [1, 1, 49, 10])],
                          [helper.make_tensor_value_info("logits", TP.FLOAT, [1, classes])], initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
