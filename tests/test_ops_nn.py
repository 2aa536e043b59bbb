"""NN ops (conv, conv_transpose, matmul/Gemm, norms, softmax, pools, MaxUnpool, LRN, resize) against ONNX Runtime.

Each case is a one-node ONNX model with tensors of a few hundred elements, run on every
backend in ``tests.util.BACKENDS``.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from kiln.errors import KilnError, ShapeError, UnsupportedOperatorError
from kiln.ir import ops
from kiln.ir.dtype import DType
from kiln.ir.graph import TensorType
from tests import util


@pytest.fixture(params=util.BACKENDS)
def backend(request):
    return request.param


def rand(*shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed + 7 * len(shape)).standard_normal(shape).astype(dtype)


def run_node(backend, op_type, inputs, attrs=None, *, inits=(), opset=17, n_out=1, rtol=1e-3, atol=1e-4):
    """Build ``op_type`` over ``inputs`` (name -> array; names in ``inits`` become initializers;
    a name of "" is an absent optional input) and compare Kiln with ONNX Runtime."""
    names = list(inputs)
    feeds = {n: a for n, a in inputs.items() if n and n not in inits}
    init = [(n, a) for n, a in inputs.items() if n in inits]
    outs = [f"y{i}" for i in range(n_out)]
    node = helper.make_node(op_type, names, outs, **(attrs or {}))
    model = with_output_shapes(util.make_model(
        [node], [(n, a.dtype, a.shape) for n, a in feeds.items()],
        [(o, np.float32, None) for o in outs], init, opset=opset))
    return util.check_against_ort(model, feeds, backend, rtol=rtol, atol=atol)


def with_output_shapes(model):
    """The model with its outputs' shapes filled in by ONNX shape inference (the checker
    that Kiln runs requires them)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    for out, inf in zip(model.graph.output, inferred.graph.output):
        assert inf.type.tensor_type.HasField("shape"), f"ONNX cannot infer the shape of {out.name}"
        out.CopyFrom(inf)
    return model


# -- Conv -----------------------------------------------------------------------------------------

CONV_CASES = {
    "1d": ((1, 3, 10), (4, 3, 3), {}),
    "1d_stride_pad_dil": ((2, 2, 11), (3, 2, 3), dict(strides=[2], pads=[1, 2], dilations=[2])),
    "2d": ((1, 3, 7, 8), (4, 3, 3, 3), {}),
    "2d_stride": ((1, 3, 7, 8), (4, 3, 3, 3), dict(strides=[2, 1])),
    "2d_dilation": ((1, 2, 8, 8), (3, 2, 3, 2), dict(dilations=[2, 3])),
    "2d_pads_asym": ((1, 3, 6, 7), (4, 3, 3, 3), dict(pads=[1, 0, 2, 1])),
    "2d_all": ((2, 2, 9, 8), (3, 2, 3, 3), dict(strides=[2, 3], pads=[2, 1, 0, 1], dilations=[1, 2])),
    "2d_1x1": ((1, 5, 4, 4), (6, 5, 1, 1), {}),
    "2d_group2": ((1, 4, 6, 6), (6, 2, 3, 3), dict(group=2, pads=[1, 1, 1, 1])),
    "2d_depthwise": ((1, 3, 7, 7), (3, 1, 3, 3), dict(group=3, pads=[1, 1, 1, 1], strides=[2, 2])),
    "2d_depthwise_mult": ((1, 2, 5, 5), (4, 1, 3, 3), dict(group=2)),
    "2d_same_upper": ((1, 2, 7, 6), (3, 2, 3, 3), dict(auto_pad="SAME_UPPER", strides=[2, 2])),
    "2d_same_lower": ((1, 2, 7, 6), (3, 2, 4, 3), dict(auto_pad="SAME_LOWER", strides=[2, 1])),
    "2d_valid": ((1, 2, 7, 6), (3, 2, 3, 3), dict(auto_pad="VALID", strides=[2, 2])),
    "3d": ((1, 2, 4, 5, 4), (3, 2, 2, 3, 2), {}),
    "3d_pads_stride": ((1, 2, 5, 4, 5), (2, 2, 3, 2, 3), dict(pads=[1, 0, 1, 1, 1, 0], strides=[2, 1, 2])),
}


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv(backend, case, bias):
    xs, ws, attrs = CONV_CASES[case]
    inputs = {"x": rand(*xs), "w": rand(*ws, seed=1)}
    if bias:
        inputs["b"] = rand(ws[0], seed=2)
    run_node(backend, "Conv", inputs, attrs, inits={"w", "b"})


