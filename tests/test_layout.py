"""The NCHWc layout pass and the conv schedules it leads to: channel blocks per tensor,
register tiles spanning several channel blocks, a depthwise conv's padding computed inside it."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import kiln
from kiln.frontend.onnx import from_onnx as import_model
from kiln.ir.expr import Select, walk
from kiln.ir.loop import Alloc, For, Seq, Store, walk_stmts
from kiln.passes.capabilities import Capabilities
from kiln.passes.fold_constants import fold_constants
from kiln.passes.fuse import fuse
from kiln.passes.layout import channel_block, to_nchwc
from kiln.codegen.kernels import build_kernels


@pytest.mark.parametrize("channels,block,expected", [
    (64, 16, 16), (24, 16, 8), (40, 16, 8), (12, 16, 4), (6, 16, None), (3, 16, None), (24, 8, 8), ("n", 16, None),
])
def test_channel_block_is_the_widest_power_of_two_that_divides(channels, block, expected):
    assert channel_block(channels, block) == expected


def _conv(name, x, y, cin, cout, k, rng, group=1, pad=0):
    w = (rng.standard_normal((cout, cin // group, k, k)) * 0.2).astype(np.float32)
    b = (rng.standard_normal(cout) * 0.1).astype(np.float32)
    node = helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [y], group=group, pads=[pad] * 4)
    return node, [numpy_helper.from_array(w, f"{name}_w"), numpy_helper.from_array(b, f"{name}_b")]


def _mobilenet_block(hw=10, cin=16, mid=24, cout=32):
    """expand 1x1 (cin -> mid) + relu, depthwise 3x3 (mid) + relu, project 1x1 (mid -> cout):
    ``mid`` = 24 is not a multiple of AVX-512's 16 lanes."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    for args in (("e", "x", "e", cin, mid, 1, rng), ("d", "er", "d", mid, mid, 3, rng, mid, 1),
                 ("p", "dr", "y", mid, cout, 1, rng)):
        n, i = _conv(*args)
        nodes.append(n)
        inits += i
    nodes.insert(1, helper.make_node("Relu", ["e"], ["er"]))
    nodes.insert(3, helper.make_node("Relu", ["d"], ["dr"]))
    g = helper.make_graph(nodes, "mb", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, hw, hw])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cout, hw, hw])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_narrow_channel_counts_stay_blocked_with_a_narrower_block():
    graph = fold_constants(import_model(_mobilenet_block()))
    blocked = to_nchwc(graph, 16).verify()
    ops = [n.op for n in blocked.nodes]
    assert ops == ["to_nchwc", "conv_nchwc", "relu", "conv_nchwc", "relu", "conv_nchwc", "from_nchwc"]
    types = blocked.value_types()
    blocks = [types[n.outputs[0].name].shape[-1] for n in blocked.nodes if n.op == "conv_nchwc"]
    assert blocks == [8, 8, 16]  # 24 channels in blocks of 8, 32 in blocks of 16


