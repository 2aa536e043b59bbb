"""Concats assembled in place (kiln/passes/concat_in_place.py): each part's producer writes
its slot of the result, the concat gets no kernel.

Tier 1: which concats the pass takes (Before/Expected) and leaves alone, and where the
memory planner puts the parts; tier 2: models with assembled concats on the host and on
arm64 (QEMU) against ONNX Runtime."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import kiln
from kiln.codegen.kernels import build_kernels
from kiln.frontend.onnx import from_onnx as import_model
from kiln.passes.concat_in_place import assemble_concats, assembled_parts
from kiln.passes.capabilities import DEFAULT_CAPABILITIES
from kiln.passes.fold_constants import fold_constants
from kiln.passes.fuse import fuse
from kiln.passes.memory_plan import plan_memory
from tests.conftest import require_toolchain
from tests.util import check_against_ort, make_model

F32 = np.float32


def assembled(model):
    return assemble_concats(fold_constants(import_model(model))).verify()


def planned(graph):
    """The memory plan of ``graph`` as it is (no layout pass) and its kernels."""
    kernels = build_kernels(graph, fuse(graph), DEFAULT_CAPABILITIES)
    return plan_memory(graph, kernels), kernels


def branches(shape=(1, 4, 3, 3), axis=1, out_ops=("Tanh",)):
    """a = relu(x), b = sigmoid(x), c = concat(a, b; axis), y = tanh(c)."""
    out = list(shape)
    out[axis] *= 2
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Sigmoid", ["x"], ["b"]),
             helper.make_node("Concat", ["a", "b"], ["c"], axis=axis)]
    nodes += [helper.make_node(op, ["c"], ["y"]) for op in out_ops]
    return make_model(nodes, [("x", F32, list(shape))], [("y", F32, out)])


def dense_block(layers=3, channels=4, growth=2, hw=5, batch=1):
    """DenseNet's pattern: c_k = concat(c_{k-1}, f_k) where f_k is computed from c_{k-1};
    every c_k is read by the next layer and by the next concat."""
    rng = np.random.default_rng(0)
    nodes, inits, prev, c = [], [], "x", channels
    for k in range(layers):
        w = (rng.standard_normal((growth, c, 3, 3)) / np.sqrt(9 * c)).astype(F32)
        inits.append((f"w{k}", w))
        nodes += [helper.make_node("Relu", [prev], [f"r{k}"]),
                  helper.make_node("Conv", [f"r{k}", f"w{k}"], [f"f{k}"], pads=[1, 1, 1, 1]),
                  helper.make_node("Concat", [prev, f"f{k}"], [f"c{k}"], axis=1)]
        prev, c = f"c{k}", c + growth
    nodes.append(helper.make_node("Sigmoid", [prev], ["y"]))
    return make_model(nodes, [("x", F32, [batch, channels, hw, hw])], [("y", F32, [batch, c, hw, hw])], inits)


def test_a_concat_of_produced_parts_is_assembled_in_place():
    """Before: c = concat(relu(x), sigmoid(x); axis 1) of [1, 4, 3, 3] halves.
    Expected: c = concat_in_place(a, b): a at byte 0 of c, b at 4 * 9 * 4 = 144."""
    g = assembled(branches())
    assert [n.op for n in g.nodes] == ["relu", "sigmoid", "concat_in_place", "tanh"]
    assert assembled_parts(g) == {"a": ("c", 0), "b": ("c", 144)}


def test_the_assembled_concat_gets_no_kernel():
    g = assembled(branches())
    assert [[n.op for n in group.nodes] for group in fuse(g)] == [["relu"], ["sigmoid"], ["tanh"]]


def test_the_planner_places_each_part_at_its_slot():
    """A chain: c0 = concat(x', f0), c1 = concat(c0, f1), c2 = concat(c1, f2): every part,
    the earlier concats included, lives inside c2's storage at its channel offset."""
    g = assembled(dense_block(layers=3, channels=4, growth=2, hw=5))
    assert [n.op for n in g.nodes].count("concat_in_place") == 2  # c0's first part is the input x
    assert [n.op for n in g.nodes].count("concat") == 1
    plan, _ = planned(g)
    plane = 5 * 5 * 4  # bytes per channel
    base = plan.storage["c2"].index
    assert plan.storage["c1"] == plan.storage["c2"]
    assert plan.storage["f1"].index == base + 6 * plane
    assert plan.storage["f2"].index == base + 8 * plane
    assert plan.storage["c0"].index == base  # c0 is a part of c1, which starts c2


@pytest.mark.parametrize("case, model", [
    ("a batch of 2: each part's slot is two runs", branches(shape=(2, 4, 3, 3))),
    ("a concat over the last axis of [1, 4, 3]", branches(shape=(1, 4, 3), axis=2)),
    ("the concat is a graph output", branches(out_ops=())),
])
def test_concats_whose_result_cannot_hold_the_parts_stay_copies(case, model):
    if case == "the concat is a graph output":  # y = concat(...) itself
        model.graph.node[-1].output[0] = "y"
    g = assembled(model)
    assert "concat_in_place" not in [n.op for n in g.nodes], case
    assert assembled_parts(g) == {}


def _concat_of(parts, extra_nodes=(), outputs=(("y", F32, [1, 8, 3, 3]),), inits=()):
    nodes = list(extra_nodes) + [helper.make_node("Concat", list(parts), ["c"], axis=1),
                                 helper.make_node("Tanh", ["c"], ["y"])]
    return make_model(nodes, [("x", F32, [1, 4, 3, 3])], list(outputs), inits)


@pytest.mark.parametrize("case, model", [
    ("a part is the graph input", _concat_of(["x", "a"], [helper.make_node("Relu", ["x"], ["a"])])),
    ("a part is a graph output", _concat_of(["a", "b"], [helper.make_node("Relu", ["x"], ["a"]),
                                                         helper.make_node("Sigmoid", ["x"], ["b"])],
                                            outputs=(("y", F32, [1, 8, 3, 3]), ("a", F32, [1, 4, 3, 3])))),
    ("one part twice", _concat_of(["a", "a"], [helper.make_node("Relu", ["x"], ["a"])])),
    ("a part is a constant", _concat_of(["a", "k"], [helper.make_node("Relu", ["x"], ["a"])],
                                        inits=[("k", np.ones((1, 4, 3, 3), F32))])),
    ("a part is a view of the graph input", _concat_of(
        ["a", "v"], [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Reshape", ["x", "flat"], ["f"]),
                     helper.make_node("Reshape", ["f", "shape"], ["v"])],
        inits=[("flat", np.array([1, 36], np.int64)), ("shape", np.array([1, 4, 3, 3], np.int64))])),
    ("a part views a graph output", _concat_of(
        ["a", "v"], [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Reshape", ["x", "flat"], ["f"]),
                     helper.make_node("Sigmoid", ["f"], ["s"]), helper.make_node("Reshape", ["s", "flat"], ["o"]),
                     helper.make_node("Reshape", ["o", "shape"], ["v"])],
        outputs=(("y", F32, [1, 8, 3, 3]), ("o", F32, [1, 36])),
        inits=[("flat", np.array([1, 36], np.int64)), ("shape", np.array([1, 4, 3, 3], np.int64))])),
    ("two parts view one value", _concat_of(
        ["v", "w"], [helper.make_node("Reshape", ["x", "flat"], ["f"]), helper.make_node("Sigmoid", ["f"], ["s"]),
                     helper.make_node("Reshape", ["s", "shape"], ["v"]),
                     helper.make_node("Reshape", ["s", "shape"], ["w"])],
        inits=[("flat", np.array([1, 36], np.int64)), ("shape", np.array([1, 4, 3, 3], np.int64))])),
])
def test_concats_with_a_part_that_cannot_move_stay_copies(case, model):
    g = assembled(model)
    assert [n.op for n in g.nodes].count("concat") == 1, case


def test_a_part_that_views_a_value_places_that_value():
    """v = reshape(s): s itself is written into v's slot, so the bytes of v are there too."""
    model = _concat_of(
        ["a", "v"], [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Reshape", ["x", "flat"], ["f"]),
                     helper.make_node("Sigmoid", ["f"], ["s"]), helper.make_node("Reshape", ["s", "shape"], ["v"])],
        inits=[("flat", np.array([1, 36], np.int64)), ("shape", np.array([1, 4, 3, 3], np.int64))])
    g = assembled(model)
    assert [n.op for n in g.nodes if "concat" in n.op] == ["concat_in_place"]
    assert assembled_parts(g) == {"a": ("c", 0), "s": ("c", 36 * 4)}
    plan, _ = planned(g)
    assert plan.storage["s"].index == plan.storage["c"].index + 36 * 4
    assert plan.storage["v"] == plan.storage["s"]
    x = np.random.default_rng(3).standard_normal((1, 4, 3, 3)).astype(F32)
    check_against_ort(model, {"x": x}, "host")


def test_a_part_of_two_concats_is_placed_in_the_first_only():
    """a feeds c1 = concat(a, b) and c2 = concat(a, d): a can live in one slot only."""
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Sigmoid", ["x"], ["b"]),
             helper.make_node("Exp", ["x"], ["d"]),
             helper.make_node("Concat", ["a", "b"], ["c1"], axis=1),
             helper.make_node("Concat", ["a", "d"], ["c2"], axis=1),
             helper.make_node("Add", ["c1", "c2"], ["y"])]
    model = make_model(nodes, [("x", F32, [1, 4, 3, 3])], [("y", F32, [1, 8, 3, 3])])
    g = assembled(model)
    assert [n.op for n in g.nodes if "concat" in n.op] == ["concat_in_place", "concat"]
    x = np.random.default_rng(1).standard_normal((1, 4, 3, 3)).astype(F32)
    check_against_ort(model, {"x": x}, "host")


