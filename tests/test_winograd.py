"""Winograd convolutions: the transform algebra, the pass that picks them (Before/Expected),
the schedule that expands their cases, and results against ONNX Runtime on the host."""
from __future__ import annotations

import dataclasses

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import kiln
from kiln.errors import ScheduleError
from kiln.frontend.onnx import from_onnx as import_model
from kiln.ir.compute import Tensor, compute
from kiln.ir.dtype import DType
from kiln.ir.expr import Select, walk
from kiln.ir.loop import Buffer, For, Func, Seq, Store, canonicalize, walk_stmts
from kiln.ir.loop_eval import run_func
from kiln.ir.lower import lower_stage
from kiln.ir.ops.winograd import MATRICES, alpha, transform_weights
from kiln.ir.schedule import Schedule
from kiln.passes.fold_constants import fold_constants
from kiln.passes.layout import to_nchwc
from kiln.passes.pack_matmul import pack_matmuls, pack_panels
from kiln.passes.winograd import output_tile, unpack_dense, winograd_convs
from kiln.targets import host

RNG = np.random.default_rng(0)
PANEL = 32


# -- the algebra ----------------------------------------------------------------------------

@pytest.mark.parametrize("m", [2, 4])
def test_transforms_compute_a_3x3_cross_correlation(m):
    a = alpha(m)
    bt, g, at = (np.array(x, dtype=np.float64) for x in MATRICES[m])
    d, w = RNG.standard_normal((a, a)), RNG.standard_normal((3, 3))
    y = at @ ((g @ w @ g.T) * (bt @ d @ bt.T)) @ at.T
    want = np.array([[np.sum(d[i:i + 3, j:j + 3] * w) for j in range(m)] for i in range(m)])
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("m", [2, 4])
def test_transformed_weights_are_g_w_gt_per_channel_pair(m):
    w = RNG.standard_normal((5, 3, 3, 3)).astype(np.float32)
    u = transform_weights(w, m)
    g = np.array(MATRICES[m][1], dtype=np.float64)
    assert u.shape == (alpha(m) ** 2, 3, 5) and u.dtype == np.float32
    for k, c in [(0, 0), (4, 2), (2, 1)]:
        np.testing.assert_allclose(u[:, c, k], (g @ w[k, c].astype(np.float64) @ g.T).reshape(-1), rtol=1e-6)


# -- the pass: Before / Expected ------------------------------------------------------------

def _conv_model(hw, cin, cout, *, stride=1, dilation=1, pads=(1, 1, 1, 1), group=1, batch=1, bias=True,
                kernel=3, width=None, relu=True):
    w = (RNG.standard_normal((cout, cin // group, kernel, kernel)) * 0.2).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w")]
    inputs = ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array((RNG.standard_normal(cout) * 0.1).astype(np.float32), "b"))
        inputs.append("b")
    nodes = [helper.make_node("Conv", inputs, ["c" if relu else "y"], strides=[stride] * 2,
                              dilations=[dilation] * 2, pads=list(pads), group=group)]
    if relu:
        nodes.append(helper.make_node("Relu", ["c"], ["y"]))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, cin, hw, width or hw])
    span = dilation * (kernel - 1) + 1
    out = [(n + pads[i] + pads[i + 2] - span) // stride + 1 for i, n in enumerate((hw, width or hw))]
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, cout] + out)
    return helper.make_model(helper.make_graph(nodes, "conv", [x], [y], inits),
                             opset_imports=[helper.make_opsetid("", 17)])


def _blocked(model):
    graph = to_nchwc(fold_constants(import_model(model)), 16).verify()
    return pack_matmuls(graph, PANEL).verify()