def test_mixed_channel_blocks_match_onnxruntime():
    model = _mobilenet_block()
    x = np.random.default_rng(1).standard_normal((1, 16, 10, 10)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = kiln.compile(model, target="host").run({"x": x})["y"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def _kernels(model, caps):
    graph = to_nchwc(fold_constants(import_model(model)), caps.vector_bytes // 4).verify()
    return graph, build_kernels(graph, fuse(graph), caps)


AVX512 = Capabilities(vector_bytes=64, vector_registers=32, threads=2)


def test_dense_conv_tile_spans_two_output_channel_blocks():
    _, kernels = _kernels(_mobilenet_block(hw=16, cin=32, mid=32, cout=64), AVX512)
    project = kernels[-2]  # the 1x1 conv 32 -> 64: 4 blocks of 16, a tile takes 2
    tiles = [s.buffer.shape for s in walk_stmts(project.func.body) if isinstance(s, Alloc) and s.buffer.scope == "local"]
    assert (8, 2, 16) in tiles


def test_depthwise_padding_is_a_bounds_test_not_a_copy():
    graph, kernels = _kernels(_mobilenet_block(hw=16, cin=32, mid=32, cout=64), AVX512)
    producers = graph.producers()
    dw = next(k for k in kernels if any(producers[o].op == "relu" and any(
        n.op == "conv_nchwc" and n.attrs.get("depthwise") for n in graph.nodes if n.outputs[0].name == producers[o].inputs[0])
        for o in k.outputs))
    body = dw.func.body
    nests = body.stmts if isinstance(body, Seq) else (body,)
    assert len(nests) == 1 and not dw.temps, "no padded copy of the input"
    selects = [e for s in walk_stmts(body) if isinstance(s, Store) for e in walk(s.value) if isinstance(e, Select)]
    assert selects  # out-of-bounds taps read as 0
    x = np.random.default_rng(2).standard_normal((1, 32, 16, 16)).astype(np.float32)
    model = _mobilenet_block(hw=16, cin=32, mid=32, cout=64)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(kiln.compile(model).run({"x": x})["y"], want, rtol=1e-4, atol=1e-5)


def test_rgb_stem_is_padded_plane_by_plane():
    """A conv whose input block is all of its 3 channels pads (N, 1, C, H, W): the copy runs
    along W, contiguous in the image it reads through the NCHWc conversion."""
    rng = np.random.default_rng(3)
    node, inits = _conv("s", "x", "y", 3, 32, 3, rng, pad=1)
    node = helper.make_node("Conv", node.input, node.output, pads=[1] * 4, strides=[2, 2])
    g = helper.make_graph([node], "stem", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 20, 20])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 10, 10])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    compiled = kiln.compile(model)
    pads = [(name, t.shape) for k in compiled.result.kernels for name, t in k.temps if name.endswith("__pad")]
    assert [shape for _, shape in pads] == [(1, 1, 3, 22, 22)]
    x = rng.standard_normal((1, 3, 20, 20)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(compiled.run({"x": x})["y"], want, rtol=1e-4, atol=1e-5)


def _pooled_model(pool_is_output: bool):
    """conv 3x3 (16 -> 32) + relu, global average pool, flatten (or the pool as the output)."""
    rng = np.random.default_rng(2)
    conv, inits = _conv("c", "x", "c", 16, 32, 3, rng, pad=1)
    nodes = [conv, helper.make_node("Relu", ["c"], ["r"]), helper.make_node("GlobalAveragePool", ["r"], ["p"])]
    out = "p" if pool_is_output else "y"
    if not pool_is_output:
        nodes.append(helper.make_node("Flatten", ["p"], ["y"]))
    shape = [1, 32, 1, 1] if pool_is_output else [1, 32]
    g = helper.make_graph(nodes, "pooled", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 9, 9])],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, shape)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_global_average_pool_of_a_blocked_value_pools_before_the_conversion():
    """Before: conv_nchwc, relu, from_nchwc (32 x 81 values), global_avg_pool.
    Expected: conv_nchwc, relu, a mean over H and W in the blocked layout, from_nchwc (32 values)."""
    blocked = to_nchwc(fold_constants(import_model(_pooled_model(False))), 16).verify()
    ops = [n.op for n in blocked.nodes]
    assert ops[:5] == ["to_nchwc", "conv_nchwc", "relu", "reduce_mean", "from_nchwc"]
    mean = blocked.nodes[3]
    assert mean.attrs == {"axes": (2, 3), "keepdims": True}
    assert blocked.value_types()[mean.outputs[0].name].shape == (1, 2, 1, 1, 16)
    # a pool that is the graph's output keeps the plain rule (the output is NCHW by name)
    plain = to_nchwc(fold_constants(import_model(_pooled_model(True))), 16).verify()
    assert [n.op for n in plain.nodes][-2:] == ["from_nchwc", "global_avg_pool"]