def test_conv_runtime_weights(backend):
    """Weights and bias as graph inputs rather than initializers."""
    run_node(backend, "Conv", {"x": rand(1, 2, 5, 5), "w": rand(3, 2, 3, 3, seed=1), "b": rand(3, seed=2)},
             dict(pads=[1, 1, 1, 1]))


def test_conv_kernel_shape_attr(backend):
    run_node(backend, "Conv", {"x": rand(1, 2, 5, 5), "w": rand(3, 2, 2, 3, seed=1)},
             dict(kernel_shape=[2, 3]), inits={"w"}, opset=11)


def test_conv_stages_have_pad_stage_and_tile_hints():
    x, w = TensorType((1, 3, 6, 6), DType.float32), TensorType((4, 3, 3, 3), DType.float32)
    attrs = {"pads": (1, 1, 1, 1)}
    (out,) = ops.infer_types("conv", [x, w], attrs)
    assert out.shape == (1, 4, 6, 6)
    from kiln.ir.compute import Tensor
    from kiln.ir.expr import Select, walk
    stages = ops.get("conv").compute([Tensor("x", x.shape), Tensor("w", w.shape)], [Tensor("y", out.shape)], attrs)
    pad, conv = stages
    assert (pad.name, pad.tag, pad.inline, pad.shape) == ("y__pad", "pad", False, (1, 3, 8, 8))
    assert (conv.name, conv.tag, dict(conv.hints)) == ("y", "conv", {"tile": (1, 3)})
    assert not any(isinstance(e, Select) for e in walk(conv.body))


def test_conv_channel_mismatch_names_expected_and_got():
    x, w = TensorType((1, 3, 6, 6), DType.float32), TensorType((4, 2, 3, 3), DType.float32)
    with pytest.raises(ShapeError, match=r"3 channels.*expect 2 input channels"):
        ops.infer_types("conv", [x, w], {})


def test_conv_channel_mismatch_in_model_raises_kiln_error():
    node = helper.make_node("Conv", ["x", "w"], ["y"])
    model = util.make_model([node], [("x", np.float32, (1, 3, 5, 5))], [("y", np.float32, None)],
                            [("w", rand(4, 2, 3, 3))])
    with pytest.raises(KilnError):
        util.kiln_run(model, {"x": rand(1, 3, 5, 5)}, "interp")


def test_conv_bad_bias_shape():
    x, w, b = (TensorType(s, DType.float32) for s in ((1, 2, 5, 5), (4, 2, 3, 3), (3,)))
    with pytest.raises(ShapeError, match=r"bias has shape \(3,\); expected \(4,\)"):
        ops.infer_types("conv", [x, w, b], {})


# -- ConvTranspose ----------------------------------------------------------------------------------

CONVT_CASES = {
    "2d": ((1, 2, 4, 4), (2, 3, 3, 3), {}),
    "2d_stride": ((1, 2, 3, 4), (2, 3, 3, 3), dict(strides=[2, 2])),
    "2d_stride_pads": ((1, 2, 4, 3), (2, 2, 3, 3), dict(strides=[2, 3], pads=[1, 0, 1, 2])),
    "2d_output_padding": ((1, 2, 3, 3), (2, 2, 3, 3), dict(strides=[2, 2], output_padding=[1, 0])),
    "2d_dilation": ((1, 1, 4, 4), (1, 2, 2, 3), dict(dilations=[2, 2])),
    "2d_group": ((1, 4, 3, 3), (4, 2, 3, 3), dict(group=2, strides=[2, 1])),
    "2d_depthwise": ((1, 3, 4, 4), (3, 1, 2, 2), dict(group=3, strides=[2, 2])),
    "2d_output_shape": ((1, 2, 3, 3), (2, 2, 3, 3), dict(strides=[2, 2], output_shape=[6, 7])),
    "2d_output_shape_odd": ((1, 2, 3, 3), (2, 2, 3, 3), dict(strides=[2, 2], output_shape=[5, 6])),
    "2d_same_upper": ((1, 2, 3, 3), (2, 2, 3, 3), dict(strides=[2, 2], auto_pad="SAME_UPPER")),
    "2d_same_lower": ((1, 2, 3, 3), (2, 2, 4, 3), dict(strides=[2, 2], auto_pad="SAME_LOWER")),
    "1d": ((1, 2, 5), (2, 3, 3), dict(strides=[3], pads=[1, 1])),
    "3d": ((1, 2, 2, 3, 2), (2, 2, 2, 2, 3), dict(strides=[2, 1, 2])),
}


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("case", sorted(CONVT_CASES))
def test_conv_transpose(backend, case, bias):
    xs, ws, attrs = CONVT_CASES[case]
    inputs = {"x": rand(*xs), "w": rand(*ws, seed=1)}
    if bias:
        inputs["b"] = rand(ws[1] * attrs.get("group", 1), seed=2)
    run_node(backend, "ConvTranspose", inputs, attrs, inits={"w", "b"})


