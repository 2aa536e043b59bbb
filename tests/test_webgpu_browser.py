"""The exported WebGPU bundle in a real browser: Debian's Chromium, headless, WebGPU on the
CPU. Each test exports a model, serves the bundle on 127.0.0.1, runs ``index.html`` on given
inputs and compares what the page reports with ONNX Runtime."""
from __future__ import annotations

import numpy as np
import pytest

import kiln
from examples import models
from kiln.errors import KilnError
from tests.conftest import require_toolchain
from tests.util import assert_close, ort_run

BROWSER_CASES = {
    "small_cnn": lambda: models.small_cnn(),
    "bert_encoder": lambda: models.bert_encoder(layers=2, hidden=64, heads=4, seq=16, ffn=128),
    "gpt_decoder": lambda: models.gpt_decoder(layers=2, hidden=64, heads=4, seq=16),
}


@pytest.mark.parametrize("name", sorted(BROWSER_CASES))
def test_bundle_in_chromium_matches_ort(name, tmp_path):
    from kiln.testing.browser import run_in_browser

    chromium = require_toolchain("chromium")
    model = BROWSER_CASES[name]()
    feeds = models.example_inputs(model, seed=4)
    bundle = kiln.compile(model, target="webgpu").export(tmp_path / "bundle")
    if name != "small_cnn":  # the transformers' matmuls bind their tensors as views (vector loads)
        assert '"views"' in (bundle / "model.js").read_text()
    got, report = run_in_browser(bundle, feeds, browser=chromium)
    assert report["ms"] > 0
    assert_close(got, ort_run(model, feeds), rtol=1e-3, atol=1e-4)
    # the page's console line reached Chromium's log (--enable-logging=stderr --v=0)
    assert "KILN_RESULT" in report["log"]


def test_bundle_reports_a_missing_weights_file(tmp_path):
    """A broken bundle fails loudly in the page, and the error reaches the caller."""
    from kiln.testing.browser import run_in_browser

    chromium = require_toolchain("chromium")
    model = models.small_cnn()
    bundle = kiln.compile(model, target="webgpu").export(tmp_path / "bundle")
    (bundle / "weights.bin").unlink()
    with pytest.raises(KilnError, match="weights.bin: HTTP 404"):
        run_in_browser(bundle, models.example_inputs(model, seed=4), browser=chromium, timeout=120)


def test_bundle_rejects_wrong_input_length(tmp_path):
    from kiln.testing.browser import run_in_browser

    chromium = require_toolchain("chromium")
    model = models.small_cnn()
    bundle = kiln.compile(model, target="webgpu").export(tmp_path / "bundle")
    feeds = {k: np.zeros(7, np.float32) for k in models.example_inputs(model, seed=4)}
    with pytest.raises(KilnError, match="has 7 elements; expected"):
        run_in_browser(bundle, feeds, browser=chromium, timeout=120)


def test_dynamic_bundle_in_chromium(tmp_path):
    """Dynamic batch and sequence dims: one bundle, run at a size inside its bounds."""
    from kiln.testing.browser import run_in_browser
    from tests.test_dynamic_shapes import BOUNDS, _feeds, attention_block

    chromium = require_toolchain("chromium")
    model = attention_block()
    bundle = kiln.compile(model, target="webgpu", dim_bounds=BOUNDS).export(tmp_path / "bundle")
    feeds = _feeds(3, 17, seed=5)
    got, _ = run_in_browser(bundle, feeds, browser=chromium, dims={"batch": 3, "seq": 17})
    assert got["y"].shape == (3, 17, 32)
    assert_close(got, ort_run(model, feeds), rtol=1e-3, atol=1e-4)
    with pytest.raises(KilnError, match=r"dim 'seq' must be an integer in 1..128; got 200"):
        run_in_browser(bundle, feeds, browser=chromium, dims={"batch": 3, "seq": 200}, timeout=120)


def test_vector_views_beside_dynamic_dims_in_chromium(tmp_path):
    """A dispatch with its own tensor views (vector loads) in a model with a dynamic dim:
    its bind group carries the dims uniform too, and Dawn accepts the non-overlapping views."""
    from kiln.testing.browser import run_in_browser
    from tests.test_webgpu_vectors import _mixed_model

    chromium = require_toolchain("chromium")
    model = _mixed_model()
    bundle = kiln.compile(model, target="webgpu", dim_bounds={"batch": (1, 6)}).export(tmp_path / "bundle")
    assert '"views"' in (bundle / "model.js").read_text()
    rng = np.random.default_rng(8)
    feeds = {"a": rng.standard_normal((64, 32)).astype(np.float32), "b": rng.standard_normal((4, 8)).astype(np.float32)}
    got, _ = run_in_browser(bundle, feeds, browser=chromium, dims={"batch": 4})
    assert_close(got, ort_run(model, feeds), rtol=1e-3, atol=1e-4)


def test_quantized_bundle_in_chromium(tmp_path):
    """A QDQ CNN: its int8 weights ship packed four to a word and are dequantized inside the
    convolutions (docs/webgpu.md); the page's outputs are within one quantization step of ORT."""
    from kiln.testing.browser import run_in_browser

    chromium = require_toolchain("chromium")
    model = kiln.quantize(models.small_cnn(), {"input": np.stack(
        [models.example_inputs(models.small_cnn(), seed=s)["input"][0] for s in range(4)])})
    feeds = models.example_inputs(model, seed=4)
    compiled = kiln.compile(model, target="webgpu")
    bundle = compiled.export(tmp_path / "bundle")
    assert (bundle / "weights.bin").stat().st_size < kiln.compile(models.small_cnn(), target="webgpu") \
        .export(tmp_path / "float").joinpath("weights.bin").stat().st_size / 3
    got, _ = run_in_browser(bundle, feeds, browser=chromium)
    ref = ort_run(model, feeds)
    for k, want in ref.items():
        step = np.abs(np.diff(np.unique(want))).min(initial=1.0)
        assert np.abs(got[k] - want).max() <= step * 1.01


def test_subgroup_bundle_in_chromium(tmp_path):
    """``webgpu:+subgroups``: a BERT encoder's layer norms combine their rows through
    subgroupAdd; Chromium's CPU adapter has the feature, so the page runs the real thing
    (``enable subgroups;`` included, which wgpu's compiler does not take yet)."""
    from kiln.testing.browser import run_in_browser

    chromium = require_toolchain("chromium")
    model = BROWSER_CASES["bert_encoder"]()
    feeds = models.example_inputs(model, seed=4)
    compiled = kiln.compile(model, target="webgpu:+subgroups")
    assert compiled.result.source.webgpu.features == ["subgroups"]
    bundle = compiled.export(tmp_path / "bundle")
    assert any("enable subgroups;" in p.read_text() for p in bundle.glob("*.wgsl"))
    got, _ = run_in_browser(bundle, feeds, browser=chromium)
    assert_close(got, ort_run(model, feeds), rtol=1e-3, atol=1e-4)