def test_an_eligible_conv_becomes_transform_gemm_transform():
    model = _conv_model(32, 32, 64)
    before = _blocked(model)
    after = winograd_convs(before, PANEL).verify()
    assert [n.op for n in before.nodes] == ["to_nchwc", "conv_nchwc", "from_nchwc", "relu"]
    assert [n.op for n in after.nodes] == ["to_nchwc", "winograd_input", "reshape", "matmul_packed", "reshape",
                                           "winograd_output", "from_nchwc", "relu"]
    conv = before.nodes[1]
    win, rows, gemm, tiles, wout = after.nodes[1:6]
    assert win.inputs == conv.inputs[:1] and wout.outputs == conv.outputs  # same value, same NCHWc block
    assert win.attrs == {"m": 4, "tiles": (8, 8), "pads": (1, 1, 1, 1)}
    assert wout.attrs == {"m": 4, "tiles": (8, 8), "block": 16} and wout.inputs == (tiles.outputs[0].name, conv.inputs[2])
    types = after.value_types()
    shapes = [types[n.outputs[0].name].shape for n in (win, rows, gemm, tiles)]
    # (alpha^2, N, tile rows, tile columns, channel blocks, lanes) <-> (alpha^2, tiles, channels): views
    assert shapes == [(36, 1, 8, 8, 2, 16), (36, 64, 32), (36, 64, 64), (36, 1, 8, 8, 4, 16)]
    assert gemm.inputs[0] == rows.outputs[0].name and tiles.inputs == (gemm.outputs[0].name,)
    w = np.asarray(model.graph.initializer[0].float_data or numpy_helper.to_array(model.graph.initializer[0]))
    np.testing.assert_array_equal(unpack_dense(before.constants[conv.inputs[1]]), w)
    np.testing.assert_array_equal(after.constants[gemm.inputs[1]], pack_panels(transform_weights(w, 4), PANEL))
    assert conv.inputs[1] not in after.constants  # the direct weights are gone


@pytest.mark.parametrize("kwargs, plan", [
    ({"hw": 32}, (4, (8, 8))),
    ({"hw": 16}, (2, (8, 8))),              # 4 x 4 tiles of 4 are too few: 8 x 8 tiles of 2
    ({"hw": 28}, (4, (7, 7))),
    ({"hw": 14}, (2, (7, 7))),              # 14 is not a multiple of 4
    ({"hw": 32, "width": 30}, (2, (16, 15))),  # both sides must divide
    ({"hw": 15}, (2, (8, 8))),              # the grid overhangs the 15 x 15 output
    ({"hw": 7, "batch": 2}, (2, (4, 4))),   # two images: 32 tiles
    ({"hw": 7}, None),                      # 16 tiles: memory-bound
    ({"hw": 32, "stride": 2}, None),
    ({"hw": 32, "dilation": 2, "pads": (2, 2, 2, 2)}, None),
    ({"hw": 32, "kernel": 1, "pads": (0, 0, 0, 0)}, None),
    ({"hw": 32, "group": 32, "cout": 32}, None),  # depthwise
    ({"hw": 32, "cout": 48}, None),         # 48 output channels: not whole GEMM panels of 32
    ({"hw": 34, "pads": (0, 0, 0, 0)}, (4, (8, 8))),
])
def test_tile_choice_and_convs_that_stay_direct(kwargs, plan):
    kwargs = {"cin": 32, "cout": 64, **kwargs}
    before = _blocked(_conv_model(**kwargs))
    conv = next(n for n in before.nodes if n.op == "conv_nchwc")
    assert output_tile(conv, before.value_types(), before.constants, PANEL) == plan
    after = winograd_convs(before, PANEL).verify()
    wout = [n for n in after.nodes if n.op == "winograd_output"]
    assert [(n.attrs["m"], n.attrs["tiles"]) for n in wout] == ([plan] if plan else [])
    cropped = plan and plan[0] * plan[1][0] != conv.outputs[0].type.shape[2]
    assert [n.op for n in after.nodes if n.op == "slice"] == (["slice"] if cropped else [])


# -- schedule: cases expanded into straight-line code ---------------------------------------

def _cases_func():
    x = Tensor("X", (8,))
    y = compute("Y", (4, 8), lambda i, j: Select(i.eq(0), x[j], Select(i.eq(1), x[j] * 2.0, x[j] + 1.0)))
    params = (Buffer("X", (8,), DType.float32), Buffer("Y", (4, 8), DType.float32))
    return canonicalize(Func("cases", params, lower_stage(y)))