def test_conv_transpose_channel_mismatch():
    x, w = TensorType((1, 3, 4, 4), DType.float32), TensorType((2, 3, 3, 3), DType.float32)
    with pytest.raises(ShapeError, match=r"3 channels; weights .* expect 2"):
        ops.infer_types("conv_transpose", [x, w], {})


# -- MatMul and Gemm --------------------------------------------------------------------------------

@pytest.mark.parametrize("sa,sb", [
    ((3, 4), (4, 5)), ((2, 3, 4), (4, 5)), ((3, 4), (2, 4, 5)), ((2, 1, 3, 4), (3, 4, 2)),
    ((2, 3, 4), (2, 4, 5)), ((4,), (4, 5)), ((3, 4), (4,)), ((4,), (4,)), ((2, 3, 4), (4,)),
    ((4,), (2, 4, 3)), ((1, 1), (1, 1)),
])
@pytest.mark.parametrize("b_const", [False, True])
def test_matmul(backend, sa, sb, b_const):
    run_node(backend, "MatMul", {"a": rand(*sa), "b": rand(*sb, seed=1)}, inits={"b"} if b_const else ())


def test_matmul_stage_tags():
    a, b = TensorType((2, 3, 4), DType.float32), TensorType((4, 5), DType.float32)
    (o,) = ops.infer_types("matmul", [a, b], {})
    from kiln.ir.compute import Tensor
    (st,) = ops.get("matmul").compute([Tensor("a", a.shape), Tensor("b", b.shape)], [Tensor("y", o.shape)], {})
    assert (st.tag, dict(st.hints), st.shape) == ("matmul", {"tile": (1, 2)}, (2, 3, 5))


def test_matmul_inner_dim_mismatch():
    a, b = TensorType((3, 4), DType.float32), TensorType((5, 6), DType.float32)
    with pytest.raises(ShapeError, match=r"K=4.*K=5"):
        ops.infer_types("matmul", [a, b], {})


@pytest.mark.parametrize("trans_a", [0, 1])
@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("alpha,beta", [(1.0, 1.0), (0.5, 2.0), (1.5, 0.0)])
@pytest.mark.parametrize("c_shape", [None, (5,), (1, 5), (3, 1), (3, 5), ()])
def test_gemm(backend, trans_a, trans_b, alpha, beta, c_shape):
    m, k, n = 3, 4, 5
    inputs = {"a": rand(*((k, m) if trans_a else (m, k))), "b": rand(*((n, k) if trans_b else (k, n)), seed=1)}
    if c_shape is not None:
        inputs["c"] = rand(*c_shape, seed=2)
    run_node(backend, "Gemm", inputs, dict(transA=trans_a, transB=trans_b, alpha=alpha, beta=beta),
             inits={"b", "c"}, opset=13)


@pytest.mark.parametrize("trans_a,trans_b", [(0, 0), (1, 1)])
def test_gemm_all_runtime_operands(backend, trans_a, trans_b):
    inputs = {"a": rand(*((4, 3) if trans_a else (3, 4))), "b": rand(*((5, 4) if trans_b else (4, 5)), seed=1),
              "c": rand(3, 5, seed=2)}
    run_node(backend, "Gemm", inputs, dict(transA=trans_a, transB=trans_b, alpha=0.7, beta=1.3))