def test_the_planner_keeps_the_assembled_storage_alive_for_a_part_read_late():
    """a is read again after c's consumer: c's storage, which holds a, must outlive both."""
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Sigmoid", ["x"], ["b"]),
             helper.make_node("Concat", ["a", "b"], ["c"], axis=1),
             helper.make_node("ReduceMean", ["c"], ["m"], axes=[1], keepdims=1),
             helper.make_node("Exp", ["m"], ["e"]),
             helper.make_node("Mul", ["a", "e"], ["y"])]
    model = make_model(nodes, [("x", F32, [1, 4, 3, 3])], [("y", F32, [1, 4, 3, 3])], opset=13)
    plan, kernels = planned(assembled(model))
    start, end, size = plan.intervals["c"]
    assert (start, end, size) == (0, len(kernels) - 1, 8 * 9 * 4)  # from a's write to its last read
    x = np.random.default_rng(2).standard_normal((1, 4, 3, 3)).astype(F32)
    check_against_ort(model, {"x": x}, "host")


# -- tier 2: real builds against ONNX Runtime ------------------------------------------

@pytest.mark.parametrize("layers, channels, growth, hw", [(3, 4, 2, 5), (4, 16, 16, 7), (2, 32, 8, 9)])
def test_dense_blocks_on_the_host(layers, channels, growth, hw):
    model = dense_block(layers, channels, growth, hw)
    x = np.random.default_rng(3).standard_normal((1, channels, hw, hw)).astype(F32)
    check_against_ort(model, {"x": x}, "host")
    ops = [n.op for n in kiln.compile(model, target="host").graph.nodes]
    assert ops.count("concat_in_place") >= layers - 1  # the first concat's first part may be the input

