"""GELU written out op by op becomes the ``gelu`` op (kiln/passes/activations.py): the
Before/Expected pass tests, the chains it must leave alone, and whole models against ORT."""
from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import kiln
from kiln.ir.dtype import DType
from kiln.ir.graph import Graph, Node, TensorType, Value
from kiln.ir.interp import run_graph
from kiln.passes.algebraic import simplify_algebra

F = DType.float32
K = math.sqrt(2.0 / math.pi)


def V(name, *shape):
    return Value(name, TensorType(tuple(shape), F))


def N(op, ins, out, **attrs):
    return Node(op, tuple(ins), (V(out, 2, 8),), attrs)


def scalars(**values) -> dict[str, np.ndarray]:
    return {k: np.array(v, np.float32) for k, v in values.items()}


def tanh_gelu_chain(cube: str = "pow", outer: str = "x_half") -> Graph:
    """GPT-2's spelling, with the cube and the outer product in one of several arrangements."""
    nodes = []
    if cube == "pow":
        nodes.append(N("pow", ["x", "three"], "x3"))
    else:  # x * x * x
        nodes += [N("mul", ["x", "x"], "x2"), N("mul", ["x2", "x"], "x3")]
    nodes += [
        N("mul", ["c", "x3"], "cx3"),
        N("add", ["cx3", "x"], "inner"),
        N("mul", ["k", "inner"], "u"),
        N("tanh", ["u"], "t"),
        N("add", ["one", "t"], "s"),
    ]
    if outer == "x_half":    # (x * 0.5) * (1 + t)
        nodes += [N("mul", ["x", "half"], "xh"), N("mul", ["xh", "s"], "y")]
    elif outer == "s_last":  # 0.5 * (x * (1 + t))
        nodes += [N("mul", ["s", "x"], "xs"), N("mul", ["half", "xs"], "y")]
    consts = scalars(three=3.0, c=0.044715, k=K, one=1.0, half=0.5)
    return Graph((V("x", 2, 8),), (V("y", 2, 8),), tuple(nodes), consts).verify()


def erf_gelu_chain() -> Graph:
    """torch.onnx's nn.GELU(): x * (erf(x / sqrt 2) + 1) * 0.5."""
    return Graph((V("x", 2, 8),), (V("y", 2, 8),), (
        N("div", ["x", "sqrt2"], "a"),
        N("erf", ["a"], "e"),
        N("add", ["e", "one"], "s"),
        N("mul", ["x", "s"], "xs"),
        N("mul", ["xs", "half"], "y"),
    ), scalars(sqrt2=math.sqrt(2.0), one=1.0, half=0.5)).verify()


def only_gelu(approximate: str) -> Graph:
    return Graph((V("x", 2, 8),), (V("y", 2, 8),),
                 (Node("gelu", ("x",), (V("y", 2, 8),), {"approximate": approximate}),)).verify()