def test_gemm_opset9_c_required(backend):
    run_node(backend, "Gemm", {"a": rand(2, 3), "b": rand(3, 4, seed=1), "c": rand(4, seed=2)},
             dict(beta=0.5), inits={"b", "c"}, opset=9)


# -- normalization ----------------------------------------------------------------------------------

def _bn_inputs(c, seed=0):
    rng = np.random.default_rng(seed)
    return {"scale": rng.standard_normal(c).astype(np.float32), "bias": rng.standard_normal(c).astype(np.float32),
            "mean": rng.standard_normal(c).astype(np.float32), "var": rng.uniform(0.5, 2, c).astype(np.float32)}


@pytest.mark.parametrize("opset", [7, 9, 14, 15])
@pytest.mark.parametrize("shape", [(2, 3), (2, 3, 5), (1, 4, 3, 5), (1, 2, 3, 2, 2)])
def test_batch_norm(backend, opset, shape):
    inputs = {"x": rand(*shape), **_bn_inputs(shape[1])}
    run_node(backend, "BatchNormalization", inputs, dict(epsilon=1e-3), inits=set(inputs) - {"x"}, opset=opset)


def test_batch_norm_runtime_statistics(backend):
    run_node(backend, "BatchNormalization", {"x": rand(2, 3, 4), **_bn_inputs(3)}, opset=15)


def test_batch_norm_training_mode(backend):
    """Batch statistics normalize; the running statistics blend with momentum (ONNX's reference)."""
    from onnx.reference import ReferenceEvaluator

    inputs, outputs = {"x": rand(2, 3, 4), **_bn_inputs(3)}, ["y", "rm", "rv"]
    node = helper.make_node("BatchNormalization", list(inputs), outputs, training_mode=1, momentum=0.8)
    shapes = {"y": (2, 3, 4), "rm": (3,), "rv": (3,)}
    model = util.make_model([node], [("x", np.float32, (2, 3, 4))], [(o, np.float32, shapes[o]) for o in outputs],
                            [(k, v) for k, v in inputs.items() if k != "x"], opset=15)
    want = dict(zip(outputs, ReferenceEvaluator(model).run(None, {"x": inputs["x"]})))
    util.assert_close(util.kiln_run(model, {"x": inputs["x"]}, backend), want)


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 2, 6), (1, 2, 2, 3, 3)])
def test_instance_norm(backend, shape):
    c = shape[1]
    run_node(backend, "InstanceNormalization",
             {"x": rand(*shape) * 3 + 1, "s": rand(c, seed=1), "b": rand(c, seed=2)},
             dict(epsilon=1e-4), inits={"s", "b"})


@pytest.mark.parametrize("axis", [-1, -2, 1, 0])
@pytest.mark.parametrize("with_bias", [True, False])
def test_layer_norm(backend, axis, with_bias):
    shape = (2, 3, 4, 5)
    norm_shape = shape[axis % 4:]
    inputs = {"x": rand(*shape) * 2 + 0.5, "s": rand(*norm_shape, seed=1)}
    if with_bias:
        inputs["b"] = rand(*norm_shape, seed=2)
    run_node(backend, "LayerNormalization", inputs, dict(axis=axis, epsilon=1e-5), inits={"s", "b"})


def test_layer_norm_mean_and_inv_std_outputs(backend):
    run_node(backend, "LayerNormalization", {"x": rand(2, 3, 8), "s": rand(8, seed=1), "b": rand(8, seed=2)},
             dict(axis=-1), inits={"s", "b"}, n_out=3)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("axis", [None, -1, 0, 1, 2])
def test_softmax(backend, op, opset, axis):
    attrs = {} if axis is None else {"axis": axis}
    run_node(backend, op, {"x": rand(2, 3, 4) * 4}, attrs, opset=opset)


def test_softmax_large_values_are_stable(backend):
    run_node(backend, "Softmax", {"x": np.array([[1000.0, 1001.0, 999.0], [-1000, 0, 1000]], np.float32)}, {})


# -- pooling ----------------------------------------------------------------------------------------