def test_inception_branches_write_the_modules_output():
    """Four branches of a 32-channel input (1x1, 3x3, 5x5 convs and a max pool + 1x1) into one
    concat, read by a 1x1 conv: every branch writes its channels of the concat directly."""
    rng = np.random.default_rng(4)

    def w(oc, c, k):
        return (rng.standard_normal((oc, c, k, k)) / np.sqrt(c * k * k)).astype(F32)
    inits = [("w1", w(16, 32, 1)), ("w3", w(32, 32, 3)), ("w5", w(16, 32, 5)), ("wp", w(16, 32, 1)),
             ("wo", w(32, 80, 1))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["b1"]),
             helper.make_node("Conv", ["x", "w3"], ["b3"], pads=[1] * 4),
             helper.make_node("Conv", ["x", "w5"], ["b5"], pads=[2] * 4),
             helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("Conv", ["p", "wp"], ["bp"]),
             helper.make_node("Concat", ["b1", "b3", "b5", "bp"], ["c"], axis=1),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Conv", ["r", "wo"], ["y"])]
    model = make_model(nodes, [("x", F32, [1, 32, 7, 7])], [("y", F32, [1, 32, 7, 7])], inits)
    x = rng.standard_normal((1, 32, 7, 7)).astype(F32)
    check_against_ort(model, {"x": x}, "host")
    c = kiln.compile(model, target="host")
    assert [n.op for n in c.graph.nodes].count("concat_in_place") == 1
    assert [n.op for n in c.graph.nodes].count("concat") == 0


def test_a_dense_block_on_arm64():
    require_toolchain("aarch64-linux-gnu-gcc", "qemu-aarch64")
    model = dense_block(layers=3, channels=8, growth=4, hw=5)
    x = np.random.default_rng(5).standard_normal((1, 8, 5, 5)).astype(F32)
    check_against_ort(model, {"x": x}, "arm64")
    assert "concat_in_place" in [n.op for n in kiln.compile(model, target="arm64").graph.nodes]
