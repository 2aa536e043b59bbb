"""The WebGPU target through wgpu (lavapipe without a GPU): models against ONNX Runtime,
the GPU schedule, the generated WGSL (snapshot), the bundle files and bad inputs."""
from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
from onnx import helper

import kiln
from examples import models
from kiln.errors import InputError, KilnError, ScheduleError, ShapeError
from kiln.ir.loop import GPU_BLOCK, GPU_THREAD, For, If, walk_stmts
from tests.conftest import require_webgpu
from tests.test_codegen import check_snapshot, gemm_bias_relu
from tests.test_light_models import LIGHT_DIR, _inputs
from tests.test_models import CASES
from tests.util import assert_close, make_model, ort_run


@pytest.fixture(scope="module")
def wgpu_device():
    return require_webgpu()


# -- tier 1: the GPU schedule and the renderer, no device -----------------------------------

def test_gpu_schedule_binds_every_nest_with_guards():
    from kiln.passes.gpu_schedule import schedule_dispatches

    m = kiln.compile(models.bert_encoder(layers=1, hidden=64, heads=4, seq=16, ffn=128), target="webgpu")
    softmax = next(k for k in m.result.kernels if len(k.stages) == 3)  # max, sum, normalize
    dispatches = schedule_dispatches(softmax.unscheduled, softmax.stages)
    assert len(dispatches) == 3
    for d in dispatches:
        loops = [s for s in walk_stmts(d.func.body) if isinstance(s, For)]
        assert [lp.kind for lp in loops[:2]] == [GPU_BLOCK, GPU_THREAD]
        assert d.workgroups * d.workgroup_size >= loops[0].extent * loops[1].extent
        assert d.trace[-2:] == [{"prim": "bind", "args": {"loop": loops[0].var.name, "axis": GPU_BLOCK}},
                                {"prim": "bind", "args": {"loop": loops[1].var.name, "axis": GPU_THREAD}}]


def test_gpu_schedule_guards_a_tail():
    """100 elements on workgroups of 64: the second workgroup's last 28 invocations do nothing."""
    from kiln.passes.gpu_schedule import schedule_dispatches

    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", np.float32, [100])],
                       [("y", np.float32, [100])])
    k = kiln.compile(model, target="webgpu").result.kernels[0]
    (d,) = schedule_dispatches(k.unscheduled, k.stages)
    assert (d.workgroups, d.workgroup_size) == (2, 64)
    guards = [s for s in walk_stmts(d.func.body) if isinstance(s, If)]
    assert len(guards) == 1 and "100" in str(guards[0].cond)


def test_gpu_schedule_grid_stays_within_dimension_limit():
    from kiln.passes.gpu_schedule import MAX_WORKGROUPS_X, Dispatch

    d = Dispatch("k", None, workgroups=MAX_WORKGROUPS_X * 3 + 5, workgroup_size=64)
    x, y, z = d.grid()
    assert x <= MAX_WORKGROUPS_X and x * y >= d.workgroups and z == 1


def test_bind_rejects_an_unknown_axis():
    from kiln.ir.schedule import Schedule

    k = kiln.compile(gemm_bias_relu(), target="webgpu").result.kernels[0]
    sch = Schedule(k.unscheduled)
    with pytest.raises(ScheduleError, match="unknown GPU axis"):
        sch.bind(sch.loops()[0], "warp.z")


def test_wgsl_literals_have_no_inf_or_out_of_range_constants():
    from kiln.codegen.wgsl import WGSLRenderer
    from kiln.ir.dtype import DType
    from kiln.ir.expr import Const

    r = WGSLRenderer({})
    assert r.literal(Const(float("-inf"), DType.float32)) == "kiln_f32_bits(0xff800000u)"
    assert r.literal(Const(float("nan"), DType.float32)).startswith("kiln_f32_bits(")
    assert r.literal(Const(-(1 << 63), DType.int64)) == "i32(-2147483647 - 1)"
    assert r.literal(Const(-2.5, DType.float32)) == "f32(-2.5)"
    assert r.literal(Const(3, DType.int64)) == "3i"