POOL_CASES = {
    "2d_k2s2": ((1, 2, 6, 6), dict(kernel_shape=[2, 2], strides=[2, 2]), 10),
    "2d_k3s1_pad": ((1, 2, 5, 6), dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1]), 10),
    "2d_asym_pads": ((1, 2, 5, 6), dict(kernel_shape=[3, 2], pads=[0, 1, 2, 0], strides=[2, 1]), 10),
    "2d_ceil": ((1, 2, 7, 6), dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1), 10),
    "2d_ceil_pads": ((1, 1, 5, 5), dict(kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1), 10),
    "2d_ceil_overflow": ((1, 1, 6, 7), dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1), 10),
    "2d_ceil_overflow_pads": ((1, 1, 6, 6), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
                                                 ceil_mode=1), 10),
    "2d_dilation": ((1, 2, 7, 7), dict(kernel_shape=[2, 3], dilations=[2, 2], pads=[1, 0, 1, 2]), 19),
    "2d_dilation_ceil": ((1, 1, 8, 7), dict(kernel_shape=[2, 2], dilations=[2, 2], strides=[2, 2], ceil_mode=1), 19),
    "2d_same_upper": ((1, 2, 7, 6), dict(kernel_shape=[3, 2], strides=[2, 2], auto_pad="SAME_UPPER"), 10),
    "2d_same_lower": ((1, 2, 7, 6), dict(kernel_shape=[3, 2], strides=[2, 2], auto_pad="SAME_LOWER"), 10),
    "2d_valid": ((1, 2, 7, 6), dict(kernel_shape=[3, 2], strides=[2, 2], auto_pad="VALID"), 10),
    "1d": ((2, 3, 9), dict(kernel_shape=[3], strides=[2], pads=[1, 1]), 10),
    "3d": ((1, 2, 4, 5, 4), dict(kernel_shape=[2, 2, 2], strides=[2, 1, 2], pads=[0, 1, 0, 1, 0, 1]), 10),
}


@pytest.mark.parametrize("case", sorted(POOL_CASES))
def test_max_pool(backend, case):
    shape, attrs, opset = POOL_CASES[case]
    run_node(backend, "MaxPool", {"x": rand(*shape)}, attrs, opset=max(opset, 12))


@pytest.mark.parametrize("include_pad", [0, 1])
@pytest.mark.parametrize("case", sorted(POOL_CASES))
def test_avg_pool(backend, case, include_pad):
    shape, attrs, opset = POOL_CASES[case]
    run_node(backend, "AveragePool", {"x": rand(*shape)}, dict(attrs, count_include_pad=include_pad), opset=opset)


@pytest.mark.parametrize("opset", [1, 8, 10, 11, 12])
def test_max_pool_opsets(backend, opset):
    run_node(backend, "MaxPool", {"x": rand(1, 2, 5, 5)}, dict(kernel_shape=[2, 2], pads=[1, 1, 0, 0]), opset=opset)


def test_max_pool_int8(backend):
    x = np.random.default_rng(0).integers(-128, 127, (1, 2, 5, 5)).astype(np.int8)
    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], pads=[1, 1, 1, 1])
    model = with_output_shapes(util.make_model([node], [("x", np.int8, x.shape)], [("y", np.int8, None)], opset=12))
    util.check_against_ort(model, {"x": x}, backend)


@pytest.mark.parametrize("attrs", [dict(kernel_shape=[2, 2]), dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
                                   dict(kernel_shape=[2, 2], storage_order=1), dict(kernel_shape=[3], dilations=[2])])
def test_max_pool_indices(backend, attrs):
    """The second output: flat input positions of the maxima (column-major with storage_order=1)."""
    shape = (2, 3, 5, 6)[:2 + len(attrs["kernel_shape"])]
    node = helper.make_node("MaxPool", ["x"], ["y", "idx"], **attrs)
    model = with_output_shapes(util.make_model([node], [("x", np.float32, shape)],
                                               [("y", np.float32, None), ("idx", np.int64, None)], opset=12))
    util.check_against_ort(model, {"x": rand(*shape)}, backend)