def assert_same_values(before: Graph, after: Graph):
    x = np.linspace(-6, 6, 16, dtype=np.float32).reshape(2, 8)
    np.testing.assert_allclose(run_graph(after, {"x": x})["y"], run_graph(before, {"x": x})["y"],
                               rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("cube,outer", [("pow", "x_half"), ("mul", "s_last")])
def test_tanh_gelu_chain_becomes_gelu(cube, outer):
    before = tanh_gelu_chain(cube, outer)
    after = simplify_algebra(before)
    want = only_gelu("tanh")
    assert after.nodes == want.nodes
    assert after.constants == {}
    assert_same_values(before, after)


def test_erf_gelu_chain_becomes_gelu():
    before = erf_gelu_chain()
    after = simplify_algebra(before)
    assert after.nodes == only_gelu("none").nodes
    assert_same_values(before, after)


@pytest.mark.parametrize("name,value", [("c", 0.044), ("k", 0.8), ("half", 0.25), ("three", 4.0)])
def test_chain_with_other_constants_is_left_alone(name, value):
    g = tanh_gelu_chain()
    consts = dict(g.constants)
    consts[name] = np.array(value, np.float32)
    g = g.replace(constants=consts)
    assert "gelu" not in [n.op for n in simplify_algebra(g).nodes]


def test_chain_over_two_different_inputs_is_left_alone():
    # 0.5 * z * (1 + erf(x / sqrt 2)): the outer factor is not the erf's input
    g = Graph((V("x", 2, 8), V("z", 2, 8)), (V("y", 2, 8),), (
        N("div", ["x", "sqrt2"], "a"), N("erf", ["a"], "e"), N("add", ["e", "one"], "s"),
        N("mul", ["z", "s"], "zs"), N("mul", ["zs", "half"], "y"),
    ), scalars(sqrt2=math.sqrt(2.0), one=1.0, half=0.5)).verify()
    assert "gelu" not in [n.op for n in simplify_algebra(g).nodes]


def test_gelu_tanh_op_matches_its_definition():
    # the op computes x * sigmoid(2u); the definition is 0.5 x (1 + tanh u)
    x = np.linspace(-12, 12, 4001, dtype=np.float32).reshape(1, -1)
    g = Graph((Value("x", TensorType(x.shape, F)),), (Value("y", TensorType(x.shape, F)),),
              (Node("gelu", ("x",), (Value("y", TensorType(x.shape, F)),), {"approximate": "tanh"}),))
    got = run_graph(g.verify(), {"x": x})["y"]
    xd = x.astype(np.float64)
    want = 0.5 * xd * (1 + np.tanh(K * (xd + 0.044715 * xd ** 3)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def _onnx_mlp(gelu: str) -> onnx.ModelProto:
    """x @ W1 -> GELU (spelled out in ONNX ops) -> @ W2, the shape of a transformer FFN."""
    rng = np.random.default_rng(3)
    init = [helper.make_tensor(n, TensorProto.FLOAT, a.shape, a.ravel())
            for n, a in (("w1", rng.standard_normal((32, 64)).astype(np.float32) * 0.3),
                         ("w2", rng.standard_normal((64, 16)).astype(np.float32) * 0.3))]
    for n, v in (("half", 0.5), ("one", 1.0), ("c", 0.044715), ("k", K), ("three", 3.0),
                 ("sqrt2", math.sqrt(2.0))):
        init.append(helper.make_tensor(n, TensorProto.FLOAT, [], [v]))
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"])]
    if gelu == "tanh":
        nodes += [helper.make_node("Pow", ["h", "three"], ["h3"]),
                  helper.make_node("Mul", ["h3", "c"], ["ch3"]),
                  helper.make_node("Add", ["h", "ch3"], ["in"]),
                  helper.make_node("Mul", ["in", "k"], ["u"]),
                  helper.make_node("Tanh", ["u"], ["t"]),
                  helper.make_node("Add", ["t", "one"], ["s"]),
                  helper.make_node("Mul", ["h", "half"], ["hh"]),
                  helper.make_node("Mul", ["hh", "s"], ["g"])]
    else:
        nodes += [helper.make_node("Div", ["h", "sqrt2"], ["a"]),
                  helper.make_node("Erf", ["a"], ["e"]),
                  helper.make_node("Add", ["e", "one"], ["s"]),
                  helper.make_node("Mul", ["h", "s"], ["hs"]),
                  helper.make_node("Mul", ["hs", "half"], ["g"])]
    nodes.append(helper.make_node("MatMul", ["g", "w2"], ["y"]))
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 16])], init)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("gelu", ["tanh", "erf"])
def test_spelled_out_gelu_model_matches_ort(gelu):
    import onnxruntime as ort

    model = _onnx_mlp(gelu)
    x = np.random.default_rng(0).standard_normal((8, 32)).astype(np.float32) * 2
    compiled = kiln.compile(model, target="host")
    assert "gelu" in [n.op for n in compiled.graph.nodes]
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(compiled.run({"x": x})["y"], want, rtol=1e-4, atol=1e-5)
