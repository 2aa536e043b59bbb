"""Microcontroller reference models, built with onnx.helper (random weights, fixed seed).

``mobilenet_v1_vww``: MobileNetV1-0.25 for Visual Wake Words (96x96x3, two classes), as in
the MLPerf Tiny VWW benchmark.

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


# MobileNetV1 (Howard et al. 2017): (output channels at width 1.0, stride) of the 13
# depthwise-separable blocks after the first 3x3/2 convolution
MOBILENET_V1_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1),
                       (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))


def mobilenet_v1_vww(alpha=0.25, size=96, classes=2, seed=0):
    """MobileNetV1-0.25 for Visual Wake Words (MLPerf Tiny): 96x96x3 input, two classes.

    Conv -> BatchNorm -> ReLU6 everywhere, as the original (ONNX Runtime's pre-processing
    folds the BatchNorms into the convolutions before quantization); global average pool,
    a 1x1 convolution as the classifier, softmax. Random weights, fixed seed.
    """
    rng = np.random.default_rng(seed); inits = []; nodes = []
    inits += [nh.from_array(np.array(0.0, np.float32), "six_lo"), nh.from_array(np.array(6.0, np.float32), "six_hi")]

    def const(name, arr):
        inits.append(nh.from_array(np.asarray(arr, np.float32), name)); return name

    def conv_bn_relu6(x, name, cin, cout, k, stride, group=1):
        fan = k * k * cin // group
        w = const(f"{name}_w", rng.standard_normal((cout, cin // group, k, k)) * np.sqrt(2.0 / fan))
        nodes.append(helper.make_node("Conv", [x, w], [f"{name}_c"], kernel_shape=[k, k], strides=[stride, stride],
                                      pads=[k // 2] * 4, group=group))
        bn = [const(f"{name}_{p}", v) for p, v in (("g", 1 + 0.1 * rng.standard_normal(cout)),
                                                   ("b", 0.1 * rng.standard_normal(cout)),
                                                   ("m", 0.1 * rng.standard_normal(cout)),
                                                   ("v", 1 + 0.1 * rng.random(cout)))]
        nodes.append(helper.make_node("BatchNormalization", [f"{name}_c", *bn], [f"{name}_bn"], epsilon=1e-3))
        nodes.append(helper.make_node("Clip", [f"{name}_bn", "six_lo", "six_hi"], [f"{name}_r"]))
        return f"{name}_r"

    width = lambda c: max(8, int(c * alpha))  # noqa: E731
    c = width(32)
    x = conv_bn_relu6("input", "conv0", 3, c, 3, 2)
    for i, (cout, stride) in enumerate(MOBILENET_V1_BLOCKS):
        x = conv_bn_relu6(x, f"dw{i + 1}", c, c, 3, stride, group=c)
        x = conv_bn_relu6(x, f"pw{i + 1}", c, width(cout), 1, 1)
        c = width(cout)
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
    fw = const("fc_w", rng.standard_normal((classes, c, 1, 1)) * np.sqrt(1.0 / c))
    fb = const("fc_b", 0.05 * rng.standard_normal(classes))
    nodes.append(helper.make_node("Conv", ["gap", fw, fb], ["fc"]))
    nodes.append(helper.make_node("Flatten", ["fc"], ["logits"]))
    nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=-1))
    g = helper.make_graph(nodes, "vww", [helper.make_tensor_value_info("input", TP.FLOAT, [1, 3, size, size])],
                          [helper.make_tensor_value_info("probs", TP.FLOAT, [1, classes])], initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