def _pool_unpool_model(shape, attrs, output_shape=None):
    """MaxPool with Indices, then MaxUnpool of its values back to (output_shape or) the
    unpooled shape; output_shape is an initializer."""
    unpool_in = ["p", "i"] + (["s"] if output_shape is not None else [])
    nodes = [helper.make_node("MaxPool", ["x"], ["p", "i"], **attrs),
             helper.make_node("MaxUnpool", unpool_in, ["y"], **attrs)]
    if output_shape is None:  # ONNX infers the unpooled shape, not a given output_shape
        return with_output_shapes(util.make_model(nodes, [("x", np.float32, shape)], [("y", np.float32, None)],
                                                  opset=11))
    return util.make_model(nodes, [("x", np.float32, shape)], [("y", np.float32, output_shape)],
                           [("s", np.asarray(output_shape, np.int64))], opset=11)


def _unpool_model(x_shape, attrs, i_shape=None, output_shape=None, output_shape_is_input=False):
    """A lone MaxUnpool of graph inputs x and i; output_shape an initializer or a graph input."""
    names, inits = ["x", "i"], []
    inputs = [("x", np.float32, x_shape), ("i", np.int64, i_shape or x_shape)]
    if output_shape is not None:
        names.append("s")
        if output_shape_is_input:
            inputs.append(("s", np.int64, (len(output_shape),)))
        else:
            inits.append(("s", np.asarray(output_shape, np.int64)))
    y_shape = x_shape[:2] + tuple(2 * n for n in x_shape[2:])  # kernel 2, stride 2
    node = helper.make_node("MaxUnpool", names, ["y"], **attrs)
    return util.make_model([node], inputs, [("y", np.float32, y_shape)], inits, opset=11)


@pytest.mark.parametrize("shape,attrs", [
    ((2, 3, 6, 6), dict(kernel_shape=[2, 2], strides=[2, 2])),
    ((1, 2, 7, 7), dict(kernel_shape=[3, 3], strides=[2, 2])),   # overlapping windows
    ((2, 2, 5, 6), dict(kernel_shape=[3, 2], strides=[1, 2])),   # a maximum may win two windows
])
@pytest.mark.parametrize("with_output_shape", [False, True])
def test_max_unpool_after_max_pool(backend, shape, attrs, with_output_shape):
    """The unpooled shape is the pool's input shape here, given or not as output_shape."""
    model = _pool_unpool_model(shape, attrs, shape if with_output_shape else None)
    util.check_against_ort(model, {"x": rand(*shape)}, backend)


@pytest.mark.parametrize("shape", [(2, 3, 5, 5), (1, 2, 7, 6)])
def test_max_unpool_back_to_an_odd_input_shape(backend, shape):
    """MaxPool of an odd-sized input, then MaxUnpool to that size: every value goes back
    where MaxPool found it (I indexes output_shape, as in ONNX Runtime and PyTorch; ONNX's
    reference disagrees, onnx/onnx#2398)."""
    model = _pool_unpool_model(shape, dict(kernel_shape=[2, 2], strides=[2, 2]), shape)
    util.check_against_ort(model, {"x": rand(*shape)}, backend)


def test_max_unpool_of_repeated_indices_keeps_the_last(backend):
    """Indices need not come from MaxPool: any flat position, the last write winning."""
    idx = np.array([[[[5, 0], [5, 15]], [[16, 31], [16, 17]]]], np.int64)  # planes are 16 apart
    model = _unpool_model((1, 2, 2, 2), dict(kernel_shape=[2, 2], strides=[2, 2]))
    util.check_against_ort(model, {"x": rand(1, 2, 2, 2), "i": idx}, backend)


def test_max_unpool_needs_a_constant_output_shape():
    model = _unpool_model((1, 1, 2, 2), dict(kernel_shape=[2, 2], strides=[2, 2]), output_shape=(1, 1, 4, 4),
                          output_shape_is_input=True)
    with pytest.raises(UnsupportedOperatorError,
                       match=r"input 2 \(output_shape\) is a run-time value.*needs it constant"):
        util.kiln_run(model, {}, "interp")


