"""f16 storage on WebGPU (``webgpu:+f16``): float16 activations one half each in ``arena16``
(WGSL ``array<f16>``, the adapter's ``shader-f16``), computed in f32. The plan and the
generated WGSL without a device; results through wgpu on lavapipe (which has shader-f16)
against ONNX Runtime and the host target; the bundle in Chromium, whose CPU adapter has no
shader-f16, refuses clearly, and its float16 conversions match numpy's."""
from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import helper

import kiln
from kiln.errors import KilnError
from tests.conftest import require_webgpu
from tests.test_codegen import check_snapshot
from tests.util import make_model, ort_run

H = np.float16
RNG = np.random.default_rng(3)


@pytest.fixture(scope="module")
def wgpu_device():
    return require_webgpu()


def _half_block(rows=64, k=128, n=256):
    """x @ W + b, Relu, Softmax, all float16: a tiled GEMM, a row reduction, an epilogue."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"]), helper.make_node("Add", ["mm", "b"], ["a"]),
             helper.make_node("Relu", ["a"], ["r"]), helper.make_node("Softmax", ["r"], ["y"], axis=-1)]
    return make_model(nodes, [("x", H, [rows, k])], [("y", H, [rows, n])],
                      [("w", (RNG.standard_normal((k, n)) * 0.1).astype(H)), ("b", RNG.standard_normal(n).astype(H))])


def _mixed():
    """float16 and float32 values side by side, an odd-sized float16 output, a cast between."""
    nodes = [helper.make_node("Mul", ["h", "h"], ["sq"]), helper.make_node("Cast", ["sq"], ["sq32"], to=1),
             helper.make_node("Add", ["sq32", "f"], ["y32"]), helper.make_node("Neg", ["h"], ["neg"])]
    return make_model(nodes, [("h", H, [5, 7]), ("f", np.float32, [5, 7])],
                      [("y32", np.float32, [5, 7]), ("neg", H, [5, 7])])


# -- the plan and the WGSL, no device ------------------------------------------------------------

def test_float16_values_live_in_arena16_and_the_rest_in_words():
    m = kiln.compile(_mixed(), target="webgpu:+f16")
    plan = m.result.source.webgpu.plan
    regions = {name: plan.storage[name][0] for name in ("h", "f", "y32", "neg")}
    assert regions == {"h": "arena16", "f": "arena", "y32": "arena", "neg": "arena16"}
    assert plan.arena16_halves > 0 and plan.arena16_halves % 128 == 0
    table = m.result.source.webgpu.table()
    assert table["arena16Halves"] == plan.arena16_halves
    assert [s["region"] for s in table["inputs"]] == ["arena16", "arena"]


def test_plain_webgpu_and_float32_models_keep_one_word_per_element():
    assert kiln.compile(_mixed(), target="webgpu").result.source.webgpu.plan.arena16_halves == 0
    f32 = make_model([helper.make_node("Relu", ["x"], ["y"])], [("x", np.float32, [8])], [("y", np.float32, [8])])
    m = kiln.compile(f32, target="webgpu:+f16")
    assert m.result.source.webgpu.plan.arena16_halves == 0 and "enable f16;" not in m.files["kernel_0.wgsl"]


def test_f16_storage_halves_the_activation_memory():
    words = kiln.compile(_half_block(), target="webgpu").result.source.webgpu.plan
    halves = kiln.compile(_half_block(), target="webgpu:+f16").result.source.webgpu.plan
    assert halves.arena_words == 0
    assert halves.arena16_halves * 2 <= words.arena_words * 4 // 2 + 512


def test_snapshot_wgsl_f16_storage():
    src = kiln.compile(_half_block(), target="webgpu:+f16").files["kernel_0.wgsl"]
    assert src.index("enable f16;") < src.index("@group(0)")  # the directive precedes every declaration
    assert "var<storage, read_write> arena16: array<f16>;" in src and "f32(arena16[" in src and "= f16(" in src
    check_snapshot("matmul_f16_storage.wgsl", src)


def test_unknown_option_lists_f16():
    with pytest.raises(KilnError, match=r"\+f16"):
        kiln.compile(_mixed(), target="webgpu:+f64")


# -- results through wgpu -----------------------------------------------------------------------------

def test_half_block_matches_onnxruntime_and_the_host(wgpu_device):
    model = _half_block()
    feeds = {"x": RNG.standard_normal((64, 128)).astype(H)}
    got = kiln.compile(model, target="webgpu:+f16").run(feeds)["y"]
    assert got.dtype == H and got.shape == (64, 256)
    want = ort_run(model, feeds)["y"]
    host = kiln.compile(model, target="host").run(feeds)["y"]
    # f32 arithmetic rounded to f16 at every kernel boundary, as the host: the GEMM's summation
    # order differs, so a value may round to the neighbouring half (a relative step of 2^-10)
    np.testing.assert_allclose(got.astype(np.float32), host.astype(np.float32), rtol=5e-3, atol=2e-4)
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=5e-3, atol=5e-4)


def test_mixed_precision_and_odd_sizes_round_trip(wgpu_device):
    model = _mixed()
    h = RNG.standard_normal((5, 7)).astype(H)
    h[0, :4] = [H(65504), H(-6e-8), H(0.0), H(-0.0)]  # the largest half, a subnormal, signed zeros
    feeds = {"h": h, "f": RNG.standard_normal((5, 7)).astype(np.float32)}
    got = kiln.compile(model, target="webgpu:+f16").run(feeds)
    want = ort_run(model, feeds)
    np.testing.assert_array_equal(got["neg"], want["neg"])
    np.testing.assert_array_equal(np.signbit(got["neg"]), np.signbit(want["neg"]))
    np.testing.assert_allclose(got["y32"], want["y32"], rtol=1e-6)


def test_bert_in_float16_matches_the_host(wgpu_device):
    from examples import models

    model = _to_float16(models.bert_encoder(layers=1, hidden=64, heads=4, seq=32, ffn=128))
    feeds = {k: (v.astype(H) if v.dtype == np.float32 else v) for k, v in models.example_inputs(model, seed=2).items()}
    got = kiln.compile(model, target="webgpu:+f16").run(feeds)
    host = kiln.compile(model, target="host").run(feeds)
    for k in host:
        np.testing.assert_allclose(got[k].astype(np.float32), host[k].astype(np.float32), rtol=1e-2, atol=1e-2)


# -- the bundle in Chromium ---------------------------------------------------------------------------

def test_f16_bundle_refuses_an_adapter_without_shader_f16(tmp_path):
    from kiln.testing.browser import chromium_path, run_in_browser

    chromium = _chromium(chromium_path)
    bundle = kiln.compile(_mixed(), target="webgpu:+f16").export(tmp_path / "bundle")
    feeds = {"h": np.ones((5, 7), H), "f": np.ones((5, 7), np.float32)}
    with pytest.raises(KilnError, match="shader-f16"):
        run_in_browser(bundle, feeds, browser=chromium, timeout=120)


HALVES_PAGE = """<!doctype html><script type="module">
import { float32ToHalfBits, halfBitsToFloat32 } from './model.js';
const params = new URLSearchParams(location.search);
const inputs = await (await fetch(params.get('inputs'))).json();
const x = inputs.x;
const bits = x.map((v) => float32ToHalfBits(v));
// JSON has no infinities: a half that overflowed reports 0 in y (its bits say which)
const y = bits.map((h) => { const r = halfBitsToFloat32(h); return Number.isFinite(r) ? r : 0; });
await fetch(params.get('report'), { method: 'POST',
  body: JSON.stringify({ outputs: { y }, shapes: { y: [x.length] }, bits }) });