def _case_selects(exprs) -> list:
    """Selects on an index equality: the cases ``expand`` should have resolved."""
    return [e for x in exprs for e in walk(x)
            if isinstance(e, Select) and any(getattr(c, "op", None) == "eq" for c in walk(e.cond))]


def test_expand_copies_the_body_and_resolves_selects_on_the_variable():
    func = _cases_func()
    sch = Schedule(func)
    i, j = sch.loops()
    sch.reorder(j, i)
    sch.vectorize(j)
    sch.expand(i)
    loop = next(s for s in walk_stmts(sch.func.body) if isinstance(s, For))
    assert loop.kind == "vectorized" and isinstance(loop.body, Seq) and len(loop.body.stmts) == 4
    assert not _case_selects(s.value for s in loop.body.stmts)
    x = {"X": RNG.standard_normal(8).astype(np.float32), "Y": np.zeros((4, 8), np.float32)}
    np.testing.assert_array_equal(run_func(sch.func, x)["Y"], run_func(func, x)["Y"])
    replayed = Schedule.replay(func, sch.trace_json())
    assert replayed.func == sch.func


def test_expand_rejects_long_loops():
    x = Tensor("X", (100,))
    y = compute("Y", (100,), lambda i: x[i])
    params = (Buffer("X", (100,), DType.float32), Buffer("Y", (100,), DType.float32))
    sch = Schedule(canonicalize(Func("long", params, lower_stage(y))))
    with pytest.raises(ScheduleError, match="has extent 100; expected a constant from 1 to 64"):
        sch.expand(sch.loops()[0])


# -- results on the host --------------------------------------------------------------------

def _host(monkeypatch, winograd: bool):
    caps = dataclasses.replace(host.capabilities(), winograd=winograd)
    monkeypatch.setattr(host, "capabilities", lambda: caps)


def _ort(model, x):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("kwargs", [
    {"hw": 24, "cin": 32, "cout": 64},                                   # F(4x4), bias + ReLU epilogue
    {"hw": 14, "cin": 24, "cout": 32, "relu": False},                    # F(2x2); 24 channels in blocks of 8
    {"hw": 26, "cin": 16, "cout": 32, "pads": (0, 0, 0, 0), "bias": False},  # valid conv: no pad stage
    {"hw": 16, "width": 15, "cin": 16, "cout": 32, "pads": (1, 0, 1, 1)},    # asymmetric pads: 16 x 14
    {"hw": 8, "cin": 16, "cout": 32, "batch": 2},                        # tiles of two images
    {"hw": 13, "cin": 16, "cout": 32},                                   # 7 x 7 tiles cropped to 13 x 13
])
def test_winograd_convs_match_onnxruntime(kwargs, monkeypatch):
    _host(monkeypatch, True)
    model = _conv_model(**kwargs)
    compiled = kiln.compile(model)
    assert any(n.op == "winograd_output" for n in compiled.graph.nodes)
    shape = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim)
    x = RNG.standard_normal(shape).astype(np.float32)
    np.testing.assert_allclose(compiled.run({"x": x})["y"], _ort(model, x), rtol=1e-4, atol=1e-4)


def _basic_block(hw=16, c=32):
    """ResNet's basic block: conv-ReLU-conv, plus the input, ReLU: the residual add and the
    ReLU become the second output transform's epilogue."""
    inits, nodes = [], []
    for k, (src, dst) in enumerate((("x", "a"), ("ar", "b"))):
        inits += [numpy_helper.from_array((RNG.standard_normal((c, c, 3, 3)) * 0.1).astype(np.float32), f"w{k}"),
                  numpy_helper.from_array((RNG.standard_normal(c) * 0.1).astype(np.float32), f"b{k}")]
        nodes.append(helper.make_node("Conv", [src, f"w{k}", f"b{k}"], [dst], pads=[1] * 4))
    nodes.insert(1, helper.make_node("Relu", ["a"], ["ar"]))
    nodes += [helper.make_node("Add", ["b", "x"], ["s"]), helper.make_node("Relu", ["s"], ["y"])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, hw, hw])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, hw, hw])
    return helper.make_model(helper.make_graph(nodes, "block", [x], [y], inits),
                             opset_imports=[helper.make_opsetid("", 17)])