@pytest.mark.parametrize("attrs,i_shape,output_shape,error,match", [
    # ONNX's own shape inference finds a kernel_shape of the wrong rank first
    (dict(kernel_shape=[2, 2, 2]), None, None, ShapeError, "kernel_shape has incorrect size"),
    (dict(kernel_shape=[2, 2], strides=[2, 2]), (1, 1, 4), None, ShapeError,
     r"indices I have shape \(1, 1, 4\); expected X's shape \(1, 1, 2, 2\)"),
    (dict(kernel_shape=[2, 2], strides=[2, 2]), None, (1, 2, 4, 4), ShapeError,
     r"output_shape \(1, 2, 4, 4\) does not fit X \(1, 1, 2, 2\); expected 4 dims, N and C as X's \(1, 1\)"),
])
def test_max_unpool_bad_inputs(attrs, i_shape, output_shape, error, match):
    with pytest.raises(error, match=match):
        util.kiln_run(_unpool_model((1, 1, 2, 2), attrs, i_shape, output_shape), {}, "interp")


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
@pytest.mark.parametrize("shape", [(2, 3, 7), (1, 3, 4, 5), (1, 2, 3, 2, 4)])
def test_global_pool(backend, op, shape):
    run_node(backend, op, {"x": rand(*shape)})


@pytest.mark.parametrize("size,attrs", [(3, {}), (5, dict(alpha=1e-2, beta=0.5, bias=2.0)), (1, dict(alpha=0.1))])
def test_lrn(backend, size, attrs):
    run_node(backend, "LRN", {"x": rand(1, 6, 3, 4)}, dict(attrs, size=size))


# -- Resize / Upsample --------------------------------------------------------------------------------

NEAREST_MODES = ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]
COORD_MODES = ["half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel", "tf_half_pixel_for_nn"]


def _resize(backend, x, attrs, scales=None, sizes=None, opset=13):
    inputs = {"x": x, "roi": np.zeros(0, np.float32)}
    inputs["scales"] = np.asarray(scales if scales is not None else [], np.float32)
    if sizes is not None:
        inputs["sizes"] = np.asarray(sizes, np.int64)
    run_node(backend, "Resize", inputs, attrs, inits=set(inputs) - {"x"}, opset=opset)


@pytest.mark.parametrize("nearest_mode", NEAREST_MODES)
@pytest.mark.parametrize("coord", COORD_MODES)
@pytest.mark.parametrize("scales", [(1, 1, 2, 3), (1, 1, 0.5, 0.75), (1, 1, 1.5, 2.5)])
def test_resize_nearest(backend, nearest_mode, coord, scales):
    _resize(backend, rand(1, 2, 4, 4), dict(mode="nearest", nearest_mode=nearest_mode,
                                            coordinate_transformation_mode=coord), scales=scales)


@pytest.mark.parametrize("coord", ["half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel"])
@pytest.mark.parametrize("scales,sizes", [((1, 1, 2, 2), None), ((1, 1, 0.6, 1.7), None), (None, (1, 2, 7, 3)),
                                          (None, (1, 2, 1, 5))])
def test_resize_linear(backend, coord, scales, sizes):
    x, attrs = rand(1, 2, 4, 5), dict(mode="linear", coordinate_transformation_mode=coord)
    if coord == "align_corners" and scales is not None and any(
            float(np.float32(s) * n) % 1 for s, n in zip(scales, x.shape)):
        # in * scale is fractional: ONNX's reference (and its backend test data) divides by
        # in * scale - 1, ONNX Runtime by the floored output length - 1. Kiln follows ONNX.
        _resize_vs_onnx_reference(backend, x, attrs, scales)
        return
    _resize(backend, x, attrs, scales=scales, sizes=sizes)


def _resize_vs_onnx_reference(backend, x, attrs, scales):
    inputs = {"x": x, "roi": np.zeros(0, np.float32), "scales": np.asarray(scales, np.float32)}
    _vs_onnx_reference(backend, "Resize", inputs, attrs, opset=13)


def _vs_onnx_reference(backend, op_type, inputs, attrs, opset):
    """Like run_node, but against ONNX's reference evaluator (every input but x a constant)."""
    from onnx.reference import ReferenceEvaluator

    x = inputs["x"]
    inits = [(n, a) for n, a in inputs.items() if n != "x"]
    node = helper.make_node(op_type, list(inputs), ["y0"], **attrs)
    model = with_output_shapes(util.make_model([node], [("x", x.dtype, x.shape)], [("y0", np.float32, None)],
                                               inits, opset=opset))
    want = {"y0": ReferenceEvaluator(model).run(None, {"x": x})[0]}
    util.assert_close(util.kiln_run(model, {"x": x}, backend), want)


