"""The pack_matmul pass: matmul B in column panels (Before/Expected), and its numerics."""
from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import kiln
from kiln.errors import ShapeError
from kiln.ir import ops
from kiln.ir.compute import Stage
from kiln.ir.dtype import DType
from kiln.ir.expr import Const
from kiln.ir.graph import Graph, Node, TensorType, Value
from kiln.passes.fuse import fuse
from kiln.passes.capabilities import Capabilities
from kiln.passes.default_schedule import tile_sizes
from kiln.passes.pack_matmul import pack_matmuls, pack_panels, panel_for
from kiln.targets.host import HostTarget
from tests.test_passes import assert_graph_equal

F = DType.float32


def V(name, *shape, dtype=F):
    return Value(name, TensorType(tuple(shape), dtype))


def N(op, ins, outs, **attrs):
    return Node(op, tuple(ins), tuple(outs), attrs)


def test_pack_panels_layout():
    b = np.arange(3 * 8, dtype=np.float32).reshape(3, 8)
    p = pack_panels(b, 4)
    assert p.shape == (2, 3, 4)
    for panel in range(2):
        np.testing.assert_array_equal(p[panel], b[:, panel * 4:(panel + 1) * 4])


def test_constant_weight_is_packed_at_compile_time():
    w = np.random.default_rng(0).standard_normal((8, 32)).astype(np.float32)
    before = Graph((V("x", 4, 8),), (V("y", 4, 32),), (N("matmul", ["x", "w"], [V("y", 4, 32)]),), {"w": w})
    expected = Graph((V("x", 4, 8),), (V("y", 4, 32),),
                     (N("matmul_packed", ["x", "w__panels16"], [V("y", 4, 32)], panel=16),),
                     {"w__panels16": pack_panels(w, 16)})
    assert_graph_equal(pack_matmuls(before.verify(), 16).verify(), expected)


def test_constant_weight_with_a_partial_panel_is_padded_and_sliced():
    w = np.random.default_rng(0).standard_normal((8, 40)).astype(np.float32)
    before = Graph((V("x", 4, 8),), (V("y", 4, 40),), (N("matmul", ["x", "w"], [V("y", 4, 40)]),), {"w": w})
    padded = np.concatenate([w, np.zeros((8, 8), np.float32)], axis=1)
    expected = Graph((V("x", 4, 8),), (V("y", 4, 40),), (
        N("matmul_packed", ["x", "w__panels16"], [V("y__panels", 4, 48)], panel=16),
        N("slice", ["y__panels"], [V("y", 4, 40)], starts=(0, 0), ends=(4, 40), steps=(1, 1)),
    ), {"w__panels16": pack_panels(padded, 16)})
    assert_graph_equal(pack_matmuls(before.verify(), 16).verify(), expected)


def test_each_matmul_takes_the_widest_panel_that_divides_its_n():
    rng = np.random.default_rng(0)
    w96, w64, w40 = (rng.standard_normal((8, n)).astype(np.float32) for n in (96, 64, 40))
    outs = (V("y96", 4, 96), V("y64", 4, 64), V("y40", 4, 40))
    before = Graph((V("x", 4, 8),), outs, (N("matmul", ["x", "w96"], [outs[0]]), N("matmul", ["x", "w64"], [outs[1]]),
                                          N("matmul", ["x", "w40"], [outs[2]])), {"w96": w96, "w64": w64, "w40": w40})
    padded = np.concatenate([w40, np.zeros((8, 24), np.float32)], axis=1)
    expected = Graph((V("x", 4, 8),), outs, (
        N("matmul_packed", ["x", "w96__panels48"], [outs[0]], panel=48),
        N("matmul_packed", ["x", "w64__panels32"], [outs[1]], panel=32),
        N("matmul_packed", ["x", "w40__panels32"], [V("y40__panels", 4, 64)], panel=32),
        N("slice", ["y40__panels"], [outs[2]], starts=(0, 0), ends=(4, 40), steps=(1, 1)),
    ), {"w96__panels48": pack_panels(w96, 48), "w64__panels32": pack_panels(w64, 32),
        "w40__panels32": pack_panels(padded, 32)})
    assert_graph_equal(pack_matmuls(before.verify(), (48, 32)).verify(), expected)


def test_panel_widths_are_two_vectors_or_three_first_where_offered():
    assert Capabilities(vector_bytes=64, vector_registers=32, wide_panels=True).panel_widths() == (48, 32)
    assert Capabilities(vector_bytes=64, vector_registers=32).panel_widths() == (32,)
    assert Capabilities(vector_bytes=32, vector_registers=16).panel_widths() == (16,)
    # the register tile of a three-vector panel: 8 rows x 48 columns, lanes known
    stage = Stage("y", (8, 96), F, (), Const(0.0, F), tag="matmul", hints={"tile_cols": 48})
    assert tile_sizes(stage, Capabilities(vector_bytes=64, vector_registers=32, wide_panels=True)) == (8, 48, 16)