def test_residual_epilogue_runs_inside_the_expanded_output_transform(monkeypatch):
    _host(monkeypatch, True)
    model = _basic_block(hw=24)
    compiled = kiln.compile(model)
    producers = compiled.graph.producers()
    outs = [k for k in compiled.result.kernels
            if any(n.op == "winograd_output" for n in compiled.graph.nodes if n.outputs[0].name in
                   {i for o in k.outputs for i in producers[o].inputs} | set(k.outputs))]
    assert len(outs) == 2
    for k in outs:
        stores = [s for s in walk_stmts(k.func.body) if isinstance(s, Store)]
        assert len(stores) == 16  # 4 x 4 outputs per tile, each straight-line code
        assert not _case_selects(s.value for s in stores)  # (ReLU's select on the sign stays)
        vec = [s for s in walk_stmts(k.func.body) if isinstance(s, For) and s.kind == "vectorized"]
        assert len(vec) == 1 and isinstance(vec[0].body, Seq)
    x = RNG.standard_normal((1, 32, 24, 24)).astype(np.float32)
    np.testing.assert_allclose(compiled.run({"x": x})["y"], _ort(model, x), rtol=1e-4, atol=1e-4)


def test_the_generated_transforms_leave_no_case_selects(monkeypatch):
    _host(monkeypatch, True)
    compiled = kiln.compile(_conv_model(24, 32, 64))
    source = compiled.source()
    inputs = [k for k in compiled.result.kernels if any(o.endswith("__wgin") for o in k.outputs)]
    assert len(inputs) == 1
    stores = [s for s in walk_stmts(inputs[0].func.body) if isinstance(s, Store) and s.buffer == "out0"]
    assert len(stores) == 36
    kernel = source.split(f"void {inputs[0].name}(")[1].split("\n}\n")[0]
    assert kernel.count("?") == 1  # the padding's select; the transform's cases are resolved


def test_the_transform_gemms_are_tuned_and_the_records_apply(tmp_path, monkeypatch):
    from kiln.autotune.measure import MeasureOptions

    _host(monkeypatch, True)
    model = _conv_model(24, 32, 64)
    result = kiln.tune(model, trials=4, db=str(tmp_path), cost_model="random", batch_size=2,
                       measure=MeasureOptions(repeats=1, min_repeat_ms=0.2))
    assert result.trials == 4
    compiled = kiln.compile(model, db=str(tmp_path))
    gemm = [k for k in compiled.result.kernels if any(o.endswith("__wgmm") for o in k.outputs)]
    assert len(gemm) == 1 and any(step["prim"] == "split" for step in gemm[0].trace)
    x = RNG.standard_normal((1, 32, 24, 24)).astype(np.float32)
    np.testing.assert_allclose(compiled.run({"x": x})["y"], _ort(model, x), rtol=1e-4, atol=1e-4)


def test_host_minus_winograd_keeps_convs_direct():
    model = _conv_model(24, 32, 64)
    ops = {n.op for n in kiln.compile(model, target="host:-winograd").graph.nodes}
    assert "conv_nchwc" in ops and "winograd_output" not in ops
    with pytest.raises(kiln.errors.TargetError, match="accepted options: -winograd"):
        kiln.compile(model, target="host:+winograd")


def test_snapshot_winograd_f2x2_conv(monkeypatch):
    """The generated C of an F(2x2) convolution on an AVX2-class host (16-float panels)."""
    from kiln.passes.capabilities import Capabilities
    from tests.test_codegen import check_snapshot

    monkeypatch.setattr(host, "capabilities", lambda: Capabilities(32, 16, 2, winograd=True))
    compiled = kiln.compile(_conv_model(12, 8, 16))
    assert [n.attrs["m"] for n in compiled.graph.nodes if n.op == "winograd_output"] == [2]
    check_snapshot("winograd_f2x2_conv.c", compiled.source())