@pytest.mark.parametrize("pool_is_output", [False, True])
def test_pooled_model_matches_onnxruntime(pool_is_output):
    model = _pooled_model(pool_is_output)
    x = np.random.default_rng(3).standard_normal((1, 16, 9, 9)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = next(iter(kiln.compile(model, target="host").run({"x": x}).values()))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def _fire_model(branches=((16, 1), (16, 3)), plain_part: bool = False, axis: int = 1, cin: int = 16,
                concat_is_output: bool = False, hw: int = 7):
    """Convs on one input, concatenated over ``axis`` (a SqueezeNet fire module), then a conv
    of the result; ``plain_part`` adds the input itself (never blocked) as a last part."""
    rng = np.random.default_rng(5)
    nodes, inits, parts = [], [], []
    for k, (oc, size) in enumerate(branches):
        n, i = _conv(f"b{k}", "x", f"p{k}", cin, oc, size, rng, pad=size // 2)
        nodes.append(n)
        inits += i
        parts.append(f"p{k}")
    if plain_part:
        parts.append("x")
    nodes.append(helper.make_node("Concat", parts, ["cat"], axis=axis))
    total = sum(oc for oc, _ in branches) + (cin if plain_part else 0)
    out_shape = [1, total, hw, hw] if axis % 4 == 1 else [1, branches[0][0], hw * len(parts), hw]
    if concat_is_output:
        out = "cat"
    else:
        n, i = _conv("after", "cat", "y", total, 16, 1, rng)
        nodes.append(n)
        inits += i
        out, out_shape = "y", [1, 16, hw, hw]
    g = helper.make_graph(nodes, "fire", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, hw, hw])],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, out_shape)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_a_concat_of_blocked_parts_stays_blocked():
    """Before: conv_nchwc x2, from_nchwc x2, concat (NCHW), to_nchwc, conv_nchwc.
    Expected: conv_nchwc x2, a concat of the blocked parts along the block axis, conv_nchwc."""
    blocked = to_nchwc(fold_constants(import_model(_fire_model())), 16).verify()
    assert [n.op for n in blocked.nodes] == ["to_nchwc", "conv_nchwc", "conv_nchwc", "concat", "conv_nchwc",
                                             "from_nchwc"]
    cat = blocked.nodes[3]
    assert cat.attrs == {"axis": 1}
    assert blocked.value_types()[cat.outputs[0].name].shape == (1, 2, 7, 7, 16)