def test_computed_b_gets_one_pack_node_shared_by_its_matmuls():
    shape_b = (64, 512)
    before = Graph((V("a", 64, 64), V("c", 64, 64), V("b", *shape_b)), (V("y", 64, 512), V("z", 64, 512)), (
        N("matmul", ["a", "b"], [V("y", 64, 512)]),
        N("matmul", ["c", "b"], [V("z", 64, 512)]),
    ))
    expected = Graph(before.inputs, before.outputs, (
        N("pack_panels", ["b"], [V("b__panels32", 16, 64, 32)], panel=32),
        N("matmul_packed", ["a", "b__panels32"], [V("y", 64, 512)], panel=32),
        N("matmul_packed", ["c", "b__panels32"], [V("z", 64, 512)], panel=32),
    ))
    assert_graph_equal(pack_matmuls(before.verify(), 32).verify(), expected)


@pytest.mark.parametrize("a_shape,b_shape,dtype,why", [
    ((4, 8), (8, 24), F, "computed B, N not a multiple of the panel"),
    ((4, 8), (8, 16), F, "a single panel: nothing to gain"),
    ((8, 64), (64, 512), F, "computed B with too few rows of A to pay for the copy"),
    ((128, 64), (64, 64), F, "computed B with short rows"),
    ((64, 64), (64, 512), DType.float64, "not float32"),
])
def test_matmuls_left_alone(a_shape, b_shape, dtype, why):
    m, n = a_shape[0], b_shape[1]
    g = Graph((V("a", *a_shape, dtype=dtype), V("b", *b_shape, dtype=dtype)), (V("y", m, n, dtype=dtype),),
              (N("matmul", ["a", "b"], [V("y", m, n, dtype=dtype)]),)).verify()
    assert pack_matmuls(g, 16).nodes == g.nodes, why


def test_packed_matmul_keeps_epilogues_and_a_transpose_prologue():
    w = np.ones((8, 32), np.float32)
    g = Graph((V("x", 8, 4),), (V("y", 4, 32),), (
        N("transpose", ["x"], [V("xt", 4, 8)], perm=(1, 0)),
        N("matmul", ["xt", "w"], [V("h", 4, 32)]),
        N("relu", ["h"], [V("y", 4, 32)]),
    ), {"w": w}).verify()
    groups = [[n.op for n in grp.nodes] for grp in fuse(pack_matmuls(g, 16).verify())]
    assert groups == [["transpose", "matmul_packed", "relu"]]


def test_bad_packed_shapes_are_refused():
    with pytest.raises(ShapeError, match="panel width 16"):
        ops.infer_types("pack_panels", [TensorType((8, 24), F)], {"panel": 16})
    with pytest.raises(ShapeError, match="inner dimensions differ"):
        ops.infer_types("matmul_packed", [TensorType((4, 8), F), TensorType((2, 9, 16), F)], {"panel": 16})


# -- numerics: bit-identical to the unpacked kernel ------------------------------------------------

def _matmul_model(m, k, n, batch=(), const_b=False, seed=0):
    rng = np.random.default_rng(seed)
    b = rng.standard_normal((*batch, k, n)).astype(np.float32)
    inputs = [helper.make_tensor_value_info("a", TensorProto.FLOAT, [*batch, m, k])]
    inits = []
    if const_b:
        inits.append(onnx.numpy_helper.from_array(b, "b"))
    else:
        inputs.append(helper.make_tensor_value_info("b", TensorProto.FLOAT, [*batch, k, n]))
    g = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["y"]), helper.make_node("Relu", ["y"], ["z"])],
                          "mm", inputs, [helper.make_tensor_value_info("z", TensorProto.FLOAT, [*batch, m, n])],
                          inits)
    feeds = {"a": rng.standard_normal((*batch, m, k)).astype(np.float32)}
    if not const_b:
        feeds["b"] = b
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), feeds, b


def _ops(compiled) -> set[str]:
    return {n.op for n in compiled.graph.nodes}


class _Unpacked(HostTarget):
    def capabilities(self):
        return dataclasses.replace(super().capabilities(), pack_matmul=False)


class _WidePanels(HostTarget):
    """Three-vector panels on any host (AVX-512 hosts have them on already)."""

    def capabilities(self):
        return dataclasses.replace(super().capabilities(), wide_panels=True)


@pytest.mark.parametrize("m,k,n,batch,const_b", [
    (64, 96, 512, (), False),       # runtime pack
    (24, 40, 96, (), True),         # packed weights, rows not a multiple of the tile
    (64, 32, 512, (3,), False),     # batched, B per batch
    (5, 64, 256, (2,), True),       # batched A, packed batched weights
    (1, 64, 1000, (), True),        # a classifier: 1000 outputs, the last panel padded
    (6, 48, 100, (2,), True),       # batched, padded
    (24, 40, 3 * 96, (), True),     # three-vector panels (AVX-512: 48 wide)
    (64, 96, 6 * 96, (), False),    # three-vector panels packed at run time
])
def test_packed_matmul_is_bit_identical_to_unpacked(m, k, n, batch, const_b):
    model, feeds, b = _matmul_model(m, k, n, batch, const_b)
    target = _WidePanels()
    packed = kiln.compile(model, target=target)
    assert "matmul_packed" in _ops(packed)
    panels = {n.attrs["panel"] for n in packed.graph.nodes if n.op == "matmul_packed"}
    assert panels == {panel_for(n, target.capabilities().panel_widths())}
    plain = kiln.compile(model, target=_Unpacked())
    assert "matmul_packed" not in _ops(plain)
    got, want = packed.run(feeds)["z"], plain.run(feeds)["z"]
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(got, np.maximum(feeds["a"] @ b, 0), rtol=1e-4, atol=1e-4)