def test_snapshot_wgsl_gemm_bias_relu():
    m = kiln.compile(gemm_bias_relu(), target="webgpu")
    assert m.kernel_count == 1
    check_snapshot("gemm_bias_relu.wgsl", m.files["kernel_0.wgsl"])


def _matmul_model(m, k, n, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((k, n)).astype(np.float32)
    b = rng.standard_normal((n,)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"]), helper.make_node("Add", ["mm", "b"], ["y"])]
    return make_model(nodes, [("x", np.float32, [m, k])], [("y", np.float32, [m, n])],
                      initializers=[("w", w), ("b", b)])


def _tiled(m) -> list:
    return [d for k in m.result.source.webgpu.kernels for d in k.dispatches
            if d.trace and d.trace[0]["prim"] == "gpu_tile_gemm"]


def test_snapshot_wgsl_tiled_matmul():
    m = kiln.compile(_matmul_model(64, 32, 64), target="webgpu")
    assert len(_tiled(m)) == 1
    src = m.files["kernel_0.wgsl"]
    assert src.count("workgroupBarrier();") == 2 and "var<workgroup> kernel_0_tile_x" in src
    check_snapshot("matmul_tiled.wgsl", src)


def test_tiling_keeps_barriers_out_of_guards():
    """WGSL needs barriers in uniform control flow: never under a per-invocation If."""
    from kiln.ir.loop import Barrier

    (d,) = _tiled(kiln.compile(_matmul_model(64, 32, 64), target="webgpu"))

    def check(s, guarded):
        if isinstance(s, Barrier):
            assert not guarded
        for c in __import__("kiln.ir.loop", fromlist=["stmt_children"]).stmt_children(s):
            check(c, guarded or isinstance(s, If))
    check(d.func.body, False)


def test_small_problems_keep_one_invocation_per_element():
    assert not _tiled(kiln.compile(gemm_bias_relu(), target="webgpu"))  # 12 x 16 outputs


def test_export_writes_the_browser_bundle(tmp_path):
    m = kiln.compile(models.small_cnn(), target="webgpu")
    out = m.export(tmp_path / "bundle")
    names = {p.name for p in out.iterdir()}
    assert {"model.js", "index.html", "weights.bin", "manifest.json"} <= names
    assert {f"kernel_{i}.wgsl" for i in range(m.kernel_count)} <= names
    js = (out / "model.js").read_text()
    assert "export class KilnModel" in js and "static async load(" in js and "async run(inputs, dims = {})" in js
    table = json.loads(js[js.index("const TABLE = ") + len("const TABLE = "): js.index(";\n", js.index("const TABLE"))])
    assert (out / "weights.bin").stat().st_size == table["weightsWords"] * 4 == 4 * sum(table["weightChunks"])
    assert [k["file"] for k in table["kernels"]] == [f"kernel_{i}.wgsl" for i in range(m.kernel_count)]
    assert 'import { KilnModel } from \'./model.js\'' in (out / "index.html").read_text()


def test_cli_compile_webgpu(tmp_path):
    from click.testing import CliRunner

    from kiln.cli import cli

    path = tmp_path / "m.onnx"
    onnx.save(gemm_bias_relu(), path)
    r = CliRunner().invoke(cli, ["compile", str(path), "--target", "webgpu", "-o", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "b" / "model.js").exists() and (tmp_path / "b" / "kernel_0.wgsl").exists()
    r = CliRunner().invoke(cli, ["compile", str(path), "--target", "webgpu", "-o", str(tmp_path / "w"),
                                 "--emit", "wgsl"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == ["kernel_0.wgsl"]


# -- bad inputs ---------------------------------------------------------------------------------

def test_dynamic_dims_reach_kernels_through_a_uniform():
    from tests.test_dynamic_shapes import BOUNDS, attention_block

    m = kiln.compile(attention_block(), target="webgpu", dim_bounds=BOUNDS)
    src = m.files["kernel_0.wgsl"]
    assert "var<uniform> kiln_dims: KilnDims;" in src and "let dim0 = kiln_dims.d[0][0];  // batch" in src
    table = m.result.source.webgpu.table()
    assert table["symbols"] == ["batch", "seq"] and table["inputs"][0]["shape"] == ['d["batch"]', 'd["seq"]', 32]


def test_dynamic_attention_runs_every_size_in_bounds(wgpu_device):
    from tests.test_dynamic_shapes import BOUNDS, _feeds, attention_block

    model = attention_block()
    m = kiln.compile(model, target="webgpu", dim_bounds=BOUNDS)
    for batch, seq in [(1, 1), (3, 17), (8, 128)]:
        feeds = _feeds(batch, seq, seed=batch)
        got = m.run(feeds)
        assert got["y"].shape == (batch, seq, 32)
        assert_close(got, ort_run(model, feeds), rtol=1e-3, atol=1e-4)
    with pytest.raises(InputError, match="expected 1..8"):
        m.run(_feeds(9, 4, seed=0))


def test_float64_is_refused():
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", np.float64, [4])],
                       [("y", np.float64, [4])])
    with pytest.raises(KilnError, match="64-bit float"):
        kiln.compile(model, target="webgpu")


def test_too_many_weight_bindings_is_refused(monkeypatch):
    from kiln.codegen import wgsl_model

    monkeypatch.setattr(wgsl_model, "CHUNK_WORDS", 1000)
    with pytest.raises(KilnError, match="bindings of 4000 bytes"):
        kiln.compile(models.small_cnn(), target="webgpu")


def test_float64_inside_a_model_is_refused():
    nodes = [helper.make_node("Cast", ["x"], ["d"], to=onnx.TensorProto.DOUBLE),
             helper.make_node("Exp", ["d"], ["e"]), helper.make_node("Cast", ["e"], ["y"], to=onnx.TensorProto.FLOAT)]
    model = make_model(nodes, [("x", np.float32, [4])], [("y", np.float32, [4])])
    with pytest.raises(KilnError, match="64-bit float"):
        kiln.compile(model, target="webgpu")


def test_unknown_target_option():
    with pytest.raises(KilnError, match="does not know the option"):
        kiln.compile(gemm_bias_relu(), target="webgpu:+f64")


def test_run_checks_inputs(wgpu_device):
    m = kiln.compile(gemm_bias_relu(), target="webgpu")
    with pytest.raises(InputError, match="missing"):
        m.run({"z": np.zeros((12, 8), np.float32)})
    with pytest.raises(InputError, match="shape"):
        m.run({"x": np.zeros((8, 12), np.float32)})
    with pytest.raises(InputError, match="dtype"):
        m.run({"x": np.zeros((12, 8), np.float64)})


def test_to_words_refuses_float64():
    from kiln.codegen.wgsl_model import to_words

    with pytest.raises(ShapeError, match="float32"):
        to_words(np.zeros(3, np.float64))


# -- tier 3: models on lavapipe against ONNX Runtime -------------------------------------------

@pytest.mark.parametrize("target", ["webgpu", "webgpu:+subgroups"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_model_matches_ort(name, target, wgpu_device):
    model = CASES[name]()
    feeds = models.example_inputs(model, seed=1)
    got = kiln.compile(model, target=target).run(feeds)
    assert_close(got, ort_run(model, feeds), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("m,k,n", [(64, 32, 64), (33, 19, 47), (100, 130, 70), (1, 256, 600)])
def test_tiled_matmul_edges(m, k, n, wgpu_device):
    """Tile tails in every direction (rows, cols, k) read and write only inside the tensors."""
    model = _matmul_model(m, k, n, seed=m)
    x = np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)
    compiled = kiln.compile(model, target="webgpu")
    assert bool(_tiled(compiled)) == (m * n >= 512)
    assert_close(compiled.run({"x": x}), ort_run(model, {"x": x}), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("stride,pad,group", [(1, 1, 1), (2, 0, 1), (2, 3, 1), (1, 1, 4)])
def test_tiled_conv(stride, pad, group, wgpu_device):
    rng = np.random.default_rng(stride + pad)
    w = rng.standard_normal((40, 12 // group, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], strides=[stride, stride], pads=[pad] * 4, group=group),
             helper.make_node("Relu", ["c"], ["y"])]
    out = (37 + 2 * pad - 3) // stride + 1
    model = make_model(nodes, [("x", np.float32, [2, 12, 37, 37])], [("y", np.float32, [2, 40, out, out])],
                       initializers=[("w", w)])
    x = rng.standard_normal((2, 12, 37, 37)).astype(np.float32)
    compiled = kiln.compile(model, target="webgpu")
    # grouped: the input's channel depends on the output channel (the tile's row), so the
    # input operand is not a row-free tile; those convolutions keep one invocation per element
    assert bool(_tiled(compiled)) == (group == 1)
    assert_close(compiled.run({"x": x}), ort_run(model, {"x": x}), rtol=1e-3, atol=1e-4)


def test_bert_mask_changes_output(wgpu_device):
    model = CASES["bert_encoder_masked"]()
    feeds = models.example_inputs(model, seed=2)
    mask = next(k for k, v in feeds.items() if v.ndim == 2)
    half = dict(feeds, **{mask: np.concatenate([np.ones((1, 8), np.float32), np.zeros((1, 8), np.float32)], 1)})
    m = kiln.compile(model, target="webgpu")
    a, b = m.run(dict(feeds, **{mask: np.ones_like(feeds[mask])})), m.run(half)
    out = next(iter(a))
    assert not np.allclose(a[out], b[out])
    assert_close(b, ort_run(model, half), rtol=1e-3, atol=1e-4)


def test_weights_split_across_bindings(wgpu_device, monkeypatch):
    """Weights larger than one binding go into several; a tensor across two still reads right."""
    from kiln.codegen import wgsl_model

    monkeypatch.setattr(wgsl_model, "CHUNK_WORDS", 6000)  # not a multiple of the 64-word alignment
    model = models.small_cnn()
    m = kiln.compile(model, target="webgpu")
    assert len(m.result.source.webgpu.plan.weight_chunks) == 6
    assert any("kiln_weight(" in text for name, text in m.files.items() if name.endswith(".wgsl"))
    feeds = models.example_inputs(model, seed=3)
    assert_close(m.run(feeds), ort_run(model, feeds), rtol=1e-3, atol=1e-4)


def _elementwise_model():
    """Ops whose WGSL needs care: erf, tanh of large values, pow with a negative base, float
    mod, integer floor division and mod with negative operands, comparisons, casts."""
    nodes = [
        helper.make_node("Erf", ["x"], ["erf"]),
        helper.make_node("Tanh", ["big"], ["tanh"]),
        helper.make_node("Pow", ["x", "three"], ["cube"]),
        helper.make_node("Pow", ["x", "e"], ["pow_int"]),
        helper.make_node("Mod", ["x", "d"], ["fmod"], fmod=1),
        helper.make_node("Mod", ["i", "j"], ["imod"]),
        helper.make_node("Div", ["i", "j"], ["idiv"]),
        helper.make_node("Greater", ["x", "d"], ["gt"]),
        helper.make_node("Cast", ["gt"], ["gtf"], to=onnx.TensorProto.FLOAT),
        helper.make_node("Sigmoid", ["big"], ["sig"]),
        helper.make_node("ReduceMax", ["x"], ["rmax"], keepdims=0),
    ]
    f, i64 = np.float32, np.int64
    return make_model(nodes, [("x", f, [64]), ("big", f, [64]), ("i", i64, [64])],
                      [("erf", f, [64]), ("tanh", f, [64]), ("cube", f, [64]), ("pow_int", f, [64]),
                       ("fmod", f, [64]), ("imod", i64, [64]), ("idiv", i64, [64]), ("gtf", f, [64]),
                       ("sig", f, [64]), ("rmax", f, [])],
                      initializers=[("three", np.array(3.0, f)), ("e", np.array([2.0, 3.0] * 32, f)),
                                    ("d", np.full(64, 0.7, f)), ("j", np.array([3, -3, 5, -7] * 16, i64))])


def test_elementwise_semantics_match_ort(wgpu_device):
    model = _elementwise_model()
    rng = np.random.default_rng(0)
    feeds = {"x": rng.uniform(-3, 3, 64).astype(np.float32),
             "big": rng.uniform(-100, 100, 64).astype(np.float32),
             "i": rng.integers(-50, 50, 64).astype(np.int64)}
    got = kiln.compile(model, target="webgpu").run(feeds)
    want = ort_run(model, feeds)
    for k in want:
        assert got[k].dtype == want[k].dtype, k
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)


# The whole light zoo on lavapipe, as the host tests run it (AlexNet and ZFNet-512 have 240 and
# 350 MB of weights: split across bindings). vgg19, resnet50, densenet121 and inception_v2 take
# 14-52 s each on 2 cores (all nine: 93 s with -n 2); KILN_WEBGPU_LIGHT=subset runs only the
# five that take seconds, for quick local runs.
LIGHT_SUBSET = ["bvlc_alexnet", "inception_v1", "shufflenet", "squeezenet", "zfnet512"]
LIGHT_ALL = ["bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50", "shufflenet",
             "squeezenet", "vgg19", "zfnet512"]


@pytest.mark.parametrize("name, target", [
    *((n, "webgpu") for n in (LIGHT_SUBSET if os.environ.get("KILN_WEBGPU_LIGHT") == "subset" else LIGHT_ALL)),
    ("squeezenet", "webgpu:+subgroups"),  # its global average pooling through subgroups
])
def test_light_model_matches_ort(name, target, wgpu_device):
    model = onnx.load(os.path.join(LIGHT_DIR, f"light_{name}.onnx"))
    feeds = _inputs(model)
    want = ort_run(model, feeds)
    got = kiln.compile(model, target=target).run(feeds)
    for k in want:
        scale = float(np.abs(want[k]).max()) or 1.0
        assert_close({k: got[k]}, {k: want[k]}, rtol=1e-3, atol=1e-4 * scale)


def test_io_dtypes_round_trip(wgpu_device):
    """int64 indices, float16 and bool tensors cross the one-word-per-element boundary intact."""
    f, h = np.float32, np.float16
    nodes = [helper.make_node("Gather", ["table", "idx"], ["rows"], axis=0),
             helper.make_node("Add", ["a", "b"], ["sum16"]),
             helper.make_node("Greater", ["rows", "zero"], ["positive"]),
             helper.make_node("Mul", ["idx", "idx"], ["sq"])]
    rng = np.random.default_rng(7)
    model = make_model(nodes, [("table", f, [10, 6]), ("idx", np.int64, [5]), ("a", h, [8]), ("b", h, [8])],
                       [("rows", f, [5, 6]), ("sum16", h, [8]), ("positive", np.bool_, [5, 6]),
                        ("sq", np.int64, [5])], initializers=[("zero", np.array(0.0, f))])
    feeds = {"table": rng.standard_normal((10, 6)).astype(f), "idx": np.array([9, 0, -1, 3, 3], np.int64),
             "a": rng.standard_normal(8).astype(h), "b": rng.standard_normal(8).astype(h)}
    got = kiln.compile(model, target="webgpu").run(feeds)
    want = ort_run(model, feeds)
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
        np.testing.assert_allclose(got[k].astype(np.float64), want[k].astype(np.float64), rtol=1e-3, err_msg=k)


def test_runner_times_the_dispatches(wgpu_device):
    """``WebGPURunner.time``: device time per run (what benchmarks/webgpu_bench.py compares with
    CUDA events); the runner still computes the right outputs afterwards."""
    model = CASES["small_cnn"]()
    feeds = models.example_inputs(model, seed=1)
    runner = kiln.compile(model, target="webgpu").build()
    assert runner.time(feeds, repeats=2, warmup=1) > 0
    assert_close(runner(feeds), ort_run(model, feeds), rtol=1e-3, atol=1e-4)