@pytest.mark.parametrize("branches,plain_part,axis,concat_is_output,expected", [
    # a plain part (the graph input, 16 channels) is blocked for the concat
    (((16, 1), (16, 3)), True, 1, False, "blocked"),
    # negative axis: still the channel axis of a 4-D tensor
    (((16, 1), (16, 3)), False, -3, False, "blocked"),
    # parts in different blocks (16 and 8 channels) keep the plain concat
    (((16, 1), (8, 3)), False, 1, False, "plain"),
    # a concat over another axis keeps the plain concat
    (((16, 1), (16, 3)), False, 2, True, "plain"),
    # a concat that is the graph's output stays NCHW by name
    (((16, 1), (16, 3)), False, 1, True, "plain"),
])
def test_which_concats_stay_blocked(branches, plain_part, axis, concat_is_output, expected):
    model = _fire_model(branches, plain_part, axis, concat_is_output=concat_is_output)
    blocked = to_nchwc(fold_constants(import_model(model)), 16).verify()
    types = blocked.value_types()
    cat = next(n for n in blocked.nodes if n.op == "concat")
    assert (len(types[cat.outputs[0].name].shape) == 5) == (expected == "blocked")
    x = np.random.default_rng(6).standard_normal((1, 16, 7, 7)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = next(iter(kiln.compile(model, target="host").run({"x": x}).values()))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("channels,block_aligned", [((16, 48), True), ((8, 24), False)])
def test_a_slice_of_whole_channel_blocks_stays_blocked(channels, block_aligned):
    """conv (48 channels, blocked) -> slice of channels -> conv: the slice reads blocks
    s/b..e/b of the blocked value in place of unblocking the whole tensor."""
    rng = np.random.default_rng(7)
    n1, i1 = _conv("a", "x", "a", 16, 48, 1, rng)
    n2, i2 = _conv("b", "s", "y", channels[1] - channels[0], 16, 3, rng, pad=1)
    starts = numpy_helper.from_array(np.array([channels[0]], np.int64), "starts")
    ends = numpy_helper.from_array(np.array([channels[1]], np.int64), "ends")
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    g = helper.make_graph([n1, helper.make_node("Slice", ["a", "starts", "ends", "axes"], ["s"]), n2], "sl",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 6, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 6, 6])],
                          i1 + i2 + [starts, ends, axes])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    blocked = to_nchwc(fold_constants(import_model(model)), 16).verify()
    sl = next(n for n in blocked.nodes if n.op == "slice")
    assert (len(blocked.value_types()[sl.outputs[0].name].shape) == 5) == block_aligned
    x = np.random.default_rng(8).standard_normal((1, 16, 6, 6)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = kiln.compile(model, target="host").run({"x": x})["y"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def _avg_pooled_model(hw=9, **pool):
    """conv (16 -> 32 channels, blocked) -> AveragePool(**pool) -> conv: Inception's pool branch."""
    rng = np.random.default_rng(9)
    n1, i1 = _conv("a", "x", "a", 16, 32, 1, rng)
    n2, i2 = _conv("b", "p", "y", 32, 16, 1, rng)
    pool = {"kernel_shape": [3, 3], **pool}
    k, s, p = pool["kernel_shape"], pool.get("strides", [1, 1]), pool.get("pads", [0] * 4)
    rounding = np.ceil if pool.get("ceil_mode") else np.floor
    out = [int(rounding((hw + p[d] + p[d + 2] - k[d]) / s[d])) + 1 for d in range(2)]
    g = helper.make_graph([n1, helper.make_node("AveragePool", ["a"], ["p"], **pool), n2], "avg",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, hw, hw])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16] + out)], i1 + i2)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_an_average_pool_of_a_blocked_value_stays_blocked():
    """Before: conv_nchwc, from_nchwc, avg_pool (3x3, stride 1, pad 1), to_nchwc, conv_nchwc.
    Expected: conv_nchwc, avg_pool_nchwc on [1, 2, 9, 9, 16], conv_nchwc: no conversion between."""
    blocked = to_nchwc(fold_constants(import_model(_avg_pooled_model(pads=[1, 1, 1, 1], strides=[1, 1]))),
                       16).verify()
    ops = [n.op for n in blocked.nodes]
    assert ops == ["to_nchwc", "conv_nchwc", "avg_pool_nchwc", "conv_nchwc", "from_nchwc"]
    pool = blocked.nodes[2]
    assert pool.attrs == {"kernel_shape": (3, 3), "strides": (1, 1), "pads": (1, 1, 1, 1), "dilations": (1, 1),
                          "ceil_mode": 0, "count_include_pad": 0}
    assert blocked.value_types()[pool.outputs[0].name].shape == (1, 2, 9, 9, 16)


@pytest.mark.parametrize("pool", [
    dict(pads=[1, 1, 1, 1], strides=[1, 1]),                         # Inception's pool branch
    dict(pads=[1, 1, 1, 1], strides=[1, 1], count_include_pad=1),    # padding counted
    dict(strides=[2, 2], ceil_mode=1),                               # windows past the end
    dict(pads=[0, 1, 1, 0], strides=[2, 1], kernel_shape=[2, 3]),    # uneven everything
])
def test_blocked_average_pools_match_onnxruntime(pool):
    model = _avg_pooled_model(**pool)
    x = np.random.default_rng(10).standard_normal((1, 16, 9, 9)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    compiled = kiln.compile(model, target="host")
    assert "avg_pool_nchwc" in [n.op for n in compiled.graph.nodes]
    np.testing.assert_allclose(compiled.run({"x": x})["y"], want, rtol=1e-4, atol=1e-5)
