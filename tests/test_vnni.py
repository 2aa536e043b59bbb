"""Integer kernels with weights in VNNI panels (kiln/passes/vnni_pack.py) and their
intrinsic register tile (kiln/codegen/x86.py): the panels hold the same weights, the tile
is recognized only where its block loads read what the loop reads, and every kernel
computes the same integers as the row-major kernel, with or without the intrinsics."""
from __future__ import annotations

import dataclasses
import re
import subprocess

import numpy as np
import pytest
from onnx import TensorProto as TP, helper, numpy_helper as nh

import kiln
import kiln.targets.host as host
from kiln.codegen.x86 import X86Renderer, match_vnni_tile
from kiln.ir.loop import For, Store, walk_stmts
from kiln.passes.vnni_pack import pack_vnni_panels
from tests.util import ort_run

RNG = np.random.default_rng(5)
# x86 flags that define __AVX512VNNI__ whatever machine runs the tests (the asm check)
VNNI_FLAGS = ["-march=x86-64-v4", "-mavx512vnni"]


def _conv_model(c, oc, k, hw, stride=1, pad=None, group=1, relu=True):
    """A float conv quantized by ``kiln.quantize`` (ONNX Runtime's QDQ quantizer)."""
    pad = k // 2 if pad is None else pad
    w = (RNG.standard_normal((oc, c // group, k, k)) * 0.1).astype(np.float32)
    out = (hw + 2 * pad - k) // stride + 1
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], strides=[stride] * 2, pads=[pad] * 4, group=group)]
    last = "y"
    if relu:
        nodes.append(helper.make_node("Relu", ["y"], ["z"]))
        last = "z"
    g = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TP.FLOAT, [1, c, hw, hw])],
                          [helper.make_tensor_value_info(last, TP.FLOAT, [1, oc, out, out])],
                          initializer=[nh.from_array(w, "w")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return kiln.quantize(model, {"x": RNG.standard_normal((3, c, hw, hw)).astype(np.float32)})


def _matmul_model(m, k, n):
    w = (RNG.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
                          [helper.make_tensor_value_info("x", TP.FLOAT, [m, k])],
                          [helper.make_tensor_value_info("y", TP.FLOAT, [m, n])], initializer=[nh.from_array(w, "w")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return kiln.quantize(model, {"x": RNG.standard_normal((3, m, k)).astype(np.float32)})


def _host_caps(monkeypatch, vnni: bool):
    """The host's capabilities with VNNI panels on or off, and an integer dot tile, whatever
    this machine has: the panels, the tile's source and its plain-C ``#else`` branch are
    then tested on any x86 host (a machine without VNNI runs the ``#else`` branch)."""
    caps = dataclasses.replace(host.capabilities(), vnni=vnni, amx=False, dot_tile=(8, 4))
    monkeypatch.setattr(host, "capabilities", lambda: caps)


def _inputs(model):
    shape = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim)
    return {model.graph.input[0].name: (RNG.standard_normal(shape) * 1.5).astype(np.float32)}


# -- the panels ------------------------------------------------------------------------------------

def test_panel_layout_holds_each_weight_once_where_the_tile_reads_it():
    w = RNG.integers(-128, 128, (32, 12)).astype(np.int8)
    p = pack_vnni_panels(w)
    assert p.shape == (2, 3, 16, 4)
    o, k = np.meshgrid(np.arange(32), np.arange(12), indexing="ij")
    np.testing.assert_array_equal(p[o // 16, k // 4, o % 16, k % 4], w)
    assert p[1, 2, 5].tolist() == w[21, 8:12].tolist()      # 4 reduction steps of one output adjacent


def _graph(model, vnni: bool, monkeypatch):
    """The optimized graph as the host compiles it, with or without VNNI panels."""
    with monkeypatch.context() as m:
        _host_caps(m, vnni)
        return kiln.compile(model).graph


@pytest.mark.parametrize("build, op, k, im2col", [
    (lambda: _conv_model(16, 32, 3, 8), "qconv", 3 * 48, False),        # rows of 48 bytes read in place
    (lambda: _conv_model(3, 16, 7, 16, stride=2), "qconv", 7 * 24, False),  # the stem: 21-byte rows read as 24
    (lambda: _conv_model(32, 16, 1, 8, pad=0), "qconv", 32, False),
    (lambda: _matmul_model(8, 64, 48), "qmatmul", 64, False),
])
def test_pass_packs_eligible_kernels_with_padded_rows(build, op, k, im2col, monkeypatch):
    model = build()
    before, after = _graph(model, False, monkeypatch), _graph(model, True, monkeypatch)
    node = next(n for n in after.nodes if n.op == op)
    old = next(n for n in before.nodes if n.op == op)
    w = after.constants[node.inputs[1]]
    o = before.constants[old.inputs[1]].shape[0]
    assert node.attrs["vnni"] == 16 and tuple(node.attrs["vnni_weights"]) == before.constants[old.inputs[1]].shape
    assert w.shape == (o // 16, k // 4, 16, 4)
    assert bool(node.attrs.get("im2col")) is im2col
    t = old.outputs[0].type
    if op == "qconv":  # convolutions write channels last (kiln/passes/integer_layout.py)
        assert node.attrs["channels_last"] == 1
        t = type(t)(tuple(t.shape[p] for p in (0, 2, 3, 1)), t.dtype)
    assert node.outputs[0].type == t


@pytest.mark.parametrize("build", [lambda: _conv_model(16, 12, 3, 8),           # 12 outputs: not whole panels
                                   lambda: _conv_model(16, 16, 3, 8, group=2),  # grouped
                                   lambda: _matmul_model(4, 30, 32)],           # K not a multiple of 4
                         ids=["12_outputs", "grouped", "k30"])
def test_pass_leaves_kernels_it_cannot_tile(build, monkeypatch):
    g = _graph(build(), True, monkeypatch)
    assert not any(n.attrs.get("vnni") for n in g.nodes)


def test_panel_weights_of_the_wrong_shape_are_a_clear_error():
    from kiln.errors import ShapeError
    from kiln.ir.ops.qlinear import logical_weights

    with pytest.raises(ShapeError, match=r"VNNI panels must be \(2, K/4, 16, 4\) for 32 outputs; got \(2, 4, 8, 4\)"):
        logical_weights((2, 4, 8, 4), {"vnni": 16, "vnni_weights": (32, 16)}, "qmatmul")


# -- the intrinsic tile ----------------------------------------------------------------------------

def test_renderer_recognizes_the_tile_and_refuses_a_changed_weight_index(monkeypatch):
    _host_caps(monkeypatch, True)
    cm = kiln.compile(_matmul_model(16, 64, 32))
    func = next(k.func for k in cm.result.kernels if "KILN_DPBUSD(" in X86Renderer().render_func(k.func, set()))
    loops = [s for s in walk_stmts(func.body) if isinstance(s, For) and s.extent == 64]
    r = X86Renderer()
    r.render_func(func, set())
    assert r.stats["vnni_tiles"] == 1
    tile = match_vnni_tile(loops[0], r.buffers)
    assert tile is not None and (tile.rows, tile.panels) == (8, 2)

    # the same nest reading the weights one step off (k + 1): its 64-byte block is not what
    # the loop reads, and it must be printed as plain C
    from kiln.ir.loop import map_stmt

    k = loops[0].var

    def shift(s):
        if isinstance(s, Store) and s.buffer == tile.acc:
            return Store(s.buffer, s.indices, _shift_weight(s.value, tile.w, k))
        return None

    bad = map_stmt(loops[0], shift)
    assert match_vnni_tile(bad, r.buffers) is None


def _shift_weight(value, w, k):
    from kiln.ir.expr import Const, Load, replace_loads, substitute

    def f(ld: Load):
        if ld == w:
            return Load(ld.buffer, tuple(substitute(i, {k.name: k + Const(1, k.dtype)}) for i in ld.indices), ld.dtype)
        return None

    return replace_loads(value, f)


CASES = [
    ("3x3", lambda: _conv_model(64, 64, 3, 12)),
    ("3x3_stride2_odd_rows", lambda: _conv_model(32, 48, 3, 13, stride=2)),   # 48 outputs: 3 panels, 7 rows
    ("7x7_stem", lambda: _conv_model(3, 32, 7, 20, stride=2)),
    ("1x1", lambda: _conv_model(64, 32, 1, 9, pad=0)),
    ("matmul", lambda: _matmul_model(20, 96, 64)),
    ("gemv", lambda: _matmul_model(1, 256, 16)),
]


@pytest.mark.parametrize("build", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_panel_kernels_equal_row_major_kernels_and_ort(build, monkeypatch):
    model = build()
    x = _inputs(model)
    _host_caps(monkeypatch, True)
    panels = kiln.compile(model)
    assert "KILN_DPBUSD(" in panels.source()
    got = panels.run(x)
    _host_caps(monkeypatch, False)
    rows = kiln.compile(model)
    assert "KILN_DPBUSD(" not in rows.source()
    want = rows.run(x)
    ref = ort_run(model, x)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
        step = np.abs(np.diff(np.unique(ref[name]))).min(initial=1.0)
        assert np.abs(got[name] - ref[name]).max() <= step * 1.01


def test_plain_c_fallback_of_the_tile_computes_the_same(monkeypatch):
    """The ``#else`` branch (a machine without VNNI builds the same source) gives the same integers."""
    _host_caps(monkeypatch, True)
    model = _conv_model(32, 32, 3, 10)
    cm = kiln.compile(model)
    x = _inputs(model)
    fast = cm.run(x)
    plain = cm.target_impl.runner(cm, extra_flags=["-mno-avx512vnni"])(x)
    for k in fast:
        np.testing.assert_array_equal(fast[k], plain[k])


def test_tile_compiles_to_vpdpbusd_with_broadcast_activations(tmp_path, monkeypatch):
    _host_caps(monkeypatch, True)
    cm = kiln.compile(_matmul_model(16, 128, 64))
    cm.export(tmp_path)
    asm = subprocess.run(["gcc", "-O3", *VNNI_FLAGS, "-fopenmp", "-std=gnu11", "-fwrapv", "-S", "-o", "-",
                          str(tmp_path / "model.c")], capture_output=True, text=True, check=True).stdout
    assert len(re.findall(r"\bvpdpbusd\b[^\n]*zmm", asm)) >= 16
    assert re.search(r"vpbroadcastd", asm)


# -- integer max pools read padded rows (kiln/ir/ops/pool.py, ``pad_rows``) --------------------

def _int_pool_model(dtype, kernel, strides, pads, dilations=(1, 1), ceil=0, shape=(1, 5, 17, 15)):
    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=list(kernel), strides=list(strides),
                            pads=list(pads), dilations=list(dilations), ceil_mode=ceil)
    elem = TP.UINT8 if dtype == np.uint8 else TP.INT8
    rnd = np.ceil if ceil else np.floor
    out = [int(rnd((n + pads[i] + pads[i + 2] - (k - 1) * d - 1) / s)) + 1
           for i, (n, k, s, d) in enumerate(zip(shape[2:], kernel, strides, dilations))]
    g = helper.make_graph([node], "pool", [helper.make_tensor_value_info("x", elem, list(shape))],
                          [helper.make_tensor_value_info("y", elem, list(shape[:2]) + out)])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


@pytest.mark.parametrize("dtype, kernel, strides, pads, dilations, ceil", [
    (np.uint8, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 0),     # ResNet's stem pool
    (np.int8, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1),      # int8: pads hold -128, ceil mode
    (np.int8, (2, 3), (1, 2), (0, 1, 1, 2), (2, 1), 0),      # asymmetric pads, dilation
    (np.uint8, (2, 2), (2, 2), (0, 0, 0, 0), (1, 1), 0),     # no padding at all
])
def test_integer_max_pool_reads_padded_rows_and_matches_ort(dtype, kernel, strides, pads, dilations, ceil,
                                                            monkeypatch):
    _host_caps(monkeypatch, False)  # any CPU with an integer dot tile
    model = _int_pool_model(dtype, kernel, strides, pads, dilations, ceil)
    info = np.iinfo(dtype)
    x = {"x": RNG.integers(info.min, info.max + 1, (1, 5, 17, 15)).astype(dtype)}
    cm = kiln.compile(model)
    assert "__xp" in cm.source()                             # the padded copy, no bounds test per tap
    np.testing.assert_array_equal(cm.run(x)["y"], ort_run(model, x)["y"])


@pytest.mark.parametrize("build, rows_outside", [
    (lambda: _conv_model(16, 32, 3, 16), True),      # weights 4.5 KB: rows outermost
    (lambda: _matmul_model(64, 1024, 1024), False),  # weights 1 MB: one column panel at a time
])
def test_column_panels_go_outermost_only_for_weights_that_leave_the_cache(build, rows_outside, monkeypatch):
    """Before: a VNNI tile's loops. Expected: the parallel loop over rows outside the column
    tiles while the weights fit in half an L2 (``WEIGHTS_IN_CACHE``: each thread then owns
    whole rows), the column tiles outermost for larger weights (each panel stays in cache)."""
    _host_caps(monkeypatch, True)
    cm = kiln.compile(build())
    func = next(k.func for k in cm.result.kernels if "KILN_DPBUSD(" in X86Renderer().render_func(k.func, set()))
    loops = [s for s in walk_stmts(func.body) if isinstance(s, For)]
    names = [s.var.name for s in loops]
    # the tile's own loops (8 rows, 32 columns, unrolled) are X_i; the loops over tiles X_o
    row_i = next(s.var.name for s in loops if s.kind == "unrolled" and s.extent == 8 and s.var.name.endswith("_i"))
    col_i = next(s.var.name for s in loops if s.kind == "unrolled" and s.extent == 32 and s.var.name.endswith("_i"))
    row_o, col_o = row_i[:-2] + "_o", col_i[:-2] + "_o"
    assert (names.index(row_o) < names.index(col_o)) is rows_outside, names
