"""Padded storage (kiln/passes/padded_storage.py): a VNNI convolution's producer writes the
padded layout the convolution reads, instead of the convolution copying its input into a
padded stage. The pass on graphs (Before/Expected), the border loops by themselves, the
kernels it gives (no copy, border filled, interior read by the other readers) and the same
integers as without it and ONNX Runtime."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from onnx import TensorProto as TP, helper

import kiln
from kiln.errors import VerificationError
from kiln.ir.dtype import DType
from kiln.ir.graph import Graph, Node, TensorType, Value
from kiln.ir.expr import Const
from kiln.ir.loop import Buffer, Func, Store, walk_stmts
from kiln.ir.loop_eval import run_func
from kiln.passes.padded_storage import (PADS_IN_STORAGE, Border, border_fill, storage_borders, storage_types,
                                        store_padded)
from tests.test_integer_layout import _residual_model
from tests.test_vnni import _host_caps
from tests.util import ort_run

RNG = np.random.default_rng(5)


def _without_borders(monkeypatch):
    """Compile as before the pass existed: no producer qualifies."""
    monkeypatch.setattr("kiln.passes.padded_storage.PRODUCERS", ())


def _strip(graph: Graph) -> Graph:
    """``graph`` with every ``pads_in_storage`` attribute removed."""
    return graph.replace(nodes=tuple(
        dataclasses.replace(n, attrs={k: v for k, v in n.attrs.items() if k != PADS_IN_STORAGE}) for n in graph.nodes))


def _marked(graph: Graph) -> list[str]:
    return [n.outputs[0].name for n in graph.nodes if n.attrs.get(PADS_IN_STORAGE)]


# -- the pass on graphs ------------------------------------------------------------------------------

def test_pass_marks_the_block_convolutions_and_not_the_stem(monkeypatch):
    _host_caps(monkeypatch, True)
    model = _residual_model()
    after = kiln.compile(model).graph
    before = _strip(after)
    # Expected: the two 3x3 convolutions, reading the max pool's and the first conv's outputs
    expected = [n.outputs[0].name for n in after.nodes if n.op == "qconv" and n.attrs["kernel"] == (3, 3)]
    assert len(expected) == 2
    assert _marked(store_padded(before)) == expected
    assert store_padded(before).nodes == after.nodes
    producers = after.producers()
    borders = storage_borders(after)
    assert sorted(producers[v].op for v in borders) == ["max_pool", "qconv"]
    assert set(borders.values()) == {Border((0, 1, 1, 0), (0, 1, 1, 0), 0)}
    # the graph keeps logical shapes; the storage is 2 rows and 2 columns larger
    for v, b in borders.items():
        n, h, w, c = after.value_types()[v].shape
        assert storage_types(after)[v].shape == (n, h + 2, w + 2, c)


def test_pass_is_off_without_vnni(monkeypatch):
    _host_caps(monkeypatch, False)
    assert _marked(kiln.compile(_residual_model()).graph) == []


def _conv_chain(output_mid: bool = False, reshape_mid: bool = False):
    """conv 3x3 -> relu -> conv 3x3 (the second reads the first's output; that output is
    also a graph output, or also read by a reshape, when asked)."""
    w1 = (RNG.standard_normal((16, 8, 3, 3)) * 0.2).astype(np.float32)
    w2 = (RNG.standard_normal((16, 16, 3, 3)) * 0.1).astype(np.float32)
    n = helper.make_node
    nodes = [n("Conv", ["x", "w1"], ["a"], pads=[1] * 4), n("Relu", ["a"], ["ar"]),
             n("Conv", ["ar", "w2"], ["y"], pads=[1] * 4)]
    outputs = [helper.make_tensor_value_info("y", TP.FLOAT, [1, 16, 8, 8])]
    if output_mid:
        outputs.append(helper.make_tensor_value_info("ar", TP.FLOAT, [1, 16, 8, 8]))
    if reshape_mid:
        nodes.append(n("Flatten", ["ar"], ["flat"]))
        outputs.append(helper.make_tensor_value_info("flat", TP.FLOAT, [1, 1024]))
    g = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TP.FLOAT, [1, 8, 8, 8])], outputs,
                          initializer=[helper.make_tensor(k, TP.FLOAT, v.shape, v.ravel())
                                       for k, v in (("w1", w1), ("w2", w2))])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return kiln.quantize(model, {"x": RNG.standard_normal((4, 8, 8, 8)).astype(np.float32)})


def _graph_model(nodes, weights, outputs, name):
    g = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TP.FLOAT, [1, 8, 8, 8])],
                          [helper.make_tensor_value_info(o, TP.FLOAT, s) for o, s in outputs],
                          initializer=[helper.make_tensor(k, TP.FLOAT, v.shape, v.ravel()) for k, v in weights])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return kiln.quantize(model, {"x": RNG.standard_normal((4, 8, 8, 8)).astype(np.float32)})


def _w(*shape):
    return (RNG.standard_normal(shape) * (1.0 / np.sqrt(np.prod(shape[1:])))).astype(np.float32)


def _standalone_add():
    """An Add whose operands both escape their convolutions (``b`` is also a graph output),
    so it is a kernel of its own -- an elementwise producer writing the padded layout."""
    n = helper.make_node
    nodes = [n("Conv", ["x", "w1"], ["a"], pads=[1] * 4), n("Relu", ["a"], ["ar"]),
             n("Conv", ["ar", "w2"], ["b"]), n("Relu", ["b"], ["br"]),
             n("Add", ["ar", "br"], ["c"]), n("Relu", ["c"], ["cr"]),
             n("Conv", ["cr", "w3"], ["y"], pads=[1] * 4)]
    return _graph_model(nodes, [("w1", _w(16, 8, 3, 3)), ("w2", _w(16, 16, 1, 1)), ("w3", _w(16, 16, 3, 3))],
                        [("y", [1, 16, 8, 8]), ("br", [1, 16, 8, 8])], "standalone_add")


def _two_windows():
    """One value read by a 3x3 convolution (pads 1) and a 5x5 one (pads 2): the first decides
    the border, the second copies the interior into its own padded stage."""
    n = helper.make_node
    nodes = [n("Conv", ["x", "w1"], ["a"], pads=[1] * 4), n("Relu", ["a"], ["ar"]),
             n("Conv", ["ar", "w2"], ["y3"], pads=[1] * 4), n("Conv", ["ar", "w3"], ["y5"], pads=[2] * 4),
             n("Add", ["y3", "y5"], ["y"])]
    return _graph_model(nodes, [("w1", _w(16, 8, 3, 3)), ("w2", _w(16, 16, 3, 3)), ("w3", _w(16, 16, 5, 5))],
                        [("y", [1, 16, 8, 8])], "two_windows")


def test_pass_leaves_values_it_cannot_pad(monkeypatch):
    _host_caps(monkeypatch, True)
    after = kiln.compile(_conv_chain()).graph
    assert len(_marked(after)) == 1
    before = _strip(after)
    x = next(n for n in after.nodes if n.attrs.get(PADS_IN_STORAGE)).inputs[0]
    t = after.value_types()[x]
    # a graph output: the caller's buffer has no border
    as_output = before.replace(outputs=before.outputs + (Value(x, t),))
    assert _marked(store_padded(as_output)) == []
    # a reshape would alias the padded storage as if it were dense
    flat = Node("reshape", (x,), (Value("flat", TensorType((1, t.size), t.dtype)),), {"shape": (1, t.size)})
    viewed = before.replace(nodes=before.nodes + (flat,), outputs=before.outputs + flat.outputs)
    assert _marked(store_padded(viewed.verify())) == []


def test_convolutions_wanting_different_borders_are_refused():
    t = TensorType((1, 8, 8, 16), DType.uint8)

    def conv(name, pad):
        return Node("qconv", ("x", "w"), (Value(name, t),), {"pads": (pad,) * 4, "x_zp": 0, PADS_IN_STORAGE: 1})
    g = Graph((Value("x", t),), (), (conv("a", 1), conv("b", 2)))
    with pytest.raises(VerificationError, match="different borders"):
        storage_borders(g)


# -- the border loops --------------------------------------------------------------------------------

@pytest.mark.parametrize("shape, lo, hi", [
    ((1, 4, 5, 2), (0, 1, 1, 0), (0, 1, 1, 0)),
    ((2, 3, 4, 3), (0, 2, 1, 0), (0, 1, 3, 0)),
    ((3, 5), (1, 0), (0, 2)),
])
def test_border_fill_writes_exactly_the_border(shape, lo, hi):
    border = Border(lo, hi, 7)
    full = border.storage_shape(shape)
    func = Func("fill", (Buffer("y", full, DType.uint8),), border_fill("y", shape, border, DType.uint8))
    got = run_func(func, {"y": np.zeros(full, np.uint8)})["y"]
    inside = tuple(slice(a, a + n) for a, n in zip(lo, shape))
    expected = np.full(full, 7, np.uint8)
    expected[inside] = 0
    np.testing.assert_array_equal(got, expected)


# -- kernels and numbers -----------------------------------------------------------------------------

def test_block_kernels_read_in_place_and_fill_borders(monkeypatch):
    _host_caps(monkeypatch, True)
    model = _residual_model()
    padded = kiln.compile(model)
    src = padded.source()
    kernels = src.split("static void kernel_")[1:]
    staging = [k for k in kernels if "__xu[" in k]
    assert len(staging) == 1 and staging[0].startswith("0(")  # only the stem (from NCHW) copies
    _without_borders(monkeypatch)
    plain = kiln.compile(model)
    assert sum("__xu[" in k for k in plain.source().split("static void kernel_")[1:]) == 3
    # each kernel writing a bordered value fills its border: 4 slabs (rows above and below,
    # columns left and right), constant stores into the output parameter
    borders = storage_borders(padded.graph)
    writers = [k for k in padded.result.kernels if k.outputs[0] in borders]
    assert len(writers) == 2
    for k in writers:
        out = k.func.params[len(k.inputs)].name
        fills = [s for s in walk_stmts(k.func.body) if isinstance(s, Store) and s.buffer == out
                 and isinstance(s.value, Const) and s.value.value == borders[k.outputs[0]].fill]
        assert len(fills) == 4


def _resnet_int8(image=32):
    from examples import models as M

    f = M.resnet_style(depth=18, image=image, width=16, classes=10)
    calib = {"input": RNG.standard_normal((2, 3, image, image)).astype(np.float32)}
    return kiln.quantize(f, calib)


@pytest.mark.parametrize("build", [_residual_model, _resnet_int8, lambda: _conv_chain(output_mid=True),
                                   lambda: _conv_chain(reshape_mid=True), _standalone_add, _two_windows],
                         ids=["block", "resnet18", "transposed_to_an_output", "flattened_to_an_output",
                              "standalone_add", "two_windows"])
def test_same_integers_as_without_borders_and_ort(build, monkeypatch):
    """ResNet-18 covers every kind of reader: max pool, conv and residual-add producers, the
    stride-2 3x3 convolutions, and the 1x1 downsample and residual adds reading interiors;
    the chains a transpose back to NCHW reading one (for a graph output)."""
    _host_caps(monkeypatch, True)
    model = build()
    name = model.graph.input[0].name
    shape = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim)
    x = {name: RNG.standard_normal(shape).astype(np.float32)}
    padded = kiln.compile(model)
    assert _marked(padded.graph)
    got = padded.run(x)
    _without_borders(monkeypatch)
    plain = kiln.compile(model)
    assert not _marked(plain.graph)
    ref = ort_run(model, x)
    for k, v in plain.run(x).items():
        np.testing.assert_array_equal(got[k], v)
        step = np.abs(np.diff(np.unique(ref[k]))).min(initial=1.0)
        assert np.abs(got[k] - ref[k]).max() <= step * 1.01