@pytest.mark.parametrize("shape,sizes", [((3, 4), (5, 7)), ((1, 1, 3, 2, 3), (1, 1, 5, 4, 2))])
def test_resize_linear_other_ranks(backend, shape, sizes):
    _resize(backend, rand(*shape), dict(mode="linear"), sizes=sizes)


@pytest.mark.parametrize("coord", ["half_pixel", "asymmetric", "align_corners"])
@pytest.mark.parametrize("exclude_outside", [0, 1])
def test_resize_cubic(backend, coord, exclude_outside):
    _resize(backend, rand(1, 1, 4, 5), dict(mode="cubic", coordinate_transformation_mode=coord,
                                            exclude_outside=exclude_outside, cubic_coeff_a=-0.5),
            sizes=(1, 1, 7, 3))


def test_resize_opset11(backend):
    _resize(backend, rand(1, 2, 3, 4), dict(mode="nearest"), scales=(1, 1, 2, 2), opset=11)


@pytest.mark.parametrize("mode", ["nearest", "linear"])
@pytest.mark.parametrize("scales", [(1, 1, 2, 3), (1, 1, 0.5, 0.7)])
def test_resize_opset10(backend, mode, scales):
    run_node(backend, "Resize", {"x": rand(1, 2, 4, 4), "scales": np.asarray(scales, np.float32)},
             dict(mode=mode), inits={"scales"}, opset=10)


@pytest.mark.parametrize("attrs,sizes", [
    (dict(axes=[2, 3]), (6, 3)),
    (dict(axes=[3, 2], keep_aspect_ratio_policy="not_larger"), (9, 5)),
    (dict(axes=[2, 3], keep_aspect_ratio_policy="not_smaller"), (7, 5)),
])
def test_resize_opset18_axes_and_aspect(backend, attrs, sizes):
    _resize(backend, rand(1, 2, 4, 4), dict(attrs, mode="linear"), sizes=sizes, opset=18)


@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_resize_half_pixel_symmetric(backend, mode):
    _resize(backend, rand(1, 1, 4, 5), dict(mode=mode, coordinate_transformation_mode="half_pixel_symmetric"),
            sizes=(1, 1, 6, 3), opset=19)


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
@pytest.mark.parametrize("roi,sizes", [((0, 0, 0.4, 0.6, 1, 1, 0.6, 0.8), (1, 1, 3, 3)),
                                       ((0, 0, -0.2, 0.1, 1, 1, 1.2, 0.9), (1, 1, 5, 4)),
                                       ((0, 0, 0.5, 0.5, 1, 1, 0.5, 0.5), (1, 1, 1, 1))])
def test_resize_tf_crop_and_resize(backend, mode, roi, sizes):
    """A crop box in [0, 1] units, resized; outside the input, extrapolation_value."""
    inputs = {"x": rand(1, 2, 5, 6), "roi": np.asarray(roi, np.float32), "scales": np.zeros(0, np.float32),
              "sizes": np.asarray(sizes, np.int64)}
    attrs = dict(mode=mode, coordinate_transformation_mode="tf_crop_and_resize", extrapolation_value=-7.0)
    inputs["sizes"][1] = 2
    # ONNX Runtime ignores the extrapolation and shifts the samples when the box leaves the
    # input; ONNX's reference (and its backend test data) does not: Kiln follows ONNX.
    _vs_onnx_reference(backend, "Resize", inputs, attrs, opset=13)


@pytest.mark.parametrize("mode", ["nearest", "linear"])
@pytest.mark.parametrize("opset", [7, 9])
def test_upsample(backend, mode, opset):
    scales = [1.0, 1.0, 2.0, 3.0]
    if opset == 7:
        run_node(backend, "Upsample", {"x": rand(1, 2, 3, 3)}, dict(mode=mode, scales=scales), opset=7)
    else:
        run_node(backend, "Upsample", {"x": rand(1, 2, 3, 3), "s": np.asarray(scales, np.float32)},
                 dict(mode=mode), inits={"s"}, opset=9)