console.log('KILN_RESULT done');
</script>"""


def test_bundle_float16_conversions_match_numpy(tmp_path):
    """model.js converts Float32Array inputs to halves and halves back (round to nearest even,
    subnormals, inf, NaN): the same bits as numpy's float16."""
    from kiln.testing.browser import chromium_path, run_in_browser

    chromium = _chromium(chromium_path)
    n = 4096
    x = np.concatenate([RNG.standard_normal(n // 2) * 10.0 ** RNG.integers(-9, 6, n // 2),
                        np.array([0.0, -0.0, 65504.0, 65519.0, 65520.0, 1e6, -1e6, 6e-8, 3e-8, 2.9e-8, 5.96e-8,
                                  1 + 2 ** -11, 1 + 3 * 2 ** -11, 2049.0, 2051.0, 6.1e-5]),
                        RNG.uniform(-1, 1, n // 2 - 16)]).astype(np.float32)
    model = make_model([helper.make_node("Identity", ["x"], ["y"])], [("x", np.float32, [x.size])],
                       [("y", np.float32, [x.size])])
    bundle = kiln.compile(model, target="webgpu").export(tmp_path / "bundle")
    (bundle / "halves.html").write_text(HALVES_PAGE)
    got, report = run_in_browser(bundle, {"x": x}, browser=chromium, page="halves.html")
    with np.errstate(over="ignore"):
        want = x.astype(H)  # the values past 65504 round to inf, on purpose
    np.testing.assert_array_equal(np.array(report["bits"], np.uint16), want.view(np.uint16))
    finite = np.where(np.isfinite(want), want.astype(np.float32), np.float32(0))
    assert np.isinf(want).sum() >= 3  # 65520, 1e6, -1e6 (and large random values) round to inf
    np.testing.assert_array_equal(got["y"], finite)


def _chromium(chromium_path):
    from tests.conftest import toolchains_required

    try:
        return chromium_path()
    except Exception as e:  # noqa: BLE001
        if toolchains_required():
            pytest.fail(str(e), pytrace=False)
        pytest.skip(str(e))


def _to_float16(model):
    """A float32 ONNX model with every float32 initializer, input, output and Cast target in float16."""
    import onnx
    from onnx import TensorProto, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    for i, t in enumerate(g.initializer):
        if t.data_type == TensorProto.FLOAT:
            g.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(H), t.name))
    for v in list(g.input) + list(g.output) + list(g.value_info):
        if v.type.tensor_type.elem_type == TensorProto.FLOAT:
            v.type.tensor_type.elem_type = TensorProto.FLOAT16
    for node in g.node:
        for a in node.attribute:
            if node.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT:
                a.i = TensorProto.FLOAT16
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == TensorProto.FLOAT:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(H), a.t.name))
    return m


def test_to_float16_helper_makes_a_float16_model():
    from examples import models

    m = _to_float16(models.bert_encoder(layers=1, hidden=64, heads=4, seq=32, ffn=128))
    assert json.dumps([i.type.tensor_type.elem_type for i in m.graph.output]) == "[10]"
